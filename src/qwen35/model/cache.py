"""Cache storage for the hybrid model, allocated from the layers' cache specs (`cache_spec.py`).

- Attention layers: `k, v: [num_blocks * block_size, n_kv_heads, head_dim]` in the model dtype. A sequence
  owns a list of blocks (its block table); token at position p lives in row
  `block_table[p // block_size] * block_size + p % block_size`. Stored K is post-norm, post-RoPE.
- GDN layers: a pool of fixed slots. `conv: [num_slots, conv_dim, K-1]` (raw pre-conv inputs, model dtype)
  and `ssm: [num_slots, Hv, dk, dv]` (fp32). A sequence owns one slot.

Speculative decoding: a step whose metadata carries `snapshot_slots` leaves in those slots the GDN state after
each of its last k+1 tokens (see `GatedDeltaNet.forward`); rolling back to "n draft tokens accepted" is then
one slot copy per sequence (`restore_snapshots`), with no recomputation.

Caches are keyed by cache id (`"layers.3"`, `"mtp.0"`); `kv(i)` / `state(i)` also take a main-stack layer
index. Who owns which block or slot is decided by the engine's allocators; this class only holds tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..config import TextConfig
from .cache_spec import AttentionSpec, CacheSpec, GDNStateSpec, cache_specs, kv_bytes, state_bytes


def kv_bytes_per_token(cfg: TextConfig, dtype: torch.dtype) -> int:
    return kv_bytes(cache_specs(cfg, dtype))


def state_bytes_per_slot(cfg: TextConfig, dtype: torch.dtype) -> int:
    return state_bytes(cache_specs(cfg, dtype))


class ModelCache:
    def __init__(self, specs: Mapping[str, CacheSpec] | TextConfig, num_blocks: int, block_size: int,
                 num_slots: int, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> None:
        """`specs`: `{cache_id: spec}` (see `cache_specs`). A `TextConfig` plus `dtype` is the older form and
        means `cache_specs(cfg, dtype)`."""
        if isinstance(specs, TextConfig):
            if dtype is None:
                raise ValueError("building a cache from a TextConfig needs the model dtype")
            specs = cache_specs(specs, dtype)
        if num_blocks <= 0 or block_size <= 0 or num_slots <= 0:
            raise ValueError(f"cache sizes must be positive (blocks={num_blocks}, block_size={block_size}, "
                             f"slots={num_slots})")
        self.specs = dict(specs)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_slots = num_slots
        # cache id (and, for the main stack, layer index) -> position in its kind's lists below
        self.kv_index: dict[str | int, int] = {}
        self.state_index: dict[str | int, int] = {}
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.conv: list[torch.Tensor] = []
        self.ssm: list[torch.Tensor] = []
        for cache_id, spec in self.specs.items():
            if isinstance(spec, AttentionSpec):
                self._name(self.kv_index, cache_id, len(self.k))
                shape = (num_blocks * block_size,) + spec.row_shape
                self.k.append(torch.zeros(shape, dtype=spec.dtype, device=device))
                self.v.append(torch.zeros(shape, dtype=spec.dtype, device=device))
            elif isinstance(spec, GDNStateSpec):
                self._name(self.state_index, cache_id, len(self.conv))
                self.conv.append(torch.zeros((num_slots,) + spec.conv_shape, dtype=spec.conv_dtype, device=device))
                self.ssm.append(torch.zeros((num_slots,) + spec.ssm_shape, dtype=spec.ssm_dtype, device=device))
            else:
                raise TypeError(f"unknown cache spec for {cache_id!r}: {spec!r}")

    @staticmethod
    def _name(index: dict[str | int, int], cache_id: str, position: int) -> None:
        index[cache_id] = position
        prefix, _, number = cache_id.partition(".")
        if prefix == "layers" and number.isdigit():
            index[int(number)] = position

    def kv(self, layer: int | str) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V rows of an attention layer (cache id, or main-stack layer index)."""
        try:
            i = self.kv_index[layer]
        except KeyError:
            raise KeyError(f"no attention K/V cache for {layer!r}") from None
        return self.k[i], self.v[i]

    def state(self, layer: int | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv and recurrent state pools of a GDN layer (cache id, or main-stack layer index)."""
        try:
            i = self.state_index[layer]
        except KeyError:
            raise KeyError(f"no GDN state cache for {layer!r}") from None
        return self.conv[i], self.ssm[i]

    def reset_slots(self, slots: torch.Tensor | list[int]) -> None:
        """Zero GDN state for sequences that start from scratch."""
        idx = torch.as_tensor(slots, dtype=torch.int64, device=self.conv[0].device if self.conv else "cpu")
        for conv, ssm in zip(self.conv, self.ssm):
            conv.index_fill_(0, idx, 0)
            ssm.index_fill_(0, idx, 0)

    def copy_slot(self, src: int, dst: int) -> None:
        """Copy one sequence's GDN state (prefix-cache restore and save)."""
        for conv, ssm in zip(self.conv, self.ssm):
            conv[dst].copy_(conv[src])
            ssm[dst].copy_(ssm[src])

    def restore_snapshots(self, src: torch.Tensor | list[int], dst: torch.Tensor | list[int]) -> None:
        """Speculative rollback: slot `dst[j]` takes the GDN state of slot `src[j]`, for all j at once (one
        gather + scatter per pool, no loop over sequences). For a sequence that accepted n of k draft tokens,
        src is its `snapshot_slots[n]` and dst its own state slot; n = k needs no copy (that snapshot equals
        the slot already). `src` and `dst` must not share slots. On CPU one row copy per pair and layer (a
        verification step has one pair per rejecting sequence)."""
        device = self.conv[0].device if self.conv else torch.device("cpu")
        if device.type == "cpu":  # row copies run 4x faster than index_select + index_copy_ here
            pairs = list(zip(torch.as_tensor(src).tolist(), torch.as_tensor(dst).tolist()))
            for conv, ssm in zip(self.conv, self.ssm):
                for a, b in pairs:
                    conv[b].copy_(conv[a])
                    ssm[b].copy_(ssm[a])
            return
        src = torch.as_tensor(src, dtype=torch.int64, device=device)
        dst = torch.as_tensor(dst, dtype=torch.int64, device=device)
        for conv, ssm in zip(self.conv, self.ssm):
            conv.index_copy_(0, dst, conv.index_select(0, src))
            ssm.index_copy_(0, dst, ssm.index_select(0, src))
