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
    Returns SiLU(conv(x)): [B, T, C] (padding rows hold garbage).
    """
    B, T, C = x.shape
    K = weight.shape[-1]
    full = torch.cat([state.transpose(1, 2).to(x.dtype), x], 1)  # [B, K-1+T, C]
    y = F.conv1d(full.transpose(1, 2), weight, groups=C)  # [B, C, T]
    # new state: inputs at positions lens[b] .. lens[b]+K-2 of `full` (the K-1 newest real ones)
    idx = (lens.view(B, 1) + torch.arange(K - 1, device=x.device)).view(B, K - 1, 1).expand(B, K - 1, C)
    state.copy_(full.gather(1, idx).transpose(1, 2))
    return F.silu(y.transpose(1, 2))


def causal_conv1d_step(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """One token per sequence. x: [B, C]; weight: [C, 1, K]; state: [B, C, K-1] updated in place."""
    window = torch.cat([state, x.unsqueeze(-1).to(state.dtype)], -1)  # [B, C, K]
    y = (window * weight[:, 0, :]).sum(-1)
    state.copy_(window[..., 1:])
    return F.silu(y).to(x.dtype)
