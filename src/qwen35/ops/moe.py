"""Routed experts without a Python loop over experts.

Experts are stored stacked: `gate_up: [E, 2I, H]` (gate rows first) and `down: [E, H, I]`, the official
fused layout. For a few bf16 tokens on CPU (decode, speculative verification, small batches) our C++ kernel
(`csrc/moe.cpp`) reads only the experts some token picked, each once, at the memory bandwidth; otherwise
token-expert pairs are sorted by expert and run through `torch._grouped_mm` (one grouped GEMM per projection,
CPU and GPU). `experts_ref` is the plain loop used only by tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import native

# Up to this many tokens our kernel runs the routed experts. Measured on an Intel Xeon (2 threads, 64
# experts of 1024 at hidden 4096, top-10): 2-4x faster than the grouped GEMMs from 1 to 64 tokens
# (bench/bench_engine.py, small-moe); prefill-sized batches stay with the grouped GEMMs.
NATIVE_MAX_TOKENS = 32


def route(logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts in fp32, top-k, renormalised. logits: [N, E] -> weights, ids: [N, k]."""
    probs = torch.softmax(logits.float(), -1)
    weights, ids = probs.topk(top_k, -1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids


def experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
            ids: torch.Tensor) -> torch.Tensor:
    """x: [N, H]; weights (fp32), ids: [N, k]. Returns sum_j weights[:, j] * Expert_{ids[:, j]}(x): [N, H]."""
    N, k = ids.shape
    if (N <= NATIVE_MAX_TOKENS and x.device.type == "cpu" and x.dtype == gate_up.dtype == torch.bfloat16
            and native.ops() is not None):
        return native.ops().moe_experts(x, ids, weights, gate_up, None, None, down, None, None, 0)
    E = gate_up.shape[0]
    flat = ids.reshape(-1)
    order = flat.argsort(stable=True)
    token = order // k
    offsets = torch.bincount(flat, minlength=E).cumsum(0).to(torch.int32)
    xs = x[token]  # [N*k, H], grouped by expert
    h = torch._grouped_mm(xs, gate_up.transpose(1, 2), offs=offsets)  # [N*k, 2I]
    gate, up = h.chunk(2, -1)
    y = torch._grouped_mm(F.silu(gate) * up, down.transpose(1, 2), offs=offsets)  # [N*k, H]
    y = y.float() * weights.reshape(-1)[order, None]
    return torch.zeros(N, x.shape[1], dtype=torch.float32, device=x.device).index_add_(0, token, y).to(x.dtype)


def experts_ref(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
    """Loop-over-experts reference (tests only)."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    for e in ids.unique().tolist():
        tok, slot = (ids == e).nonzero(as_tuple=True)
        gate, up = (x[tok] @ gate_up[e].T).chunk(2, -1)
        out.index_add_(0, tok, ((F.silu(gate) * up) @ down[e].T).float() * weights[tok, slot, None])
    return out.to(x.dtype)
