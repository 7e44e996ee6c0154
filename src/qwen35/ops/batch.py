"""Per-step metadata for one forward pass over a packed batch of sequences: plain tensors and a few ints.

Tokens of all sequences are packed into one `[N]` row: sequence b contributes `query_lens[b]` new tokens
that continue from `context_lens[b]` tokens already in the cache. Matmuls run on the packed rows; the
recurrent ops (conv, delta rule) see a right-padded `[B, T]` view built by one gather; attention reads the
paged cache through `block_tables`, with the queries regrouped into `QueryTiles`.

`BatchBuilder` owns persistent buffers (pinned host memory and a device copy when the device is CUDA): one
flat int64 buffer is filled on the host with numpy, copied to the device in one non-blocking copy, and every
tensor of the `ForwardBatch` is a view into it. A batch is therefore valid until the builder's next `build`.
Layers and ops never loop over sequences or tokens in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .attention import Q_TILE, plan_query_tiles

if TYPE_CHECKING:
    from ..model.shared_prefix import SharedPrefix


@dataclass(frozen=True, slots=True)
class SeqSpec:
    """One sequence in a step: the new tokens and where its cache lives."""

    token_ids: Sequence[int]
    context_len: int  # tokens of this sequence already in the cache
    state_slot: int  # GDN conv/recurrent state slot
    block_table: Sequence[int]  # KV-cache block ids covering positions [0, context_len + len(token_ids))


@dataclass(frozen=True, slots=True, eq=False)
class QueryTiles:
    """Query rows of one sequence per tile, for attention over the paged cache (see ops/attention.py)."""

    rows: torch.Tensor  # [W, Qt] int64 packed row of each query (N marks padding)
    positions: torch.Tensor  # [W, Qt] int64 cache position of each query, -1 for padding
    seqs: torch.Tensor  # [W] int64 batch row of each tile (its block table)
    max_kv_len: int  # keys the longest sequence of the group sees
    min_context: int  # shortest context in the group: keys below it are visible to every query (no mask)
    # attention's key tiles, cache rows and masks for these queries, made by the step's first attention layer
    # and reused by the others (ops/attention.py `_key_plan`)
    key_plans: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class ForwardBatch:
    # B = sequences, N = new tokens (packed), T = max_query_len, W = block-table width, S = rows to score
    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64 rotary positions, or [3, N] (t, h, w) when a sequence has media
    cache_positions: torch.Tensor  # [N] int64 position of each new token in its sequence
    query_start_loc: torch.Tensor  # [B + 1] int64 packed row where each sequence starts (cu_seqlens)
    query_lens: torch.Tensor  # [B] int64 new tokens per sequence
    context_lens: torch.Tensor  # [B] int64 tokens cached before this step
    seq_lens: torch.Tensor  # [B] int64 context + new
    block_tables: torch.Tensor  # [B, W] int64 KV block ids (unused entries 0)
    slot_mapping: torch.Tensor  # [N] int64 flat KV-cache row of each new token
    state_slots: torch.Tensor  # [B] int64 GDN state slot of each sequence
    logits_indices: torch.Tensor  # [S] int64 packed rows whose logits are wanted
    pad_index: torch.Tensor  # [B, T] int64 into packed rows; N marks padding
    unpad_index: torch.Tensor  # [N] int64 into the flattened [B * T] padded layout
    last_index: torch.Tensor  # [B] int64 packed row of each sequence's last token
    query_tiles: tuple[QueryTiles, ...]  # decode rows and prompt chunks, tiled for attention
    block_size: int
    max_query_len: int
    max_seq_len: int
    slot_range: tuple[int, int] | None  # state slots form [start, stop): state is used in place
    is_decode: bool  # every sequence has exactly one new token (then packed == padded)
    fresh_single: bool  # one sequence, nothing cached: plain causal attention over the new tokens
    snapshot_slots: torch.Tensor | None = None  # [B, k+1] GDN scratch slots (speculative decoding)
    shared_prefix: "SharedPrefix | None" = None  # training over shared prefixes (model/shared_prefix.py)

    @property
    def num_seqs(self) -> int:
        return self.query_lens.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [B, T, ...], padding rows are zero."""
        if self.is_decode:
            return x.unsqueeze(1)
        if self.num_seqs == 1:
            return x.unsqueeze(0)
        # index_select, not x[pad_index]: the same rows, and its backward (an index_add_ into zeros) gives the
        # same bits as indexing's (an accumulating index_put_) at ~half the cost
        rows = torch.cat([x, x.new_zeros((1,) + x.shape[1:])]).index_select(0, self.pad_index.reshape(-1))
        return rows.view(self.pad_index.shape + x.shape[1:])

    def to_packed(self, y: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [N, ...]."""
        if self.is_decode:
            return y.squeeze(1)
        if self.num_seqs == 1:
            return y.squeeze(0)
        return y.reshape((-1,) + y.shape[2:]).index_select(0, self.unpad_index)

    @classmethod
    def build(cls, seqs: list[SeqSpec], block_size: int, device: torch.device | str = "cpu") -> "ForwardBatch":
        """A batch from sequence specs (tests, single-sequence generation); logits rows are every last token."""
        return BatchBuilder(block_size, device).build(
            [s.token_ids for s in seqs], [s.context_len for s in seqs], [s.state_slot for s in seqs],
            [s.block_table for s in seqs])


class BatchBuilder:
    """Fills a `ForwardBatch` from per-sequence lists into persistent buffers (grown if a step needs more)."""

    def __init__(self, block_size: int, device: torch.device | str = "cpu", capacity: int = 0) -> None:
        self.block_size = block_size
        self.device = torch.device(device)
        self._host = self._dev = torch.empty(0, dtype=torch.int64)
        self._reserve(capacity)

    @staticmethod
    def capacity_for(max_tokens: int, max_seqs: int, max_blocks: int) -> int:
        """Buffer elements a step of up to these sizes needs (see `build`), so the runner never grows it."""
        # per token: ids, cache and rotary (t, h, w) positions, slot mapping, unpad index, and <= 5 in query
        # tiles (padded at most 2x);
        # per sequence: 8 scalars, its block table, its padded row, and up to 2 tiles' padding of Q_TILE rows
        return 13 * max_tokens + max_seqs * (12 + max_blocks + max_tokens + 2 * Q_TILE + 16)  # 16: snapshots

    def _reserve(self, n: int) -> None:
        if n <= self._host.numel():
            return
        n = max(n, 2 * self._host.numel())
        self._host = torch.zeros(n, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        self._dev = self._host if self.device.type == "cpu" else torch.zeros(n, dtype=torch.int64, device=self.device)

    def build(self, token_ids: list[Sequence[int]], context_lens: list[int], state_slots: list[int],
              block_tables: list[Sequence[int]], sample: list[int] | None = None,
              snapshots: list[Sequence[int]] | None = None, rope_offsets: Sequence[int] | None = None,
              mrope: Sequence[np.ndarray | None] | None = None) -> ForwardBatch:
        """token_ids[b]: the new tokens of sequence b; sample: batch rows whose last token gets logits
        (default: all, in order); snapshots[b]: sequence b's GDN snapshot slots (`snapshot_slots`, all rows
        of equal length, -1 for none).
        Rotary positions are the cache positions unless a sequence has media (multimodal/layout.py):
        `rope_offsets[b]` shifts sequence b's positions; `mrope[b]` ([3, len(token_ids[b])] or None) gives
        its (t, h, w) positions, which makes `positions` [3, N] for the whole batch."""
        B, bs = len(token_ids), self.block_size
        if B == 0:
            raise ValueError("a forward batch needs at least one sequence")
        ql = np.fromiter(map(len, token_ids), np.int64, B)
        if ql.min() < 1:
            raise ValueError("every sequence in a batch needs at least one new token")
        ctx = np.asarray(context_lens, dtype=np.int64)
        seq_lens = ctx + ql
        need = -(-seq_lens // bs)  # blocks each sequence needs this step
        for table, n in zip(block_tables, need.tolist()):
            if len(table) < n:
                raise ValueError(f"block table of {len(table)} blocks cannot hold {n * bs} tokens")
        qsl = np.zeros(B + 1, dtype=np.int64)
        np.cumsum(ql, out=qsl[1:])
        N, T, Wb, L = int(qsl[-1]), int(ql.max()), int(need.max()), int(seq_lens.max())
        rows = sample if sample is not None else range(B)
        S = len(rows)
        tiles = plan_query_tiles(ql, ctx, qsl)

        sizes = dict(input_ids=N, cache_positions=N, query_start_loc=B + 1, query_lens=B, context_lens=B,
                     seq_lens=B, block_tables=B * Wb, slot_mapping=N, state_slots=B, logits_indices=S,
                     pad_index=B * T, unpad_index=N, last_index=B)
        for i, (r, _, _) in enumerate(tiles):
            sizes.update({f"rows{i}": r.size, f"pos{i}": r.size, f"seqs{i}": r.shape[0]})
        if snapshots is not None:
            sizes["snapshots"] = B * len(snapshots[0])
        if mrope is not None and all(m is None for m in mrope):
            mrope = None
        if rope_offsets is not None and not any(rope_offsets) and mrope is None:
            rope_offsets = None
        if mrope is not None or rope_offsets is not None:
            sizes["positions"] = 3 * N if mrope is not None else N
        offsets, total = {}, 0
        for name, n in sizes.items():
            offsets[name] = total
            total += n
        self._reserve(total)
        hnp = self._host.numpy()
        h = {name: hnp[o:o + sizes[name]] for name, o in offsets.items()}

        for b, ids in enumerate(token_ids):  # per sequence, never per token
            h["input_ids"][qsl[b]:qsl[b + 1]] = ids
        seq_of_tok = np.repeat(np.arange(B), ql)
        pos = h["cache_positions"]
        np.subtract(np.arange(N), (qsl[:B] - ctx)[seq_of_tok], out=pos)
        h["query_start_loc"][:] = qsl
        h["query_lens"][:] = ql
        h["context_lens"][:] = ctx
        h["seq_lens"][:] = seq_lens
        bt = h["block_tables"].reshape(B, Wb)
        bt.fill(0)
        for b, (table, n) in enumerate(zip(block_tables, need.tolist())):
            bt[b, :n] = table[:n]
        np.add(bt[seq_of_tok, pos // bs] * bs, pos % bs, out=h["slot_mapping"])
        h["state_slots"][:] = state_slots
        last = h["last_index"]
        np.subtract(qsl[1:], 1, out=last)
        h["logits_indices"][:] = last[list(rows)]
        t = np.arange(T)
        valid = t[None, :] < ql[:, None]
        h["pad_index"].reshape(B, T)[:] = np.where(valid, qsl[:B, None] + t[None, :], N)
        h["unpad_index"][:] = (np.arange(B)[:, None] * T + t[None, :])[valid]
        for i, (r, p, s) in enumerate(tiles):
            h[f"rows{i}"][:], h[f"pos{i}"][:], h[f"seqs{i}"][:] = r.ravel(), p.ravel(), s
        if snapshots is not None:
            h["snapshots"].reshape(B, -1)[:] = snapshots
        if "positions" in h:
            rp = h["positions"].reshape(-1, N)
            rp[:] = pos if rope_offsets is None else pos + np.asarray(rope_offsets, dtype=np.int64)[seq_of_tok]
            for b, m in enumerate(mrope or ()):
                if m is not None:
                    rp[:, qsl[b]:qsl[b + 1]] = m

        if self._dev is not self._host:
            self._dev[:total].copy_(self._host[:total], non_blocking=True)
        d = {name: self._dev[o:o + sizes[name]] for name, o in offsets.items()}
        groups = tuple(QueryTiles(d[f"rows{i}"].view(r.shape), d[f"pos{i}"].view(r.shape), d[f"seqs{i}"],
                                  int(seq_lens[s].max()), int(ctx[s].min())) for i, (r, _, s) in enumerate(tiles))
        slots = list(state_slots)
        contiguous = slots == list(range(slots[0], slots[0] + B))
        return ForwardBatch(
            input_ids=d["input_ids"], cache_positions=d["cache_positions"],
            positions=d["positions"].view(-1, N).squeeze(0) if "positions" in d else d["cache_positions"],
            query_start_loc=d["query_start_loc"], query_lens=d["query_lens"], context_lens=d["context_lens"],
            seq_lens=d["seq_lens"], block_tables=d["block_tables"].view(B, Wb), slot_mapping=d["slot_mapping"],
            state_slots=d["state_slots"], logits_indices=d["logits_indices"], pad_index=d["pad_index"].view(B, T),
            unpad_index=d["unpad_index"], last_index=d["last_index"], query_tiles=groups, block_size=bs,
            max_query_len=T, max_seq_len=L, slot_range=(slots[0], slots[0] + B) if contiguous else None,
            is_decode=T == 1, fresh_single=B == 1 and int(ctx[0]) == 0,
            snapshot_slots=d["snapshots"].view(B, -1) if snapshots is not None else None)
