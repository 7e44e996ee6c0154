"""Placeholder tokens: the prompt positions each image's and video's embeddings go to.

The chat template writes `<|vision_start|><|image_pad|><|vision_end|>` per image and
`<|vision_start|><|video_pad|><|vision_end|>` per video. As transformers' Qwen3VLProcessor (5.x) does, only the
pad token is expanded; the template's markers stay around it:
* image: `<|image_pad|>` x (h * w / merge^2).
* video: for each temporal patch k, the text `<{t_k:.1f} seconds>`, `<|vision_start|>`,
  `<|video_pad|>` x (h * w / merge^2), `<|vision_end|>` -- so a video reads
  `<|vision_start|><0.3 seconds><|vision_start|>pads<|vision_end|><1.4 seconds>...<|vision_end|><|vision_end|>`.
  transformers 4.x and vLLM before its transformers-5 switch replaced the whole marker triple instead (no
  outer markers); vLLM now follows transformers 5, and so do we.
The timestamp text is tokenised on its own, which is what tokenising the expanded prompt gives: special tokens
bound it on both sides, and pre-tokenisation never crosses a special token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .inputs import MediaItem

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"

Spans = list[tuple[int, int]]  # (offset, length) runs of one item's placeholder tokens, in prompt order


def timestamp_text(seconds: float) -> str:
    """How a video's temporal patch is labelled in the prompt."""
    return f"<{seconds:.1f} seconds>"


def item_tokens(item: MediaItem, tokenizer: Tokenizer) -> list[int]:
    """The ids one item's pad token expands to."""
    if item.kind == "image":
        return [_token_id(tokenizer, IMAGE_PAD)] * item.num_tokens
    if item.kind != "video":
        raise ValueError(f"unknown media kind {item.kind!r}")
    t = item.grid_thw[0]
    if len(item.timestamps) != t:
        raise ValueError(f"video has {t} temporal patches but {len(item.timestamps)} timestamps")
    frame = [_token_id(tokenizer, VISION_START)] + [_token_id(tokenizer, VIDEO_PAD)] * item.tokens_per_frame + [
        _token_id(tokenizer, VISION_END)]
    stamps = tokenizer.encode_batch([timestamp_text(s) for s in item.timestamps])
    return [i for stamp in stamps for i in (*stamp, *frame)]


def expand_placeholders(ids: Sequence[int], items: Sequence[MediaItem], tokenizer: Tokenizer) -> list[int]:
    """`ids` with each `<|image_pad|>` / `<|video_pad|>` replaced by its item's tokens. `items` are in prompt
    order; the placeholder kinds must match them one for one (ValueError otherwise)."""
    pads = {_token_id(tokenizer, IMAGE_PAD): "image", _token_id(tokenizer, VIDEO_PAD): "video"}
    found = [(pos, pads[t]) for pos, t in enumerate(ids) if t in pads]
    want, given = [kind for _, kind in found], [item.kind for item in items]
    if want != given:
        raise ValueError(f"the prompt has placeholders for {_count(want)} but {_count(given)} were given"
                         + (" (in a different order)" if sorted(want) == sorted(given) else ""))
    out: list[int] = []
    last = 0
    for (pos, _), item in zip(found, items):
        out.extend(ids[last:pos])
        out.extend(item_tokens(item, tokenizer))
        last = pos + 1
    out.extend(ids[last:])
    return out


def placeholder_spans(ids: Sequence[int], items: Sequence[MediaItem], image_token_id: int,
                      video_token_id: int) -> list[Spans]:
    """For an expanded prompt, where each item's embedding rows go: per item, its (offset, length) runs.

    An image has one run of `num_tokens`; a video one run of `tokens_per_frame` per temporal patch (timestamp
    text and markers lie between them), so its rows, in order, fill the runs in order. Images take the image
    pads in prompt order, videos the video pads; every pad must be taken, each run contiguous (ValueError)."""
    arr = np.asarray(ids, dtype=np.int64)
    positions = {"image": np.flatnonzero(arr == image_token_id), "video": np.flatnonzero(arr == video_token_id)}
    taken = {"image": 0, "video": 0}
    spans: list[Spans] = []
    for n, item in enumerate(items):
        if item.kind not in positions:
            raise ValueError(f"unknown media kind {item.kind!r}")
        runs = [item.num_tokens] if item.kind == "image" else [item.tokens_per_frame] * item.grid_thw[0]
        pos, start = positions[item.kind], taken[item.kind]
        item_spans: Spans = []
        for length in runs:
            end = start + length
            if end > len(pos):
                raise ValueError(f"{item.kind} {n} needs {length} more placeholder tokens than the prompt has")
            if pos[end - 1] - pos[start] != length - 1:
                raise ValueError(f"{item.kind} {n}: its {length} placeholder tokens at {int(pos[start])} are "
                                 f"not contiguous")
            item_spans.append((int(pos[start]), length))
            start = end
        taken[item.kind] = start
        spans.append(item_spans)
    for kind, pos in positions.items():
        if taken[kind] != len(pos):
            raise ValueError(f"{len(pos) - taken[kind]} {kind} placeholder tokens are left over")
    return spans


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"{token} is not a token of {tokenizer.source}")
    return token_id


def _count(kinds: list[str]) -> str:
    return f"{kinds.count('image')} image(s) and {kinds.count('video')} video(s)"
