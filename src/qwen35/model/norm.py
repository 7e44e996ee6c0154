"""RMSNorm variants of Qwen3.5 (docs/MODEL.md §2).

- `RMSNorm`: zero-centred, `x * rsqrt(mean(x^2) + eps) * (1 + w)`, maths in fp32, cast last. Used by the
  decoder norms, the final norm and attention q/k norms. Loading `w` into a plain `x * w` norm is wrong.
- `GatedRMSNorm`: inside Gated DeltaNet, per V head over dv, plain weight (no +1), then `* silu(z)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import fused


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self._scale: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight it came from, fp32 1 + w)

    def scale(self) -> torch.Tensor:
        """fp32 `1 + w`, computed once per weight tensor (decode calls this ~50 times a token). A weight that
        requires grad (training: bench/train_mtp.py) is read afresh each call, so its gradient flows and the
        optimiser's in-place updates count; the loader's weights never require grad."""
        if self.weight.requires_grad:
            return 1.0 + self.weight.float()
        if self._scale is None or self._scale[0] is not self.weight:
            self._scale = (self.weight, 1.0 + self.weight.detach().float())
        return self._scale[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = None if self.weight.requires_grad else fused.lib_for(x)
        if lib is not None and x.dim() in (2, 3) and fused.rows_ok(x):
            return lib.rms_norm(x, self.scale(), self.eps)
        # torch's fused rms_norm, in fp32: x * rsqrt(mean(x^2) + eps) * (1 + w)
        return F.rms_norm(x.float(), (x.shape[-1],), self.scale(), self.eps).to(x.dtype)

    def add_forward(self, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual add then the norm: (x + delta, norm(x + delta)), in one C++ call where it applies."""
        lib = None if self.weight.requires_grad else fused.lib_for(x)
        if lib is not None and x.dim() == 2 and x.shape == delta.shape and fused.rows_ok(x, delta):
            return lib.add_rms_norm(x, delta, self.scale(), self.eps)
        x = x + delta
        return x, self(x)


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
