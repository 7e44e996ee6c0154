"""How tensor (and expert) parallelism splits Qwen3.5 across ranks: the rank's share of every layer, and
the slice of every checkpoint tensor it reads (docs/PARALLEL.md).

    attention       query heads split; K/V heads split too, or, with fewer K/V heads than ranks, each rank
                    keeps the one its query heads read (the flagship has 2 K/V heads for 8 ranks)
    Gated DeltaNet  QK and V heads split (their conv channels, gates, A_log, dt_bias and state go with them)
    dense MLP,      gate/up by rows (column parallel), down by columns (row parallel)
    shared expert
    routed experts  by width like the MLP, or with expert parallelism whole experts per rank
    vocabulary      embedding and lm_head by rows (padded to a multiple of the ranks)
    replicated      norms, the router, shared_expert_gate, the MTP head's fc, the vision tower (rank 0)

Every block then ends in one all-reduce (decoder.py). `Shard.text_config` is the config of the rank's share
(head counts and widths divided), so the layers, their cache specs and the memory plan follow from it.
`Shard.slice` names the rows or columns of a checkpoint tensor the rank keeps; the loader reads just those.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import ConfigError, TextConfig
from .group import Group

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Slice:
    """The rank's part of a tensor: along `dim`, the concatenation of `ranges`, zero-padded to `size`."""

    dim: int
    ranges: Ranges
    size: int

    def shape(self, full: tuple[int, ...]) -> tuple[int, ...]:
        return full[:self.dim] + (self.size,) + full[self.dim + 1:]


def _part(n: int, size: int, rank: int, what: str) -> tuple[int, int]:
    if n % size:
        raise ConfigError(f"{what}={n} is not divisible by tensor_parallel_size={size}")
    k = n // size
    return rank * k, (rank + 1) * k


@dataclass(eq=False)
class Shard:
    """Rank `group.rank`'s share of a model of config `cfg`."""

    cfg: TextConfig
    group: Group
    expert_parallel: bool = False

    def __post_init__(self) -> None:
        c, n, r = self.cfg, self.group.size, self.group.rank
        self.heads = _part(c.num_attention_heads, n, r, "num_attention_heads")
        kv = c.num_key_value_heads
        if kv >= n:
            self.kv_heads = _part(kv, n, r, "num_key_value_heads")
        elif n % kv:
            raise ConfigError(f"num_key_value_heads={kv} is fewer than tensor_parallel_size={n} and does not "
                              "divide it: each rank must read one whole K/V head")
        else:  # replicated: ranks [h * n/kv, (h+1) * n/kv) share K/V head h
            h = r // (n // kv)
            self.kv_heads = (h, h + 1)
        self.qk_heads = _part(c.linear_num_key_heads, n, r, "linear_num_key_heads")
        self.v_heads = _part(c.linear_num_value_heads, n, r, "linear_num_value_heads")
        self.mlp = _part(c.intermediate_size, n, r, "intermediate_size") if not c.is_moe else (0, 0)
        self.experts = (0, c.num_experts)
        self.moe = (0, c.moe_intermediate_size)
        if c.is_moe:
            self.shared = _part(c.shared_expert_intermediate_size, n, r, "shared_expert_intermediate_size")
            if self.expert_parallel:
                self.experts = _part(c.num_experts, n, r, "num_experts")
            else:
                self.moe = _part(c.moe_intermediate_size, n, r, "moe_intermediate_size")
        per = -(-c.vocab_size // n)
        self.vocab = (min(r * per, c.vocab_size), min((r + 1) * per, c.vocab_size))
        self.vocab_rows = per  # every rank holds `per` rows; the last may pad

    @classmethod
    def single(cls, cfg: TextConfig) -> "Shard":
        return cls(cfg, Group.single())

    @property
    def size(self) -> int:
        return self.group.size

    def text_config(self) -> TextConfig:
        """The config of this rank's share (the vocabulary and the number of experts the router scores stay
        whole: the embedding, lm_head and MoE handle those themselves)."""
        c = self.cfg
        if self.size == 1:
            return c
        n = lambda r: r[1] - r[0]  # noqa: E731
        return replace(c, num_attention_heads=n(self.heads), num_key_value_heads=n(self.kv_heads),
                       linear_num_key_heads=n(self.qk_heads), linear_num_value_heads=n(self.v_heads),
                       intermediate_size=n(self.mlp) if not c.is_moe else c.intermediate_size,
                       moe_intermediate_size=n(self.moe) if c.is_moe else c.moe_intermediate_size,
                       shared_expert_intermediate_size=n(self.shared) if c.is_moe else
                       c.shared_expert_intermediate_size)

    def describe(self) -> str:
        """One line for the start-up banner."""
        c, n = self.cfg, self.size
        if n == 1:
            return "one rank"
        kv = c.num_key_value_heads
        parts = [f"{n} ranks: per rank {c.num_attention_heads // n} of {c.num_attention_heads} query heads, "
                 + (f"{kv // n} of {kv} K/V heads" if kv >= n else f"1 of {kv} K/V heads (replicated)"),
                 f"{c.linear_num_value_heads // n} of {c.linear_num_value_heads} GDN V heads",
                 f"{self.vocab_rows} of {c.vocab_size} vocabulary rows"]
        if c.is_moe:
            parts.append(f"experts {'whole, ' + str(c.num_experts // n) + ' of ' + str(c.num_experts)}"
                         if self.expert_parallel else
                         f"all {c.num_experts} experts at {c.moe_intermediate_size // n} of "
                         f"{c.moe_intermediate_size} columns")
        return "tensor parallel, " + ", ".join(parts) + (" (expert parallel)" if self.expert_parallel else "")

    # -- checkpoint tensors ----------------------------------------------------------------------------------
    def owns_expert(self, e: int) -> bool:
        return self.experts[0] <= e < self.experts[1]

    def slice(self, local: str, full: tuple[int, ...], expert: int | None = None) -> Slice | None:
        """The part of tensor `local` (its name inside a layer, or `embed_tokens.weight` / `lm_head.weight`;
        `expert` for per-expert tensors, which must be owned) of full shape `full` this rank keeps; None:
        all of it. Raises ConfigError when `full` does not have the split dimension the config says."""
        if self.size == 1:
            return None
        c = self.cfg
        if local in ("embed_tokens.weight", "lm_head.weight"):
            return self._rows(local, full, 0, [self.vocab], c.vocab_size, self.vocab_rows)
        attn, gdn = "self_attn.", "linear_attn."
        d = c.head_dim
        if local == attn + "q_proj.weight":
            return self._rows(local, full, 0, [_scale(self.heads, 2 * d)])
        if local in (attn + "k_proj.weight", attn + "v_proj.weight"):
            return self._rows(local, full, 0, [_scale(self.kv_heads, d)])
        if local == attn + "o_proj.weight":
            return self._rows(local, full, 1, [_scale(self.heads, d)])
        if local.startswith(gdn):
            dk, dv = c.linear_key_head_dim, c.linear_value_head_dim
            kd = c.linear_num_key_heads * dk
            qkv = [_scale(self.qk_heads, dk), _shift(_scale(self.qk_heads, dk), kd),
                   _shift(_scale(self.v_heads, dv), 2 * kd)]
            name = local[len(gdn):]
            if name in ("in_proj_qkv.weight", "conv1d.weight"):
                return self._rows(local, full, 0, qkv)
            if name == "in_proj_z.weight":
                return self._rows(local, full, 0, [_scale(self.v_heads, dv)])
            if name in ("in_proj_b.weight", "in_proj_a.weight", "dt_bias", "A_log"):
                return self._rows(local, full, 0, [self.v_heads])
            if name == "out_proj.weight":
                return self._rows(local, full, 1, [_scale(self.v_heads, dv)])
            return None  # the gated norm's weight (per head dim)
        mlp = {"mlp.": self.mlp, "mlp.shared_expert.": getattr(self, "shared", None)}
        for prefix, cols in mlp.items():
            if cols is not None and local in (prefix + "gate_proj.weight", prefix + "up_proj.weight"):
                return self._rows(local, full, 0, [cols])
            if cols is not None and local == prefix + "down_proj.weight":
                return self._rows(local, full, 1, [cols])
        if local == "mlp.experts.gate_up_proj":  # [E, 2I, H]
            if self.expert_parallel:
                return self._rows(local, full, 0, [self.experts])
            inter = c.moe_intermediate_size
            return self._rows(local, full, 1, [self.moe, _shift(self.moe, inter)])
        if local == "mlp.experts.down_proj":  # [E, H, I]
            return self._rows(local, full, 0 if self.expert_parallel else 2,
                              [self.experts if self.expert_parallel else self.moe])
        if expert is not None and not self.expert_parallel:  # per-expert [I, H] / [H, I]
            return self._rows(local, full, 1 if local.endswith("down_proj.weight") else 0, [self.moe])
        return None

    @staticmethod
    def _rows(name: str, full: tuple[int, ...], dim: int, ranges: list[tuple[int, int]], whole: int | None = None,
              size: int | None = None) -> Slice:
        end = max(b for _, b in ranges)
        if len(full) <= dim or (whole is not None and full[dim] != whole) or full[dim] < end:
            raise ConfigError(f"tensor {name!r} has shape {full}; the tensor-parallel split needs dimension "
                              f"{dim} of at least {whole or end}")
        return Slice(dim, tuple(ranges), size if size is not None else sum(b - a for a, b in ranges))


def _scale(r: tuple[int, int], k: int) -> tuple[int, int]:
    return r[0] * k, r[1] * k


def _shift(r: tuple[int, int], k: int) -> tuple[int, int]:
    return r[0] + k, r[1] + k
