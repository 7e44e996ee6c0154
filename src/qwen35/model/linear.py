"""Bias-free linear layers: plain, and block-FP8 (weights stay FP8 in memory, dequantised per call).

The loader swaps a `Linear` for an `FP8Linear` when the checkpoint carries `<name>.weight_scale_inv`, so model
code never branches on quantisation (gpt-fast's `convert_for_runtime` pattern).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """`y = x W^T`. On CPU the loader calls `prepack()`: the weight moves to oneDNN's blocked layout, which
    streams about 1.5x faster than `F.linear` for decode-sized inputs and is no slower for prefill
    (docs/LOG.md). An unpacked weight still takes `torch.mv` for a single row (as fast as the packed one)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        if x.dim() == 2 and x.shape[0] == 1 and self.weight.device.type == "cpu":
            return torch.mv(self.weight, x[0]).unsqueeze(0)
        return F.linear(x, self.weight)

    def prepack(self) -> None:
        """Replace the weight by its oneDNN-packed copy (CPU, bf16/fp32). The plain weight is dropped."""
        if self.weight.device.type != "cpu" or self.weight.dtype not in (torch.bfloat16, torch.float32):
            return
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 8)
        self.weight = None


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
