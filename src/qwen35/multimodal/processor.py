"""The image processor: a picture -> `MediaItem` of normalised patches, as the Qwen3.5 vision tower expects.

Steps, matching transformers' Qwen2VLImageProcessor (its PIL backend) bit for bit:
1. RGB: transparency is composited onto white; palette, grey, CMYK are converted by PIL. EXIF orientation is
   not applied (transformers does not either: the model saw images as stored).
2. Resize (PIL bicubic) to `smart_resize`'s size: both sides multiples of patch*merge (32), area within
   [min_pixels, max_pixels], aspect ratio kept as well as rounding allows.
3. x/255 (in float64, then float32), then (x - mean) / std, as one 256-entry lookup table per channel.
4. `patchify`: rows are 16x16 patches, grouped so each 2x2 merge block is 4 consecutive rows; a row is
   (channel, time, y, x) = 3*2*16*16 values, the picture repeated on the time axis (the tower's patch embedding
   is a 3-D convolution over 2 frames).

PIL for the resize, not torch: transformers' PIL backend and qwen-vl-utils (Qwen's reference pipeline) resize
images with PIL (its bicubic and torchvision's antialiased one, the same filter, round differently: a level or
two apart on a fraction of a percent of the pixels).
Videos (`video.py`) share `patchify`. numpy and PIL only: the server process builds items and never imports
torch.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .inputs import MediaError, MediaItem
from .processor_config import ProcessorConfig

__all__ = ["ProcessorConfig", "smart_resize", "open_image", "to_rgb", "check_tokens", "process_image", "patchify"]

MAX_ASPECT = 200  # the processor refuses thinner images: the vision tower was never trained on them


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) to resize an image to: multiples of `factor`, area in [min_pixels, max_pixels]."""
    if height < 1 or width < 1:
        raise MediaError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise MediaError(f"image aspect ratio {max(height, width) / min(height, width):.1f} exceeds {MAX_ASPECT} "
                         f"({width}x{height})")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        # Scale both sides by the same beta, rounding down so the area stays under the bound.
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def open_image(data: bytes | str | os.PathLike) -> Image.Image:
    """Decode an image file (bytes or a path) with PIL. Refuses what PIL refuses, decompression bombs included
    (more than 2 * `PIL.Image.MAX_IMAGE_PIXELS` pixels), with a `MediaError`."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        img = Image.open(src)
        img.load()  # decode now: a truncated file fails here, not halfway through the resize
    except Image.DecompressionBombError as e:
        raise MediaError(f"image refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise MediaError("cannot decode image: not a format PIL recognises") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data; SyntaxError is PIL's for some
        raise MediaError(f"cannot decode image: {e}") from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` in mode RGB: transparency composited onto white (a transparent background reads as paper, as
    transformers does it), other modes (palette, grey, CMYK, ...) converted by PIL."""
    try:
        if "A" in img.getbands() or img.info.get("transparency") is not None:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise MediaError(f"cannot convert a {img.mode} image to RGB: {e}") from None


def check_tokens(tokens: int, max_tokens: int | None, what: str) -> None:
    """MediaError when an item of `tokens` prompt tokens cannot fit the `max_tokens` the context has left:
    known from the resize grid, so a too-large item is refused before its pixels are computed."""
    if max_tokens is not None and tokens > max_tokens:
        raise MediaError(f"{what} would take {tokens:,} prompt tokens; the model's context has room for "
                         f"{max(max_tokens, 0):,} (max_model_len)")


def process_image(img: Image.Image, cfg: ProcessorConfig, min_pixels: int | None = None,
                  max_pixels: int | None = None, max_tokens: int | None = None) -> MediaItem:
    """One image -> `MediaItem(kind="image")`. `min_pixels` / `max_pixels` override the config's for this
    request (vLLM's `mm_processor_kwargs`); `max_tokens`: see `check_tokens`."""
    cfg = cfg.with_pixels(min_pixels, max_pixels)
    width, height = img.size
    h, w = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    check_tokens((h // cfg.factor) * (w // cfg.factor), max_tokens, f"the image ({width}x{height}, resized to {w}x{h})")
    resized = np.asarray(to_rgb(img).resize((w, h), resample=Image.Resampling.BICUBIC))  # [h, w, 3] uint8
    # rescale then normalise, in transformers' arithmetic (float64 multiply, float32 subtract and divide),
    # tabulated: a uint8 channel has 256 values, so a lookup is exact and one pass.
    levels = (np.arange(256, dtype=np.float64) * cfg.rescale_factor).astype(np.float32)
    mean, std = np.asarray(cfg.image_mean, np.float32)[:, None], np.asarray(cfg.image_std, np.float32)[:, None]
    lut = (levels[None, :] - mean) / std  # [3, 256]
    chw = np.stack([lut[c][resized[:, :, c]] for c in range(3)])  # [3, h, w] float32
    pixels, grid = patchify(chw[None], cfg)
    return MediaItem(kind="image", pixels=pixels, grid_thw=grid, merge_size=cfg.merge_size)


def patchify(frames: np.ndarray, cfg: ProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """[F, C, H, W] normalised frames -> ([t*h*w, C*T*p*p] float32 patch rows, (t, h, w) grid in patches).

    F is padded to a multiple of T = temporal_patch_size by repeating the last frame (a single image becomes
    T identical frames). Rows run over (t, h/m, w/m, m, m): each m x m merge block is m*m consecutive rows,
    the order the tower's patch merger reads them in; each row is (C, T, p, p)."""
    n, c, height, width = frames.shape
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if height % (p * m) or width % (p * m):
        raise ValueError(f"frame size {height}x{width} is not a multiple of {p * m}")
    if pad := -n % tp:  # an image: a broadcast view, no copy; a video with an odd frame count: one copy
        tail = np.broadcast_to(frames[-1:], (pad, c, height, width))
        frames = np.broadcast_to(frames, (tp, c, height, width)) if n == 1 else np.concatenate([frames, tail])
    gt, gh, gw = (n + pad) // tp, height // p, width // p
    x = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # (t, tp, c, bh, mh, py, bw, mw, px) -> (t, bh, bw, mh, mw, c, tp, py, px); the reshape makes the one copy
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p), dtype=np.float32), (gt, gh, gw)
