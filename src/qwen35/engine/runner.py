"""ModelRunner: turns a scheduled step into one forward pass and returns the logits to sample.

It owns the cache tensors and the step buffers (a `BatchBuilder` sized for `max_num_batched_tokens`,
`max_num_seqs` and the blocks of one `max_model_len` sequence, filled in place each step); the scheduler owns
who holds which block and slot. Prefix-cache restores (shared blocks, partial-block row copies, GDN state
copies) and saves (state copies) happen here.

Prompt logprobs: for a request with `params.prompt_logprobs` set, `forward` also scores every prompt
position of its chunk while the hidden states are at hand (in slices, so a long chunk never holds a
[tokens, vocab] logits tensor) and leaves the entries in `prompt_logprobs` for the engine to collect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model import ModelCache, Qwen35ForCausalLM
from ..multimodal.inputs import MediaItem
from ..ops.batch import BatchBuilder
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
        x = model.model.embed_tokens(input_ids)
        x[self.rows] = self.embeds.to(x.dtype)
        return x


class ModelRunner:
    def __init__(self, model: Qwen35ForCausalLM, num_blocks: int, block_size: int, num_slots: int,
                 max_num_batched_tokens: int = 2048, max_num_seqs: int = 32, max_model_len: int | None = None,
                 num_speculative_tokens: int = 0, draft_ids: list[int] | None = None,
                 encoder_cache_bytes: int = ENCODER_CACHE_BYTES) -> None:
        """`num_speculative_tokens` k > 0: the last `max_num_seqs * k` of the `num_slots` state slots are
        scratch slots for GDN snapshots, k for each running slot (see `Drafter`)."""
        self.model = model
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

    def restore(self, req: Request, hit: PrefixHit) -> None:
        """Make `req`'s cache hold the saved prefix: copy the partial block's rows and the GDN state."""
        rows = hit.length % self.block_size
        if hit.partial_block is not None and rows:
            dst = req.blocks[hit.length // self.block_size] * self.block_size
            src = hit.partial_block * self.block_size
            for k, v in zip(self.cache.k, self.cache.v):
                k[dst:dst + rows] = k[src:src + rows]
                v[dst:dst + rows] = v[src:src + rows]
        self.cache.copy_slot(hit.slot, req.slot)

    def save_state(self, req: Request, slot: int) -> None:
        self.cache.copy_slot(req.slot, slot)

    def reset_state(self, req: Request) -> None:
        self.cache.reset_slots([req.slot])

    @torch.inference_mode()
    def forward(self, seqs: list[ScheduledSeq]) -> torch.Tensor:
        """Run the step; return fp32 logits for the sequences with `sample` set, in order: one row each, or
        `num_draft + 1` rows for a sequence verifying drafts (the logits after its last token and each draft)."""
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].request.slot)  # contiguous slots: in-place state
        seqs = [seqs[i] for i in order]
        rows = sorted((i for i, s in enumerate(seqs) if s.sample), key=lambda i: order[i])  # caller's order
        snapshots = self.drafter.snapshot_rows(seqs) if self.drafter else None
        media = self.media_step([(s.request, s.context, s.num_tokens) for s in seqs])
        batch = self.builder.build([_new_tokens(s.request, s.context, s.num_tokens) for s in seqs],
                                   [s.context for s in seqs], [s.request.slot for s in seqs],
                                   [s.request.blocks for s in seqs], sample=rows, snapshots=snapshots,
                                   rope_offsets=media and media.rope_offsets, mrope=media and media.mrope)
        hidden = self.model(batch, self.cache, media.inputs_embeds(self.model, batch.input_ids) if media else None)
        if self.drafter:
            self.drafter.keep(seqs, hidden)
        self.prompt_logprobs = {}
        start = 0  # packed row of each sequence's first new token
        for s in seqs:
            if s.request.params.prompt_logprobs is not None:
                self._score_prompt(s, hidden[start:start + s.num_tokens])
            start += s.num_tokens
        if not rows:
            return hidden.new_empty(0, self.model.cfg.vocab_size, dtype=torch.float32)
        if any(seqs[i].num_draft for i in rows):
            ends = np.cumsum([s.num_tokens for s in seqs])
            picks = [r for i in rows for r in range(ends[i] - 1 - seqs[i].num_draft, ends[i])]
            return self.model.logits(hidden[torch.tensor(picks, device=hidden.device)])
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
            step.rows = torch.cat(dst).to(self.device)
            step.embeds = torch.cat(src)
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

    def _score_prompt(self, s: ScheduledSeq, hidden: torch.Tensor) -> None:
        """Prompt logprobs of the prompt tokens this chunk predicts: position j's logits score token j + 1."""
        prompt, k = s.request.prompt_ids, s.request.params.prompt_logprobs
        end = min(s.context + s.num_tokens, len(prompt) - 1)  # the last prompt position predicts an output
        if end <= s.context:
            return
        entries: list[dict[int, float]] = []
        for a in range(s.context, end, PROMPT_LOGPROBS_ROWS):
            b = min(a + PROMPT_LOGPROBS_ROWS, end)
            lp = torch.log_softmax(self.model.logits(hidden[a - s.context:b - s.context]), -1)
            targets = prompt[a + 1:b + 1]
            chosen = lp.gather(1, torch.tensor(targets, device=lp.device)[:, None]).squeeze(1).tolist()
            if k:
                vals, ids = (t.tolist() for t in lp.topk(k, -1))
            for i, (t, v) in enumerate(zip(targets, chosen)):
                entry = {t: v}
                if k:
                    for tid, tv in zip(ids[i], vals[i]):
                        entry.setdefault(tid, tv)
                entries.append(entry)
        self.prompt_logprobs[s.request.request_id] = (s.context + 1, entries)


def _new_tokens(req: Request, start: int, n: int) -> list[int]:
    """Tokens [start, start + n) of prompt + output + drafts (a verifying sequence's drafts follow its last token)."""
    extra = max(start + n - req.num_tokens, 0)
    return req.tokens(start, n - extra) + req.draft_ids[:extra] if extra else req.tokens(start, n)
