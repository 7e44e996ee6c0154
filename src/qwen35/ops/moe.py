"""Routed experts without a Python loop over experts.

Experts are stored stacked: `gate_up: [E, 2I, H]` (gate rows first) and `down: [E, H, I]`, the official
fused layout. For a few bf16 tokens on CPU (decode, speculative verification, small batches; every batch on a
CPU without oneDNN's bf16 GEMM) our C++ kernel (`csrc/moe.cpp`) reads only the experts some token picked, each
once, at the memory bandwidth; otherwise token-expert pairs are sorted by expert and run through
`torch._grouped_mm` (one grouped GEMM per projection, CPU and GPU). `experts_quant` is the same contract over
weight-only int8/int4 stacks (ops/quant.py formats), through the same kernel. `experts_ref` is the plain loop
used only by tests.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from . import native, quant
from .linear import onednn_bf16, plain_linear

# Up to this many tokens our kernel runs the routed experts. Measured on an Intel Xeon (2 threads, 64
# experts of 1024 at hidden 4096, top-10): 2-4x faster than the grouped GEMMs from 1 to 64 tokens
# (bench/bench_engine.py, small-moe); prefill-sized batches stay with the grouped GEMMs.
NATIVE_MAX_TOKENS = 32
# Where oneDNN has no bf16 GEMM (AVX2-only CPUs) torch's bf16 grouped GEMM is a slow fallback, and our kernel
# runs bf16 experts at every batch size: 3.4-4.6x faster from 64 to 2,048 tokens (bench/bench_moe_prefill.py,
# AVX2-only AMD EPYC, 64 experts of 512 at hidden 2048, top-8). Quantised stacks otherwise loop over the experts
# (fp32 GEMMs past 128 rows an expert): our kernel was 1.2-1.5x faster up to 256 tokens, 1.0-1.2x at 512 and
# 0.8-1.2x past it (noisy).
QUANTISED_MAX_TOKENS_AVX2 = 512


def native_max_tokens(quantised: bool) -> int:
    """The most tokens our MoE kernel runs a call with on this CPU (see above)."""
    if onednn_bf16():
        return NATIVE_MAX_TOKENS
    return QUANTISED_MAX_TOKENS_AVX2 if quantised else sys.maxsize


Stack = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]  # (q, scale, zeros); scale None: plain


def route(logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts in fp32, top-k, renormalised. logits: [N, E] -> weights, ids: [N, k]."""
    probs = torch.softmax(logits.float(), -1)
    weights, ids = probs.topk(top_k, -1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids


def local_ids(ids: torch.Tensor, first: int, held: int) -> torch.Tensor:
    """Expert ids relative to the `held` experts from `first`; -1 for a route to an expert not held here
    (expert parallelism: it is computed on another rank). Every function below skips -1 routes."""
    local = ids - first
    return torch.where((local >= 0) & (local < held), local, -1)


def experts(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
            ids: torch.Tensor, partial: bool = False) -> torch.Tensor:
    """x: [N, H]; weights (fp32), ids: [N, k] (-1: skip). Returns sum_j weights[:, j] * Expert_{ids[:, j]}(x):
    [N, H]. `partial`: ids may hold -1 (expert parallel); only then does the grouped path count them, which
    waits for the device."""
    N, k = ids.shape
    if (x.device.type == "cpu" and x.dtype == gate_up.dtype == torch.bfloat16 and native.ops() is not None
            and N <= native_max_tokens(quantised=False)):
        return native.ops().moe_experts(x, ids, weights, gate_up, None, None, down, None, None, 0)
    E = gate_up.shape[0]
    flat = ids.reshape(-1)
    order = flat.argsort(stable=True)
    skipped = int((flat < 0).sum()) if partial else 0
    if skipped:  # routes to other ranks' experts sort first: drop them
        if skipped == flat.numel():  # no token routes to an expert held here
            return torch.zeros_like(x)
        order = order[skipped:]
        flat = flat[order]  # the kept routes (bincount below does not mind their order)
    token = order // k
    offsets = torch.bincount(flat, minlength=E).cumsum(0).to(torch.int32)
    xs = x[token]  # [N*k, H], grouped by expert
    h = torch._grouped_mm(xs, gate_up.transpose(1, 2), offs=offsets)  # [N*k, 2I]
    gate, up = h.chunk(2, -1)
    y = torch._grouped_mm(F.silu(gate) * up, down.transpose(1, 2), offs=offsets)  # [N*k, H]
    y = y.float() * weights.reshape(-1)[order, None]
    return torch.zeros(N, x.shape[1], dtype=torch.float32, device=x.device).index_add_(0, token, y).to(x.dtype)


def experts_quant(x: torch.Tensor, fmt: str, gate_up: Stack, down: Stack, weights: torch.Tensor,
                  ids: torch.Tensor) -> torch.Tensor:
    """`experts` over quantised stacks: gate_up = (q [E, 2I, ...], scale [E, 2I, ...], zeros or None), down
    likewise with [E, H, ...]; a stack whose scale is None holds plain weights (int4 keeps a projection whose
    K is not a multiple of 64 unquantised). bf16 tokens on CPU, up to `native_max_tokens`, go through our kernel;
    otherwise (many tokens, where each expert gets enough rows for a GEMM) a loop over the experts the batch
    routes to, one `quant.matmul` per projection on the expert's [N, K] slice."""
    N, k = ids.shape
    group = _native_group(x, gate_up, down) if N <= native_max_tokens(quantised=True) else None
    if group is not None:
        return native.ops().moe_experts(x, ids, weights, *gate_up, *down, group)
    out = torch.zeros(N, x.shape[1], dtype=torch.float32, device=x.device)
    for e in ids.unique().tolist():
        if e < 0:
            continue
        tok, slot = (ids == e).nonzero(as_tuple=True)
        gate, up = _expert_matmul(x[tok], fmt, gate_up, e).chunk(2, -1)
        y = _expert_matmul(F.silu(gate) * up, fmt, down, e)
        out.index_add_(0, tok, y.float() * weights[tok, slot, None])
    return out.to(x.dtype)


def _native_group(x: torch.Tensor, *stacks: Stack) -> int | None:
    """The int4 group size our MoE kernel runs both stacks with (0: no int4 stack), or None where the kernel
    does not apply (not CPU bf16, no build, plain stacks that are not bf16, two different int4 groups)."""
    if x.device.type != "cpu" or x.dtype != torch.bfloat16 or native.ops() is None:
        return None
    groups = set()
    for q, scale, _ in stacks:
        if scale is None and q.dtype != torch.bfloat16:
            return None
        if q.dtype == torch.uint8:
            groups.add(quant.int4_group(q, scale))
    return None if len(groups) > 1 else (groups.pop() if groups else 0)


def _expert_matmul(x: torch.Tensor, fmt: str, stack: Stack, e: int) -> torch.Tensor:
    q, scale, zeros = stack
    if scale is None:
        return plain_linear(x, q[e])
    return quant.matmul(x, fmt, q[e], scale[e], zeros[e] if zeros is not None else None)


def experts_ref(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, weights: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
    """Loop-over-experts reference (tests only)."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    for e in ids.unique().tolist():
        if e < 0:
            continue
        tok, slot = (ids == e).nonzero(as_tuple=True)
        gate, up = (x[tok] @ gate_up[e].T).chunk(2, -1)
        out.index_add_(0, tok, ((F.silu(gate) * up) @ down[e].T).float() * weights[tok, slot, None])
    return out.to(x.dtype)
