"""`MediaItem`: one image or video after the processor, as the engine and the vision tower see it; `MediaError`:
media a request cannot use.

torch is imported only where a tensor is touched: the server process loads media (`media.py`) and raises
MediaError, and it imports no torch (tests/test_imports.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class MediaError(ValueError):
    """Media that cannot be used: the message says why (a 400 for the server)."""


@dataclass(frozen=True, eq=False)
class MediaItem:
    kind: str  # "image" | "video"
    pixels: torch.Tensor  # [t * h * w, C * temporal_patch * patch * patch] fp32 patches in 2x2-merge-block order
    grid_thw: tuple[int, int, int]  # (t, h, w) in patches, before the 2x2 merge
    merge_size: int = 2
    timestamps: tuple[float, ...] = ()  # video: seconds of each temporal patch, as the prompt writes them
    digest: str = field(default="")  # content hash: identical media -> identical digest

    def __post_init__(self) -> None:
        if not self.digest:
            import torch

            h = hashlib.sha256(repr((self.kind, self.grid_thw)).encode())
            h.update(self.pixels.detach().to(torch.float32).contiguous().numpy().tobytes())
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
