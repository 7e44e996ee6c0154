"""What cache each layer needs: one spec per cache id, declared from the config, never discovered.

A cache id names the layer that owns the cache, by module path: `"layers.3"` is decoder layer 3 of the
main stack, `"mtp.0"` the MTP head's full-attention layer that runs after it. Keying by id rather than by
main-stack index lets the MTP layer (and any future extra layer) get a cache with no special case.

- `AttentionSpec`: paged K/V, per token one K and one V row of `[num_kv_heads, head_dim]` in the model dtype.
- `GDNStateSpec`: a fixed slot per sequence, conv `[conv_dim, kernel - 1]` (the last raw pre-conv inputs,
  model dtype) plus the recurrent state `[Hv, dk, dv]` in fp32 (it integrates over the whole sequence).

`ModelCache` allocates from these specs, and the memory plan prices blocks and slots from the same specs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TextConfig


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    """What a gated-attention layer keeps: K and V rows per token, in pages of `block_size` tokens."""

    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @classmethod
    def from_config(cls, cfg: TextConfig, dtype: torch.dtype) -> "AttentionSpec":
        return cls(cfg.num_key_value_heads, cfg.head_dim, dtype)

    @property
    def row_shape(self) -> tuple[int, int]:
        """Shape of one token's K (or V) row."""
        return (self.num_kv_heads, self.head_dim)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    def bytes_per_block(self, block_size: int) -> int:
        return block_size * self.bytes_per_token


@dataclass(frozen=True, slots=True)
class GDNStateSpec:
    """What a Gated DeltaNet layer keeps: one fixed slot of conv + recurrent state per sequence."""

    conv_dim: int  # channels of the short convolution: q | k | v
    conv_width: int  # kernel - 1 raw inputs kept
    num_heads: int  # Hv
    key_dim: int  # dk
    value_dim: int  # dv
    conv_dtype: torch.dtype  # the model dtype
    ssm_dtype: torch.dtype = torch.float32

    @classmethod
    def from_config(cls, cfg: TextConfig, dtype: torch.dtype) -> "GDNStateSpec":
        return cls(cfg.linear_conv_dim, cfg.linear_conv_kernel_dim - 1, cfg.linear_num_value_heads,
                   cfg.linear_key_head_dim, cfg.linear_value_head_dim, dtype)

    @property
    def conv_shape(self) -> tuple[int, int]:
        return (self.conv_dim, self.conv_width)

    @property
    def ssm_shape(self) -> tuple[int, int, int]:
        return (self.num_heads, self.key_dim, self.value_dim)

    @property
    def bytes_per_slot(self) -> int:
        return (self.conv_dim * self.conv_width * self.conv_dtype.itemsize
                + self.num_heads * self.key_dim * self.value_dim * self.ssm_dtype.itemsize)


CacheSpec = AttentionSpec | GDNStateSpec


def layer_cache_id(layer: int) -> str:
    """Cache id of decoder layer `layer` of the main stack."""
    return f"layers.{layer}"


def mtp_cache_id(layer: int) -> str:
    """Cache id of layer `layer` of the MTP head (a full-attention layer run after the main stack)."""
    return f"mtp.{layer}"


def cache_specs(cfg: TextConfig, dtype: torch.dtype, mtp_layers: int = 0) -> dict[str, CacheSpec]:
    """`{cache_id: spec}` for the main stack in layer order, then `mtp_layers` MTP layers (none by default:
    only a drafter that runs the MTP head needs their K/V)."""
    if not 0 <= mtp_layers <= cfg.mtp_num_hidden_layers:
        raise ValueError(f"the model has {cfg.mtp_num_hidden_layers} MTP layers, asked for {mtp_layers}")
    attention, gdn = AttentionSpec.from_config(cfg, dtype), GDNStateSpec.from_config(cfg, dtype)
    specs: dict[str, CacheSpec] = {
        layer_cache_id(i): attention if kind == "full_attention" else gdn for i, kind in enumerate(cfg.layer_types)
    }
    specs.update({mtp_cache_id(j): attention for j in range(mtp_layers)})
    return specs


def kv_bytes(specs: dict[str, CacheSpec]) -> int:
    """Bytes one token costs in the K/V of every attention layer."""
    return sum(s.bytes_per_token for s in specs.values() if isinstance(s, AttentionSpec))


def state_bytes(specs: dict[str, CacheSpec]) -> int:
    """Bytes one GDN state slot costs across every GDN layer."""
    return sum(s.bytes_per_slot for s in specs.values() if isinstance(s, GDNStateSpec))
