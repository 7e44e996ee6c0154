"""Memory plan: how many K/V blocks and GDN state slots a cache budget buys. Logged at start-up.

The default budget is a share of the memory free on the cache's device: `MemAvailable` from /proc/meminfo on
CPU, `torch.cuda.mem_get_info` on CUDA (measured after the weights are loaded, so they are already counted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TextConfig
from ..model.cache_spec import cache_specs, kv_bytes, state_bytes

log = logging.getLogger("qwen35.engine")


@dataclass(frozen=True)
class MemoryPlan:
    num_blocks: int
    block_size: int
    run_slots: int
    prefix_slots: int
    block_bytes: int
    slot_bytes: int
    max_model_len: int = 0  # what the plan was sized for (0: unknown)
    scratch_slots: int = 0  # GDN snapshot slots of speculative decoding (k per running slot), after the others

    @property
    def total_slots(self) -> int:
        return self.run_slots + self.prefix_slots + self.scratch_slots

    @property
    def total_bytes(self) -> int:
        return self.num_blocks * self.block_bytes + self.total_slots * self.slot_bytes

    @property
    def kv_tokens(self) -> int:
        """Tokens of K/V the cache holds, all sequences together; also the longest single context it could
        hold (requests are capped at max_model_len)."""
        return self.num_blocks * self.block_size

    @property
    def full_sequences(self) -> int:
        """How many max_model_len-token sequences fit in the K/V blocks at once (not counting max_num_seqs)."""
        if self.max_model_len <= 0:
            return 0
        return self.num_blocks // -(-self.max_model_len // self.block_size)

    def describe(self) -> str:
        gib = 1 << 30
        text = (f"cache plan: {self.num_blocks} K/V blocks x {self.block_size} tokens "
                f"({self.num_blocks * self.block_bytes / gib:.2f} GiB, {self.kv_tokens} tokens), "
                f"{self.run_slots} running + {self.prefix_slots} prefix-cache GDN state slots "
                f"({(self.run_slots + self.prefix_slots) * self.slot_bytes / gib:.2f} GiB, "
                f"{self.slot_bytes / (1 << 20):.1f} MiB each)")
        if self.scratch_slots:
            text += (f", {self.scratch_slots} speculative snapshot slots "
                     f"({self.scratch_slots * self.slot_bytes / gib:.2f} GiB)")
        if self.max_model_len > 0:
            text += (f"; context: {self.kv_tokens} K/V tokens in all, room for {self.full_sequences} full "
                     f"max_model_len={self.max_model_len} sequences at once (max_num_seqs={self.run_slots}), "
                     f"longest single context the cache can hold {self.kv_tokens} tokens")
        return text


DEFAULT_FRACTION = {"cpu": 0.4, "cuda": 0.85}  # of free memory; the rest is for activations (and, on CPU, the OS)


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free on `device`: CUDA's free memory, or what the OS says is available (MemAvailable), or 4 GiB
    when it cannot tell."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def unit_bytes(cfg: TextConfig, dtype: torch.dtype, block_size: int, mtp_layers: int = 0) -> tuple[int, int]:
    """(bytes of one K/V block across every attention layer, the MTP head's `mtp_layers` included; bytes of one
    GDN state slot across every GDN layer)."""
    specs = cache_specs(cfg, dtype, mtp_layers)
    return max(kv_bytes(specs) * block_size, 1), max(state_bytes(specs), 1)


def full_budget(cfg: TextConfig, dtype: torch.dtype, max_num_seqs: int, max_model_len: int, block_size: int = 16,
                prefix_fraction: float = 0.3, mtp_layers: int = 0, num_speculative_tokens: int = 0) -> int:
    """The most cache the engine can use: every running sequence at max_model_len with its state slot (and
    its snapshot slots), plus the prefix cache's share. The default budget is this, capped by free memory."""
    block_bytes, slot_bytes = unit_bytes(cfg, dtype, block_size, mtp_layers)
    running = max_num_seqs * ((-(-max_model_len // block_size)) * block_bytes + (1 + num_speculative_tokens) * slot_bytes)
    # `plan_memory` gives the prefix cache `prefix_fraction` of the whole budget, so the running sequences' share
    # must be the rest (adding the fraction of the running part on top left too few blocks for one full-length
    # sequence when slots are large against blocks, as with max_num_seqs=1 on a small model); + one of each
    # for rounding
    return int(running / (1 - prefix_fraction)) + block_bytes + slot_bytes


def default_budget(cfg: TextConfig, dtype: torch.dtype, max_num_seqs: int, max_model_len: int,
                   block_size: int = 16, prefix_fraction: float = 0.3, memory_fraction: float | None = None,
                   device: torch.device | str = "cpu", mtp_layers: int = 0, num_speculative_tokens: int = 0,
                   sharing: int = 1) -> int:
    """The cache budget when none is given: enough for every sequence at full length (`full_budget`), bounded
    by `memory_fraction` (default 40% on CPU, 85% on CUDA) of the memory free on `device`, split between the
    `sharing` processes that draw on it (the tensor-parallel ranks of one machine share its RAM)."""
    if memory_fraction is None:
        memory_fraction = DEFAULT_FRACTION.get(torch.device(device).type, DEFAULT_FRACTION["cpu"])
    return min(int(available_memory(device) * memory_fraction / sharing),
               full_budget(cfg, dtype, max_num_seqs, max_model_len, block_size, prefix_fraction, mtp_layers,
                           num_speculative_tokens))


def plan_memory(cfg: TextConfig, dtype: torch.dtype, budget: int | None, max_num_seqs: int, max_model_len: int,
                block_size: int = 16, prefix_fraction: float = 0.3, memory_fraction: float | None = None,
                device: torch.device | str = "cpu", mtp_layers: int = 0, num_speculative_tokens: int = 0) -> MemoryPlan:
    """Split `budget` bytes (default: `memory_fraction` of the memory free on `device`, by default 40% on CPU
    and 85% on CUDA) between state slots for `max_num_seqs` running requests (plus `num_speculative_tokens`
    snapshot slots each), prefix-cache state slots (`prefix_fraction` of the budget) and K/V blocks (of every
    attention layer, the `mtp_layers` of the MTP head included)."""
    block_bytes, slot_bytes = unit_bytes(cfg, dtype, block_size, mtp_layers)
    scratch = max_num_seqs * num_speculative_tokens
    if budget is None:
        budget = default_budget(cfg, dtype, max_num_seqs, max_model_len, block_size, prefix_fraction,
                                memory_fraction, device, mtp_layers, num_speculative_tokens)
    run_bytes = (max_num_seqs + scratch) * slot_bytes
    if budget <= run_bytes:
        raise ValueError(f"KV cache memory of {budget / (1 << 20):.0f} MiB cannot hold the GDN state of "
                         f"max_num_seqs={max_num_seqs} sequences ({run_bytes / (1 << 20):.0f} MiB"
                         + (f" with {num_speculative_tokens} snapshot slots each" if scratch else "") + ")")
    prefix_slots = int(budget * prefix_fraction) // slot_bytes
    num_blocks = (budget - run_bytes - prefix_slots * slot_bytes) // block_bytes
    need = -(-max_model_len // block_size)
    if num_blocks < need:
        raise ValueError(f"KV cache memory of {budget / (1 << 20):.0f} MiB leaves {num_blocks} blocks, fewer than "
                         f"one max_model_len={max_model_len} sequence needs ({need}); raise --kv-cache-memory or "
                         f"lower --max-model-len / --max-num-seqs")
    plan = MemoryPlan(num_blocks, block_size, max_num_seqs, prefix_slots, block_bytes, slot_bytes, max_model_len,
                      scratch)
    log.info(plan.describe())
    return plan
