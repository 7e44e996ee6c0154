"""The checkpoint name table (`loading/names.py`): every tensor the writer and the FP8 quantiser emit maps
through it (dense and MoE, vision and MTP included, per-expert `mtp.layers.0.mlp.experts.*` too), the text
tensors land on exactly the model's parameters, and the parameter count is the table's."""

from __future__ import annotations

import math

import pytest
import torch

from qwen35.config import param_count, preset
from qwen35.loading import names
from qwen35.loading.names import Target, map_name, parse
from qwen35.model.qwen35 import Qwen35ForCausalLM

from .util import all_headers

PRESETS = ["tiny", "tiny-moe", "dense-0.8b", "moe-35b-a3b"]


def _meta_params(cfg) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Qwen35ForCausalLM(cfg.text)
    return {k: tuple(p.shape) for k, p in model.named_parameters()}


def _check_covers_model(cfg, tensors) -> None:
    """Every checkpoint name maps; text tensors land on parameters of the right shape, each exactly once."""
    params = _meta_params(cfg)
    hit: dict[str, int] = {}
    experts: set[tuple[str, int, str]] = set()
    for key, shape in tensors:
        t = map_name(key)
        assert t is not None, key
        if t.kind == "skip":
            assert key.startswith((names.VISUAL, names.MTP)), key
            continue
        if t.kind == "expert":
            assert t.name + ".gate_up_proj" in params, key
            experts.add((t.name, t.expert, t.proj))
            continue
        assert t.kind == "param", key
        assert params[t.name] == tuple(shape), key
        hit[t.name] = hit.get(t.name, 0) + 1
    for stacked in {s for s, _, _ in experts}:
        assert {(stacked, e, p) for e in range(cfg.text.num_experts) for p in names.EXPERT_PROJS} <= experts
        hit[stacked + ".gate_up_proj"] = hit[stacked + ".down_proj"] = 1
    assert all(n == 1 for n in hit.values())
    assert set(hit) == set(params)  # a tied lm_head is not a separate parameter


@pytest.mark.parametrize("name", PRESETS)
def test_official_names_cover_the_model(name):
    cfg = preset(name)
    tensors = names.checkpoint_tensors(cfg)
    assert any(k.startswith(names.VISUAL) for k, _ in tensors) and any(k.startswith(names.MTP) for k, _ in tensors)
    _check_covers_model(cfg, tensors)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_text_only_and_per_expert_layouts_cover_the_model(name):
    """`model.<x>` instead of `model.language_model.<x>`, and routed experts one tensor per expert."""
    cfg = preset(name)
    tensors = []
    for key, shape in names.text_tensors(cfg.text, prefix=names.TEXT_ONLY):
        split = names.split_fused_experts(key, torch.empty(shape, device="meta"))
        tensors += [(k, tuple(v.shape)) for k, v in split.items()] if split else [(key, shape)]
    assert any(".experts.0.gate_proj.weight" in k for k, _ in tensors) == cfg.is_moe
    _check_covers_model(cfg, tensors)


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_written_checkpoints_follow_the_table(which, request):
    """What the writer put on disk is the table, name for name and shape for shape; the FP8 copy's
    names all map too, each quantised weight beside its scale."""
    path, fp8 = request.getfixturevalue(f"{which}_ckpt"), request.getfixturevalue(f"{which}_fp8")
    cfg = preset("tiny-moe" if which == "moe" else "tiny")
    on_disk = {k: shape for k, (_, shape) in all_headers(path).items()}
    assert on_disk == dict(names.checkpoint_tensors(cfg))
    quantised = all_headers(fp8)
    for key, (dtype, _) in quantised.items():
        t = map_name(key)
        assert t is not None, key
        if key.endswith(names.SCALE):
            assert t.kind in ("scale", "expert_scale") and quantised[key[: -len(names.SCALE)]][0] == "F8_E4M3"
        elif dtype == "F8_E4M3":
            assert names.is_quantised(key) and key + names.SCALE in quantised, key
    if which == "moe":
        assert map_name(names.LM + "layers.1.mlp.experts.7.down_proj.weight_scale_inv") == \
            Target("expert_scale", "model.layers.1.mlp.experts", 7, "down_proj")


def test_mtp_experts_are_parsed_and_skipped():
    """The MTP block's per-expert tensors (Qwen3.5) and fused ones (Qwen3.6) are MTP tensors, not text ones."""
    cfg = preset("tiny-moe")
    mtp = [k for k, _ in names.mtp_tensors(cfg.text)]
    assert "mtp.layers.0.mlp.experts.7.down_proj.weight" in mtp and "mtp.fc.weight" in mtp
    n = parse("mtp.layers.0.mlp.experts.3.gate_proj.weight")
    assert (n.component, n.layer, n.expert, n.proj) == ("mtp", 0, 3, "gate_proj")
    fused = parse("mtp.layers.0.mlp.experts.gate_up_proj")
    assert (fused.component, fused.layer, fused.local, fused.expert) == ("mtp", 0, "mlp.experts.gate_up_proj", None)
    for key in mtp + ["mtp.layers.0.mlp.experts.gate_up_proj", "mtp.layers.0.mlp.experts.3.up_proj.weight_scale_inv"]:
        assert map_name(key) == Target("skip", "MTP head"), key
        assert not names.is_quantised(key)
    assert names.split_fused_experts("mtp.layers.0.mlp.experts.gate_up_proj", torch.empty(8, 64, 64)) is None


def test_prefixes_and_unknown_names():
    for prefix in (names.LM, names.TEXT_ONLY):
        assert map_name(prefix + "layers.3.self_attn.q_proj.weight") == \
            Target("param", "model.layers.3.self_attn.q_proj.weight")
        assert map_name(prefix + "layers.3.self_attn.q_proj.weight_scale_inv") == \
            Target("scale", "model.layers.3.self_attn.q_proj.weight")
        assert map_name(prefix + "embed_tokens.weight") == Target("param", "model.embed_tokens.weight")
    assert map_name("lm_head.weight") == Target("param", "lm_head.weight")
    v = parse("model.visual.blocks.0.attn.qkv.weight")
    assert (v.component, v.layer) == ("visual", None)  # vision blocks are not decoder layers
    assert map_name("model.visual.blocks.0.attn.qkv.weight") == Target("skip", "vision tower")
    # built with its tower: `visual.<name below model.visual.>`, FP8 scales paired like the decoder's
    assert map_name("model.visual.blocks.0.attn.qkv.weight", vision=True) == \
        Target("param", "visual.blocks.0.attn.qkv.weight")
    assert map_name("model.visual.merger.linear_fc1.weight_scale_inv", vision=True) == \
        Target("scale", "visual.merger.linear_fc1.weight")
    assert map_name("model.visual.pos_embed.weight", vision=True) == Target("param", "visual.pos_embed.weight")
    assert map_name("transformer.h.0.attn.weight") is None
    assert names.is_f32_on_disk(names.LM + "layers.0.linear_attn.A_log")
    assert not names.is_f32_on_disk(names.LM + "layers.0.linear_attn.dt_bias")


@pytest.mark.parametrize("name", ["tiny", "tiny-moe"])
def test_param_count_is_the_models(name):
    cfg = preset(name)
    assert param_count(cfg.text) == sum(math.prod(s) for s in _meta_params(cfg).values())
