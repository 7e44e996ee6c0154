"""Cache storage for the hybrid model: paged K/V for attention layers, state slots for GDN layers.

- Attention layers: `k, v: [num_blocks * block_size, n_kv_heads, head_dim]` in the model dtype. A sequence
  owns a list of blocks (its block table); token at position p lives in row
  `block_table[p // block_size] * block_size + p % block_size`. Stored K is post-norm, post-RoPE.
- GDN layers: a pool of fixed slots. `conv: [num_slots, conv_dim, K-1]` (raw pre-conv inputs, model dtype)
  and `ssm: [num_slots, Hv, dk, dv]` (fp32). A sequence owns one slot; speculative decoding can copy a slot
  to spare slots to keep per-position states and roll back by copying one back.

Who owns which block or slot is decided by the engine's allocators; this class only holds tensors and
says how many bytes each unit costs, so a memory plan can size the pools.
"""

from __future__ import annotations

import torch

from ..config import TextConfig


def kv_bytes_per_token(cfg: TextConfig, dtype: torch.dtype) -> int:
    item = torch.empty((), dtype=dtype).element_size()
    return len(cfg.attention_layers) * 2 * cfg.num_key_value_heads * cfg.head_dim * item


def state_bytes_per_slot(cfg: TextConfig, dtype: torch.dtype) -> int:
    item = torch.empty((), dtype=dtype).element_size()
    conv = cfg.linear_conv_dim * (cfg.linear_conv_kernel_dim - 1) * item
    ssm = cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
    return len(cfg.linear_layers) * (conv + ssm)


class ModelCache:
    def __init__(self, cfg: TextConfig, num_blocks: int, block_size: int, num_slots: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if num_blocks <= 0 or block_size <= 0 or num_slots <= 0:
            raise ValueError(f"cache sizes must be positive (blocks={num_blocks}, block_size={block_size}, "
                             f"slots={num_slots})")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_slots = num_slots
        rows = num_blocks * block_size
        kv_shape = (rows, cfg.num_key_value_heads, cfg.head_dim)
        # index of each layer inside its kind's list
        self.index = {layer: i for i, layer in enumerate(cfg.attention_layers)}
        self.index.update({layer: i for i, layer in enumerate(cfg.linear_layers)})
        self.k = [torch.zeros(kv_shape, dtype=dtype, device=device) for _ in cfg.attention_layers]
        self.v = [torch.zeros(kv_shape, dtype=dtype, device=device) for _ in cfg.attention_layers]
        conv_shape = (num_slots, cfg.linear_conv_dim, cfg.linear_conv_kernel_dim - 1)
        ssm_shape = (num_slots, cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim)
        self.conv = [torch.zeros(conv_shape, dtype=dtype, device=device) for _ in cfg.linear_layers]
        self.ssm = [torch.zeros(ssm_shape, dtype=torch.float32, device=device) for _ in cfg.linear_layers]

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.index[layer]
        return self.k[i], self.v[i]

    def state(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.index[layer]
        return self.conv[i], self.ssm[i]

    def reset_slots(self, slots: torch.Tensor | list[int]) -> None:
        """Zero GDN state for sequences that start from scratch."""
        idx = torch.as_tensor(slots, dtype=torch.int64)
        for conv, ssm in zip(self.conv, self.ssm):
            conv.index_fill_(0, idx, 0)
            ssm.index_fill_(0, idx, 0)

    def copy_slot(self, src: int, dst: int) -> None:
        """Copy one sequence's GDN state (prefix-cache restore, speculative checkpoints)."""
        for conv, ssm in zip(self.conv, self.ssm):
            conv[dst].copy_(conv[src])
            ssm[dst].copy_(ssm[src])
