"""ModelRunner: turns a scheduled step into one forward pass and returns the logits to sample.

It owns the cache tensors; the scheduler owns who holds which block and slot. Prefix-cache restores
(shared blocks, partial-block row copies, GDN state copies) and saves (state copies) happen here.
"""

from __future__ import annotations

import torch

from ..model import ForwardBatch, ModelCache, Qwen35ForCausalLM, SeqSpec
from .kv_cache_manager import PrefixHit
from .request import Request
from .scheduler import ScheduledSeq


class ModelRunner:
    def __init__(self, model: Qwen35ForCausalLM, num_blocks: int, block_size: int, num_slots: int) -> None:
        self.model = model
        self.block_size = block_size
        self.cache: ModelCache = model.new_cache(num_blocks, block_size, num_slots)
        self.device = model.model.embed_tokens.weight.device

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
        """Run the step; return fp32 logits [S, V] for the sequences with `sample` set, in order."""
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].request.slot)  # contiguous slots: in-place state
        seqs = [seqs[i] for i in order]
        specs = [SeqSpec(s.request.all_ids[s.context:s.context + s.num_tokens], s.context, s.request.slot,
                         s.request.blocks) for s in seqs]
        batch = ForwardBatch.build(specs, self.block_size, self.device)
        hidden = self.model(batch, self.cache)
        rows = sorted((i for i, s in enumerate(seqs) if s.sample), key=lambda i: order[i])  # caller's order
        if not rows:
            return hidden.new_empty(0, self.model.cfg.vocab_size, dtype=torch.float32)
        return self.model.logits(hidden[batch.last_index[rows]])
