"""Training over shared prefixes: sequences that continue one prefix (a tool header) pay for it once.

Many training conversations open with the same tool header (the chat template's tool list, hundreds of
tokens that carry no loss). A step over such a group runs the model twice, with one `SharedPrefix` on both
batches (`ForwardBatch.shared_prefix`):

1. the prefixes, from scratch: every layer records what a continuation reads of them, in the graph: an
   attention layer its keys and values, a Gated DeltaNet its final conv window and recurrent state;
2. the continuations (`continue_with`): sequence b starts at position len(prefix owner[b]); its Gated
   DeltaNet states start from that prefix's final ones, and its attention reads the prefix's keys before its
   own. A sequence with owner -1 has no prefix.

Loss and gradients equal those of running each prefix + continuation as one sequence (the training tests
check it); the prefix's forward and backward run once per group instead of once per continuation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..ops.attention import padded_attention

if TYPE_CHECKING:
    from ..ops.batch import ForwardBatch


class SharedPrefix:
    def __init__(self) -> None:
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # cache id -> K, V [Np, Hkv, D] (packed)
        self.states: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # -> conv [P, C, K-1], recurrent state
        self.owner: torch.Tensor | None = None  # [B] continuation pass: each sequence's prefix, -1 for none
        self.lens: torch.Tensor | None = None  # [B] its prefix's length (0 for none)
        self.rows: torch.Tensor | None = None  # [B, Pmax] packed prefix rows of its keys (Np: none)

    @property
    def recording(self) -> bool:
        return self.owner is None

    def continue_with(self, prefixes: "ForwardBatch", owner: list[int]) -> None:
        """Switch to the continuation pass: `prefixes` is the batch just run, owner[b] the batch row of
        sequence b's prefix (-1: none)."""
        owner_t = torch.as_tensor(owner, dtype=torch.int64)
        has = owner_t >= 0
        first = prefixes.query_start_loc[:-1][owner_t.clamp(min=0)]
        self.lens = torch.where(has, prefixes.query_lens[owner_t.clamp(min=0)], 0)
        span = torch.arange(int(self.lens.max()))
        self.rows = torch.where(span < self.lens[:, None], first[:, None] + span, prefixes.num_tokens)
        self.owner = owner_t

    def attend(self, cache_id: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: "ForwardBatch",
               scale: float) -> torch.Tensor:
        """An attention layer's output [N, Hq, D] for the new tokens' q [N, Hq, D], k, v [N, Hkv, D]."""
        if self.recording:
            self.record(cache_id, k, v)
            return padded_attention(q, k, v, batch, scale)
        if self.rows.shape[1] == 0:
            return padded_attention(q, k, v, batch, scale)
        pk, pv = (torch.cat([x, x.new_zeros((1,) + x.shape[1:])])[self.rows] for x in self.kv[cache_id])
        return padded_attention(q, k, v, batch, scale, (pk, pv, self.lens))

    def record(self, cache_id: str, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep an attention layer's K, V [Np, Hkv, D] of the prefixes (while recording)."""
        self.kv[cache_id] = (k, v)

    def gdn_start(self, cache_id: str, num_seqs: int, conv_pool: torch.Tensor,
                  ssm_pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A Gated DeltaNet's starting conv window [B, C, K-1] and recurrent state [B, H, dk, dv] (as its
        cache's state pools hold them): zeros while recording, else each sequence's prefix's final ones."""
        if self.recording:
            return tuple(pool.new_zeros((num_seqs,) + pool.shape[1:]) for pool in (conv_pool, ssm_pool))
        return tuple(torch.cat([x.new_zeros((1,) + x.shape[1:]), x])[self.owner + 1]
                     for x in self.states[cache_id])

    def gdn_end(self, cache_id: str, conv: torch.Tensor, state: torch.Tensor) -> None:
        """Record a Gated DeltaNet's final conv window and recurrent state (while recording)."""
        if self.recording:
            self.states[cache_id] = (conv, state)
