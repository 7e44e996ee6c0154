"""Causal attention over the paged K/V cache, for a packed batch of sequences.

Queries are the step's new tokens; keys are every cached position of the same sequence (the new ones were
written to the cache just before). GQA is handled by SDPA's `enable_gqa`, so K/V heads are not repeated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..model.batch import ForwardBatch


def paged_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, batch: "ForwardBatch", scale: float) -> torch.Tensor:
    """q: [N, Hq, D]; k_new, v_new: [N, Hkv, D] (already stored in the cache);
    k_cache, v_cache: [rows, Hkv, D]. Returns [N, Hq, D]."""
    if batch.fresh_single:  # one prompt from scratch: the new K/V are the whole context
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k_new.transpose(0, 1)[None], v_new.transpose(0, 1)[None],
            is_causal=True, scale=scale, enable_gqa=True)
        return out[0].transpose(0, 1)
    qp = batch.to_padded(q).transpose(1, 2)  # [B, Hq, T, D]
    k = k_cache[batch.kv_index].transpose(1, 2)  # [B, Hkv, L, D]
    v = v_cache[batch.kv_index].transpose(1, 2)
    out = F.scaled_dot_product_attention(qp, k, v, attn_mask=batch.attn_mask[:, None], scale=scale,
                                         enable_gqa=True)
    return batch.to_packed(out.transpose(1, 2))


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference causal GQA attention for one sequence, fp32. q: [T, Hq, D]; k, v: [T, Hkv, D]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.einsum("thd,shd->hts", q.float(), k.float()) * scale
    T = q.shape[0]
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("hts,shd->thd", s.softmax(-1), v.float()).to(q.dtype)
