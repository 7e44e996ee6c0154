"""Image processor: bit-identical to transformers' Qwen2VLImageProcessor (PIL backend, the one transformers
picks without torchvision) for the official Qwen3.5 settings; the config read from checkpoint files."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from qwen35.multimodal.inputs import MediaError
from qwen35.multimodal.processor import open_image, process_image, smart_resize
from qwen35.multimodal.processor_config import IMAGE_FILE, NESTED_FILE, VIDEO_FILE, ProcessorConfig


def _image(rng, height: int, width: int, mode: str) -> Image.Image:
    """Noise in `mode`, with a real alpha channel (partly transparent) where the mode has one."""
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    if mode == "P+transparency":  # a palette image whose index 0 is transparent (GIF/PNG style)
        img = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        img.info["transparency"] = 0
        return img
    return rgba if mode == "RGBA" else rgba.convert(mode)


@pytest.mark.parametrize("height, width, mode", [
    (1, 1, "RGB"),  # tiny: scaled up to min_pixels
    (7, 5, "RGB"),
    (100, 150, "RGB"),  # sides not multiples of 32
    (33, 1000, "RGBA"),  # wide, alpha composited onto white
    (40, 7000, "RGB"),  # aspect 175: near the limit
    (300, 200, "L"),
    (120, 90, "LA"),
    (64, 64, "P+transparency"),
    (50, 60, "CMYK"),
    (70, 80, "1"),
    (640, 480, "RGB"),  # no change of scale: only rounding to 32
])
def test_image_matches_transformers(hf, cfg, rng, height, width, mode):
    img = _image(rng, height, width, mode)
    ref = hf.image(img)
    item = process_image(img, cfg)
    assert item.kind == "image" and item.merge_size == 2
    assert list(item.grid_thw) == ref["image_grid_thw"][0].tolist()
    assert item.pixels.dtype == np.float32 and item.pixels.shape == ref["pixel_values"].shape
    np.testing.assert_array_equal(item.pixels, ref["pixel_values"])  # same PIL resize, same float arithmetic
    assert item.num_tokens == math.prod(item.grid_thw) // 4


def test_pixel_overrides_match_transformers(hf, cfg, rng):
    """vLLM's mm_processor_kwargs min/max_pixels; here a downscale (max) and an upscale (min)."""
    big, small = _image(rng, 1200, 900, "RGB"), _image(rng, 40, 50, "RGB")
    for img, lo, hi in ((big, 1024, 128 * 128), (small, 256 * 256 * 2, 10**7)):
        ref = hf.image(img, size={"shortest_edge": lo, "longest_edge": hi})
        item = process_image(img, cfg, min_pixels=lo, max_pixels=hi)
        assert list(item.grid_thw) == ref["image_grid_thw"][0].tolist()
        np.testing.assert_array_equal(item.pixels, ref["pixel_values"])
    assert process_image(big, cfg, max_pixels=128 * 128).num_patches <= 128 * 128 // 256


@pytest.mark.parametrize("video", [False, True])
def test_request_pixel_bounds_past_a_decodable_image_are_refused(cfg, video):
    """Before any resize: min_pixels 1e12 made a 96x64 image (or each video frame) a 1e12-pixel one."""
    from qwen35.multimodal.inputs import MediaError

    with pytest.raises(MediaError, match="min_pixels"):
        cfg.with_pixels(min_pixels=10**12, video=video)
    with pytest.raises(MediaError, match="max_pixels"):
        cfg.with_pixels(max_pixels=10**9, video=video)


def test_patch_layout(cfg):
    """Rows are 16x16 patches with each 2x2 merge block consecutive; a row is (channel, time, y, x), the one
    picture on both time steps."""
    h, w = 64, 96  # a multiple of 32 and at least min_pixels at min_pixels=1: no resize
    ramp = (np.arange(h * w * 3) % 251).astype(np.uint8).reshape(h, w, 3)
    item = process_image(Image.fromarray(ramp), cfg, min_pixels=1)
    assert item.grid_thw == (1, h // 16, w // 16)
    x = item.pixels.reshape(h // 32, w // 32, 2, 2, 3, 2, 16, 16)  # (bh, bw, mh, mw, c, t, py, px)
    expect = (ramp.astype(np.float32) / 255 - 0.5) / 0.5
    bh, bw, mh, mw, c = 1, 2, 1, 0, 2
    y0, x0 = (bh * 2 + mh) * 16, (bw * 2 + mw) * 16
    np.testing.assert_allclose(x[bh, bw, mh, mw, c, 0], expect[y0:y0 + 16, x0:x0 + 16, c], atol=1e-6)
    np.testing.assert_array_equal(x[:, :, :, :, :, 0], x[:, :, :, :, :, 1])


def test_smart_resize_matches_transformers(rng):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref

    cfg = ProcessorConfig()
    sides = np.concatenate([np.arange(1, 70), rng.integers(70, 20000, 200)])
    for _ in range(2000):
        h, w = (int(s) for s in rng.choice(sides, 2))
        if max(h, w) / min(h, w) > 200:
            continue
        for lo, hi in ((cfg.min_pixels, cfg.max_pixels), (4096, 200_000)):
            got = smart_resize(h, w, 32, lo, hi)
            assert got == ref(h, w, factor=32, min_pixels=lo, max_pixels=hi), (h, w, lo, hi)
            assert got[0] % 32 == 0 and got[1] % 32 == 0


def test_image_errors(cfg, monkeypatch):
    with pytest.raises(MediaError, match="no pixels"):
        process_image(Image.new("RGB", (0, 5)), cfg)
    with pytest.raises(MediaError, match="aspect ratio"):
        process_image(Image.new("RGB", (201, 1)), cfg)
    process_image(Image.new("RGB", (200, 1)), cfg)  # 200 is allowed
    with pytest.raises(MediaError, match="not a format"):
        open_image(b"definitely not an image")
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(png, "PNG")
    with pytest.raises(MediaError, match="truncated"):
        open_image(png.getvalue()[:-40])
    assert open_image(png.getvalue()).size == (64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above twice its limit
    with pytest.raises(MediaError, match="decompression bomb"):
        open_image(png.getvalue())
    with pytest.raises(ValueError, match="min_pixels"):
        process_image(Image.new("RGB", (8, 8)), cfg, min_pixels=0)


# ---- ProcessorConfig -------------------------------------------------------------------------


def test_config_from_checkpoint(tmp_path, tiny_ckpt):
    assert ProcessorConfig.from_checkpoint(tmp_path) == ProcessorConfig()  # no files: official values
    assert ProcessorConfig.from_checkpoint(tiny_ckpt) == ProcessorConfig()  # what `qwen35 init` writes
    official = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                "image_processor_type": "Qwen2VLImageProcessorFast"}
    assert json.loads((tiny_ckpt / IMAGE_FILE).read_text()) == official
    video = json.loads((tiny_ckpt / VIDEO_FILE).read_text())
    assert video["size"] == {"longest_edge": 25165824, "shortest_edge": 4096}
    assert video["video_processor_type"] == "Qwen3VLVideoProcessor"

    (tmp_path / IMAGE_FILE).write_text(json.dumps({**official, "min_pixels": 1024, "max_pixels": 4096 * 4}))
    (tmp_path / VIDEO_FILE).write_text(json.dumps({"size": {"shortest_edge": 8, "longest_edge": 9000},
                                                   "fps": 1, "min_frames": 2, "max_frames": 64,
                                                   "image_mean": 0.25}))
    cfg = ProcessorConfig.from_checkpoint(tmp_path)
    assert (cfg.min_pixels, cfg.max_pixels) == (1024, 16384)  # legacy keys win over size, as in transformers
    assert (cfg.video_min_pixels, cfg.video_max_pixels, cfg.fps, cfg.min_frames, cfg.max_frames) == (
        8, 9000, 1.0, 2, 64)
    assert cfg.video_mean == (0.25,) * 3 and cfg.image_mean == (0.5,) * 3
    # transformers 5's nested processor_config.json wins over the per-processor files
    (tmp_path / NESTED_FILE).write_text(json.dumps({"image_processor": {"size": {"shortest_edge": 1,
                                                                                  "longest_edge": 2}}}))
    cfg = ProcessorConfig.from_checkpoint(tmp_path)
    assert (cfg.min_pixels, cfg.max_pixels, cfg.video_max_pixels) == (1, 2, 9000)


@pytest.mark.parametrize("image, video, message", [
    ({"patch_size": 0}, None, f"{IMAGE_FILE}: patch_size must be a positive integer"),
    ({"size": {"shortest_edge": 10, "longest_edge": 5}}, None, "min_pixels \\(10\\) must not exceed"),
    ({"size": {"height": 224, "width": 224}}, None, "size must be"),
    ({"image_std": [0.5, 0, 0.5]}, None, "image_std must be positive"),
    ({"image_mean": [0.5, 0.5]}, None, "image_mean must be 3"),
    ({"resample": 2}, None, "resample must be 3"),
    ({"do_normalize": False}, None, "do_normalize must be true"),
    (None, {"fps": -1}, f"{VIDEO_FILE}: fps must be a positive number"),
    (None, {"min_frames": 10, "max_frames": 4}, "min_frames \\(10\\) must not exceed max_frames"),
    ({"patch_size": 16}, {"patch_size": 14}, "patch_size is 14 here but 16 in"),
    ([1, 2], None, "expected a JSON object"),
])
def test_config_errors(image, video, message):
    with pytest.raises(ValueError, match=message):
        ProcessorConfig.from_dicts(image, video)


def test_writer_files_load_in_transformers(processor_dir):
    """`qwen35 init`'s files are what transformers' processors read: AutoProcessor when torchvision is there
    (it needs it for the video processor), the image and video processors directly otherwise."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    image = transformers.AutoImageProcessor.from_pretrained(processor_dir)
    assert (image.size["shortest_edge"], image.size["longest_edge"]) == (65536, 16777216)
    assert (image.patch_size, image.merge_size, tuple(image.image_mean)) == (16, 2, (0.5, 0.5, 0.5))
    video = Qwen3VLVideoProcessor.from_pretrained(processor_dir)
    assert (video.size["shortest_edge"], video.size["longest_edge"]) == (4096, 25165824)
    assert (video.patch_size, video.fps, video.min_frames, video.max_frames) == (16, 2, 4, 768)
    if transformers.utils.is_torchvision_available():
        processor = transformers.AutoProcessor.from_pretrained(processor_dir)
        assert type(processor).__name__ == "Qwen3VLProcessor"
