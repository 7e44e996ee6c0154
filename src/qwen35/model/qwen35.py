"""Qwen3.5 causal LM (dense and MoE): embed -> decoder layers -> final norm -> lm_head; optionally the MTP
head and the vision tower (`encode_media`: images and videos -> embeddings for their placeholder tokens).

The forward works on a packed `ForwardBatch` against a `ModelCache`; it returns hidden states for every
new token, and `logits()` projects the rows the caller asks for (usually each sequence's last token).
Parameter names below the text-model prefix match the official checkpoint names exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ConfigError, TextConfig, VisionConfig
from ..multimodal.inputs import MediaItem
from ..ops import fused
from ..ops.batch import ForwardBatch
from ..ops.linear import choose_in_order, linear, prefer_packed
from ..parallel.sharding import Shard
from .cache import ModelCache
from .cache_spec import CacheSpec, cache_specs
from .decoder import DecoderLayer
from .linear import Linear, QuantEmbedding, embedding
from .mtp import MTPHead
from .norm import RMSNorm
from .rope import RotaryEmbedding
from .vision import VisionTower


class Qwen35Model(nn.Module):
    def __init__(self, cfg: TextConfig, shard: Shard | None = None) -> None:
        """`shard`: this rank's share under tensor parallelism (parallel/sharding.py); None: the whole model."""
        super().__init__()
        self.cfg = cfg
        self.shard = shard or Shard.single(cfg)
        local = self.shard.text_config()
        self.embed_tokens = embedding(self.shard.vocab_rows, cfg.hidden_size)  # all of them on one rank
        self.layers = nn.ModuleList(DecoderLayer(local, i, group=self.shard.group, experts=self.shard.experts)
                                    for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.rope, cfg.rotary_dim, cfg.max_position_embeddings)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [N, H]; vocab parallel: each rank looks up the ids in its rows, zeros elsewhere,
        and the all-reduce puts every row together."""
        if self.shard.size == 1:
            return self.embed_tokens(ids)
        first, end = self.shard.vocab
        local = ids - first
        outside = (local < 0) | (local >= end - first)
        x = self.embed_tokens(local.masked_fill(outside, 0)).masked_fill(outside[:, None], 0)
        return self.shard.group.all_reduce(x)

    def forward(self, batch: ForwardBatch, cache: ModelCache, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Returns final-normed hidden states [N, H]. `batch.positions` is [3, N] (mRoPE) with media."""
        x = self.embed(batch.input_ids) if inputs_embeds is None else inputs_embeds
        rope = self.rotary(batch.positions, x.dtype)
        ffn = None  # each layer's FFN output, added to the residual by the next norm (DecoderLayer.run)
        for layer in self.layers:
            x, ffn = layer.run(x, ffn, rope, batch, cache)
        return self.norm(x) if ffn is None else self.norm.add_forward(x, ffn)[1]


class Qwen35ForCausalLM(nn.Module):
    def __init__(self, cfg: TextConfig, mtp: bool = False, vision: VisionConfig | None = None,
                 shard: Shard | None = None) -> None:
        """`mtp`: also build the MTP head (`self.mtp`, parameters `mtp.*` as in the checkpoint), which
        speculative decoding drafts with; it shares the embedding and the lm_head.
        `vision`: also build the vision tower (`self.visual`, parameters `visual.*`), which `encode_media`
        runs; None (language model only) builds none.
        `shard`: this rank's share under tensor parallelism: the layers hold their share of heads and widths
        (`local_cfg`), the embedding and lm_head their rows of the vocabulary; `logits` gathers the full
        rows on rank 0. `cfg` stays the whole model's."""
        super().__init__()
        self.cfg = cfg
        self.shard = shard or Shard.single(cfg)
        self.local_cfg = self.shard.text_config()
        self.model = Qwen35Model(cfg, self.shard)
        self.lm_head = Linear(cfg.hidden_size, self.model.embed_tokens.num_embeddings)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp: MTPHead | None = MTPHead(self.local_cfg, self.shard) if mtp else None
        if vision is not None and vision.out_hidden_size != cfg.hidden_size:
            raise ConfigError(f"vision_config.out_hidden_size={vision.out_hidden_size} differs from the text "
                              f"model's hidden_size={cfg.hidden_size}")
        self.visual: VisionTower | None = VisionTower(vision) if vision is not None else None

    def fuse(self) -> None:
        """Merge projections that read the same input (GDN qkv/z/b/a, attention q/k/v, MLP gate/up) into one
        matmul each: fewer, larger matmuls stream the weights faster. Inference only."""
        # keep only the fusing parents in hand: a list of every module would keep each replaced Linear
        # (and its weight) alive until the end, doubling peak memory
        for module in [m for m in self._stacks() if hasattr(m, "fuse")]:
            module.fuse()

    def prepack(self) -> dict[tuple, str]:
        """CPU: choose each projection's layout, per weight shape, by timing on this machine
        (`ops.linear.prefer_packed`): oneDNN's packed layout, or the plain weight for our decode kernel.
        lm_head keeps its plain weight (it may be tied to the embedding; `ops.linear` measures its kernel), and
        first sets our kernel's one-row order (`ops.linear.choose_in_order`).
        Returns {(out, in): "packed" | "plain"}, what the measurement chose."""
        if self.lm_head.weight is not None:
            choose_in_order(self.lm_head.weight)
        by_shape: dict[tuple, list[Linear]] = {}
        for module in self._stacks():
            if isinstance(module, Linear) and module.weight is not None:
                by_shape.setdefault((tuple(module.weight.shape), module.weight.dtype), []).append(module)
        layouts = {}
        for key, modules in by_shape.items():
            others = [m.weight for k, group in by_shape.items() if k != key for m in group if m.weight is not None]
            packed = prefer_packed([m.weight for m in modules], evict=others)
            layouts[key[0]] = "packed" if packed else "plain"
            if packed:
                for module in modules:
                    module.prepack()
        return layouts

    def _stacks(self) -> list[nn.Module]:
        """The decoder's modules and the MTP head's (not lm_head)."""
        return list(self.model.modules()) + (list(self.mtp.modules()) if self.mtp is not None else [])

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (the embedding's output; a `QuantEmbedding` has no weight to ask)."""
        emb = self.model.embed_tokens
        return emb.dtype if isinstance(emb, QuantEmbedding) else emb.weight.dtype

    @property
    def device(self) -> torch.device:
        emb = self.model.embed_tokens
        return emb.device if isinstance(emb, QuantEmbedding) else emb.weight.device

    def forward(self, batch: ForwardBatch, cache: ModelCache, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """`inputs_embeds` [N, H]: the token embeddings with media rows in place (default: embed the ids)."""
        return self.model(batch, cache, inputs_embeds=inputs_embeds)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """hidden: [M, H] -> fp32 logits [M, vocab]. Tensor parallel: on rank 0; the other ranks (which must
        call it too) get None."""
        out = self.lm_head(hidden).float()
        if self.shard.size == 1:
            return out
        out = self.shard.group.gather_to_first(out)
        return out[:, :self.cfg.vocab_size] if out is not None else None

    def argmax(self, hidden: torch.Tensor, rows: torch.Tensor | None = None,
               ids: torch.Tensor | None = None) -> torch.Tensor:
        """The most likely next token of each row of `hidden` [M, H], on every rank. `rows`, `ids`: score only
        these lm_head rows (this rank's part of a draft vocabulary, `ids` their token ids; may be empty)."""
        if rows is None:
            first, end = self.shard.vocab
            local = self.lm_head(hidden).float()[:, :end - first]  # without a padded vocabulary's last rows
            ids = torch.arange(first, end, device=local.device)
        else:
            local = linear(hidden, rows).float() if rows.shape[0] else hidden.new_full((hidden.shape[0], 1),
                                                                                        float("-inf"))
            ids = ids if rows.shape[0] else torch.zeros(1, dtype=torch.int64, device=hidden.device)
        at = fused.argmax(local)
        return self.shard.group.argmax(local.gather(1, at[:, None])[:, 0], ids[at])

    def draft(self, token_ids: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch, cache: ModelCache,
              step: int = 0, embeds: torch.Tensor | None = None) -> torch.Tensor:
        """One MTP step over `batch`'s rows: row i pairs `hidden[i]` (the main model's final-normed hidden of
        the row's position, or the previous step's output) with `token_ids[i]` (the token after it). Returns
        the head's hidden [N, H]; `logits()` of it predicts the token two positions on. `embeds`: the
        tokens' embeddings when some are media rows (default: embed `token_ids`)."""
        if self.mtp is None:
            raise RuntimeError("this model was loaded without its MTP head")
        rope = self.model.rotary(batch.positions, hidden.dtype)
        embeds = self.model.embed(token_ids) if embeds is None else embeds
        return self.mtp(embeds, hidden, rope, batch, cache, step)

    def record_draft_keys(self, token_ids: torch.Tensor, hidden: torch.Tensor, batch: ForwardBatch,
                          cache: ModelCache) -> None:
        """`draft`'s K/V for these rows and nothing else: training's first pass over shared headers, which
        the later conversations' draft steps attend to (model/shared_prefix.py)."""
        if self.mtp is None:
            raise RuntimeError("this model was loaded without its MTP head")
        rope = self.model.rotary(batch.positions, hidden.dtype)
        self.mtp.record_keys(self.model.embed(token_ids), hidden, rope, batch, cache)

    @torch.no_grad()
    def encode_media(self, items: list[MediaItem]) -> list[torch.Tensor]:
        """Each item's embeddings [item.num_tokens, hidden] in the model's dtype, the rows its placeholder
        tokens take; one tower call over all items together."""
        if self.visual is None:
            raise RuntimeError("this model was loaded without its vision tower (language model only)")
        if not items:
            return []
        merge = self.visual.cfg.spatial_merge_size
        for item in items:
            if item.merge_size != merge:
                raise ValueError(f"{item.kind} was processed with merge size {item.merge_size}; the tower "
                                 f"merges {merge} x {merge}")
        pixels = torch.cat([torch.as_tensor(item.pixels) for item in items]).to(self.device)  # numpy or torch
        out = self.visual(pixels, [item.grid_thw for item in items]).to(self.dtype)
        return list(out.split([item.num_tokens for item in items]))

    def cache_specs(self) -> dict[str, CacheSpec]:
        """What every layer caches, the MTP head's layers included when it is loaded."""
        return cache_specs(self.local_cfg, self.dtype, len(self.mtp.layers) if self.mtp is not None else 0)

    def new_cache(self, num_blocks: int, block_size: int, num_slots: int) -> ModelCache:
        return ModelCache(self.cache_specs(), num_blocks, block_size, num_slots, device=self.device)
