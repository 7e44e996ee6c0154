"""The multi-token-prediction (MTP) head every Qwen3.5 checkpoint ships (docs/MODEL.md §8).

One draft step, for each token row i of a batch:

    e  = RMSNorm(embed(token_{i+1}); pre_fc_norm_embedding)      # the main model's embedding table
    hh = RMSNorm(h_i; pre_fc_norm_hidden)                         # h_i: the main model's final-normed hidden
    x  = fc(cat([e, hh]))                                         # [2H] -> [H], embedding first
    x  = DecoderLayer_full_attention(x)                           # its own K/V, cache id "mtp.0"
    h' = RMSNorm(x; norm)                                         # logits_{i+2} = lm_head(h')

Row i sits at position i (the position of h_i, not of token_{i+1}), so the head's K/V share the block table
of the sequence. Chained drafting feeds h' back as the hidden of the next step, with the drafted token; the
same layer serves every step (`step % num_layers`), as vLLM runs it. The head has no GDN layer, so it needs
no recurrent state and rolling back a rejected draft costs nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TextConfig
from ..ops.batch import ForwardBatch
from ..parallel.sharding import Shard
from .cache import ModelCache
from .cache_spec import mtp_cache_id
from .decoder import DecoderLayer
from .linear import Linear
from .norm import RMSNorm


class MTPHead(nn.Module):
    def __init__(self, cfg: TextConfig, shard: Shard | None = None) -> None:
        """`cfg`: the rank's share under tensor parallelism (`shard`); `fc` and the norms are replicated."""
        super().__init__()
        if cfg.mtp_num_hidden_layers < 1:
            raise ValueError("the config has no MTP layers (mtp_num_hidden_layers = 0)")
        h = cfg.hidden_size
        self.pre_fc_norm_embedding = RMSNorm(h, cfg.rms_norm_eps)
        self.pre_fc_norm_hidden = RMSNorm(h, cfg.rms_norm_eps)
        self.fc = Linear(2 * h, h)
        group, experts = (shard.group, shard.experts) if shard is not None else (None, None)
        self.layers = nn.ModuleList(DecoderLayer(cfg, j, cache_id=mtp_cache_id(j), group=group, experts=experts)
                                    for j in range(cfg.mtp_num_hidden_layers))
        self.norm = RMSNorm(h, cfg.rms_norm_eps)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                batch: ForwardBatch, cache: ModelCache, step: int = 0) -> torch.Tensor:
        """embeds: [N, H] embeddings of token i+1; hidden: [N, H] hidden of position i -> h' [N, H]."""
        x = self._fuse(embeds, hidden)
        x = self.layers[step % len(self.layers)](x, rope, batch, cache)
        return self.norm(x)

    def record_keys(self, embeds: torch.Tensor, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                    batch: ForwardBatch, cache: ModelCache, step: int = 0) -> None:
        """Only the layer's K/V for these rows (training's pass over shared headers, which predicts nothing)."""
        self.layers[step % len(self.layers)].record_keys(self._fuse(embeds, hidden), rope, batch, cache)

    def _fuse(self, embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.pre_fc_norm_embedding(embeds), self.pre_fc_norm_hidden(hidden)], -1))
