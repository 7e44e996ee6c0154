"""Weight-only int8 / int4 quantisation at load (`load_model(quantization=...)`, loading/quantize.py).

Tolerances. Against the bf16 model, the error is the quantisation's own: int8 (per-row absmax / 127) moves a
weight by at most 0.4% of its row's largest, int4 (Q4_0, groups of 32) by up to 1/16 of its group's largest.
On the tiny random checkpoints we measured a mean KL(bf16 || quantised) per position of ~1e-5 (int8) and ~1e-3
(int4), and a largest |delta log-softmax| of 0.04 / 0.3; the bounds below are 10-20x those (KL) and ~5x
(log-softmax), far below what a wrong layout gives (a transposed or mis-scaled weight: KL > 1).
The compute path itself (our kernels, the expert loop, the tied embedding gather) is checked tightly against the
same model with every quantised weight dequantised back into plain modules: there only bf16 rounding differs.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from qwen35.config import check_quantization
from qwen35.engine.config import EngineConfig
from qwen35.loading.checkpoint import load_model
from qwen35.loading.quantize import quantized_bytes
from qwen35.model.linear import Linear, QuantEmbedding, QuantLinear
from qwen35.model.moe import Experts, QuantExperts
from qwen35.ops import quant
from tests.model.helpers import all_logits

from .util import random_prompts

KL_MAX = {"int8": 1e-3, "int4": 2e-2}
LOGSOFTMAX_MAX = {"int8": 0.25, "int4": 1.5}


def _logprobs(model, prompts) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(all_logits(model, prompts)).float().log_softmax(-1)


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(20000, (40, 17, 150), seed=5)


@pytest.fixture(scope="module", params=["dense", "moe"])
def which(request):
    return request.param


@pytest.fixture(scope="module")
def reference(which, request, prompts):
    path = request.getfixturevalue(f"{which}_ckpt")
    model, _ = load_model(path, progress=False)
    return path, _logprobs(model, prompts), quantized_bytes(model)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantised_logits_close_to_bf16(reference, fmt, prompts, which):
    path, ref, _ = reference
    model, cfg = load_model(path, quantization=fmt, progress=False)
    got = _logprobs(model, prompts)
    kl = (ref.exp() * (ref - got)).sum(-1)
    assert kl.mean() < KL_MAX[fmt], kl.mean()
    assert (ref - got).abs().max() < LOGSOFTMAX_MAX[fmt]
    assert isinstance(model.lm_head, QuantLinear)
    assert isinstance(model.model.embed_tokens, QuantEmbedding) == cfg.text.tie_word_embeddings
    assert not any(type(m) is Linear and m.weight is not None and m.weight.shape[0] >= 128
                   for m in model.model.layers.modules()), "a large projection stayed bf16"
    if which == "moe":
        assert all(isinstance(layer.mlp.experts, QuantExperts) for layer in model.model.layers)
        assert all(type(layer.mlp.gate) is Linear for layer in model.model.layers)  # the router stays bf16


def _dequantised_copy(model: nn.Module) -> None:
    """Replace every quantised module by a plain one holding its dequantised weight (in place)."""
    for name, m in list(model.named_modules()):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if isinstance(m, QuantLinear):
            plain = Linear(m.in_features, m.out_features)
            plain.weight = nn.Parameter(m.dequantized(torch.bfloat16), requires_grad=False)
            setattr(owner, child, plain)
        elif isinstance(m, QuantExperts):
            plain = Experts(1, 1, 1)
            for part, attr in (("gate_up", "gate_up_proj"), ("down", "down_proj")):
                q, s, z = m.stack(part)
                w = q if s is None else quant.dequantize(m.fmt, q, s, z, torch.bfloat16)
                setattr(plain, attr, nn.Parameter(w, requires_grad=False))
            setattr(owner, child, plain)
        elif isinstance(m, QuantEmbedding):
            emb = nn.Embedding(m.num_embeddings, m.embedding_dim)
            emb.weight = nn.Parameter(quant.dequantize(m.fmt, m.q, m.scale, m.zeros, torch.bfloat16),
                                      requires_grad=False)
            setattr(owner, child, emb)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_compute_path_matches_dequantised_weights(reference, fmt, prompts):
    """Kernels + experts + quantised embedding rows == plain modules holding the dequantised weights, up to
    rounding: bf16, and the AVX512 kernels' int8 inputs per 32 (quant.q8_activations, ~0.4% per input)."""
    path, _, _ = reference
    model, _ = load_model(path, quantization=fmt, progress=False)
    got = _logprobs(model, prompts[:1])
    _dequantised_copy(model)
    want = _logprobs(model, prompts[:1])
    assert (got - want).abs().max() < 0.1
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_decode_rows_match_prefill_rows(dense_ckpt):
    """Short (kernel) and long (dequantise + oneDNN, PREFILL_ROWS) row counts compute the same projection."""
    model, _ = load_model(dense_ckpt, quantization="int4", progress=False)
    lin = model.model.layers[0].mlp.gate_up_proj
    x = torch.randn(quant.PREFILL_ROWS + 3, lin.in_features).bfloat16()
    long = lin(x)
    short = torch.cat([lin(x[i:i + 4]) for i in range(0, x.shape[0], 4)])
    assert (long.float() - short.float()).abs().max() / long.float().abs().max() < 2e-2


def test_parameter_memory_halves_and_quarters(reference, which):
    """Everything in memory after load, shared tensors once: int8 ~1/2 and int4 ~1/4 of bf16 for the decoder
    layers (the dense tiny model ties its 248k-row embedding, so the whole model follows too)."""
    path, _, bf16_bytes = reference
    sizes = {}
    for fmt in ("int8", "int4"):
        model, cfg = load_model(path, quantization=fmt, progress=False)
        sizes[fmt] = (quantized_bytes(model), quantized_bytes(model.model.layers))
    bf16_model, _ = load_model(path, progress=False)
    bf16_layers = quantized_bytes(bf16_model.model.layers)
    # int8: 1 byte + 4 per row; int4: 0.5 byte + 2 per 32; the small bf16 leftovers (norms, router, conv)
    # weigh more in the tiny models than in real ones
    assert sizes["int8"][1] < 0.62 * bf16_layers
    # tiny-moe's down projections (K = 32, a third of the expert weights) stay bf16 under int4
    assert sizes["int4"][1] < (0.4 if which == "dense" else 0.5) * bf16_layers
    if which == "dense":  # tied: the one vocabulary matrix is quantised
        assert sizes["int8"][0] < 0.56 * bf16_bytes
        assert sizes["int4"][0] < 0.32 * bf16_bytes


def test_int4_keeps_short_k_weights_unquantised(moe_ckpt, caplog):
    """tiny-moe's expert and shared-expert down projections have K = 32: int4 cannot hold them, they stay bf16
    (logged once, not a crash); int8 takes every K."""
    with caplog.at_level(logging.INFO, logger="qwen35.loading"):
        model, _ = load_model(moe_ckpt, quantization="int4", progress=False)
    experts = model.model.layers[0].mlp.experts
    assert experts.stack("gate_up")[1] is not None and experts.stack("down")[1] is None
    assert experts.stack("down")[0].dtype == torch.bfloat16
    assert type(model.model.layers[0].mlp.shared_expert.down_proj) is Linear
    kept = [r.getMessage() for r in caplog.records if "kept unquantised" in r.getMessage()]
    assert len(kept) == 1 and "mlp.experts.down_proj" in kept[0] and "K=32" in kept[0]
    model8, _ = load_model(moe_ckpt, quantization="int8", progress=False)
    assert model8.model.layers[0].mlp.experts.stack("down")[1] is not None


def test_fp8_checkpoint_is_dequantised_then_quantised(dense_fp8, dense_ckpt, prompts):
    model, _ = load_model(dense_fp8, quantization="int8", progress=False)
    assert isinstance(model.model.layers[0].mlp.gate_up_proj, QuantLinear)
    ref, _ = load_model(dense_ckpt, progress=False)
    want, got = _logprobs(ref, prompts[:1]), _logprobs(model, prompts[:1])
    assert (want.exp() * (want - got)).sum(-1).mean() < KL_MAX["int8"] * 5  # FP8's error plus int8's


def test_fp8_names_an_fp8_checkpoint(dense_fp8):
    """`quantization="fp8"` (vLLM users pass it) is a check of an FP8 checkpoint, which loads as it is."""
    model, _ = load_model(dense_fp8, quantization="FP8", progress=False)
    assert type(model.model.layers[0].mlp.gate_proj).__name__ == "FP8Linear"


def test_bad_values_name_the_choices(dense_ckpt):
    for bad in ("int3", "fp4", ""):
        with pytest.raises(ValueError, match="int8, int4, fp8, gptq, awq"):
            load_model(dense_ckpt, quantization=bad, progress=False)
        with pytest.raises(ValueError, match="int8, int4, fp8, gptq, awq"):
            EngineConfig(model=str(dense_ckpt), quantization=bad)
    with pytest.raises(ValueError, match="gptq checkpoint"):
        load_model(dense_ckpt, quantization="gptq", progress=False)
    with pytest.raises(ValueError, match="fp8 checkpoint"):  # no FP8 compute on CPUs: not made at load
        load_model(dense_ckpt, quantization="fp8", progress=False)
    assert check_quantization("INT8") == "int8" and check_quantization("gptq_marlin") == "gptq"
    assert check_quantization(None) is None


def test_mtp_head_is_quantised_too(dense_ckpt):
    model, _ = load_model(dense_ckpt, quantization="int8", progress=False, mtp=True)
    assert isinstance(model.mtp.fc, QuantLinear)
    assert isinstance(model.mtp.layers[0].self_attn.qkv_proj, QuantLinear)
