"""Structured output: constrain what a request may generate with a grammar (llguidance).

The API layer fills a `GuidedDecoding` (`structured.py`, torch-free) and puts it in `SamplingParams.guided`.

Per engine one `GuidedDecoder` holds the llguidance tokenizer (about 2 s to build for the 248k vocabulary,
holding the GIL: `AsyncLLM` builds it at start, `LLM` on the first guided request) and turns each request's spec into a `GuidedMatcher`. Each step,
`GuidedDecoder.apply` computes the allowed-token bitmasks of all constrained rows at once (in parallel
on llguidance's threads) and sets every other logit to -inf; the engine then feeds each sampled token to
`GuidedMatcher.accept` and ends the request when `is_finished()` (the grammar is complete and only EOS
could follow).

`start_after` (e.g. the `</think>` id) leaves generation free until that token appears (or a special
token the grammar starts with, such as `<tool_call>` opened inside the reasoning): the reasoning is not
constrained, only its EOS is blocked so that the constrained part is not skipped.

JSON (schemas, objects, and JSON-typed tool parameters) is generated compact on one line with `", "`
and `": "` separators (what `json.dumps` and the chat template's `tojson` write); a schema's own
`"x-guidance"` options override that, e.g. `{"whitespace_flexible": true}`.
"""

from __future__ import annotations

import hashlib
import time

import llguidance
import numpy as np
import torch

from .structured import GuidedDecoding


# ---- matching -----------------------------------------------------------------------------------------

class GuidedMatcher:
    """One request's grammar state: which tokens may come next, fed with each sampled token."""

    def __init__(self, matcher: llguidance.LLMatcher | None, spec: GuidedDecoding,
                 special_ids: frozenset[int] = frozenset()) -> None:
        self.matcher = matcher  # None: a reasoning budget alone (spec.budget_only), nothing after start_after
        self.spec = spec
        self.special_ids = special_ids  # see accept()
        self.active = spec.start_after is None  # constrained from now on
        self.free_tokens = 0  # tokens generated before the constraint started
        self.error: str | None = None  # set when a token was rejected (the request should end)

    def allowed_mask(self, out: torch.Tensor) -> None:
        """Fill `out` (int32 [ceil(V/32)], contiguous CPU) with the allowed-token bitmask (bit t%32 of word t//32)."""
        if out.dtype != torch.int32 or not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError("allowed_mask needs a contiguous int32 CPU tensor")
        self.matcher.unsafe_compute_mask_ptr(out.data_ptr(), out.numel() * 4)

    def accept(self, token_id: int) -> bool:
        """Advance with a sampled token; False (and `error` set) if the grammar rejects it.

        Before `start_after`, a special token that the grammar can start with also ends the free part and
        is consumed: Qwen3.5 may open `<tool_call>` inside its reasoning, which parsers (and vLLM's
        structured-output gate) treat as the end of the reasoning.
        """
        if not self.active:
            self.free_tokens += 1
            if token_id == self.spec.start_after:
                self.active = True
                return True
            if (self.matcher is None or token_id not in self.special_ids
                    or self.matcher.validate_tokens([token_id]) != 1):
                return True
            self.active = True
        if self.matcher is None:
            return True
        if self.error is None and not self.matcher.consume_token(token_id):
            self.error = self.matcher.get_error() or f"token {token_id} is not allowed here"
        return self.error is None

    def fork(self) -> "GuidedMatcher":
        """An independent copy of the grammar state (speculative verification walks drafts on a copy)."""
        new = GuidedMatcher(self.matcher and self.matcher.deep_copy(), self.spec, self.special_ids)
        new.active, new.free_tokens, new.error = self.active, self.free_tokens, self.error
        return new

    @property
    def must_start(self) -> bool:
        """The reasoning budget is spent: the next token must be `start_after`."""
        budget = self.spec.reasoning_budget
        return not self.active and budget is not None and self.free_tokens >= budget

    def is_finished(self) -> bool:
        """The grammar is complete and nothing but EOS may follow (or the matcher failed)."""
        return self.active and self.matcher is not None and (self.error is not None or self.matcher.is_stopped())


class GuidedDecoder:
    """Per engine: the llguidance tokenizer, matchers for new requests, and masking of logits rows.

    vocab_size: the model's (padded) vocabulary, the width of the logits; ids the tokenizer does
    not define are never allowed. eos_token_id: the EOS the grammars end with (`<|im_end|>`).
    block_before_start: EOS ids masked while a request waits for its `start_after` token.
    """

    def __init__(self, tokenizer, vocab_size: int, eos_token_id: int, block_before_start: list[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.block_before_start = list(block_before_start)
        self.words = (vocab_size + 31) // 32
        self._lltok: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self.mask_seconds = 0.0  # time spent computing masks (for measurements)
        self.mask_rows = 0

    @property
    def lltokenizer(self) -> llguidance.LLTokenizer:
        if self._lltok is None:
            self._lltok = _lltokenizer(self.tokenizer.backend.to_str(), self.vocab_size, self.eos_token_id)
        return self._lltok

    def matcher(self, spec: GuidedDecoding) -> GuidedMatcher:
        """A fresh matcher for `spec`; ValueError (named after the spec's field) if the grammar is invalid."""
        if spec.budget_only:
            return GuidedMatcher(None, spec, self.tokenizer.special_ids)
        m = llguidance.LLMatcher(self.lltokenizer, spec.llguidance_grammar, log_level=0)
        if m.is_error():
            raise ValueError(f"{spec.label}: {m.get_error().strip()}")
        return GuidedMatcher(m, spec, self.tokenizer.special_ids)

    def apply(self, logits: torch.Tensor, rows: list[int], matchers: list[GuidedMatcher]) -> None:
        """Set the disallowed logits of `rows` (one matcher each) to -inf, in place. logits: [B, V] fp32."""
        active = [(r, m) for r, m in zip(rows, matchers) if m.active and m.matcher is not None]
        waiting = [r for r, m in zip(rows, matchers) if not m.active and m.matcher is not None]
        if waiting and self.block_before_start:
            ids = torch.tensor(self.block_before_start, device=logits.device)
            logits[torch.tensor(waiting, device=logits.device)[:, None], ids] = float("-inf")
        for r, m in zip(rows, matchers):
            if m.must_start:  # reasoning budget spent: force the end of reasoning
                keep = logits[r, m.spec.start_after].clone()
                logits[r].fill_(float("-inf"))
                logits[r, m.spec.start_after] = keep if torch.isfinite(keep) else 0.0
        if not active:
            return
        t0 = time.perf_counter()
        bitmask = torch.empty(len(active), self.words, dtype=torch.int32)
        if len(active) == 1:
            active[0][1].allowed_mask(bitmask[0])
        else:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            self._executor.unsafe_compute_mask_ptr([(m.matcher, i) for i, (_, m) in enumerate(active)],
                                                   bitmask.data_ptr(), self.words * 4, len(active))
        _mask_rows(logits, [r for r, _ in active], bitmask)
        self.mask_seconds += time.perf_counter() - t0
        self.mask_rows += len(active)

    def apply_drafts(self, logits: torch.Tensor, row: int, matcher: GuidedMatcher, drafts: list[int]) -> None:
        """Mask rows row .. row + len(drafts) of one verifying sequence: row i by the grammar state after
        drafts d_1..d_i, walked on a copy (the request's matcher only sees the tokens finally kept). A draft
        the grammar rejects has probability 0 in its row's mask, so verification stops there."""
        walk = matcher.fork()
        for i in range(len(drafts) + 1):
            self.apply(logits, [row + i], [walk])
            if i == len(drafts) or walk.is_finished() or not walk.accept(drafts[i]):
                return  # rows past a rejected draft, or past the grammar's end, are never used

def _mask_rows(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """logits[rows[i], t] = -inf where bit t of bitmask[i] is 0 (and for t past the bitmask)."""
    V = logits.shape[1]
    if logits.device.type != "cpu":
        idx = torch.tensor(rows, device=logits.device)
        allowed = unpack_bitmask(bitmask, V).to(logits.device)
        logits[idx] = logits[idx].masked_fill_(allowed.logical_not_(), float("-inf"))
        return
    # numpy, single-threaded: ~0.15 ms a row, where torch's threaded masked_fill pays for waking threads
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, count=V, bitorder="little")
    np_logits = logits.numpy()
    for i, r in enumerate(rows):
        np.putmask(np_logits[r], bits[i] == 0, -np.inf)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [R, W] bitmask (bit t%32 of word t//32) -> bool [R, vocab_size]; ids past 32*W are False."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, count=vocab_size, bitorder="little")
    return torch.from_numpy(bits).view(torch.bool)


_LLTOKENIZERS: dict[tuple[str, int, int], llguidance.LLTokenizer] = {}


def _lltokenizer(tokenizer_json: str, vocab_size: int, eos_token_id: int) -> llguidance.LLTokenizer:
    """Build (about 2 s for Qwen3.5) or reuse the llguidance tokenizer for a `tokenizers` JSON."""
    key = (hashlib.sha256(tokenizer_json.encode()).hexdigest(), vocab_size, eos_token_id)
    if key not in _LLTOKENIZERS:
        _LLTOKENIZERS.clear()  # keep one: engines in a process almost always share the tokenizer
        _LLTOKENIZERS[key] = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_id)
    return _LLTOKENIZERS[key]
