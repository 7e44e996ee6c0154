"""`PromptMedia`: where a prompt's images and video frames sit, and the mRoPE positions they give the prompt.

Each media item fills runs of placeholder tokens in the prompt (one run per image, one per video frame:
frames are separated by their timestamp text). The vision tower's output rows replace those tokens'
embeddings in order.

Positions (docs/VISION.md): text tokens count up one by one on all three axes (t, h, w). A frame of
h' x w' merged patches starting at position `cur` puts merged patch (r, c) at (cur, cur + r, cur + c), and the
text after it continues from `cur + max(h', w')`, not from `cur + h' * w'`: a prompt with media is shorter in
positions than in tokens. Past the last frame every token's three positions are equal to its index plus
`delta` (negative), so only the stretch from the first to the last vision token needs a table; prefill
chunks elsewhere and every decode step use plain 1-D positions shifted by an offset.

Prefix-cache keys: two different images of the same size expand to identical placeholder tokens, so the
key of a prompt replaces each item's placeholders by a number derived from the item's content digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .inputs import MediaItem

Run = tuple[int, int]  # (prompt offset, tokens)


@dataclass(frozen=True, eq=False)
class PromptMedia:
    items: tuple[MediaItem, ...]
    runs: tuple[tuple[Run, ...], ...]  # per item, its placeholder runs (one per frame), in prompt order
    start: int  # first placeholder token
    end: int  # one past the last placeholder token
    table: np.ndarray  # [3, end - start] int64 positions of prompt tokens start .. end - 1
    delta: int  # position - index of every token from `end` on

    @classmethod
    def build(cls, items: Sequence[MediaItem], runs: Sequence[Sequence[Run]]) -> "PromptMedia":
        """`runs[i]`: item i's placeholder runs, one per frame (t runs of h*w/merge^2 tokens for a video),
        items in prompt order. ValueError when the runs do not fit the items."""
        if len(items) != len(runs) or not items:
            raise ValueError(f"{len(items)} media item(s) but {len(runs)} placeholder group(s) in the prompt")
        frames: list[tuple[int, int, int, int]] = []  # (offset, tokens, h', w') in prompt order
        for item, item_runs in zip(items, runs):
            t, h, w = item.grid_thw
            m = item.merge_size
            if len(item_runs) != t or any(n != item.tokens_per_frame for _, n in item_runs):
                raise ValueError(f"{item.kind} of grid {item.grid_thw} needs {t} run(s) of "
                                 f"{item.tokens_per_frame} placeholder tokens, the prompt has "
                                 f"{[n for _, n in item_runs]}")
            frames += [(o, n, h // m, w // m) for o, n in item_runs]
        offsets = [o for o, *_ in frames]
        if offsets != sorted(offsets) or any(a[0] + a[1] > b[0] for a, b in zip(frames, frames[1:])):
            raise ValueError("media placeholder runs overlap or are out of order")
        start, end = frames[0][0], frames[-1][0] + frames[-1][1]
        table = np.empty((3, end - start), dtype=np.int64)
        cur, at = start, start  # next position; next prompt index to fill
        for offset, n, hm, wm in frames:
            gap = offset - at  # text tokens between two frames (timestamps, vision markers)
            table[:, at - start:offset - start] = np.arange(cur, cur + gap)
            cur += gap
            rows = np.arange(n) // wm
            cols = np.arange(n) % wm
            table[0, offset - start:offset - start + n] = cur
            table[1, offset - start:offset - start + n] = cur + rows
            table[2, offset - start:offset - start + n] = cur + cols
            cur += max(hm, wm)
            at = offset + n
        return cls(tuple(items), tuple(tuple(r) for r in runs), start, end, table, cur - end)

    @property
    def num_patches(self) -> int:
        return sum(item.num_patches for item in self.items)

    def offset(self, index: int) -> int:
        """position - index of a token at or after `end`, or before `start` (0)."""
        return self.delta if index >= self.end else 0

    def positions(self, start: int, n: int) -> np.ndarray | None:
        """[3, n] positions of tokens start .. start + n - 1 when they reach into the vision stretch, else None
        (then every token's position is its index plus `offset(start)`)."""
        if start >= self.end or start + n <= self.start:
            return None
        idx = np.arange(start, start + n)
        out = np.where(idx >= self.end, idx + self.delta, idx)[None].repeat(3, 0)
        a, b = max(start, self.start), min(start + n, self.end)
        out[:, a - start:b - start] = self.table[:, a - self.start:b - self.start]
        return out

    def rows(self, start: int, n: int) -> list[tuple[int, int, int, int]]:
        """The embedding rows that tokens start .. start + n - 1 take from the items:
        (item index, first row of the item's output, first token within the chunk, count)."""
        out = []
        if start >= self.end or start + n <= self.start:
            return out
        for i, item_runs in enumerate(self.runs):
            row = 0
            for offset, length in item_runs:
                a, b = max(start, offset), min(start + n, offset + length)
                if a < b:
                    out.append((i, row + a - offset, a - start, b - a))
                row += length
        return out

    def key_ids(self, prompt_ids: Sequence[int]) -> list[int]:
        """`prompt_ids` with each item's placeholders replaced by a negative number from its digest (never a
        token id): the prompt's identity for the prefix cache includes the media's content."""
        ids = list(prompt_ids)
        for item, item_runs in zip(self.items, self.runs):
            tag = -1 - int(item.digest[:15], 16)
            for offset, length in item_runs:
                ids[offset:offset + length] = [tag] * length
        return ids
