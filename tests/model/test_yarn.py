"""YaRN (`rope_type: yarn`) against transformers: the frequencies and scale for the real Qwen3.5 values, and
fp32 logits of random checkpoints run at positions well past `original_max_position_embeddings`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from qwen35.config import ModelConfig
from qwen35.loading.checkpoint import load_model
from qwen35.model.rope import inv_frequencies
from tests.conftest import hf_checkpoint
from tests.model.helpers import all_logits, prefill_then_decode

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

TOL = 1e-4
QWEN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=262144, rope_theta=1e7,
            partial_rotary_factor=0.25, mrope_section=[11, 11, 10], mrope_interleaved=True)  # the model card's
SHAPE = dict(model_type="qwen3_5_text", vocab_size=248320, hidden_size=1024, num_hidden_layers=24,
             num_attention_heads=8, num_key_value_heads=2, intermediate_size=3584)  # dense-0.8b's


def _ours(rope_parameters: dict, max_pos: int, head_dim: int = 256):
    text = ModelConfig.from_dict({**SHAPE, "head_dim": head_dim,
                                  "max_position_embeddings": max_pos, "rope_parameters": rope_parameters}).text
    return text, *inv_frequencies(text.rope, text.rotary_dim, text.max_position_embeddings)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("change,max_pos,factor", [
    ({}, 262144, 4.0),                                         # Qwen3.5: rotary dim 64, theta 1e7, L0 256k
    ({"attention_factor": 1.3}, 262144, 4.0),                  # explicit cos/sin scale
    ({"factor": None}, 4 * 262144, 4.0),                       # factor = max_position / original
    ({"factor": None, "original_max_position_embeddings": None}, 262144, 1.0),  # original defaults to max_pos
    ({"factor": 8.0, "beta_fast": 16, "beta_slow": 2, "rope_theta": 1e6}, 262144, 8.0),
    ({"mscale": 0.707, "mscale_all_dim": 1.0}, 262144, 4.0),   # DeepSeek-style scale ratio
    ({"truncate": False}, 262144, 4.0),
])
def test_frequencies_and_scale_are_transformers_bit_for_bit(change, max_pos, factor):
    rp = {k: v for k, v in {**QWEN, **change}.items() if v is not None or k == "factor"}
    hf_cfg = transformers.Qwen3_5TextConfig(head_dim=256, max_position_embeddings=max_pos, rope_parameters=dict(rp))
    want_inv, want_scale = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg)
    text, inv, scale = _ours(rp, max_pos)
    assert text.rotary_dim == 64 and text.rope.factor == factor
    assert torch.equal(inv, want_inv) and inv.dtype == torch.float32
    assert scale == pytest.approx(want_scale, rel=1e-12)
    if change.get("factor", 1) is None:  # a key that is absent reads as null
        absent = {k: v for k, v in rp.items() if k != "factor"}
        _, inv2, scale2 = _ours(absent, max_pos)
        assert torch.equal(inv2, want_inv) and scale2 == scale
    assert text.supported_length == int(factor * (rp.get("original_max_position_embeddings") or max_pos))


def test_default_rope_is_transformers_bit_for_bit():
    rp = dict(QWEN, rope_type="default")
    del rp["factor"], rp["original_max_position_embeddings"]
    hf_cfg = transformers.Qwen3_5TextConfig(head_dim=256, rope_parameters=dict(rp))
    want_inv, _ = transformers.models.qwen3_5.modeling_qwen3_5.Qwen3_5TextRotaryEmbedding \
        .compute_default_rope_parameters(hf_cfg)
    _, inv, scale = _ours(rp, 262144)
    assert torch.equal(inv, want_inv) and scale == 1.0


def test_yarn_parameters_round_trip_through_our_config_json():
    rp = dict(QWEN, attention_factor=1.2, beta_fast=16.0, truncate=False)
    cfg = ModelConfig.from_dict({**SHAPE, "rope_parameters": rp})
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.text.rope == cfg.text.rope and again.text.rope.attention_factor == 1.2


# ---- logits: random checkpoints with a 64-token original window, run to position ~300 ----------------------

L0, MAX_POS = 64, 256
CHECKPOINTS = {  # head_dim 64: rotary dim 16, so the YaRN ramp has fractional slots between its ends
    "dense": dict(moe=False, seed=0, head_dim=64, rope_theta=1e4, attention_factor=None),
    "moe": dict(moe=True, seed=1, head_dim=64, rope_theta=1e7, attention_factor=1.2),
}


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def yarn_ckpt(request, tmp_path_factory):
    spec = dict(CHECKPOINTS[request.param])
    rp = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=L0, rope_theta=spec.pop("rope_theta"),
              partial_rotary_factor=0.25, mrope_section=[11, 11, 10], mrope_interleaved=True)
    if (af := spec.pop("attention_factor")) is not None:
        rp["attention_factor"] = af
    d = tmp_path_factory.mktemp(f"yarn_{request.param}")
    hf = hf_checkpoint(d, moe=spec.pop("moe"), seed=spec.pop("seed"), max_position_embeddings=MAX_POS,
                       rope_parameters=rp, **spec)
    assert hf.model.rotary_emb.rope_type == "yarn"
    return d, hf, rp


def _prompts(vocab: int, lengths, seed=0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


@torch.no_grad()
def _hf_logits(hf, ids: list[int]) -> torch.Tensor:
    return hf(torch.tensor([ids])).logits[0].float()


def test_rope_parameters_survive_save_pretrained_and_our_loader(yarn_ckpt):
    path, hf, rp = yarn_ckpt
    written = json.loads((path / "config.json").read_text())
    assert written["max_position_embeddings"] == MAX_POS
    assert {k: written["rope_parameters"][k] for k in rp} == rp
    text = ModelConfig.from_file(path).text
    assert (text.rope.rope_type, text.rope.factor, text.rope.original_max_position_embeddings) == ("yarn", 4.0, L0)
    assert text.rope.theta == rp["rope_theta"] and text.rope.attention_factor == rp.get("attention_factor")
    assert text.supported_length == 4 * L0
    ours, _ = load_model(path, dtype=torch.float32)
    rotary, hf_rotary = ours.model.rotary, hf.model.rotary_emb
    assert torch.equal(rotary.inv_freq, hf_rotary.inv_freq) and rotary.mscale == hf_rotary.attention_scaling


def test_fp32_prefill_beyond_the_original_window_matches_transformers(yarn_ckpt):
    path, hf, _ = yarn_ckpt
    ours, _ = load_model(path, dtype=torch.float32)
    prompts = _prompts(hf.config.vocab_size, lengths=(300, 197))  # up to 4.7 x L0, past max_position too
    for got, ids in zip(all_logits(ours, prompts), prompts):
        want = _hf_logits(hf, ids)
        assert (got - want).abs().max().item() < TOL


def test_fp32_decode_beyond_the_original_window_matches_transformers(yarn_ckpt):
    path, hf, _ = yarn_ckpt
    ours, _ = load_model(path, dtype=torch.float32)
    full = _prompts(hf.config.vocab_size, lengths=(290, 240), seed=1)
    prompts, conts = [f[:-24] for f in full], [f[-24:] for f in full]  # decode positions 216..289
    for got, ids in zip(prefill_then_decode(ours, prompts, conts), full):
        want = _hf_logits(hf, ids)[-24:]
        assert (got - want).abs().max().item() < TOL


def test_the_comparison_sees_yarn(yarn_ckpt):
    """Without YaRN (same weights, default RoPE) the logits are far outside the tolerance: the parity above
    is not a tolerance that ignores the positions."""
    path, hf, _ = yarn_ckpt
    cfg = ModelConfig.from_file(path)
    plain = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, rope=dataclasses.replace(
        cfg.text.rope, rope_type="default")))
    ours, _ = load_model(path, dtype=torch.float32, config=plain)
    ids = _prompts(hf.config.vocab_size, lengths=(200,), seed=2)[0]
    got = all_logits(ours, [ids])[0]
    assert (got - _hf_logits(hf, ids)).abs().max().item() > 100 * TOL
