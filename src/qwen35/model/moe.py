"""Sparse MoE block (docs/MODEL.md §5): softmax router, top-k renormalised, stacked experts,
plus a shared expert scaled by a per-token sigmoid gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig
from ..ops import moe as moe_ops
from ..ops import quant
from .linear import Linear
from .mlp import MLP


class Experts(nn.Module):
    """All routed experts stacked, in the official fused layout."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))  # [E, 2I, H]
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate))  # [E, H, I]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, partial: bool = False) -> torch.Tensor:
        """`partial`: ids may hold -1, a route to another rank's expert (expert parallel)."""
        return moe_ops.experts(x, self.gate_up_proj, self.down_proj, weights, ids, partial)


class QuantExperts(nn.Module):
    """The stacked experts weight-only quantised (ops/quant.py formats): buffers `gate_up_q`, `gate_up_scale`,
    `gate_up_zeros` ([E, 2I, ...]) and `down_*` ([E, H, ...]). A projection int4 cannot hold (K % 64 != 0)
    stays a plain stack in `*_q` with no scale."""

    def __init__(self, fmt: str, gate_up: moe_ops.Stack, down: moe_ops.Stack) -> None:
        super().__init__()
        self.fmt = fmt
        for name, (q, scale, zeros) in (("gate_up", gate_up), ("down", down)):
            self.register_buffer(name + "_q", q)
            self.register_buffer(name + "_scale", scale)
            self.register_buffer(name + "_zeros", zeros)

    @classmethod
    def from_experts(cls, experts: Experts, fmt: str, group: int = quant.INT4_GROUP) -> "QuantExperts":
        stacks = []
        for w in (experts.gate_up_proj.detach(), experts.down_proj.detach()):
            stacks.append(quant.quantize(fmt, w, group) if quant.quantizable(fmt, w.shape[-1], group)
                          else (w, None, None))
        return cls(fmt, *stacks)

    def stack(self, name: str) -> moe_ops.Stack:
        return getattr(self, name + "_q"), getattr(self, name + "_scale"), getattr(self, name + "_zeros")

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, partial: bool = False) -> torch.Tensor:
        """-1 routes (`partial`, expert parallel) are skipped whatever the flag says."""
        return moe_ops.experts_quant(x, self.fmt, self.stack("gate_up"), self.stack("down"), weights, ids)


class Router(Linear):
    """The router of a model split across ranks: every rank routes for itself and must pick the same experts,
    so it runs `F.linear` on its plain weight always, with no per-rank kernel or layout choice (ops/linear.py
    times those on each rank, and two kernels can round a near-tie apart)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def prepack(self) -> None:
        pass


class SparseMoE(nn.Module):
    def __init__(self, cfg: TextConfig, experts: tuple[int, int] | None = None, split: bool = False) -> None:
        """`experts`: [first, end) of the routed experts this module holds (expert parallel: the rank's
        share); the router always scores all of them, and routes to the others count for nothing here.
        `split`: the model is split across ranks (tensor parallel): the router is a `Router`.
        `load` (None until `track_load`): tokens routed to each expert so far, all ranks' experts."""
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.renormalize = cfg.norm_topk_prob
        self.num_experts = cfg.num_experts
        self.first, end = experts or (0, cfg.num_experts)
        self.held = end - self.first
        self.gate = (Router if split else Linear)(cfg.hidden_size, cfg.num_experts)
        self.experts = Experts(self.held, cfg.hidden_size, cfg.moe_intermediate_size)
        self.load: torch.Tensor | None = None
        self.shared_expert = MLP(cfg.hidden_size, cfg.shared_expert_intermediate_size)
        self.shared_expert_gate = Linear(cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, H] -> [N, H]."""
        weights, ids = moe_ops.route(self.gate(x), self.top_k, self.renormalize)
        if self.load is not None:
            if self.load.device != ids.device:
                self.load = self.load.to(ids.device)
            self.load += torch.bincount(ids.reshape(-1), minlength=self.num_experts)
        if self.held != self.num_experts:  # expert parallel: -1 marks a route to another rank's expert
            ids = moe_ops.local_ids(ids, self.first, self.held)
        routed = self.experts(x, weights.to(x.dtype).float(), ids, self.held != self.num_experts)
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return routed + shared

    def track_load(self) -> None:
        """Count the tokens routed to each expert from now on (`load`)."""
        self.load = torch.zeros(self.num_experts, dtype=torch.int64)
