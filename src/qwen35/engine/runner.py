"""ModelRunner: turns a scheduled step into one forward pass and returns the logits to sample.

It owns the cache tensors and the step buffers (a `BatchBuilder` sized for `max_num_batched_tokens`,
`max_num_seqs` and the blocks of one `max_model_len` sequence, filled in place each step); the scheduler owns
who holds which block and slot. Prefix-cache restores (shared blocks, partial-block row copies, GDN state
copies) and saves (state copies) happen here.

Prompt logprobs: for a request with `params.prompt_logprobs` set, `forward` also scores every prompt
position of its chunk while the hidden states are at hand (in slices, so a long chunk never holds a
[tokens, vocab] logits tensor) and leaves the entries in `prompt_logprobs` for the engine to collect.

Tensor parallel (docs/PARALLEL.md): every rank holds a runner over its share of the model and cache. On
rank 0 the engine-facing methods turn requests into plain data (`StepInputs`, the drafter's `DraftInputs`,
cache copies), broadcast it, and then run it like every other rank: `follow` is the other ranks' loop.
Cache copies are applied at once here and travel with the next broadcast, so followers apply them in the
same order before the next forward. Only rank 0 gets logits back. A failed collective means a rank is gone:
`on_rank_failure` is called (by default it ends the process, see parallel/launch.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import runtime
from ..model import ModelCache, Qwen35ForCausalLM
from ..multimodal.inputs import MediaItem
from ..ops.batch import BatchBuilder
from ..parallel.group import Group
from .config import ENCODER_CACHE_BYTES
from .encoder_cache import EncoderCache
from .kv_cache_manager import PrefixHit
from .request import Request
from .scheduler import ScheduledSeq
from .drafter import Drafter


PROMPT_LOGPROBS_ROWS = 128  # prompt positions scored at once: bounds the [rows, vocab] logits buffer


@dataclass(eq=False)
class MediaStep:
    """What a step's media changes in a batch: rotary positions, and embedding rows that come from the tower."""

    rope_offsets: list[int]  # per batch row: position - index of its 1-D positions
    mrope: list[np.ndarray | None]  # per batch row: [3, n] (t, h, w) positions when its chunk has media
    rows: torch.Tensor | None = None  # [R] packed rows whose embedding is a media row
    embeds: torch.Tensor | None = None  # [R, H] those rows

    def inputs_embeds(self, model: Qwen35ForCausalLM, input_ids: torch.Tensor) -> torch.Tensor | None:
        """The token embeddings with the media rows in place, or None when no row is media."""
        if self.rows is None:
            return None
        x = model.model.embed(input_ids)
        x[self.rows.to(x.device)] = self.embeds.to(x.device, x.dtype)
        return x


@dataclass(eq=False)
class PromptScore:
    """Prompt logprobs wanted from one sequence's chunk: packed rows [row, row + n) score `targets`."""

    request_id: str
    row: int
    first: int  # index of the first prompt token scored
    targets: list[int]
    top: int  # params.prompt_logprobs


@dataclass(eq=False)
class StepInputs:
    """One forward step as plain data: rank 0 builds it from the scheduled sequences, every rank runs it."""

    tokens: list[list[int]]  # per sequence in batch order (slot order): its new tokens
    contexts: list[int]
    slots: list[int]
    blocks: list[list[int]]
    sample: list[int]  # batch rows whose last token gets logits, in the caller's order
    snapshots: list[list[int]] | None
    media: MediaStep | None
    picks: list[int] | None  # packed rows to score instead (verifying drafts)
    scores: list[PromptScore]


class ModelRunner:
    def __init__(self, model: Qwen35ForCausalLM, num_blocks: int, block_size: int, num_slots: int,
                 max_num_batched_tokens: int = 2048, max_num_seqs: int = 32, max_model_len: int | None = None,
                 num_speculative_tokens: int = 0, draft_ids: list[int] | None = None,
                 encoder_cache_bytes: int = ENCODER_CACHE_BYTES,
                 on_rank_failure: Callable[[str], None] | None = None) -> None:
        """`num_speculative_tokens` k > 0: the last `max_num_seqs * k` of the `num_slots` state slots are
        scratch slots for GDN snapshots, k for each running slot (see `Drafter`)."""
        self.model = model
        self.group: Group = model.shard.group
        self._pending: list[tuple] = []  # cache copies done here since the last broadcast
        self.on_rank_failure = on_rank_failure
        self.encoder_cache = EncoderCache(encoder_cache_bytes)
        self.block_size = block_size
        self.cache: ModelCache = model.new_cache(num_blocks, block_size, num_slots)
        self.drafter = Drafter(self, num_speculative_tokens, num_slots - max_num_seqs * num_speculative_tokens,
                               draft_ids) if num_speculative_tokens else None
        self.device = model.device
        max_blocks = -(-max_model_len // block_size) if max_model_len else num_blocks
        self.builder = BatchBuilder(block_size, self.device, BatchBuilder.capacity_for(
            max_num_batched_tokens, max_num_seqs, max_blocks))
        self._pick_kernels(num_speculative_tokens)
        # filled by forward(): request id -> (index of the first prompt token scored, one entry per token)
        self.prompt_logprobs: dict[str, tuple[int, list[dict[int, float]]]] = {}

    @torch.inference_mode()
    def _pick_kernels(self, k: int) -> None:
        """Run the lm_head at the row counts decoding uses (1, and k + 1 when verifying drafts) once now, so
        that ops/linear.py measures its kernel choice at load rather than in the first request."""
        h = torch.zeros(1, self.model.cfg.hidden_size, dtype=self.model.dtype, device=self.device)
        for rows in {1, k + 1}:
            self.model.logits(h.expand(rows, -1).contiguous())

    # -- cache copies (no collectives: followers apply them before the next broadcast step) ----------------
    def restore(self, req: Request, hit: PrefixHit) -> None:
        """Make `req`'s cache hold the saved prefix: copy the partial block's rows and the GDN state."""
        rows = hit.length % self.block_size
        if hit.partial_block is not None and rows:
            dst = req.blocks[hit.length // self.block_size] * self.block_size
            self.cache_op("copy_rows", hit.partial_block * self.block_size, dst, rows)
        self.cache_op("copy_slot", hit.slot, req.slot)

    def save_state(self, req: Request, slot: int) -> None:
        self.cache_op("copy_slot", req.slot, slot)

    def reset_state(self, req: Request) -> None:
        self.cache_op("reset_slots", [req.slot])

    def cache_op(self, kind: str, *args) -> None:
        self._apply(kind, *args)
        if self.group.size > 1:
            self._pending.append((kind, *args))

    def _apply(self, kind: str, *args) -> None:
        cache = self.cache
        if kind == "copy_rows":
            src, dst, rows = args
            for k, v in zip(cache.k, cache.v):
                k[dst:dst + rows] = k[src:src + rows]
                v[dst:dst + rows] = v[src:src + rows]
        elif kind == "copy_slot":
            cache.copy_slot(*args)
        elif kind == "reset_slots":
            cache.reset_slots(*args)
        elif kind == "restore_snapshots":
            cache.restore_snapshots(*args)
        else:
            raise ValueError(f"unknown cache operation {kind!r}")

    # -- steps: built on rank 0, run on every rank -----------------------------------------------------------
    def run(self, kind: str, payload):
        """Run `kind` ("step", "draft") on every rank: broadcast it (with the cache copies since the last
        one), then run it here. A collective that fails means a rank is gone (`on_rank_failure`)."""
        if self.group.size == 1:
            return self._runs[kind](payload)
        try:
            self.group.broadcast((kind, payload, self._pending))
        except RuntimeError as e:
            self._lost(f"a collective across the {self.group.size} tensor-parallel ranks failed: {e}")
            raise
        self._pending = []
        try:
            return self._runs[kind](payload)
        except Exception as e:  # the other ranks are somewhere inside this step: there is no getting back in step
            self._lost(f"rank 0 failed in the middle of a {kind} ({type(e).__name__}: {e}); the tensor-parallel "
                       "ranks are out of step")
            raise

    @property
    def _runs(self) -> dict:
        """What `run` and `follow` run, by the kind rank 0 broadcasts."""
        return {"step": self.run_step, "draft": self.drafter and self.drafter.run_draft, "timing": self._timing}

    def _lost(self, message: str) -> None:
        if self.on_rank_failure is not None:
            self.on_rank_failure(message)

    def collective_time(self, reset: bool = False) -> list[tuple[float, int]]:
        """Every rank's (seconds, calls) inside collectives since the last reset (bench/bench_parallel.py);
        `reset` starts the count afresh on every rank."""
        return self.run("timing", reset)

    def _timing(self, reset: bool) -> list[tuple[float, int]]:
        mine = torch.tensor([self.group.seconds, float(self.group.calls)], dtype=torch.float64)
        every = self.group.all_gather(mine)
        if reset:
            self.group.reset_timing()
        return [(float(s), int(c)) for s, c in every.tolist()]

    def follow(self) -> None:
        """Ranks other than 0: run rank 0's steps until it says stop."""
        while True:
            kind, payload, ops = self.group.broadcast()
            for op in ops:
                self._apply(*op)
            if kind == "stop":
                return
            with runtime.flush_denormals(), torch.inference_mode():  # as rank 0's steps (llm_engine.py)
                self._runs[kind](payload)

    def stop_followers(self) -> None:
        if self.group.size > 1 and self.group.is_first:
            self.group.broadcast(("stop", None, self._pending))
            self._pending = []

    @torch.inference_mode()
    def forward(self, seqs: list[ScheduledSeq]) -> torch.Tensor:
        """Run the step; return fp32 logits for the sequences with `sample` set, in order: one row each, or
        `num_draft + 1` rows for a sequence verifying drafts (the logits after its last token and each draft)."""
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].request.slot)  # contiguous slots: in-place state
        seqs = [seqs[i] for i in order]
        rows = sorted((i for i, s in enumerate(seqs) if s.sample), key=lambda i: order[i])  # caller's order
        picks = None
        if any(seqs[i].num_draft for i in rows):
            ends = np.cumsum([s.num_tokens for s in seqs])
            picks = [int(r) for i in rows for r in range(ends[i] - 1 - seqs[i].num_draft, ends[i])]
        scores, start = [], 0  # start: packed row of each sequence's first new token
        for s in seqs:
            k = s.request.params.prompt_logprobs
            if k is not None:
                prompt = s.request.prompt_ids
                end = min(s.context + s.num_tokens, len(prompt) - 1)  # the last prompt position predicts an output
                if end > s.context:
                    scores.append(PromptScore(s.request.request_id, start, s.context + 1,
                                              prompt[s.context + 1:end + 1], k))
            start += s.num_tokens
        inputs = StepInputs([_new_tokens(s.request, s.context, s.num_tokens) for s in seqs],
                            [s.context for s in seqs], [s.request.slot for s in seqs],
                            [s.request.blocks for s in seqs], rows,
                            self.drafter.snapshot_rows(seqs) if self.drafter else None,
                            self.media_step([(s.request, s.context, s.num_tokens) for s in seqs]), picks, scores)
        if self.drafter:
            self.drafter.keep(seqs)
        return self.run("step", inputs)

    def run_step(self, s: StepInputs) -> torch.Tensor | None:
        """Every rank: the forward pass of `s`; rank 0 gets the logits (see `forward`), the others None."""
        media = s.media
        batch = self.builder.build(s.tokens, s.contexts, s.slots, s.blocks, sample=s.sample, snapshots=s.snapshots,
                                   rope_offsets=media and media.rope_offsets, mrope=media and media.mrope)
        hidden = self.model(batch, self.cache, media.inputs_embeds(self.model, batch.input_ids) if media else None)
        if self.drafter:
            self.drafter.keep_hidden(hidden)
        self.prompt_logprobs = {}
        for score in s.scores:
            self._score_prompt(score, hidden)
        if not s.sample:
            return hidden.new_empty(0, self.model.cfg.vocab_size, dtype=torch.float32)
        if s.picks is not None:
            return self.model.logits(hidden[torch.tensor(s.picks, device=hidden.device)])
        return self.model.logits(hidden[batch.logits_indices])

    def media_step(self, chunks: list[tuple[Request, int, int]], shift: int = 0) -> MediaStep | None:
        """Positions and media rows for a batch of chunks (request, first token, tokens), None when no
        request has media. `shift` 1: each row embeds the token after it (the MTP head's input)."""
        if all(req.media is None for req, _, _ in chunks):
            return None
        offsets, mrope, picks = [], [], []  # picks: (packed row, item, first item row, count)
        packed = 0
        for req, start, n in chunks:
            m = req.media
            offsets.append(m.offset(start) if m is not None else 0)
            mrope.append(m.positions(start, n) if m is not None else None)
            if m is not None:  # row j of the chunk embeds token start + shift + j
                picks += [(packed + t0, m.items[i], r0, c) for i, r0, t0, c in m.rows(start + shift, n)]
            packed += n
        step = MediaStep(offsets, mrope)
        if picks:
            unique = list({item.digest: item for _, item, _, _ in picks}.values())
            embeds = dict(zip((item.digest for item in unique), self.encode(unique)))
            dst = [torch.arange(row, row + c) for row, _, _, c in picks]
            src = [embeds[item.digest][r0:r0 + c] for _, item, r0, c in picks]
            step.rows = torch.cat(dst)  # on the host: a step's media travels to the other ranks pickled
            step.embeds = torch.cat(src)
            if self.group.size > 1:
                step.embeds = step.embeds.cpu()
        return step

    def encode(self, items: list[MediaItem]) -> list[torch.Tensor]:
        """The vision tower's output for each item, from the encoder cache or encoded now (all misses in one
        tower call)."""
        found = {it.digest: self.encoder_cache.get(it.digest) for it in items}
        missing = list({it.digest: it for it in items if found[it.digest] is None}.values())
        if missing:
            for item, out in zip(missing, self.model.encode_media(missing)):
                found[item.digest] = out
                self.encoder_cache.put(item.digest, out)
        return [found[it.digest] for it in items]

    def _score_prompt(self, s: PromptScore, hidden: torch.Tensor) -> None:
        """Prompt logprobs of the prompt tokens this chunk predicts: position j's logits score token j + 1.
        Every rank computes the logits (a collective); rank 0 keeps the entries."""
        k, n = s.top, len(s.targets)
        entries: list[dict[int, float]] = []
        for a in range(0, n, PROMPT_LOGPROBS_ROWS):
            b = min(a + PROMPT_LOGPROBS_ROWS, n)
            logits = self.model.logits(hidden[s.row + a:s.row + b])
            if logits is None:  # not rank 0
                continue
            lp = torch.log_softmax(logits, -1)
            targets = s.targets[a:b]
            chosen = lp.gather(1, torch.tensor(targets, device=lp.device)[:, None]).squeeze(1).tolist()
            if k:
                vals, ids = (t.tolist() for t in lp.topk(k, -1))
            for i, (t, v) in enumerate(zip(targets, chosen)):
                entry = {t: v}
                if k:
                    for tid, tv in zip(ids[i], vals[i]):
                        entry.setdefault(tid, tv)
                entries.append(entry)
        if self.group.is_first:
            self.prompt_logprobs[s.request_id] = (s.first, entries)


def _new_tokens(req: Request, start: int, n: int) -> list[int]:
    """Tokens [start, start + n) of prompt + output + drafts (a verifying sequence's drafts follow its last token)."""
    extra = max(start + n - req.num_tokens, 0)
    return req.tokens(start, n - extra) + req.draft_ids[:extra] if extra else req.tokens(start, n)
