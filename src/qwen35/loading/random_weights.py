"""A model of any preset with random weights built straight into its quantised form, unit by unit from the
meta device: no checkpoint is written or read, and only one decoder layer's small bf16 tensors exist at a
time. For load-memory and speed measurements of shapes too large to write as bf16 (moe-35b-a3b: 70 GB);
bench/quant_quality.py --random uses it.

The structure is exactly what `load_model(quantization=fmt)` builds (same fusing, same modules kept bf16 by
loading/quantize.py's rules); the quantised values are uniform random codes with a scale that gives the
weights about the std of the random checkpoints (0.02), not the quantisation of a drawn bf16 weight.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..model.linear import Linear, QuantEmbedding, QuantLinear
from ..model.moe import Experts, QuantExperts
from ..model.qwen35 import Qwen35ForCausalLM
from ..ops import quant
from .checkpoint import FP32_SUFFIXES
from .quantize import _replace, choose_kernels, kept_reason
from .writer import init_kind, random_tensor

STD = 0.02
_CODE_STD = {"int8": 73.6, "int4": 4.6}  # std of uniform codes in [-127, 127] / of u - 8, u uniform in 0..15


def _random_codes(fmt: str, lead: tuple[int, ...], N: int, K: int, gen: torch.Generator | None):
    """Uniform random codes; gen None: meta tensors (shapes and bytes only)."""
    dev = "meta" if gen is None else "cpu"
    if fmt == "int8":
        q = torch.empty((*lead, N, K), dtype=torch.int8, device=dev)
        scale = torch.full((*lead, N), STD / _CODE_STD[fmt], device=dev)
    else:
        q = torch.empty((*lead, N, K // 2), dtype=torch.uint8, device=dev)
        scale = torch.full((*lead, N, K // quant.INT4_GROUP), STD / _CODE_STD[fmt], dtype=torch.float16, device=dev)
    if gen is not None:
        q.random_(-127, 128, generator=gen) if fmt == "int8" else q.random_(0, 256, generator=gen)
    return q, scale, None


def _randn(shape, dtype: torch.dtype, gen: torch.Generator | None) -> torch.Tensor:
    if gen is None:
        return torch.empty(shape, dtype=dtype, device="meta")
    return torch.empty(shape, dtype=dtype).normal_(0.0, STD, generator=gen)  # no fp32 copy of a 248k-row table


def _materialise(unit: nn.Module, prefix: str, dtype: torch.dtype, gen: torch.Generator | None) -> None:
    for name, p in list(unit.named_parameters()):
        if p.is_meta:
            full = prefix + name
            want = torch.float32 if full.endswith(FP32_SUFFIXES) else dtype
            value = torch.empty(p.shape, dtype=want, device="meta") if gen is None else \
                random_tensor(tuple(p.shape), init_kind(full, tuple(p.shape)), gen).to(want)
            owner, _, attr = name.rpartition(".")
            (unit.get_submodule(owner) if owner else unit)._parameters[attr] = nn.Parameter(value, requires_grad=False)


def _unit(unit: nn.Module, prefix: str, fmt: str | None, dtype: torch.dtype, gen: torch.Generator | None,
          fuse: bool, prepack: bool) -> None:
    if fuse:
        for m in [m for m in unit.modules() if hasattr(m, "fuse")]:
            m.fuse()  # torch.cat of meta tensors: shapes only
    if fmt is not None:
        for name, m in list(unit.named_modules()):
            if isinstance(m, Linear) and m.weight is not None and kept_reason(name, fmt, m.in_features) is None:
                _replace(unit, name, QuantLinear(fmt, *_random_codes(fmt, (), m.out_features, m.in_features, gen)))
            elif isinstance(m, Experts):
                stacks = []
                for w in (m.gate_up_proj, m.down_proj):
                    E, N, K = w.shape
                    stacks.append(_random_codes(fmt, (E,), N, K, gen) if quant.quantizable(fmt, K) else
                                  (_randn((E, N, K), dtype, gen), None, None))
                _replace(unit, name, QuantExperts(fmt, *stacks))
    _materialise(unit, prefix, dtype, gen)
    if prepack and gen is not None:
        for m in unit.modules():
            if isinstance(m, Linear):
                m.prepack()


@torch.no_grad()
def random_model(cfg: ModelConfig, fmt: str | None = "int4", seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                 mtp: bool = False, fuse: bool = True, prepack: bool = True,
                 meta: bool = False) -> Qwen35ForCausalLM:
    """A CPU model of `cfg`'s shape with random weights, quantised to `fmt` ("int8" | "int4"; None: bf16).
    `meta`: the same structure on the meta device, for its exact size (`quantize.quantized_bytes`) without
    allocating it."""
    gen = None if meta else torch.Generator().manual_seed(seed)
    text = cfg.text
    with torch.device("meta"):
        model = Qwen35ForCausalLM(text, mtp=mtp)
    for i, layer in enumerate(model.model.layers):
        _unit(layer, f"model.layers.{i}.", fmt, dtype, gen, fuse, prepack)
    if model.mtp is not None:
        _unit(model.mtp, "mtp.", fmt, dtype, gen, fuse, prepack)
    _materialise(model.model.norm, "model.norm.", dtype, gen)
    V, H = text.vocab_size, text.hidden_size
    if fmt is not None and quant.quantizable(fmt, H):
        model.lm_head = QuantLinear(fmt, *_random_codes(fmt, (), V, H, gen))
        if text.tie_word_embeddings:
            model.model.embed_tokens = QuantEmbedding(model.lm_head, dtype)
    if not isinstance(model.model.embed_tokens, QuantEmbedding):
        model.model.embed_tokens.weight = nn.Parameter(_randn((V, H), dtype, gen), requires_grad=False)
    if isinstance(model.lm_head, Linear):
        model.lm_head.weight = model.model.embed_tokens.weight if text.tie_word_embeddings else \
            nn.Parameter(_randn((V, H), dtype, gen), requires_grad=False)
    if meta:
        return model
    model.model.rotary = type(model.model.rotary)(text.rope, text.rotary_dim, text.max_position_embeddings)
    if prepack:
        choose_kernels(model)
    return model.eval()
