"""Bias-free linear layers: plain, and block-FP8 (weights stay FP8 in memory, dequantised per call).

The loader swaps a `Linear` for an `FP8Linear` when the checkpoint carries `<name>.weight_scale_inv`, so model
code never branches on quantisation (gpt-fast's `convert_for_runtime` pattern).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


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
