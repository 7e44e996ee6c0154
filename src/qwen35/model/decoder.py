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


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int, cache_id: str | None = None) -> None:
        """Decoder layer `layer` of the main stack; with `cache_id` (the MTP head's layers) a full-attention
        layer whose K/V live under that id."""
        super().__init__()
        self.is_attention = cache_id is not None or cfg.layer_types[layer] == "full_attention"
        if self.is_attention:
            self.self_attn = GatedAttention(cfg, layer, cache_id)
        else:
            self.linear_attn = GatedDeltaNet(cfg, layer)
        self.mlp = SparseMoE(cfg) if cfg.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: ForwardBatch,
                cache: ModelCache) -> torch.Tensor:
        u = self.input_layernorm(x)
        if self.is_attention:
            y = self.self_attn(u, rope, batch, cache)
        else:
            y = self.linear_attn(u, batch, cache)
        x, h = self.post_attention_layernorm.add_forward(x, y)
        return x + self.mlp(h)
