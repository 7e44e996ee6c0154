"""Sparse MoE block (docs/MODEL.md §5): softmax router, top-k renormalised, stacked experts,
plus a shared expert scaled by a per-token sigmoid gate."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TextConfig
from ..ops import moe as moe_ops
from .linear import Linear
from .mlp import MLP


class Experts(nn.Module):
    """All routed experts stacked, in the official fused layout."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))  # [E, 2I, H]
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate))  # [E, H, I]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return moe_ops.experts(x, self.gate_up_proj, self.down_proj, weights, ids)


class SparseMoE(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.renormalize = cfg.norm_topk_prob
        self.gate = Linear(cfg.hidden_size, cfg.num_experts)
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_expert = MLP(cfg.hidden_size, cfg.shared_expert_intermediate_size)
        self.shared_expert_gate = Linear(cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, H] -> [N, H]."""
        weights, ids = moe_ops.route(self.gate(x), self.top_k, self.renormalize)
        routed = self.experts(x, weights.to(x.dtype).float(), ids)
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return routed + shared
