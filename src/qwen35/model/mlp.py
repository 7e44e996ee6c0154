"""Dense SwiGLU MLP: down(silu(gate(x)) * up(x)). Also the MoE shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate)
        self.up_proj = Linear(hidden, intermediate)
        self.down_proj = Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
