"""One decoder layer: pre-norm residual mixer (GDN or gated attention) then pre-norm FFN (MLP or MoE)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TextConfig
from ..ops.batch import ForwardBatch
from .attention import GatedAttention
from .cache import ModelCache
from .gated_deltanet import GatedDeltaNet
from .mlp import MLP
from .moe import SparseMoE
from .norm import RMSNorm
from ..parallel.group import Group


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int, cache_id: str | None = None, group: Group | None = None,
                 experts: tuple[int, int] | None = None) -> None:
        """Decoder layer `layer` of the main stack; with `cache_id` (the MTP head's layers) a full-attention
        layer whose K/V live under that id. Tensor parallel: `cfg` is the rank's share (parallel/sharding.py),
        `group` its ranks, and the mixer's and the FFN's outputs are partial sums, all-reduced here (one
        all-reduce per block); `experts`: the routed experts this rank holds (expert parallel)."""
        super().__init__()
        self.tp = group or Group.single()
        self.is_attention = cache_id is not None or cfg.layer_types[layer] == "full_attention"
        if self.is_attention:
            self.self_attn = GatedAttention(cfg, layer, cache_id)
        else:
            self.linear_attn = GatedDeltaNet(cfg, layer)
        self.mlp = SparseMoE(cfg, experts, split=self.tp.size > 1) if cfg.is_moe else \
            MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: ForwardBatch,
                cache: ModelCache) -> torch.Tensor:
        x, ffn = self.run(x, None, rope, batch, cache)
        return x + ffn

    def run(self, x: torch.Tensor, pending: torch.Tensor | None, rope: tuple[torch.Tensor, torch.Tensor],
            batch: ForwardBatch, cache: ModelCache) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer with the residual adds left to the norms that follow them: `pending` (the previous layer's
        FFN output, or None) is added to `x` with this layer's input norm, and the result is (x, this layer's
        FFN output) for the next norm to add: one fused add + norm per add (norm.py), the same values."""
        if pending is None:
            u = self.input_layernorm(x)
        else:
            x, u = self.input_layernorm.add_forward(x, pending)
        if self.is_attention:
            y = self.self_attn(u, rope, batch, cache)
        else:
            y = self.linear_attn(u, batch, cache)
        x, h = self.post_attention_layernorm.add_forward(x, self.tp.all_reduce(y))
        return x, self.tp.all_reduce(self.mlp(h))

    def record_keys(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: ForwardBatch,
                    cache: ModelCache) -> None:
        """An attention layer's K/V of `x` only (GatedAttention.record_keys)."""
        self.self_attn.record_keys(self.input_layernorm(x), rope, batch, cache)
