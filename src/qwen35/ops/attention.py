"""Causal GQA attention over the paged K/V cache, for a packed batch of sequences.

Queries are the step's new tokens; keys are every cached position of the same sequence (the new ones were
written to the cache just before). Paths:

- one fresh prompt (nothing cached): plain causal SDPA over the new K/V (O(T) memory on CPU);
- a decode step (one new token per sequence) in bf16 on CPU: our kernel (csrc/decode_attention.cpp), K/V read
  in place through the block table, 2-5x faster than the tiles below, which gather K/V and run a flash kernel
  built for blocks of queries (`bench/bench_decode_attention.py`);
- otherwise, flash-decoding over the block table. The queries are regrouped into tiles of one sequence each
  (`plan_query_tiles`: decode rows in one group, prompt chunks in another, so a decode row is never padded to a
  chunk's length). A loop over key tiles gathers the K/V blocks of all query tiles at once; keys below the
  group's shortest context are visible to every query and go in large mask-free tiles, the rest with a mask;
  where a mask over every key is small (`ONE_TILE_MASK`: decode rows, short chunks) all keys go in one masked
  tile instead, one kernel call a layer with nothing to merge (the demo model decoded ~8% faster).
  Each key tile runs PyTorch's CPU flash kernel and the partial results are merged by log-sum-exp
  (`flash_cpu`), or, on other devices, an explicit fp32 online softmax (running max, running sum, rescaled
  accumulator; `online`). Memory per step is O(query rows x key tile) within `SCORE_BUDGET`, never O(context);
  there is no Python loop over sequences. The key tiles, their cache rows and masks depend on the step's batch
  only: the step's first attention layer makes them (`_key_plan`) and the others reuse them.

GQA never repeats K/V: the `rep = Hq / Hkv` query heads of one K/V head are folded into the query rows
(`[W, Hkv, rep * Qt, D]`). `paged_attention_ref` is the per-sequence fp32 reference the tests compare against.
Measured on a 2-core CPU, dense-0.8b shapes: a 2048-token chunk after 30k cached tokens 0.59 s vs 0.89 s for
a dense gather + masked SDPA; a batch-32 decode step's attention at 8k context 2.6x faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from . import fused

if TYPE_CHECKING:
    from .batch import ForwardBatch, QueryTiles

Q_TILE = 128  # query rows per tile when a step's prompt chunks are too ragged to pad to the longest one
SCORE_BUDGET = 1 << 24  # elements per key tile of gathered K (and V), scores or mask: 32-64 MiB each
MAX_KEY_TILE = 16384  # keys per tile (the budget binds first for batches)
# Mask elements below which all keys go in one masked tile rather than a mask-free tile and a masked one: for
# decode rows the mask is tiny, and the split cost a second kernel call and a log-sum-exp merge per layer.
ONE_TILE_MASK = 1 << 20


def plan_query_tiles(query_lens: np.ndarray, context_lens: np.ndarray,
                     query_start_loc: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Host-side grouping of the packed query rows into tiles of one sequence each (numpy, no torch).

    Returns up to two groups (decode rows, then prompt chunks), each `(rows [W, Qt], positions [W, Qt],
    seqs [W])`: packed row (N = padding), cache position (-1 = padding) and batch row of every tile. Chunks are
    padded to the longest chunk when that at most doubles the rows, else cut into `Q_TILE`-row tiles."""
    N = int(query_start_loc[-1])
    groups = []
    dec = np.flatnonzero(query_lens == 1)
    if dec.size:
        groups.append((query_start_loc[dec][:, None], context_lens[dec][:, None], dec))
    pre = np.flatnonzero(query_lens > 1)
    if pre.size:
        lens = query_lens[pre]
        longest = int(lens.max())
        qt = longest if pre.size * longest <= 2 * int(lens.sum()) else min(Q_TILE, longest)
        ntiles = -(-lens // qt)
        seqs = np.repeat(pre, ntiles)  # [W]
        first = np.repeat(np.cumsum(ntiles) - ntiles, ntiles)  # tile index of each sequence's first tile
        off = (np.arange(seqs.size) - first)[:, None] * qt + np.arange(qt)[None, :]  # [W, Qt] row in the chunk
        valid = off < query_lens[seqs][:, None]
        rows = np.where(valid, query_start_loc[seqs][:, None] + off, N)
        groups.append((rows, np.where(valid, context_lens[seqs][:, None] + off, -1), seqs))
    return groups


def paged_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, batch: "ForwardBatch", scale: float) -> torch.Tensor:
    """q: [N, Hq, D]; k_new, v_new: [N, Hkv, D] (already stored in the cache);
    k_cache, v_cache: [rows, Hkv, D] (rows = blocks * block_size). Returns [N, Hq, D] in q's dtype."""
    if batch.fresh_single:  # one prompt from scratch: the new K/V are the whole context
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k_new.transpose(0, 1)[None], v_new.transpose(0, 1)[None],
            is_causal=True, scale=scale, enable_gqa=True)
        return out[0].transpose(0, 1)
    if q.requires_grad and torch.is_grad_enabled():  # training: fresh sequences, right-padded to one length
        if int(batch.context_lens.max()) != 0:
            raise ValueError("training batches start every sequence from scratch (no cached tokens)")
        return padded_attention(q, k_new, v_new, batch, scale)
    lib = _decode_kernel(q, k_cache, v_cache, batch)
    if lib is not None:
        return lib.decode_attention(q, k_cache, v_cache, batch.block_tables, batch.seq_lens, batch.block_size, scale)
    return paged_attention_tiled(q, k_cache, v_cache, batch, scale)


def _decode_kernel(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: "ForwardBatch"):
    """`torch.ops.qwen35` when a decode step's attention can run in our kernel (csrc/decode_attention.cpp: K/V
    read in place through the block table, one query row per sequence): bf16 on CPU, heads it takes."""
    lib = fused.lib_for(q)  # CPU, bf16, no autograd, the build loaded, QWEN35_FUSED not 0
    if lib is None or not (batch.is_decode and k_cache.dtype == v_cache.dtype == torch.bfloat16 and q.is_contiguous()
                           and q.shape[-1] <= 512 and q.shape[1] % k_cache.shape[1] == 0
                           and q.shape[1] // k_cache.shape[1] <= 64):
        return None
    return lib


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: "ForwardBatch", scale: float,
                     prefix: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Training's attention (autograd goes through): each sequence's new tokens, right-padded to one length,
    attend causally to themselves and, with `prefix` = (K [B, P, Hkv, D], V [B, P, Hkv, D], lens [B] int64),
    to the first lens[b] rows of sequence b's prefix keys first (a shared prefix, model/shared_prefix.py).
    Shapes as in `paged_attention`; returns [N, Hq, D]."""
    q, k, v = (batch.to_padded(x) for x in (q, k, v))  # [B, T, H, D]
    if prefix is None:
        out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=True, scale=scale,
                                             enable_gqa=True)
        return batch.to_packed(out.transpose(1, 2))
    pk, pv, lens = prefix
    P, T = pk.shape[1], q.shape[1]
    t = torch.arange(T, device=q.device)
    own = t <= t[:, None]  # [T, T]: causal over the own tokens
    seen = torch.arange(P, device=q.device) < lens[:, None]  # [B, P]: the sequence's prefix
    mask = torch.cat([seen[:, None, :].expand(-1, T, -1), own.expand(len(lens), -1, -1)], -1)  # [B, T, P + T]
    k, v = torch.cat([pk, k], 1), torch.cat([pv, v], 1)
    out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=mask[:, None],
                                         scale=scale, enable_gqa=True)
    return batch.to_packed(out.transpose(1, 2))


def paged_attention_tiled(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          batch: "ForwardBatch", scale: float, impl: str = "auto") -> torch.Tensor:
    """The block-table path for any batch (shapes as in `paged_attention`). `impl`: "flash_cpu" (PyTorch's CPU
    flash kernel per key tile, merged by log-sum-exp), "online" (explicit fp32 online softmax, any device) or
    "auto" (flash_cpu on CPU when the kernel exists)."""
    if impl == "auto":
        impl = "flash_cpu" if q.device.type == "cpu" and _FLASH_CPU is not None else "online"
    N, Hq, D = q.shape
    if len(batch.query_tiles) == 1 and _rows_in_order(batch.query_tiles[0], N):  # decode: no gather, no scatter
        o = _attend(q, k_cache, v_cache, batch.query_tiles[0], batch.block_tables, batch.block_size, scale, impl,
                    in_order=True)
        return o.reshape(N, Hq, D).to(q.dtype)
    qx = torch.cat([q, q.new_zeros(1, Hq, D)])  # row N: what padding query rows read
    out = q.new_empty(N + 1, Hq, D)  # row N: where padding rows are written, then dropped
    for tiles in batch.query_tiles:
        o = _attend(qx, k_cache, v_cache, tiles, batch.block_tables, batch.block_size, scale, impl)
        out[tiles.rows.reshape(-1)] = o.reshape(-1, Hq, D).to(q.dtype)
    return out[:N]


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _rows_in_order(tiles: "QueryTiles", N: int) -> bool:
    """Whether the tiles are the N packed rows themselves, one a tile, in order (a decode step), so that the
    queries need no gather and the outputs no scatter. Asked once per step (kept with the key plans)."""
    known = tiles.key_plans.get("rows_in_order")
    if known is None:
        rows = tiles.rows
        known = tiles.key_plans["rows_in_order"] = (
            tuple(rows.shape) == (N, 1) and bool(torch.equal(rows[:, 0], torch.arange(N, device=rows.device))))
    return known


def _attend(qx: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tiles: "QueryTiles",
            block_tables: torch.Tensor, bs: int, scale: float, impl: str, in_order: bool = False) -> torch.Tensor:
    """Attention of one tile group over its sequences' blocks, one key tile at a time. Returns [W, Qt, Hq, D].
    `in_order`: qx holds the tiles' rows themselves, one a tile (`_rows_in_order`), so they are not gathered."""
    # W = query tiles, Qt = rows per tile, R = query heads per K/V head, n = keys in the current key tile
    W, Qt = tiles.rows.shape
    Hq, D = qx.shape[1:]
    Hkv = k_cache.shape[1]
    R = Hq // Hkv
    if in_order:
        q = qx.reshape(W, Hkv, R, D)
    else:
        q = qx[tiles.rows].view(W, Qt, Hkv, R, D).permute(0, 2, 3, 1, 4).reshape(W, Hkv, R * Qt, D)
    plan = _key_plan(tiles, block_tables, bs, R, k_cache, impl, qx.dtype)

    def keys(span: _KeySpan) -> tuple[torch.Tensor, torch.Tensor]:  # [W, Hkv, n, D] views of the gathered rows
        return tuple(torch.index_select(c, 0, span.rows, out=g[:W * span.n]).view(W, span.n, Hkv, D).transpose(1, 2)
                     for c, g in zip((k_cache, v_cache), plan.gathered))

    if impl != "online" and len(plan.spans) == 1:  # one tile: its output is the result, nothing to merge
        span = plan.spans[0]
        out = _FLASH_CPU(q, *keys(span), 0.0, False, attn_mask=span.bias, scale=scale)[0]
    else:
        state = _Online(q, scale, plan.most) if impl == "online" else _LseMerge()
        for span in plan.spans:
            k, v = keys(span)
            if impl == "online":
                state.add(k, v, span.masked)
                continue
            o, lse = _FLASH_CPU(q, k, v, 0.0, False, attn_mask=span.bias, scale=scale)
            # the kernel reports lse 0 for rows that see no key in this tile: they must not count
            state.add(o, lse.unsqueeze(-1).masked_fill_(span.unseen, float("-inf")))
        out = state.result()  # [W, Hkv, R*Qt, D]
    return out.view(W, Hkv, R, Qt, D).permute(0, 3, 1, 2, 4).reshape(W, Qt, Hq, D)


@dataclass(frozen=True, slots=True)
class _KeySpan:
    n: int  # keys in this tile
    rows: torch.Tensor  # [W * n] cache rows of its keys, block by block
    masked: torch.Tensor | None  # [W, 1, R*Qt, n] bool: a key in the query's future or past its sequence's end
    bias: torch.Tensor | None  # `masked` as an additive mask in the queries' dtype (flash_cpu)
    unseen: torch.Tensor  # [W, 1, R*Qt, 1] bool: queries that see no key of this tile


@dataclass(frozen=True, slots=True)
class _KeyPlan:
    spans: list[_KeySpan]
    most: int  # keys in the largest tile
    gathered: list[torch.Tensor]  # K and V rows of one key tile, reused tile after tile and layer after layer


def _key_plan(tiles: "QueryTiles", block_tables: torch.Tensor, bs: int, R: int, k_cache: torch.Tensor, impl: str,
              dtype: torch.dtype) -> _KeyPlan:
    """What `_attend` needs besides the layer's own q, K and V: the same for every attention layer of a step
    (~40 torch ops), so made once per step and kept on `tiles`."""
    Hkv, D = k_cache.shape[1:]
    key = (R, Hkv, D, bs, impl, dtype, k_cache.dtype)
    plan = tiles.key_plans.get(key)
    if plan is not None:
        return plan
    W, Qt = tiles.rows.shape
    device = k_cache.device
    q_pos = tiles.positions.repeat(1, R)[:, None, :, None]  # [W, 1, R*Qt, 1], rows ordered (r, t)
    tables = block_tables.index_select(0, tiles.seqs)  # [W, blocks]
    # elements per key of one tile: gathered K (and V), and scores (online) or the mask (flash, masked tiles)
    free_end = tiles.min_context // bs * bs  # keys [0, free_end) precede every query: no mask needed
    masked_per_key = W * max(Hkv * D, R * Hkv * Qt)
    whole = _key_tiles(0, tiles.max_kv_len, masked_per_key, bs)
    if len(whole) == 1 and W * R * Qt * whole[0][1] <= ONE_TILE_MASK:
        free_end = 0  # one masked tile over every key: one kernel call a layer, nothing to merge (decode)
    bounds = _key_tiles(0, free_end, W * max(Hkv * D, R * Hkv * Qt if impl == "online" else 0), bs) + \
        _key_tiles(free_end, tiles.max_kv_len, masked_per_key, bs)
    most = max(n for _, n in bounds)
    key_off = torch.arange(most, device=device)
    spans = []
    for j0, n in bounds:
        blocks = tables[:, j0 // bs:(j0 + n) // bs]  # [W, n / bs]
        rows = (blocks[:, :, None] * bs + key_off[:bs]).reshape(-1)
        masked = key_off[:n] + j0 > q_pos if j0 >= free_end else None
        bias = None
        if masked is not None and impl != "online":
            bias = torch.zeros(masked.shape, dtype=dtype, device=device).masked_fill_(masked, float("-inf"))
        spans.append(_KeySpan(n, rows, masked, bias, q_pos < j0))
    gathered = [k_cache.new_empty(W * most, Hkv, D), k_cache.new_empty(W * most, Hkv, D)]
    plan = tiles.key_plans[key] = _KeyPlan(spans, most, gathered)
    return plan


def _key_tiles(start: int, end: int, per_key: int, bs: int) -> list[tuple[int, int]]:
    """[start, end) (start a multiple of bs) in equal whole-block tiles of at most SCORE_BUDGET / per_key keys
    (and MAX_KEY_TILE): (first key, keys) each; the last may be shorter."""
    if end <= start:
        return []
    most = min(MAX_KEY_TILE, max(bs, SCORE_BUDGET // per_key // bs * bs))
    count = -(-(end - start) // most)
    tile = -(-(end - start) // (count * bs)) * bs  # equal tiles: no sliver of a tile at the end
    return [(j, min(tile, -(-(end - j) // bs) * bs)) for j in range(start, end, tile)]


class _LseMerge:
    """Combines per-tile softmax outputs by their log-sum-exp (flash-decoding's reduction), in fp32."""

    def __init__(self) -> None:
        self.acc: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def add(self, o: torch.Tensor, lse: torch.Tensor) -> None:
        """o: [W, H, M, D] normalised within the tile; lse: [W, H, M, 1] fp32 (-inf: the tile adds nothing)."""
        if self.acc is None:  # one tile (most decode steps): no merging at all
            self.acc, self.lse = o, lse
            return
        new = torch.logaddexp(self.lse, lse)
        safe = new.masked_fill(new == float("-inf"), 0.0)
        if self.acc.dtype != torch.float32:
            self.acc = self.acc.float()
        self.acc.mul_((self.lse - safe).exp_()).add_(o.float().mul_((lse - safe).exp_()))
        self.lse = new

    def result(self) -> torch.Tensor:
        return self.acc


class _Online:
    """Explicit fp32 online softmax (running max, running sum, rescaled accumulator): portable to any device."""

    def __init__(self, q: torch.Tensor, scale: float, tile: int) -> None:
        W, H, M, D = q.shape
        self.q = q.float() * scale
        self.kv = [q.new_empty(W, H, tile, D, dtype=torch.float32) for _ in range(2)]  # reused fp32 tiles
        self.m = self.q.new_full((W, H, M, 1), float("-inf"))  # running max
        self.l = self.q.new_zeros(W, H, M, 1)  # running sum of exp(s - m)
        self.acc = self.q.new_zeros(W, H, M, D)

    def add(self, k: torch.Tensor, v: torch.Tensor, masked: torch.Tensor | None) -> None:
        n = k.shape[2]
        k32, v32 = (buf[:, :, :n].copy_(x) for buf, x in zip(self.kv, (k, v)))
        s = torch.matmul(self.q, k32.transpose(-1, -2))  # [W, H, M, n]
        if masked is not None:
            s.masked_fill_(masked, float("-inf"))
        m_new = torch.maximum(self.m, s.amax(-1, keepdim=True))
        m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # rows that have seen no key yet
        p = s.sub_(m_safe).exp_()
        alpha = (self.m - m_safe).exp_()
        self.l.mul_(alpha).add_(p.sum(-1, keepdim=True))
        self.acc.mul_(alpha).add_(torch.matmul(p, v32))
        self.m = m_new

    def result(self) -> torch.Tensor:
        return self.acc / self.l.clamp_min(torch.finfo(torch.float32).tiny)  # padding rows: 0 / tiny = 0


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        batch: "ForwardBatch", scale: float) -> torch.Tensor:
    """Reference: per sequence, gather its whole context from the block table and run `attention_ref`."""
    bs = batch.block_size
    out = torch.empty_like(q)
    starts, ctx = batch.query_start_loc.tolist(), batch.context_lens.tolist()
    for b, c in enumerate(ctx):
        a, e = starts[b], starts[b + 1]
        L = c + e - a
        rows = (batch.block_tables[b, :-(-L // bs), None] * bs + torch.arange(bs, device=q.device)).reshape(-1)[:L]
        out[a:e] = attention_ref(q[a:e], k_cache[rows], v_cache[rows], scale)
    return out


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference causal GQA attention for one sequence, fp32. q: [T, Hq, D]; k, v: [L, Hkv, D] with L >= T:
    query t sits at position L - T + t and sees keys 0 .. L - T + t."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.einsum("thd,shd->hts", q.float(), k.float()) * scale
    T, L = q.shape[0], k.shape[0]
    s = s.masked_fill(torch.ones(T, L, dtype=torch.bool, device=q.device).triu(L - T + 1), float("-inf"))
    return torch.einsum("hts,shd->thd", s.softmax(-1), v.float()).to(q.dtype)
