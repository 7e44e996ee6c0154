"""RMSNorm variants of Qwen3.5 (architecture.md §2.3).

- `RMSNorm`: zero-centred, `x * rsqrt(mean(x^2) + eps) * (1 + w)`, maths in fp32, cast last. Used by the
  decoder norms, the final norm and attention q/k norms. Loading `w` into a plain `x * w` norm is wrong.
- `GatedRMSNorm`: inside Gated DeltaNet, per V head over dv, plain weight (no +1), then `* silu(z)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


class GatedRMSNorm(nn.Module):
    """The weight stays fp32 (it is F32 on disk in Qwen3.5); all maths in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: [..., dv] -> [..., dv] in z's dtype."""
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return (y * F.silu(z.float())).to(z.dtype)
