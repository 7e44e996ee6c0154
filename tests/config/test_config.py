"""Config parsing: both layouts, derived fields, presets matching published sizes, clear rejections."""

from __future__ import annotations

import json

import pytest

from qwen35.config import PRESETS, ConfigError, ModelConfig, param_count, preset

OFFICIAL_08B_TEXT = {  # shape of the official Qwen3.5-0.8B text_config (docs/MODEL.md §1)
    "model_type": "qwen3_5_text", "vocab_size": 248320, "hidden_size": 1024, "num_hidden_layers": 24,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256, "intermediate_size": 3584,
    "linear_num_key_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "full_attention_interval": 4,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "mtp_num_hidden_layers": 1, "some_future_key": 1,
    "rope_parameters": {"mrope_interleaved": True, "mrope_section": [11, 11, 10], "rope_type": "default",
                        "rope_theta": 10000000, "partial_rotary_factor": 0.25},
}


def test_multimodal_and_bare_layouts_agree():
    wrapped = ModelConfig.from_dict({"model_type": "qwen3_5", "text_config": OFFICIAL_08B_TEXT,
                                     "vision_config": {"depth": 12, "hidden_size": 768}})
    bare = ModelConfig.from_dict(OFFICIAL_08B_TEXT)
    assert wrapped.text == bare.text
    assert wrapped.multimodal_layout and not bare.multimodal_layout
    t = bare.text
    assert t.attention_layers == tuple(range(3, 24, 4)) and len(t.linear_layers) == 18
    assert t.rotary_dim == 64 and t.linear_conv_dim == 6144 and t.tie_word_embeddings


def test_explicit_layer_types_win_and_yarn_parses():
    d = dict(OFFICIAL_08B_TEXT, num_hidden_layers=2, layer_types=["full_attention", "linear_attention"])
    d["rope_parameters"] = dict(d["rope_parameters"], rope_type="yarn", factor=4.0,
                                original_max_position_embeddings=262144)
    t = ModelConfig.from_dict(d).text
    assert t.layer_types == ("full_attention", "linear_attention")
    assert t.rope.rope_type == "yarn" and t.rope.factor == 4.0


@pytest.mark.parametrize("change,field", [
    ({"model_type": "llama"}, "model_type"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"hidden_size": -4}, "hidden_size"),
    ({"layer_types": ["full_attention"]}, "layer_types"),
    ({"layer_types": ["full_attention"] * 23 + ["mamba"]}, "layer_types"),
    ({"rope_parameters": {"rope_type": "longrope"}}, "rope_type"),
    ({"linear_num_value_heads": 24, "linear_num_key_heads": 16}, "linear_num_value_heads"),
    ({"full_attention_interval": 0}, "full_attention_interval"),
])
def test_impossible_values_are_rejected_by_name(change, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_dict(dict(OFFICIAL_08B_TEXT, **change))


def test_from_file_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        ModelConfig.from_file(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        ModelConfig.from_file(tmp_path / "nowhere")


@pytest.mark.parametrize("name,billions", [
    ("dense-0.8b", 0.75), ("dense-2b", 1.88), ("dense-4b", 4.21), ("dense-9b", 8.95), ("dense-27b", 26.9),
    ("moe-35b-a3b", 34.7), ("moe-122b-a10b", 122.1), ("moe-397b-a17b", 396.4),
])
def test_presets_match_published_sizes(name, billions):
    assert param_count(preset(name).text) / 1e9 == pytest.approx(billions, rel=0.01)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_config_json(name):
    cfg = preset(name)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.text == cfg.text and again.vision == cfg.vision


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("70b")


@pytest.mark.parametrize("rope,max_pos,supported", [
    ({"rope_type": "default"}, 262144, 262144),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}, 262144, 4 * 262144),
    ({"rope_type": "yarn", "factor": 4.0}, 32768, 4 * 32768),  # the original defaults to max_position_embeddings
    ({"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 1000}, 4000, 4000),  # derived 4x
    ({"rope_type": "yarn", "original_max_position_embeddings": 1000}, 4000, 4000),
    ({"rope_type": "yarn", "factor": 1.0, "original_max_position_embeddings": 1000}, 4000, 4000),  # no scaling
    ({"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1000}, 4000, 2000),  # old key; factor wins
])
def test_supported_length_is_factor_times_the_original_window(rope, max_pos, supported):
    d = dict(OFFICIAL_08B_TEXT, max_position_embeddings=max_pos)
    d["rope_parameters"] = {**d["rope_parameters"], **rope}
    if "type" in rope:
        del d["rope_parameters"]["rope_type"]
    assert ModelConfig.from_dict(d).text.supported_length == supported
