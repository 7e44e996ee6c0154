"""Weight-only int8 / int4 quantisation at load (`load_model(quantization=...)`, `--quantization`).

The loader hands over one unit at a time as soon as all of its tensors are in: a decoder layer, the
embedding / lm_head, and (at the end) the MTP head. `Quantizer.finalize` then fuses the unit's projections
(so a fused projection is quantised once), swaps each `Linear` for a `QuantLinear` and the stacked `Experts`
for `QuantExperts`, and prepacks what stays bf16: only one unit's bf16 weights are alive beside the
quantised model, never the whole bf16 model.

Kept unquantised: norms, conv1d, A_log / dt_bias (not linear layers), the router `mlp.gate`, the
`shared_expert_gate` and the unfused `in_proj_a` / `in_proj_b` (tiny), and for int4 every weight whose K
(inputs) is not a multiple of 64, which our int4 layout cannot hold; these are logged once at the end.
With tied embeddings the lm_head is quantised and the embedding reads its rows from it (`QuantEmbedding`),
so only one copy of the vocabulary matrix stays; an untied embedding stays in the load dtype.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections import defaultdict

from torch import nn

from ..config import CHECKPOINT_METHODS, check_quantization
from ..model.linear import Linear, QuantEmbedding, QuantLinear
from ..model.moe import Experts, QuantExperts
from ..ops import quant

log = logging.getLogger("qwen35.loading")

FORMATS = quant.FORMATS  # quantise at load
KEEP = ("mlp.gate", "shared_expert_gate", "in_proj_a", "in_proj_b")  # small: kept in the load dtype


def resolve(quantization: str | None, checkpoint_method: str | None) -> str | None:
    """The format to quantise to at load ("int8" | "int4" | None) for the `quantization` asked for and the
    checkpoint's own `quant_method` (None for bf16/fp32). Raises ValueError for unknown or mismatched values."""
    q = check_quantization(quantization)
    if q in CHECKPOINT_METHODS:
        if checkpoint_method != q:
            raise ValueError(f"quantization {quantization!r} needs a {q} checkpoint (config.json "
                             f"quantization_config.quant_method: {q}); this one is "
                             f"{checkpoint_method or 'unquantised'}: use int8 or int4 to quantise it at load")
        return None
    return q


def kept_reason(name: str, fmt: str, in_features: int) -> str | None:
    """Why the linear layer `name` stays in the load dtype under `fmt`, or None when it is quantised: "" for the
    small ones in KEEP, or an input size our int4 layout cannot hold. The one rule for loading and for
    loading/random_weights.py."""
    if name.endswith(KEEP):
        return ""
    if not quant.quantizable(fmt, in_features):
        return f"K={in_features} is not a multiple of 64"
    return None


def _pattern(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", name)


class Quantizer:
    """Finalises units of a loaded model: fuse, quantise to `fmt` (None: do not quantise), prepack."""

    def __init__(self, fmt: str | None, fuse: bool, prepack: bool) -> None:
        self.fmt, self.fuse, self.prepack = fmt, fuse, prepack
        self.kept: dict[str, str] = {}  # name pattern -> why it stayed unquantised
        self.counts: defaultdict[str, int] = defaultdict(int)

    def finalize(self, unit: nn.Module, prefix: str) -> None:
        if self.fuse:
            for m in [m for m in unit.modules() if hasattr(m, "fuse")]:
                m.fuse()
        if self.fmt is not None:
            self.quantize(unit, prefix)
        if self.prepack:
            for m in unit.modules():
                if isinstance(m, Linear):
                    m.prepack()
        if self.fmt is not None:
            release_free_memory()  # else the freed bf16 pieces pile up between the quantised ones

    def quantize(self, unit: nn.Module, prefix: str) -> None:
        fmt = self.fmt
        for name, m in list(unit.named_modules()):
            full = prefix + name
            if isinstance(m, Linear) and m.weight is not None and not m.weight.is_meta:
                why = kept_reason(name, fmt, m.in_features)
                if why is None:
                    _replace(unit, name, QuantLinear.from_weight(fmt, m.weight))
                    self.counts["linear"] += 1
                elif why:
                    self.kept[_pattern(full)] = why
            elif isinstance(m, Experts):
                q = QuantExperts.from_experts(m, fmt)
                for part in ("gate_up", "down"):
                    if q.stack(part)[1] is None:
                        self.kept[_pattern(f"{full}.{part}_proj")] = \
                            f"K={q.stack(part)[0].shape[-1]} is not a multiple of 64"
                _replace(unit, name, q)
                self.counts["experts"] += 1

    def quantize_head(self, model: nn.Module) -> None:
        """Quantise the lm_head; with tied embeddings the embedding then reads the quantised rows."""
        if self.fmt is None or not isinstance(model.lm_head, Linear):
            return
        tied = model.cfg.tie_word_embeddings
        weight = model.model.embed_tokens.weight if tied else model.lm_head.weight
        if not quant.quantizable(self.fmt, weight.shape[1]):
            self.kept["lm_head"] = f"K={weight.shape[1]} is not a multiple of 64"
            return
        head = QuantLinear.from_weight(self.fmt, weight)
        model.lm_head = head
        if tied:
            model.model.embed_tokens = QuantEmbedding(head, weight.dtype)
        self.counts["lm_head"] += 1

    def report(self) -> None:
        if self.fmt is None:
            return
        log.info("quantised to %s at load: %d linear layers, %d expert stacks, lm_head: %s", self.fmt,
                 self.counts["linear"], self.counts["experts"], "yes" if self.counts["lm_head"] else "no")
        if self.kept:
            log.info("kept unquantised (%s): %s", self.fmt,
                     "; ".join(f"{k} ({why})" for k, why in sorted(self.kept.items())))


def choose_kernels(model: nn.Module) -> None:
    """The int4 kernel's path, measured on this machine (`quant.choose_int4_isa`) when `model` has int4 weights:
    at load, not in a request's first step."""
    if any(getattr(m, "fmt", None) == "int4" for m in model.modules()):
        quant.choose_int4_isa()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim`; elsewhere nothing). Quantising frees
    each unit's bf16 weights in pieces the allocator keeps between the quantised ones: dense-0.8b int8 peaked
    at 1.21 GiB and stayed at 1.11 GiB for 0.70 GiB of weights; trimmed after each unit, 0.90 and 0.71."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _replace(unit: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(unit.get_submodule(parent) if parent else unit, child, new)


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer, shared tensors once (a tied quantised head counts once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    packed = [m.packed for m in model.modules() if getattr(m, "packed", None) is not None]
    return total + sum(p.numel() * p.element_size() for p in packed)


__all__ = ["Quantizer", "resolve", "FORMATS", "quantized_bytes", "release_free_memory"]
