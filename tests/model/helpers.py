"""Run our model the way the engine will: one prefill of packed sequences, then decode steps."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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
def draft_chain(model, prompts: list[list[int]], chain_tokens: list[list[int]], max_len: int = 512,
                hidden: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run the MTP head the way a drafter does (docs/MODEL.md §8), all sequences packed in each step:
    1. the main model over the prompts (hidden h, final-normed);
    2. the head over every prompt row but the last: row i pairs h_i with token i+1, at position i;
    3. `len(chain_tokens[b])` chained steps: step k pairs the head's previous output of sequence b with
       `chain_tokens[b][k]`, at the next position (its K/V join those written by 2).
    `hidden` (per sequence [T, H]): use these instead of running the main model (to compare two heads on the
    same input). Returns, per sequence, the main model's hidden [T, H] and the head's outputs [T - 1 + steps, H]."""
    n = len(prompts)
    cache = model.new_cache(num_blocks=n * -(-max_len // BLOCK), block_size=BLOCK, num_slots=n)
    if hidden is None:
        batch = ForwardBatch.build([SeqSpec(p, 0, i, blocks_for(i, max_len)) for i, p in enumerate(prompts)], BLOCK)
        h = model(batch, cache)
        starts = batch.query_start_loc.tolist()
        hidden = [h[starts[i]:starts[i + 1]] for i in range(n)]
    hidden = [x.to(model.dtype) for x in hidden]
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


def amplify_mtp(path: Path, seed: int) -> None:
    """Redraw every mtp.* tensor of the checkpoint at `path` in place, in its dtype, with O(1) activations:
    linears std 1.5 / sqrt(fan_in), norms std 0.3 (the writer's std 0.02 leaves the head's attention and MLP
    branches small next to the residual, which would hide mistakes in them)."""
    gen = torch.Generator().manual_seed(seed)
    index = Path(path) / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    for shard in sorted({f for k, f in weight_map.items() if k.startswith("mtp.")}):
        tensors = load_file(str(Path(path) / shard))
        for key, t in tensors.items():
            if key.startswith("mtp."):
                std = 0.3 if t.dim() == 1 else 1.5 / t.shape[-1] ** 0.5
                tensors[key] = (torch.randn(t.shape, generator=gen) * std).to(t.dtype)
        save_file(tensors, str(Path(path) / shard), metadata={"format": "pt"})
