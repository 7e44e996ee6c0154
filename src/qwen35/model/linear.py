"""Bias-free linear layers: plain, and block-FP8 (weights stay FP8 in memory, dequantised per call).

The loader swaps a `Linear` for an `FP8Linear` when the checkpoint carries `<name>.weight_scale_inv`, so model
code never branches on quantisation (gpt-fast's `convert_for_runtime` pattern).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.linear import linear, prepack


class Linear(nn.Module):
    """`y = x W^T` through `ops.linear`. On CPU the loader calls `prepack()`: the weight moves to oneDNN's
    blocked layout (faster for decode, docs/LOG.md) and the plain weight is dropped."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.packed)

    def prepack(self) -> None:
        """Replace the weight by its oneDNN-packed copy (CPU, bf16/fp32); elsewhere nothing changes."""
        packed = prepack(self.weight)
        if packed is not None:
            self.packed, self.weight = packed, None


def fuse_linears(linears: list[nn.Module]) -> Linear | None:
    """One `Linear` whose output is the concatenation of `linears`' outputs (one matmul instead of several,
    the way vLLM merges qkv and gate/up), or None when any of them is not a plain unpacked `Linear`."""
    if not all(type(m) is Linear and m.weight is not None for m in linears):
        return None
    fused = Linear(linears[0].in_features, sum(m.out_features for m in linears))
    fused.weight = nn.Parameter(torch.cat([m.weight.detach() for m in linears]), requires_grad=False)
    return fused


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                   dtype: torch.dtype) -> torch.Tensor:
    """W[i, j] = W_fp8[i, j] * scale_inv[i // bo, j // bi] (the name notwithstanding, a multiplier)."""
    out, inp = weight.shape[-2:]
    bo, bi = block
    s = scale_inv.float().repeat_interleave(bo, -2)[..., :out, :].repeat_interleave(bi, -1)[..., :inp]
    return (weight.float() * s).to(dtype)


class FP8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                 dtype: torch.dtype) -> None:
        super().__init__()
        out, inp = weight.shape
        expected = (-(-out // block[0]), -(-inp // block[1]))
        if tuple(scale_inv.shape) != expected:
            raise ValueError(f"weight_scale_inv shape {tuple(scale_inv.shape)} does not match weight "
                             f"{tuple(weight.shape)} with blocks {block} (expected {expected})")
        self.in_features, self.out_features = inp, out
        self.block = block
        self.dtype = dtype
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale_inv", scale_inv.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dequantize_fp8(self.weight, self.weight_scale_inv, self.block, x.dtype))
