"""`ProcessorConfig`: how images and videos become patches, read from a checkpoint's processor files.

A Qwen3.5 checkpoint carries `preprocessor_config.json` (images, transformers' Qwen2VLImageProcessor) and
`video_preprocessor_config.json` (videos, Qwen3VLVideoProcessor); transformers 5 may instead save both nested
in `processor_config.json`, which then wins, as it does there. A missing file or key means the official
Qwen3.5 value (transformers would fall back to its class defaults, Qwen2-VL's patch 14 and CLIP mean/std, which
Qwen3.5 does not use; official files set every key). Keys we do not use are ignored; values we cannot honour
raise a ValueError naming the file and field.

Pixel bounds are `size.shortest_edge` / `size.longest_edge`, which despite their names count pixels
(height * width; for video frames * height * width). Legacy top-level `min_pixels` / `max_pixels` override
`size` for images, as transformers' image processor does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .inputs import MediaError
from .media import MAX_IMAGE_PIXELS

MAX_REQUEST_PIXELS = MAX_IMAGE_PIXELS  # a request's min/max_pixels: no larger than a decodable image

IMAGE_FILE = "preprocessor_config.json"
VIDEO_FILE = "video_preprocessor_config.json"
NESTED_FILE = "processor_config.json"
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC: the only filter Qwen3.5 was trained with, and the only one we run


@dataclass(frozen=True)
class ProcessorConfig:
    # geometry, shared by images, videos and the vision tower
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    # images
    min_pixels: int = 65536  # size.shortest_edge: 64 merged tokens
    max_pixels: int = 16777216  # size.longest_edge: 16384 merged tokens
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    # videos
    video_min_pixels: int = 4096  # over all frames
    video_max_pixels: int = 25165824
    video_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    video_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    video_rescale_factor: float = 1 / 255
    fps: float = 2.0  # frames sampled per second of video
    min_frames: int = 4
    max_frames: int = 768
    # qwen-vl-utils' per-frame cap (transformers' `cap_pixels_per_frame`, off by default there in 5.23)
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 768

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels",
                     "video_min_pixels", "video_max_pixels", "min_frames", "max_frames", "max_video_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for lo, hi in (("min_pixels", "max_pixels"), ("video_min_pixels", "video_max_pixels"),
                       ("min_frames", "max_frames")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) must not exceed {hi} ({getattr(self, hi)})")
        for name in ("image_mean", "image_std", "video_mean", "video_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"{name} must be 3 finite numbers (R, G, B), got {value!r}")
            if name.endswith("std") and min(value) <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        for name in ("rescale_factor", "video_rescale_factor", "fps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    def with_pixels(self, min_pixels: int | None = None, max_pixels: int | None = None,
                    video: bool = False) -> ProcessorConfig:
        """This config with per-request pixel bounds (vLLM's `mm_processor_kwargs` `min_pixels` / `max_pixels`).
        A bound given alone that crosses the configured other one moves it along: a request for at most 100k
        pixels gets at most 100k, though the checkpoint's minimum is larger."""
        lo_name, hi_name = ("video_min_pixels", "video_max_pixels") if video else ("min_pixels", "max_pixels")
        if min_pixels is None and max_pixels is None:
            return self
        for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if value is not None and value > MAX_REQUEST_PIXELS:  # before any resize: 1e12 would allocate TBs
                raise MediaError(f"mm_processor_kwargs.{name} {value:g} is more than {MAX_REQUEST_PIXELS:,} pixels, "
                                 "the most an image may have")
        lo = getattr(self, lo_name) if min_pixels is None else min_pixels
        hi = getattr(self, hi_name) if max_pixels is None else max_pixels
        if min_pixels is None and isinstance(hi, int):
            lo = min(lo, hi)
        if max_pixels is None and isinstance(lo, int):
            hi = max(lo, hi)
        return dataclasses.replace(self, **{lo_name: lo, hi_name: hi})

    # ---- checkpoint files ------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, model_dir: str | os.PathLike) -> ProcessorConfig:
        """Read `model_dir`'s processor files; absent ones mean the official Qwen3.5 values."""
        model_dir = Path(model_dir)
        image = video = None
        image_src, video_src = model_dir / IMAGE_FILE, model_dir / VIDEO_FILE
        nested_file = model_dir / NESTED_FILE
        if nested_file.is_file():
            nested = _read_json(nested_file)
            image, video = nested.get("image_processor"), nested.get("video_processor")
            if image is not None:
                image_src = nested_file
            if video is not None:
                video_src = nested_file
        if image is None and image_src.is_file():
            image = _read_json(image_src)
        if video is None and video_src.is_file():
            video = _read_json(video_src)
        return cls.from_dicts(image, video, image_source=str(image_src), video_source=str(video_src))

    @classmethod
    def from_dicts(cls, image: dict[str, Any] | None, video: dict[str, Any] | None,
                   image_source: str = IMAGE_FILE, video_source: str = VIDEO_FILE) -> ProcessorConfig:
        """From the image and video processor dicts (either may be None: official values)."""
        kw: dict[str, Any] = {}
        geometry: dict[str, tuple[str, Any]] = {}  # field -> (source, value), to check image and video agree
        for d, src, video_side in ((image, image_source, False), (video, video_source, True)):
            if d is None:
                continue
            if not isinstance(d, dict):
                raise ValueError(f"{src}: expected a JSON object, got {type(d).__name__}")
            try:
                _check_supported(d)
                for name in ("patch_size", "temporal_patch_size", "merge_size"):
                    if name in d:
                        if name in geometry and geometry[name][1] != d[name]:
                            raise ValueError(f"{name} is {d[name]!r} here but {geometry[name][1]!r} in "
                                             f"{geometry[name][0]}")
                        geometry[name] = (src, d[name])
                        kw[name] = d[name]
                lo, hi = _pixel_bounds(d, legacy=not video_side)
                prefix = "video_" if video_side else ""
                if lo is not None:
                    kw[prefix + "min_pixels"] = lo
                if hi is not None:
                    kw[prefix + "max_pixels"] = hi
                for key, name in (("image_mean", "mean"), ("image_std", "std")):
                    if key in d:
                        kw[(prefix or "image_") + name] = _triple(key, d[key])
                if "rescale_factor" in d:
                    kw[prefix + "rescale_factor"] = _number("rescale_factor", d["rescale_factor"])
                if video_side:
                    for name in ("min_frames", "max_frames", "max_video_tokens"):
                        if d.get(name) is not None:
                            kw[name] = d[name]
                    if d.get("fps") is not None:
                        kw["fps"] = _number("fps", d["fps"])
                    if d.get("cap_pixels_per_frame") is not None:
                        kw["cap_pixels_per_frame"] = bool(d["cap_pixels_per_frame"])
                cls(**kw)  # validate this file's values now, so the error names it
            except (ValueError, TypeError) as e:
                raise ValueError(f"{src}: {e}") from None
        return cls(**kw) if kw else cls()

    def image_processor_dict(self) -> dict[str, Any]:
        """`preprocessor_config.json` as the official Qwen3.5 release writes it."""
        return {
            "size": {"longest_edge": self.max_pixels, "shortest_edge": self.min_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "processor_class": "Qwen3VLProcessor",
            "image_processor_type": "Qwen2VLImageProcessorFast",
        }

    def video_processor_dict(self) -> dict[str, Any]:
        """`video_preprocessor_config.json` as the official Qwen3.5 release writes it."""
        return {
            "size": {"longest_edge": self.video_max_pixels, "shortest_edge": self.video_min_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.video_mean),
            "image_std": list(self.video_std),
            "processor_class": "Qwen3VLProcessor",
            "video_processor_type": "Qwen3VLVideoProcessor",
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_supported(d: dict[str, Any]) -> None:
    """Refuse settings that would make our pixels differ from what the model expects: every Qwen-VL release
    resizes (bicubic), rescales, normalises and converts to RGB."""
    if d.get("resample", BICUBIC) != BICUBIC:
        raise ValueError(f"resample must be {BICUBIC} (bicubic), got {d['resample']!r}")
    for flag in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
        if d.get(flag, True) is not True and d.get(flag) is not None:
            raise ValueError(f"{flag} must be true, got {d[flag]!r}")


def _pixel_bounds(d: dict[str, Any], legacy: bool) -> tuple[Any, Any]:
    lo = hi = None
    size = d.get("size")
    if size is not None:
        if not isinstance(size, dict) or "shortest_edge" not in size or "longest_edge" not in size:
            raise ValueError(f"size must be {{\"shortest_edge\": min pixels, \"longest_edge\": max pixels}}, "
                             f"got {size!r}")
        lo, hi = size["shortest_edge"], size["longest_edge"]
    if legacy:  # Qwen2-VL-era files: top-level min/max_pixels win over size, as in transformers
        lo = d["min_pixels"] if d.get("min_pixels") is not None else lo
        hi = d["max_pixels"] if d.get("max_pixels") is not None else hi
    return lo, hi


def _triple(name: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3  # transformers broadcasts a scalar mean/std over the channels
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be a list of 3 numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)
