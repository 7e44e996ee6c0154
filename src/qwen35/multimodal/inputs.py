"""`MediaItem`: one image or video after the processor, as the engine and the vision tower see it; `MediaError`:
media that cannot become one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


class MediaError(ValueError):
    """An image or video that cannot be decoded or processed (corrupt data, no video stream, zero size, absurd
    aspect ratio, a decompression bomb). A ValueError, so the server answers it as a bad request."""


@dataclass(frozen=True, eq=False)
class MediaItem:
    kind: str  # "image" | "video"
    # [t * h * w, C * temporal_patch * patch * patch] fp32 patches in 2x2-merge-block order. A numpy array: the
    # server process builds items and never imports torch (tests/test_imports.py); the tower converts it.
    pixels: np.ndarray
    grid_thw: tuple[int, int, int]  # (t, h, w) in patches, before the 2x2 merge
    merge_size: int = 2
    timestamps: tuple[float, ...] = ()  # video: seconds of each temporal patch, as the prompt writes them
    digest: str = field(default="")  # content hash: identical media -> identical digest

    def __post_init__(self) -> None:
        if not self.digest:
            h = hashlib.sha256(repr((self.kind, self.grid_thw)).encode())
            h.update(np.ascontiguousarray(np.asarray(self.pixels), dtype=np.float32).tobytes())
            object.__setattr__(self, "digest", h.hexdigest())

    @property
    def num_tokens(self) -> int:
        """Placeholder tokens (and tower output rows) of this item: t * h * w / merge^2."""
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size * self.merge_size)

    @property
    def tokens_per_frame(self) -> int:
        t, h, w = self.grid_thw
        return h * w // (self.merge_size * self.merge_size)

    @property
    def num_patches(self) -> int:
        """Rows the vision tower runs over: its encoder cost."""
        return int(self.pixels.shape[0])
