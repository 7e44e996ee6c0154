"""Gated attention (docs/MODEL.md §4): q carries a per-head output gate, q/k RMSNorm (1 + w),
partial RoPE, GQA over the paged cache, sigmoid(gate) applied before o_proj."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TextConfig
from ..ops import fused
from ..ops.attention import paged_attention
from ..ops.batch import ForwardBatch
from .cache import ModelCache
from .cache_spec import layer_cache_id
from .linear import Linear, fuse_linears
from .norm import RMSNorm
from .rope import apply_rotary


class GatedAttention(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int, cache_id: str | None = None) -> None:
        """`cache_id`: whose K/V this layer reads and writes (default: main-stack layer `layer`)."""
        super().__init__()
        self.layer = layer
        self.cache_id = cache_id or layer_cache_id(layer)
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = Linear(h, 2 * self.n_heads * d)  # per head: d query rows, then d gate rows
        self.k_proj = Linear(h, self.n_kv * d)
        self.v_proj = Linear(h, self.n_kv * d)
        self.o_proj = Linear(self.n_heads * d, h)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.scale = d ** -0.5
        self.qkv_proj: Linear | None = None  # q (+gate) | k | v in one matmul, after fuse()

    def fuse(self) -> None:
        fused = fuse_linears([self.q_proj, self.k_proj, self.v_proj])
        if fused is not None:
            self.qkv_proj = fused
            del self.q_proj, self.k_proj, self.v_proj

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.qkv_proj is not None:
            return self._split(self.qkv_proj(x))
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kv = self.n_kv * self.head_dim
        return qkv.split((2 * self.n_heads * self.head_dim, kv, kv), -1)

    def _prep_kernel(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: ForwardBatch,
                     cache: ModelCache):
        """`torch.ops.qwen35` when one C++ call (`attn_prep`) can do the q/k norms, the rotary embedding and the
        cache writes: bf16 on CPU without autograd, the fused projection, bf16 caches (decode's ~40 torch ops of
        this layer, the same values)."""
        lib = fused.lib_for(x)
        if (lib is None or self.qkv_proj is None or batch.shared_prefix is not None or self.q_norm.weight.requires_grad
                or self.k_norm.weight.requires_grad or rope[0].dim() != 2 or rope[0].dtype != x.dtype):
            return None
        k_cache, v_cache = cache.kv(self.cache_id)
        return lib if k_cache.dtype == v_cache.dtype == x.dtype else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: ForwardBatch,
                cache: ModelCache) -> torch.Tensor:
        """x: [N, H] -> [N, H]."""
        N = x.shape[0]
        lib = self._prep_kernel(x, rope, batch, cache)
        qkv = self.qkv_proj(x) if lib is not None else None
        if qkv is not None and fused.rows_ok(qkv):
            q, k = lib.attn_prep(qkv, *rope, self.q_norm.scale(), self.k_norm.scale(), self.q_norm.eps,
                                 *cache.kv(self.cache_id), batch.slot_mapping, self.n_heads, self.n_kv, self.head_dim)
            qg, _, v = self._split(qkv)
            gate = qg.reshape(N, self.n_heads, 2 * self.head_dim)[..., self.head_dim:]
            v = v.reshape(N, self.n_kv, self.head_dim)
        else:
            qg, k, v = self._split(qkv) if qkv is not None else self._project(x)
            q, gate = qg.reshape(N, self.n_heads, 2 * self.head_dim).chunk(2, -1)
            k = k.reshape(N, self.n_kv, self.head_dim)
            v = v.reshape(N, self.n_kv, self.head_dim)
            q = apply_rotary(self.q_norm(q), *rope)  # q's ops recorded before k's: the order autograd then sums
            k = self._store(k, v, rope, batch, cache)  # the input's gradients in, which the demo's bits depend on
        if batch.shared_prefix is not None:  # training over shared prefixes (shared_prefix.py)
            out = batch.shared_prefix.attend(self.cache_id, q, k, v, batch, self.scale)
        else:
            out = paged_attention(q, k, v, *cache.kv(self.cache_id), batch, self.scale)
        out = out.reshape(N, -1) * torch.sigmoid(gate.reshape(N, -1))
        return self.o_proj(out)

    def record_keys(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: ForwardBatch,
                    cache: ModelCache) -> None:
        """Only the new tokens' K/V of `x` [N, H], cached and recorded by the batch's shared prefix, and no
        output: what training needs of the MTP layer on a shared header, which predicts nothing."""
        if batch.shared_prefix is None or not batch.shared_prefix.recording:
            raise RuntimeError("record_keys: only for the recording pass over shared prefixes")
        k, v = (self.k_proj(x), self.v_proj(x)) if self.qkv_proj is None else self._project(x)[1:]
        k = k.reshape(x.shape[0], self.n_kv, self.head_dim)
        v = v.reshape(x.shape[0], self.n_kv, self.head_dim)
        batch.shared_prefix.record(self.cache_id, self._store(k, v, rope, batch, cache), v)

    def _store(self, k: torch.Tensor, v: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: ForwardBatch,
               cache: ModelCache) -> torch.Tensor:
        """k, v [N, Hkv, D] -> k normed and rotated; writes both to the cache."""
        k = apply_rotary(self.k_norm(k), *rope)
        k_cache, v_cache = cache.kv(self.cache_id)
        k_cache.index_copy_(0, batch.slot_mapping, k.detach().to(k_cache.dtype))
        v_cache.index_copy_(0, batch.slot_mapping, v.detach().to(v_cache.dtype))
        return k
