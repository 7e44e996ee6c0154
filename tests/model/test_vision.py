"""The vision tower (model/vision.py) against transformers' `Qwen3_5VisionModel`, and its loading.

Checkpoints are written by `qwen35 init` (loading.writer) and loaded by both sides, so the test also checks
that our official-layout vision tensors are what transformers reads. The writer's vision biases are zeros and
its position table small (std 0.02); `_liven` redraws them so that neither path can hide a mistake.
Parity: max |ours - transformers| <= TOL * max |transformers| in fp32 (the merged output's scale is ~1.3).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen35.config import preset
from qwen35.loading.checkpoint import CheckpointError, load_model
from qwen35.loading.fp8 import quantize_block_fp8
from qwen35.loading.names import SCALE, VISUAL
from qwen35.loading.writer import write_random_checkpoint
from qwen35.model.linear import QuantLinear, dequantize_fp8
from qwen35.multimodal.inputs import MediaItem
from tests.loading.util import all_headers, copy_ckpt, edit_shard, weight_map

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # relative to the output's largest magnitude
SHARD = 16 << 20
GRIDS = {"image": [(1, 16, 16)], "two_images": [(1, 16, 16), (1, 8, 24)], "video": [(3, 8, 12)],
         # equal lengths apart (64, 48, 64, 48 patches per frame): the tower reorders frames and back
         "interleaved": [(1, 8, 8), (2, 4, 12), (1, 8, 8), (1, 6, 8)]}


def _liven(path, seed: int) -> None:
    """Non-zero vision biases and a position table of the patch embedding's scale, in every shard."""
    gen = torch.Generator().manual_seed(seed)
    for shard in sorted(set(weight_map(path).values())):
        tensors = load_file(str(path / shard))
        for name, t in tensors.items():
            if name.startswith(VISUAL) and (name.endswith(".bias") or "pos_embed" in name):
                tensors[name] = (torch.randn(t.shape, generator=gen) * 0.5).to(t.dtype)
        save_file(tensors, str(path / shard), metadata={"format": "pt"})


def _write(tmp_path_factory, name: str, base: str, seed: int, **vision) -> Path:
    cfg = preset(base)
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **vision))
    path = write_random_checkpoint(cfg, tmp_path_factory.mktemp(name), seed=seed, shard_bytes=SHARD,
                                   tokenizer=False)
    _liven(path, seed)
    return path


@pytest.fixture(scope="session")
def vision_ckpt(tmp_path_factory):
    """tiny's text model with a 2-block tower of width 64 (4 heads of 16)."""
    return _write(tmp_path_factory, "vision", "tiny", 0, depth=2, hidden_size=64, num_heads=4, intermediate_size=128)


@pytest.fixture(scope="session")
def hf_vision(vision_ckpt):
    hf = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(vision_ckpt, dtype=torch.float32)
    return hf.eval()


@pytest.fixture(scope="session")
def ours_fp32(vision_ckpt):
    return load_model(vision_ckpt, dtype=torch.float32, vision=True)[0]


def _items(grids, seed: int = 0) -> list[MediaItem]:
    gen = torch.Generator().manual_seed(seed)
    return [MediaItem("video" if t > 1 else "image", torch.randn(t * h * w, 1536, generator=gen), (t, h, w))
            for t, h, w in grids]


@torch.no_grad()
def _reference(hf, items) -> torch.Tensor:
    pixels = torch.cat([torch.as_tensor(i.pixels) for i in items])
    out = hf.model.visual(pixels, grid_thw=torch.tensor([i.grid_thw for i in items]))
    return out.pooler_output  # the merged rows the language model reads (last_hidden_state: before the merger)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


@pytest.mark.parametrize("case", list(GRIDS))
def test_fp32_matches_transformers(case, ours_fp32, hf_vision):
    items = _items(GRIDS[case])
    got = ours_fp32.encode_media(items)
    assert [tuple(g.shape) for g in got] == [(i.num_tokens, 64) for i in items]
    assert all(g.dtype == torch.float32 for g in got)
    assert _rel_err(torch.cat(got), _reference(hf_vision, items)) < TOL


def test_batch_equals_items_one_by_one(ours_fp32):
    items = _items(GRIDS["interleaved"], seed=1)
    together = ours_fp32.encode_media(items)
    for item, row in zip(items, together):
        assert _rel_err(row, ours_fp32.encode_media([item])[0]) < TOL


def test_moe_family_loads_its_tower(tmp_path_factory):
    path = _write(tmp_path_factory, "vision_moe", "tiny-moe", 1)
    ours, cfg = load_model(path, dtype=torch.float32, vision=True)
    assert cfg.is_moe and ours.visual is not None
    hf = transformers.Qwen3_5MoeForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    items = _items(GRIDS["two_images"], seed=2)
    assert _rel_err(torch.cat(ours.encode_media(items)), _reference(hf, items)) < TOL


def test_bf16_stays_close_to_fp32(vision_ckpt, ours_fp32):
    """bf16 end to end (rotary and position tables still fp32): within 3% of the fp32 output's scale, and
    no worse than 1.5x transformers' own bf16 run, both against our fp32."""
    ours16, _ = load_model(vision_ckpt, dtype=torch.bfloat16, vision=True)
    hf16 = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(vision_ckpt, dtype=torch.bfloat16).eval()
    items = _items(GRIDS["two_images"] + GRIDS["video"], seed=3)
    ref = torch.cat(ours_fp32.encode_media(items))
    got = torch.cat(ours16.encode_media(items))
    assert got.dtype == torch.bfloat16
    ours_err, theirs_err = _rel_err(got, ref), _rel_err(_reference(hf16, items), ref)
    assert ours_err < 0.03
    assert ours_err <= 1.5 * theirs_err


def _param_bytes(model) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        out[part] = out.get(part, 0) + p.numel() * p.element_size()
    return out


def test_language_model_only_has_no_tower(vision_ckpt, ours_fp32):
    text_only, _ = load_model(vision_ckpt, dtype=torch.float32)
    assert text_only.visual is None
    with pytest.raises(RuntimeError, match="without its vision tower"):
        text_only.encode_media(_items(GRIDS["image"]))
    sizes, with_tower = _param_bytes(text_only), _param_bytes(ours_fp32)
    assert "visual" not in sizes
    assert with_tower.pop("visual") == sum(n * 4 for n in _vision_sizes(vision_ckpt))
    assert sizes == with_tower


def _vision_sizes(path) -> list[int]:
    return [torch.Size(shape).numel() for name, (_, shape) in all_headers(path).items() if name.startswith(VISUAL)]


def test_wrong_shape_is_named(vision_ckpt, tmp_path):
    path = copy_ckpt(vision_ckpt, tmp_path / "ckpt")
    name = VISUAL + "blocks.1.attn.qkv.weight"
    edit_shard(path, name, lambda t: t.update({name: t[name][:-4].clone()}))
    with pytest.raises(CheckpointError, match=r"visual\.blocks\.1\.attn\.qkv\.weight.*shape"):
        load_model(path, dtype=torch.float32, vision=True)


def test_missing_tower_is_an_error_only_when_asked_for(vision_ckpt, tmp_path):
    path = copy_ckpt(vision_ckpt, tmp_path / "ckpt")
    for name in [n for n in weight_map(path) if n.startswith(VISUAL)]:
        edit_shard(path, name, lambda t, name=name: t.pop(name))
    with pytest.raises(CheckpointError, match=r"no vision tower tensors \(model\.visual\.\*\)"):
        load_model(path, dtype=torch.float32, vision=True)
    load_model(path, dtype=torch.float32)  # the language model alone loads
    config = json.loads((path / "config.json").read_text())
    del config["vision_config"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no vision_config"):
        load_model(path, dtype=torch.float32, vision=True)


def test_one_missing_tensor_is_named(vision_ckpt, tmp_path):
    path = copy_ckpt(vision_ckpt, tmp_path / "ckpt")
    name = VISUAL + "merger.norm.bias"
    edit_shard(path, name, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*visual\.merger\.norm\.bias"):
        load_model(path, dtype=torch.float32, vision=True)


def test_block_fp8_tower_weight_is_dequantised(vision_ckpt, ours_fp32, tmp_path):
    """A tower linear stored as block FP8 (`weight_scale_inv`) loads dequantised into the biased layer."""
    path = copy_ckpt(vision_ckpt, tmp_path / "ckpt")
    name = VISUAL + "blocks.0.mlp.linear_fc1.weight"
    block = (32, 32)
    fp8 = {}

    def quantise(t):
        fp8["q"], fp8["s"] = quantize_block_fp8(t[name], block)
        t[name], t[name + SCALE] = fp8["q"], fp8["s"]

    edit_shard(path, name, quantise)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": list(block)}
    (path / "config.json").write_text(json.dumps(config))
    model, _ = load_model(path, dtype=torch.float32, vision=True)
    fc1 = model.visual.blocks[0].mlp.linear_fc1
    assert torch.equal(fc1.weight, dequantize_fp8(fp8["q"], fp8["s"], block, torch.float32))
    assert fc1.bias is not None and not fc1.bias.is_meta
    items = _items(GRIDS["image"], seed=4)
    assert _rel_err(model.encode_media(items)[0], ours_fp32.encode_media(items)[0]) < 0.05


@pytest.mark.parametrize("quantization", ["int8", None])
def test_quantised_and_prepacked_loads_leave_the_tower_alone(vision_ckpt, ours_fp32, quantization):
    """int8 quantises the decoder, fuse + prepack rearrange it: the tower keeps its plain fp32 layers and
    gives the unfused, unpacked load's output exactly."""
    model, _ = load_model(vision_ckpt, dtype=torch.float32, vision=True, quantization=quantization)
    assert any(isinstance(m, QuantLinear) for m in model.model.modules()) == (quantization == "int8")
    assert not any(type(m).__module__ == QuantLinear.__module__ for m in model.visual.modules())
    assert all(p.dtype == torch.float32 for p in model.visual.parameters())
    items = _items(GRIDS["two_images"], seed=5)
    for got, want in zip(model.encode_media(items), ours_fp32.encode_media(items)):
        assert torch.equal(got, want)


def test_bad_input_is_refused(ours_fp32):
    with pytest.raises(ValueError, match="multiples of 2"):
        ours_fp32.visual(torch.zeros(15 * 4, 1536), [(1, 15, 4)])
    with pytest.raises(ValueError, match="shape"):
        ours_fp32.visual(torch.zeros(10, 1536), [(1, 4, 4)])
    item = MediaItem("image", torch.zeros(64, 1536), (1, 8, 8), merge_size=4)
    with pytest.raises(ValueError, match="merge size 4"):
        ours_fp32.encode_media([item])
