"""Partial rotary embedding with interleaved mRoPE and YaRN (docs/MODEL.md §6).

Only the first `rotary_dim` (= head_dim * partial_rotary_factor, 64) dims of each head rotate, with
rotate-half (NeoX) pairing (j, j + rotary_dim/2). Text tokens carry one position, which is exactly mRoPE with
three equal axes; vision tokens carry (t, h, w) positions, interleaved per frequency slot.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import RopeConfig


def inv_frequencies(rope: RopeConfig, rotary_dim: int, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """[rotary_dim / 2] fp32 inverse frequencies and the attention scale (YaRN mscale, else 1).

    Computed in fp32 with transformers' operations in transformers' order (`_compute_yarn_parameters`,
    `compute_default_rope_parameters`), so the frequencies are bit-identical to the oracle's: at a million
    positions one ulp of a frequency is already a few hundredths of a radian of phase. Always on the CPU,
    also under the loader's meta device: the values are needed, and meta's `arange` imports torch._dynamo
    (a second of start-up).
    """
    d = rotary_dim
    pos_freqs = rope.theta ** (torch.arange(0, d, 2, dtype=torch.float32, device="cpu") / d)
    extra = 1.0 / pos_freqs
    if rope.rope_type != "yarn":
        return extra, 1.0
    factor = rope.factor  # RopeConfig.from_dict already derived a missing factor (max_position / original)
    original = rope.original_max_position_embeddings or max_position_embeddings  # transformers' default

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.attention_factor is not None:
        mscale = float(rope.attention_factor)
    elif rope.mscale and rope.mscale_all_dim:
        mscale = float(get_mscale(factor, rope.mscale) / get_mscale(factor, rope.mscale_all_dim))
    else:
        mscale = get_mscale(factor)

    def corr_dim(n_rot: float) -> float:
        return d * math.log(original / (n_rot * 2 * math.pi)) / (2 * math.log(rope.theta))

    low, high = corr_dim(rope.beta_fast), corr_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # no singularity
    ramp = ((torch.arange(d // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    extra_weight = 1 - ramp  # 1: keep the original frequency (high frequencies), 0: interpolate (divide by s)
    inter = 1.0 / (factor * pos_freqs)
    return inter * (1 - extra_weight) + extra * extra_weight, mscale


class RotaryEmbedding(nn.Module):
    def __init__(self, rope: RopeConfig, rotary_dim: int, max_position_embeddings: int) -> None:
        super().__init__()
        inv, self.mscale = inv_frequencies(rope, rotary_dim, max_position_embeddings)
        self.register_buffer("inv_freq", inv, persistent=False)
        self.section = rope.mrope_section

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [N] (text) or [3, N] (t, h, w). Returns cos, sin: [N, rotary_dim] in `dtype`."""
        if positions.dim() == 1:
            freqs = positions.float()[:, None] * self.inv_freq
        else:
            f = positions.float()[..., None] * self.inv_freq  # [3, N, slots]
            freqs = f[0].clone()
            slots = freqs.shape[-1]
            for axis in (1, 2):  # slot j % 3 == axis (below 3 * section[axis]) takes that axis' position
                idx = torch.arange(axis, min(3 * self.section[axis], slots), 3, device=freqs.device)
                freqs[:, idx] = f[axis][:, idx]
        emb = torch.cat([freqs, freqs], -1)
        return (emb.cos() * self.mscale).to(dtype), (emb.sin() * self.mscale).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, heads, head_dim]; cos, sin: [N, rotary_dim]. Rotates the first rotary_dim dims."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    x1, x2 = x_rot[..., : rd // 2], x_rot[..., rd // 2 :]
    rotated = torch.cat([-x2, x1], -1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.cat([x_rot * cos + rotated * sin, x_pass], -1)
