"""Dense SwiGLU MLP: down(silu(gate(x)) * up(x)). Also the MoE shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import fused
from .linear import Linear, fuse_linears


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden, intermediate)
        self.up_proj = Linear(hidden, intermediate)
        self.down_proj = Linear(intermediate, hidden)
        self.gate_up_proj: Linear | None = None  # gate | up in one matmul, after fuse()

    def fuse(self) -> None:
        fused = fuse_linears([self.gate_proj, self.up_proj])
        if fused is not None:
            self.gate_up_proj = fused
            del self.gate_proj, self.up_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gu = self.gate_up_proj(x)
            lib = fused.lib_for(gu)
            if lib is not None and gu.dim() == 2 and fused.rows_ok(gu):
                return self.down_proj(lib.silu_mul(gu))
            gate, up = gu.chunk(2, -1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
