"""Fusing and prepacking after load leave each module two forward paths (fused/packed and as loaded): both are
tested here. With `fuse=False, prepack=False` the modules keep the checkpoint's separate projections; their
logits must equal the fused + prepacked model's within fp32 tolerance, for prefill and decode, dense and MoE."""

from __future__ import annotations

import pytest
import torch

from qwen35.loading.checkpoint import load_model
from qwen35.model.linear import Linear
from tests.model.helpers import all_logits, prefill_then_decode

from .util import random_prompts

TOL = 1e-4  # fp32; measured max |diff| 7e-7 on logits of std 0.16 (matmul summation order only)


def _packed(model) -> bool:
    return any(isinstance(m, Linear) and m.packed is not None for m in model.modules())


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_unfused_unpacked_matches_fused_packed(which, request):
    path = request.getfixturevalue(f"{which}_ckpt")
    fast, cfg = load_model(path, dtype=torch.float32)
    plain, _ = load_model(path, dtype=torch.float32, fuse=False, prepack=False)
    fused_only, _ = load_model(path, dtype=torch.float32, fuse=True, prepack=False)
    gdn, attn, mlp = plain.model.layers[0].linear_attn, plain.model.layers[3].self_attn, plain.model.layers[0].mlp
    assert gdn.in_proj is None and attn.qkv_proj is None and not _packed(plain)
    assert fast.model.layers[0].linear_attn.in_proj is not None and _packed(fast)
    assert fused_only.model.layers[0].linear_attn.in_proj is not None and not _packed(fused_only)
    if which == "dense":
        assert mlp.gate_up_proj is None

    prompts = random_prompts(cfg.text.vocab_size, lengths=(70, 1, 33), seed=3)
    want = all_logits(fast, prompts)
    for model in (plain, fused_only):
        for got, ref in zip(all_logits(model, prompts), want):
            assert (got - ref).abs().max().item() < TOL
    conts = random_prompts(cfg.text.vocab_size, lengths=(4, 4, 4), seed=4)
    want = prefill_then_decode(fast, prompts, conts)
    for got, ref in zip(prefill_then_decode(plain, prompts, conts), want):  # decode: single-row matmuls
        assert (got - ref).abs().max().item() < TOL
