"""Causal depthwise conv1d + SiLU with a carried state (the GDN short convolution).

State convention: the last `K - 1` raw (pre-conv) inputs of each sequence, `[B, C, K-1]`
(vLLM keeps K-1 columns; transformers keeps K, the oldest of which is never used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(x: torch.Tensor, lens: torch.Tensor, weight: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """Convolve right-padded sequences that continue from `state`.

    x: [B, T, C] (rows past lens[b] are padding); lens: [B] int64 real lengths (>= 1);
    weight: [C, 1, K]; state: [B, C, K-1], replaced in place by the last K-1 real inputs.
    Returns fp32 SiLU(conv(x)): [B, T, C] (padding rows hold garbage).

    The K taps are K shifted multiply-adds in the [B, T, C] layout: no transposes, fp32 accumulation,
    and the fp32 result is what the delta rule wants next.
    """
    B, T, C = x.shape
    K = weight.shape[-1]
    full = torch.cat([state.transpose(1, 2).to(x.dtype), x], 1)  # [B, K-1+T, C]
    w = weight[:, 0, :].float()  # [C, K]
    y = full[:, K - 1:].float() * w[:, K - 1]
    for j in range(K - 1):
        y.addcmul_(full[:, j:j + T], w[:, j])
    # new state: inputs at positions lens[b] .. lens[b]+K-2 of `full` (the K-1 newest real ones)
    idx = (lens.view(B, 1) + torch.arange(K - 1, device=x.device)).view(B, K - 1, 1).expand(B, K - 1, C)
    state.copy_(full.gather(1, idx).transpose(1, 2))
    return F.silu(y, inplace=True)


def causal_conv1d_step(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """One token per sequence. x: [B, C]; weight: [C, 1, K]; state: [B, C, K-1] updated in place.
    Returns fp32 [B, C]."""
    window = torch.cat([state, x.unsqueeze(-1).to(state.dtype)], -1)  # [B, C, K]
    y = (window.float() * weight[:, 0, :].float()).sum(-1)
    state.copy_(window[..., 1:])
    return F.silu(y)
