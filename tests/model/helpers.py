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


@torch.no_grad()
def draft_chain(model, prompts: list[list[int]], chain_tokens: list[list[int]],
                max_len: int = 512) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the MTP head the way a drafter does (docs/MODEL.md §8), all sequences packed in each step:
    1. the main model over the prompts (hidden h, final-normed);
    2. the head over every prompt row but the last: row i pairs h_i with token i+1, at position i;
    3. `len(chain_tokens[b])` chained steps: step k pairs the head's previous output of sequence b with
       `chain_tokens[b][k]`, at the next position (its K/V join those written by 2).
    Returns, per sequence, the main model's hidden [T, H] and the head's outputs [T - 1 + steps, H]."""
    n = len(prompts)
    cache = model.new_cache(num_blocks=n * -(-max_len // BLOCK), block_size=BLOCK, num_slots=n)
    batch = ForwardBatch.build([SeqSpec(p, 0, i, blocks_for(i, max_len)) for i, p in enumerate(prompts)], BLOCK)
    h = model(batch, cache)
    starts = batch.query_start_loc.tolist()
    hidden = [h[starts[i]:starts[i + 1]] for i in range(n)]
    batch = ForwardBatch.build([SeqSpec(p[1:], 0, i, blocks_for(i, max_len)) for i, p in enumerate(prompts)], BLOCK)
    out = model.draft(batch.input_ids, torch.cat([x[:-1] for x in hidden]), batch, cache)
    starts = batch.query_start_loc.tolist()
    drafts = [[out[starts[i]:starts[i + 1]]] for i in range(n)]
    for k in range(len(chain_tokens[0])):
        seqs = [SeqSpec([chain_tokens[i][k]], len(p) - 1 + k, i, blocks_for(i, max_len)) for i, p in enumerate(prompts)]
        batch = ForwardBatch.build(seqs, BLOCK)
        out = model.draft(batch.input_ids, torch.cat([d[-1][-1:] for d in drafts]), batch, cache, step=k + 1)
        for i in range(n):
            drafts[i].append(out[i:i + 1])
    return hidden, [torch.cat(d) for d in drafts]
