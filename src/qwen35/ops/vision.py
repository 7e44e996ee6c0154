"""Weightless maths of the vision tower: patch order, position tables, frame-wise attention.

A frame is one image, or one temporal patch of a video: h x w patches that attend to each other and to
nothing else. The processor emits a frame's patches in merge-block order (block row, block column, row in
the block, column in the block), so the merger's groups of merge^2 patches are adjacent rows.

- `patch_rows_cols`: the (row, column) of each patch of a frame in that order.
- `rotary_tables`: the tower's 2-D rotary cos/sin (fp32): head dim d holds d/4 frequencies for the row and d/4
  for the column, side by side, repeated once so that rotate-half pairs dimension i with i + d/2.
- `interpolation_taps`: the four rows of the learned side x side position table, and their bilinear weights
  (align_corners), that resample it to a frame's h x w grid.
- `FramePlan`: the frames of a batch of media, reordered so that frames of equal length are adjacent, and
  `frame_attention`, which runs one batched SDPA per distinct length over that order: block-diagonal
  attention with neither a dense mask nor a loop over frames.

Tables depend only on the frame's (h, w) and are cached: every frame of a video, and same-size images, share
one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F


def patch_rows_cols(h: int, w: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (int64, [h * w] each) of every patch of an h x w frame, in merge-block order."""
    shape = (h // merge, w // merge, merge, merge)  # block row, block column, row in block, column in block
    rows = torch.arange(h).view(h // merge, 1, merge, 1).expand(shape)
    cols = torch.arange(w).view(1, w // merge, 1, merge).expand(shape)
    return rows.flatten(), cols.flatten()


def rotary_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """The d/4 inverse frequencies shared by the row and the column axis (fp32)."""
    axis_dim = head_dim // 2
    return 1.0 / (theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float32) / axis_dim))


@lru_cache(maxsize=256)
def rotary_tables(h: int, w: int, merge: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [h * w, head_dim] (fp32) of an h x w frame's patches, in merge-block order."""
    rows, cols = patch_rows_cols(h, w, merge)
    inv = rotary_inv_freq(head_dim, theta)
    angles = torch.cat([rows.float()[:, None] * inv, cols.float()[:, None] * inv], dim=-1)  # [h * w, d / 2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., N, heads, d] (e.g. q and k together, [2, N, heads, d]) rotated by the per-patch cos/sin
    [N, d]; computed in fp32, returned contiguous in x's dtype.

    rotate-half: x cos + cat(-x2, x1) sin with cos = cat(c, c), sin = cat(s, s), i.e. the first half gets
    x1 c - x2 s and the second x2 c + x1 s: one multiply and two half-width multiply-adds in place (no
    negated or concatenated copies: on a 4096-patch image those were a fifth of the tower's time)."""
    xf = x.to(torch.float32, memory_format=torch.contiguous_format)
    half = xf.shape[-1] // 2
    cos, sin = cos[:, None], sin[:, None, :half]
    out = xf * cos
    out[..., :half].addcmul_(xf[..., half:], sin, value=-1)
    out[..., half:].addcmul_(xf[..., :half], sin)
    return out.to(x.dtype)


def _axis_taps(index: torch.Tensor, size: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis, align_corners: position i of `size` samples the table at
    i (side - 1) / (size - 1); returns the two table indices [n, 2] and their weights [n, 2] (fp32)."""
    src = index.float() * (side - 1) / max(size - 1, 1)
    floor = torch.floor(src)
    offsets = torch.arange(2)
    taps = (floor.long()[:, None] + offsets).clamp(0, side - 1)
    weights = (1 - (src[:, None] - floor[:, None] - offsets).abs()).clamp(min=0)
    return taps, weights


@lru_cache(maxsize=256)
def interpolation_taps(h: int, w: int, merge: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [h * w, 4] into the flattened side x side position table and their bilinear weights [h * w, 4]
    (fp32) for an h x w frame's patches, in merge-block order."""
    rows, cols = patch_rows_cols(h, w, merge)
    row_taps, row_weights = _axis_taps(rows, h, side)
    col_taps, col_weights = _axis_taps(cols, w, side)
    indices = (row_taps[:, :, None] * side + col_taps[:, None, :]).flatten(1)
    weights = (row_weights[:, :, None] * col_weights[:, None, :]).flatten(1)
    return indices, weights


def interpolate_positions(table: torch.Tensor, h: int, w: int, merge: int) -> torch.Tensor:
    """The learned position table [side^2, W] resampled to an h x w frame: [h * w, W] in fp32."""
    side = int(round(table.shape[0] ** 0.5))
    indices, weights = interpolation_taps(h, w, merge, side)
    indices, weights = indices.to(table.device), weights.to(table.device)
    return (table.float()[indices] * weights[:, :, None]).sum(1)  # convert the table once, not 4 taps per patch


@dataclass(frozen=True)
class FramePlan:
    """The frames of a batch of media items, in the order the tower runs them.

    `frames`: (h, w) of each frame in run order; `runs`: (count, length) of consecutive frames of equal length
    h * w, in run order; `order`: for each row in run order, its row in the input (None: the input order
    already keeps equal lengths adjacent)."""

    frames: tuple[tuple[int, int], ...]
    runs: tuple[tuple[int, int], ...]
    order: torch.Tensor | None

    @classmethod
    def build(cls, grids: list[tuple[int, int, int]]) -> "FramePlan":
        """Frames grouped by length in the order each length first appears; within a group, input order."""
        frames: list[tuple[int, int, int]] = []  # (h, w, first input row)
        start = 0
        for t, h, w in grids:
            for _ in range(t):
                frames.append((h, w, start))
                start += h * w
        groups: dict[int, list[tuple[int, int, int]]] = {}
        for frame in frames:
            groups.setdefault(frame[0] * frame[1], []).append(frame)
        ordered = [frame for group in groups.values() for frame in group]
        runs = tuple((len(group), length) for length, group in groups.items())
        order = None
        if ordered != frames:
            order = torch.cat([torch.arange(s, s + h * w) for h, w, s in ordered])
        return cls(tuple((h, w) for h, w, _ in ordered), runs, order)

    def merged_order(self, merge: int) -> torch.Tensor | None:
        """`order` for the merger's output rows (one per merge^2 patches)."""
        return None if self.order is None else self.order[:: merge * merge] // (merge * merge)


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    runs: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Softmax attention of every frame's patches among themselves. q, k, v: [N, heads, d], frames laid out
    as `runs` says (`FramePlan`); returns [N, heads * d]. One SDPA call per distinct frame length."""
    n_heads, d = q.shape[1], q.shape[2]
    out, start = [], 0
    for count, length in runs:
        rows = slice(start, start + count * length)

        def frames(x: torch.Tensor) -> torch.Tensor:  # [count, heads, length, d]
            return x[rows].view(count, length, n_heads, d).transpose(1, 2)

        o = F.scaled_dot_product_attention(frames(q), frames(k), frames(v))
        out.append(o.transpose(1, 2).reshape(count * length, n_heads * d))
        start += count * length
    return out[0] if len(out) == 1 else torch.cat(out)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        grids: list[tuple[int, int, int]]) -> torch.Tensor:
    """`frame_attention` for the input order, one frame at a time in fp32 (for tests)."""
    out, start = [], 0
    for t, h, w in grids:
        for _ in range(t):
            rows = slice(start, start + h * w)
            qf, kf, vf = (x[rows].float().transpose(0, 1) for x in (q, k, v))  # [heads, L, d]
            p = torch.softmax(qf @ kf.transpose(1, 2) / qf.shape[-1] ** 0.5, dim=-1)
            out.append((p @ vf).transpose(0, 1).flatten(1))
            start += h * w
    return torch.cat(out).to(q.dtype)
