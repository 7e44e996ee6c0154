"""Media references -> `MediaItem`s: fetch (media.py), decode and process (processor.py, video.py).

The one path from what a request names (a URL per image or video, or objects handed to the Python API) to
what the engine takes. Blocking and CPU-bound: the server calls it on a worker thread. numpy, PIL and av
only: the server process never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .inputs import MediaError, MediaItem
from .media import MediaPolicy, decode_image, fetch_all
from .processor import ProcessorConfig, process_image
from .video import process_video, video_item

PIXEL_KWARGS = ("min_pixels", "max_pixels")  # vLLM's mm_processor_kwargs we honour
VIDEO_KWARGS = (*PIXEL_KWARGS, "fps", "num_frames")


def load_media(refs: Sequence[tuple[str, str]], policy: MediaPolicy, cfg: ProcessorConfig,
               mm_kwargs: dict[str, Any] | None = None, max_tokens: int | None = None) -> list[MediaItem]:
    """Every (kind, url) as an item, in order; MediaError (a ValueError) naming the first that fails.
    `max_tokens`: the prompt tokens the items may take together; an item past what is left is refused from its
    resize grid, before its pixels are computed."""
    kwargs = _kwargs(mm_kwargs)
    items: list[MediaItem] = []
    for (kind, _), data in zip(refs, fetch_all(refs, policy)):
        left = None if max_tokens is None else max_tokens - sum(item.num_tokens for item in items)
        items.append(to_item(kind, data, cfg, kwargs, left, policy.video_decode_timeout_s))
    return items


def to_item(kind: str, value: Any, cfg: ProcessorConfig, mm_kwargs: dict[str, Any] | None = None,
            max_tokens: int | None = None, decode_timeout_s: float | None = None) -> MediaItem:
    """One image or video from what a caller has: encoded bytes, a PIL image (images), uint8 frames
    [F, H, W, 3] sampled at the processor's fps (videos), or an already processed `MediaItem`.
    `decode_timeout_s`: a video whose decoding takes longer is a MediaError (None: no limit)."""
    if isinstance(value, MediaItem):
        if value.kind != kind:
            raise MediaError(f"a {value.kind} item was given as {kind}")
        return value
    kwargs = _kwargs(mm_kwargs)
    pixels = {k: kwargs[k] for k in PIXEL_KWARGS if k in kwargs}
    if kind == "image":
        image = decode_image(value) if isinstance(value, (bytes, bytearray)) else value
        if not isinstance(image, Image.Image):
            raise MediaError(f"an image must be encoded bytes or a PIL image, got {type(value).__name__}")
        return process_image(image, cfg, **pixels, max_tokens=max_tokens)
    if kind == "video":
        if isinstance(value, (bytes, bytearray)):
            return video_item(bytes(value), cfg, kwargs.get("fps"), kwargs.get("num_frames"), **pixels,
                              max_tokens=max_tokens, timeout_s=decode_timeout_s)
        if isinstance(value, np.ndarray) and value.ndim == 4 and value.dtype == np.uint8:
            return process_video(value, np.arange(len(value)) / cfg.fps, cfg, **pixels, max_tokens=max_tokens)
        raise MediaError(f"a video must be encoded bytes or uint8 frames [F, H, W, 3], got {type(value).__name__}")
    raise MediaError(f"unknown media kind {kind!r}; expected 'image' or 'video'")


def _kwargs(mm_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    if mm_kwargs is None:
        return {}
    if not isinstance(mm_kwargs, dict):
        raise MediaError("mm_processor_kwargs must be an object")
    unknown = sorted(set(mm_kwargs) - set(VIDEO_KWARGS))
    if unknown:
        raise MediaError(f"mm_processor_kwargs: {unknown[0]!r} is not supported (supported: {list(VIDEO_KWARGS)})")
    for k, v in mm_kwargs.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise MediaError(f"mm_processor_kwargs.{k} must be a positive number, got {v!r}")
    return {k: v for k, v in mm_kwargs.items() if v is not None}
