"""Broken or unusual checkpoints: every failure is a CheckpointError / ConfigError that names the problem;
per-expert expert layouts load; vision and MTP tensors are skipped and reported."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from qwen35.config import ConfigError, ModelConfig
from qwen35.loading.checkpoint import CheckpointError, load_model
from tests.model.helpers import all_logits

from .util import edit_config, edit_shard, random_prompts, shard_of, weight_map

LM = "model.language_model."
Q_PROJ = LM + "layers.3.self_attn.q_proj.weight"


def _raises(exc, path, *needles: str) -> str:
    with pytest.raises(exc) as err:
        load_model(path)
    msg = str(err.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# -- files ------------------------------------------------------------------------------------------

def test_missing_shard_file(dense_copy):
    shard = shard_of(dense_copy, Q_PROJ)
    shard.unlink()
    _raises(CheckpointError, dense_copy, shard.name, "do not exist")


def test_truncated_shard(dense_copy):
    shard = shard_of(dense_copy, LM + "embed_tokens.weight")
    os.truncate(shard, shard.stat().st_size // 2)
    _raises(CheckpointError, dense_copy, shard.name, "truncated")


def test_shard_that_is_not_safetensors(dense_copy):
    shard = shard_of(dense_copy, Q_PROJ)
    shard.write_bytes(b"<html>404 Not Found</html>" * 10)
    _raises(CheckpointError, dense_copy, shard.name)


def test_corrupt_index(dense_copy):
    (dense_copy / "model.safetensors.index.json").write_text("{not json")
    _raises(CheckpointError, dense_copy, "model.safetensors.index.json")


def test_no_weights_at_all(dense_copy):
    for f in dense_copy.glob("*.safetensors*"):
        f.unlink()
    _raises(CheckpointError, dense_copy, "model.safetensors")


def test_not_a_directory(tmp_path):
    _raises(CheckpointError, tmp_path / "nowhere", "nowhere")


# -- config.json --------------------------------------------------------------------------------------

def test_wrong_model_type(dense_copy):
    edit_config(dense_copy, lambda c: c.update(model_type="llama"))
    _raises(ConfigError, dense_copy, "model_type", "llama")


def test_config_not_json(dense_copy):
    (dense_copy / "config.json").write_text('{"model_type": "qwen3_5", ')
    _raises(ConfigError, dense_copy, "config.json", "not valid JSON")


def test_config_missing(dense_copy):
    (dense_copy / "config.json").unlink()
    _raises(ConfigError, dense_copy, "config.json", "does not exist")


def _set_text(**fields):
    return lambda c: c["text_config"].update(fields)


@pytest.mark.parametrize("edit, field", [
    (_set_text(num_attention_heads=3), "num_attention_heads"),  # 3 query heads over 2 KV heads
    (_set_text(linear_num_value_heads=3), "linear_num_value_heads"),  # 3 V heads over 2 K heads
    (_set_text(layer_types=["linear_attention"] * 3), "layer_types"),  # 3 entries, 4 layers
    (_set_text(layer_types=["linear_attention"] * 3 + ["sliding_window"]), "layer_types"),
    (_set_text(hidden_size=-64), "hidden_size"),
    (lambda c: c["text_config"].pop("hidden_size"), "hidden_size"),
    (lambda c: c.pop("text_config"), "vocab_size"),
    (_set_text(num_hidden_layers=0), "num_hidden_layers"),
    (_set_text(head_dim="32"), "head_dim"),
    (_set_text(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e7}), "rope_type"),
    (_set_text(rope_parameters={"rope_type": "default", "rope_theta": -1.0}), "rope_theta"),
    (_set_text(rms_norm_eps=0), "rms_norm_eps"),
    (_set_text(hidden_act="gelu"), "hidden_act"),
    (lambda c: c.update(text_config=[]), "text_config"),
    (lambda c: c.update(quantization_config={"quant_method": "bitsandbytes"}), "quant_method"),
    (lambda c: c.update(quantization_config={"quant_method": "fp8", "weight_block_size": [128]}),
     "weight_block_size"),
], ids=["heads", "gdn_heads", "layer_types_len", "layer_kind", "hidden_size", "no_hidden_size", "no_text_config",
        "layers", "head_dim_type",
        "rope_type", "rope_theta", "eps", "act", "text_config", "quant_method", "block"])
def test_impossible_config(dense_copy, edit, field):
    edit_config(dense_copy, edit)
    msg = _raises(ConfigError, dense_copy, field)
    assert str(dense_copy / "config.json") in msg  # and which file
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_file(dense_copy)


@pytest.mark.parametrize("edit, field", [
    (_set_text(num_experts_per_tok=9), "num_experts_per_tok"),  # 9 of 8 experts
    (_set_text(moe_intermediate_size=0), "moe_intermediate_size"),
], ids=["topk", "moe_inter"])
def test_impossible_moe_config(moe_copy, edit, field):
    edit_config(moe_copy, edit)
    _raises(ConfigError, moe_copy, field)


# -- tensors ----------------------------------------------------------------------------------------

def test_tensor_of_wrong_shape(dense_copy):
    def shrink(t):
        t[Q_PROJ] = t[Q_PROJ][:-32].clone()

    edit_shard(dense_copy, Q_PROJ, shrink)
    _raises(CheckpointError, dense_copy, "layers.3.self_attn.q_proj.weight", "(224, 64)", "(256, 64)",
            shard_of(dense_copy, Q_PROJ).name)


def test_tensor_of_integers_where_a_weight_belongs(dense_copy):
    def to_int(t):
        t[Q_PROJ] = t[Q_PROJ].to(torch.int32)

    edit_shard(dense_copy, Q_PROJ, to_int)
    _raises(CheckpointError, dense_copy, "layers.3.self_attn.q_proj.weight", "int32", "floating-point")


def test_fp8_e5m2_weight_is_named(dense_copy):
    def to_e5m2(t):
        t[Q_PROJ] = t[Q_PROJ].to(torch.float8_e5m2)

    edit_shard(dense_copy, Q_PROJ, to_e5m2)
    _raises(CheckpointError, dense_copy, "layers.3.self_attn.q_proj.weight", "F8_E5M2", "E4M3 only")


def test_fused_experts_of_wrong_shape(moe_copy):
    name = LM + "layers.1.mlp.experts.gate_up_proj"

    def shrink(t):
        t[name] = t[name][:7].clone()

    edit_shard(moe_copy, name, shrink)
    _raises(CheckpointError, moe_copy, "layers.1.mlp.experts.gate_up_proj", "(7, 64, 64)", "(8, 64, 64)")


@pytest.mark.parametrize("extra", [LM + "layers.0.mlp.extra_proj.weight", LM + "layers.9.mlp.up_proj.weight",
                                   "transformer.h.0.attn.c_attn.weight",
                                   LM + "layers.0.mlp.experts.0.gate_proj.weight"],  # experts in a dense model
                         ids=["unknown_module", "layer_out_of_range", "foreign", "expert_in_dense"])
def test_unexpected_tensor(dense_copy, extra):
    edit_shard(dense_copy, Q_PROJ, lambda t: t.update({extra: torch.zeros(4, 4, dtype=torch.bfloat16)}))
    _raises(CheckpointError, dense_copy, "unexpected tensor", extra)


def test_missing_tensor(dense_copy):
    name = LM + "layers.1.linear_attn.A_log"
    edit_shard(dense_copy, name, lambda t: t.pop(name))
    _raises(CheckpointError, dense_copy, "lacks 1 tensor", "layers.1.linear_attn.A_log")


def test_index_names_tensor_the_shard_lacks(dense_copy):
    shard = shard_of(dense_copy, Q_PROJ)
    index = json.loads((dense_copy / "model.safetensors.index.json").read_text())
    edit_shard(dense_copy, Q_PROJ, lambda t: t.pop(Q_PROJ))
    (dense_copy / "model.safetensors.index.json").write_text(json.dumps(index))  # index still lists it
    _raises(CheckpointError, dense_copy, shard.name, Q_PROJ)


def test_missing_lm_head_of_untied_model(moe_copy):
    edit_shard(moe_copy, "lm_head.weight", lambda t: t.pop("lm_head.weight"))
    _raises(CheckpointError, moe_copy, "lm_head.weight")


# -- per-expert layouts -------------------------------------------------------------------------------

def test_transformers_per_expert_checkpoint_loads(hf_moe):
    """transformers' Qwen3_5MoeForCausalLM.save_pretrained writes routed experts per expert, under `model.`."""
    path, hf = hf_moe
    from safetensors import safe_open
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" in keys
    assert not any(k.endswith("experts.gate_up_proj") for k in keys)
    ours, cfg = load_model(path, dtype=torch.float32)
    assert not cfg.multimodal_layout
    for i in range(cfg.text.num_hidden_layers):
        theirs = hf.model.layers[i].mlp.experts
        assert torch.equal(ours.model.layers[i].mlp.experts.gate_up_proj, theirs.gate_up_proj)
        assert torch.equal(ours.model.layers[i].mlp.experts.down_proj, theirs.down_proj)


def _split_experts(path, layers: int) -> None:
    """Rewrite the fused routed experts of an official-layout checkpoint per expert (gate rows first)."""
    for i in range(layers):
        p = f"{LM}layers.{i}.mlp.experts."

        def split(t):
            gate_up, down = t.pop(p + "gate_up_proj"), t.pop(p + "down_proj")
            inter = gate_up.shape[1] // 2
            for e in range(gate_up.shape[0]):
                t[f"{p}{e}.gate_proj.weight"] = gate_up[e, :inter].clone()
                t[f"{p}{e}.up_proj.weight"] = gate_up[e, inter:].clone()
                t[f"{p}{e}.down_proj.weight"] = down[e].clone()

        assert weight_map(path)[p + "gate_up_proj"] == weight_map(path)[p + "down_proj"]
        edit_shard(path, p + "gate_up_proj", split)


def test_per_expert_official_layout_matches_fused(moe_ckpt, moe_copy):
    _split_experts(moe_copy, 4)
    fused, cfg = load_model(moe_ckpt, dtype=torch.bfloat16)
    split, _ = load_model(moe_copy, dtype=torch.bfloat16)
    prompts = random_prompts(cfg.text.vocab_size, lengths=(40,))
    assert torch.equal(all_logits(fused, prompts)[0], all_logits(split, prompts)[0])


def test_per_expert_checkpoint_missing_an_expert(moe_copy):
    _split_experts(moe_copy, 4)
    name = LM + "layers.2.mlp.experts.6.down_proj.weight"
    edit_shard(moe_copy, name, lambda t: t.pop(name))
    _raises(CheckpointError, moe_copy, "layers.2.mlp.experts.6.down_proj.weight")


def test_per_expert_index_out_of_range(moe_copy):
    _split_experts(moe_copy, 4)
    name = LM + "layers.0.mlp.experts.8.up_proj.weight"  # 8 experts: 0..7
    edit_shard(moe_copy, LM + "layers.0.mlp.experts.0.up_proj.weight",
               lambda t: t.update({name: t[LM + "layers.0.mlp.experts.0.up_proj.weight"].clone()}))
    _raises(CheckpointError, moe_copy, "expert 8", "out of range")


# -- skipped components ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["dense", "moe"])
def test_vision_and_mtp_are_skipped_and_logged(which, request, caplog):
    path = request.getfixturevalue(f"{which}_ckpt")
    names = weight_map(path)
    n_vision = sum(k.startswith("model.visual.") for k in names)
    n_mtp = sum(k.startswith("mtp.") for k in names)
    assert n_vision > 0 and n_mtp > 0
    caplog.set_level(logging.INFO, logger="qwen35.loading")
    load_model(path, dtype=torch.bfloat16)
    messages = [r.getMessage() for r in caplog.records if r.name == "qwen35.loading"]
    assert any(f"skipped {n_vision} vision tower tensor" in m for m in messages), messages
    assert any(f"skipped {n_mtp} MTP head tensor" in m for m in messages), messages
