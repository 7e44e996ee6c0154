"""Bias-free linear layers: plain, block-FP8 (weights stay FP8 in memory, dequantised per call), and
weight-only int8/int4 (`QuantLinear`, ops/quant.py formats, our CPU kernels).

The loader swaps a `Linear` for an `FP8Linear` when the checkpoint carries `<name>.weight_scale_inv`, and for a
`QuantLinear` under `--quantization int8|int4` or for a GPTQ/AWQ checkpoint, so model code never branches on
quantisation (gpt-fast's `convert_for_runtime` pattern). `QuantEmbedding` reads embedding rows from a tied
quantised lm_head, so only one copy of the vocabulary matrix stays in memory.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import quant
from ..ops.linear import linear, plain_linear, prepack


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
        return plain_linear(x, dequantize_fp8(self.weight, self.weight_scale_inv, self.block, x.dtype))


class QuantLinear(nn.Module):
    """`y = x W^T` with W stored weight-only quantised: buffers `q`, `scale`, `zeros` (None unless asymmetric
    int4) in the `ops.quant` layout of format `fmt` ("int8" | "int4")."""

    def __init__(self, fmt: str, q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor | None = None) -> None:
        super().__init__()
        if fmt not in quant.FORMATS:
            raise ValueError(f"unknown weight format {fmt!r}; expected one of {quant.FORMATS}")
        self.fmt = fmt
        self.out_features = q.shape[0]
        self.in_features = q.shape[1] * (2 if fmt == "int4" else 1)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("zeros", zeros)

    @classmethod
    def from_weight(cls, fmt: str, weight: torch.Tensor, group: int = quant.INT4_GROUP) -> "QuantLinear":
        return cls(fmt, *quant.quantize(fmt, weight.detach(), group))

    @property
    def group(self) -> int:
        return quant.int4_group(self.q, self.scale) if self.fmt == "int4" else self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return quant.matmul(x, self.fmt, self.q, self.scale, self.zeros)
        y = quant.matmul(x.reshape(-1, x.shape[-1]), self.fmt, self.q, self.scale, self.zeros)
        return y.view(*x.shape[:-1], self.out_features)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `ids` of W, dequantised: [*ids.shape, in_features] (an embedding lookup)."""
        return quant.dequantize_rows(self.fmt, self.q, self.scale, self.zeros, ids, dtype)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return quant.dequantize(self.fmt, self.q, self.scale, self.zeros, dtype)

    def extra_repr(self) -> str:
        return f"{self.fmt}, in_features={self.in_features}, out_features={self.out_features}"


def embedding(rows: int, dim: int) -> nn.Embedding:
    """`nn.Embedding(rows, dim)`. On the meta device (the skeleton the loader fills) it skips the random init:
    that op's meta kernel imports torch._dynamo, 1.6 s of every start-up, for values the checkpoint replaces."""
    if torch.get_default_device().type == "meta":
        return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))
    return nn.Embedding(rows, dim)


class QuantEmbedding(nn.Module):
    """An embedding whose table is a quantised lm_head's weight (tied embeddings): a lookup gathers the rows
    and dequantises them. It shares the lm_head's buffers (no copy); `weight` is not kept, `dtype`/`device`
    say what it returns and where."""

    def __init__(self, head: QuantLinear, dtype: torch.dtype) -> None:
        super().__init__()
        self.fmt, self.dtype = head.fmt, dtype
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.register_buffer("q", head.q)
        self.register_buffer("scale", head.scale)
        self.register_buffer("zeros", head.zeros)

    @property
    def device(self) -> torch.device:
        return self.q.device

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return quant.dequantize_rows(self.fmt, self.q, self.scale, self.zeros, ids, self.dtype)
