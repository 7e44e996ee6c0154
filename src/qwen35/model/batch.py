"""Per-step metadata for one forward pass over a packed batch of sequences.

Tokens of all sequences are packed into one `[N]` row: each sequence contributes `query_len` new tokens
that continue from `context_len` tokens already in the cache. Matmuls run on the packed rows; the
sequence-mixing ops (conv, delta rule, attention) see a right-padded `[B, T]` view built by one gather.

Every index tensor is built here, once per step, on the host; layers never loop over sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class SeqSpec:
    """One sequence in a step: the new tokens and where its cache lives."""

    token_ids: list[int]
    context_len: int  # tokens of this sequence already in the cache
    state_slot: int  # GDN conv/recurrent state slot
    block_table: list[int]  # KV-cache block ids covering positions [0, context_len + len(token_ids))


@dataclass(frozen=True, slots=True, eq=False)
class ForwardBatch:
    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    query_lens: torch.Tensor  # [B] int64
    context_lens: torch.Tensor  # [B] int64
    state_slots: torch.Tensor  # [B] int64
    slot_range: tuple[int, int] | None  # state slots form [start, stop): state is used in place
    slot_mapping: torch.Tensor  # [N] int64, flat KV-cache row of each new token
    kv_index: torch.Tensor  # [B, L] int64, flat KV-cache row of key position j of sequence b
    attn_mask: torch.Tensor  # [B, T, L] bool, query t of sequence b may attend key j
    pad_index: torch.Tensor  # [B, T] int64 into packed rows; N marks padding
    unpad_index: torch.Tensor  # [N] int64 into the flattened [B * T] padded layout
    last_index: torch.Tensor  # [B] int64 packed row of each sequence's last token
    is_decode: bool  # every sequence has exactly one new token (then packed == padded)
    fresh_single: bool  # one sequence, nothing cached: plain causal attention over the new tokens

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
        return torch.cat([x, x.new_zeros((1,) + x.shape[1:])])[self.pad_index]

    def to_packed(self, y: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [N, ...]."""
        if self.is_decode:
            return y.squeeze(1)
        if self.num_seqs == 1:
            return y.squeeze(0)
        return y.reshape((-1,) + y.shape[2:])[self.unpad_index]

    @classmethod
    def build(cls, seqs: list[SeqSpec], block_size: int, device: torch.device | str = "cpu") -> "ForwardBatch":
        if not seqs:
            raise ValueError("a forward batch needs at least one sequence")
        qlens = [len(s.token_ids) for s in seqs]
        if min(qlens) < 1:
            raise ValueError("every sequence in a batch needs at least one new token")
        ctx = [s.context_len for s in seqs]
        B, T = len(seqs), max(qlens)
        totals = [c + q for c, q in zip(ctx, qlens)]
        L = max(totals)
        for s, total in zip(seqs, totals):
            if len(s.block_table) * block_size < total:
                raise ValueError(f"block table of {len(s.block_table)} blocks cannot hold {total} tokens")

        long = dict(dtype=torch.int64)
        q_lens = torch.tensor(qlens, **long)
        c_lens = torch.tensor(ctx, **long)
        starts = torch.cumsum(q_lens, 0) - q_lens
        N = sum(qlens)
        t = torch.arange(T, **long)
        valid = t[None, :] < q_lens[:, None]  # [B, T]
        pad_index = torch.where(valid, starts[:, None] + t[None, :], torch.full_like(valid, N, **long))
        unpad_index = (torch.arange(B, **long)[:, None] * T + t[None, :])[valid]
        seq_of_tok = torch.repeat_interleave(torch.arange(B, **long), q_lens)
        positions = c_lens[seq_of_tok] + (torch.arange(N, **long) - starts[seq_of_tok])

        width = max(len(s.block_table) for s in seqs)
        tables = torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in seqs], **long)
        j = torch.arange(L, **long)
        kv_index = tables.gather(1, (j // block_size).clamp(max=width - 1)[None, :].expand(B, L)) * block_size
        kv_index = kv_index + (j % block_size)[None, :]
        slot_mapping = kv_index[seq_of_tok, positions]
        q_pos = c_lens[:, None] + t[None, :]  # [B, T]
        totals_t = torch.tensor(totals, **long)
        attn_mask = (j[None, None, :] <= q_pos[:, :, None]) & (j[None, None, :] < totals_t[:, None, None])

        slots = [s.state_slot for s in seqs]
        contiguous = slots == list(range(slots[0], slots[0] + B))
        ids = torch.tensor([tok for s in seqs for tok in s.token_ids], **long)
        return cls(
            input_ids=ids.to(device), positions=positions.to(device), query_lens=q_lens.to(device),
            context_lens=c_lens.to(device), state_slots=torch.tensor(slots, **long).to(device),
            slot_range=(slots[0], slots[0] + B) if contiguous else None,
            slot_mapping=slot_mapping.to(device), kv_index=kv_index.to(device), attn_mask=attn_mask.to(device),
            pad_index=pad_index.to(device), unpad_index=unpad_index.to(device),
            last_index=(starts + q_lens - 1).to(device), is_decode=T == 1,
            fresh_single=B == 1 and ctx[0] == 0,
        )
