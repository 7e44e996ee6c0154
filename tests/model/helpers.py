"""Run our model the way the engine will: one prefill of packed sequences, then decode steps."""

from __future__ import annotations

import torch

from qwen35.model import ForwardBatch, SeqSpec

BLOCK = 16


def blocks_for(seq: int, max_len: int) -> list[int]:
    per = -(-max_len // BLOCK)
    return list(range(seq * per, (seq + 1) * per))


@torch.no_grad()
def all_logits(model, prompts: list[list[int]], max_len: int = 512) -> list[torch.Tensor]:
    """Full-prompt logits of several sequences in ONE packed forward pass."""
    cache = model.new_cache(num_blocks=len(prompts) * -(-max_len // BLOCK), block_size=BLOCK,
                            num_slots=len(prompts))
    batch = ForwardBatch.build([SeqSpec(p, 0, i, blocks_for(i, max_len)) for i, p in enumerate(prompts)], BLOCK)
    logits = model.logits(model(batch, cache))
    out, start = [], 0
    for p in prompts:
        out.append(logits[start:start + len(p)])
        start += len(p)
    return out


@torch.no_grad()
def prefill_then_decode(model, prompts: list[list[int]], continuations: list[list[int]],
                        max_len: int = 512) -> list[torch.Tensor]:
    """Prefill all prompts together, then feed each continuation token by token (batched decode).
    Returns, per sequence, the logits at every continuation position."""
    n = len(prompts)
    cache = model.new_cache(num_blocks=n * -(-max_len // BLOCK), block_size=BLOCK, num_slots=n)
    batch = ForwardBatch.build([SeqSpec(p, 0, i, blocks_for(i, max_len)) for i, p in enumerate(prompts)], BLOCK)
    model(batch, cache)
    steps = len(continuations[0])
    outs = [[] for _ in range(n)]
    for t in range(steps):
        seqs = [SeqSpec([c[t]], len(p) + t, i, blocks_for(i, max_len))
                for i, (p, c) in enumerate(zip(prompts, continuations))]
        logits = model.logits(model(ForwardBatch.build(seqs, BLOCK), cache))
        for i in range(n):
            outs[i].append(logits[i])
    return [torch.stack(o) for o in outs]
