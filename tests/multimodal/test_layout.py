"""PromptMedia: mRoPE positions equal transformers' `get_rope_index`; rows, offsets and prefix-cache keys."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from qwen35.multimodal.inputs import MediaItem
from qwen35.multimodal.layout import PromptMedia

IMAGE, VIDEO, TEXT = 7, 8, 1


def _item(kind: str, t: int, h: int, w: int, seed: int = 0) -> MediaItem:
    pixels = np.random.default_rng(seed).standard_normal((t * h * w, 8)).astype(np.float32)
    return MediaItem(kind, pixels, (t, h, w))


def _prompt(parts):
    """parts: ints (text tokens) or items; a video item gets 2 text tokens (its timestamp) before each frame.
    Returns ids, mm_token_type_ids, items, runs."""
    ids, types_, items, runs = [], [], [], []
    for p in parts:
        if isinstance(p, int):
            ids += [TEXT] * p
            types_ += [0] * p
            continue
        items.append(p)
        item_runs = []
        for _ in range(p.grid_thw[0]):
            if p.kind == "video":
                ids += [TEXT, TEXT]
                types_ += [0, 0]
            item_runs.append((len(ids), p.tokens_per_frame))
            ids += [IMAGE if p.kind == "image" else VIDEO] * p.tokens_per_frame
            types_ += [1 if p.kind == "image" else 2] * p.tokens_per_frame
        runs.append(item_runs)
    return ids, types_, items, runs


def _oracle(ids, types_, items):
    modeling = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    cls = modeling.Qwen3_5Model
    this = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=types.SimpleNamespace(spatial_merge_size=2)))
    this.get_vision_position_ids = types.MethodType(cls.get_vision_position_ids, this)
    grids = lambda kind: (torch.tensor([it.grid_thw for it in items if it.kind == kind])
                          if any(it.kind == kind for it in items) else None)
    pos, delta = cls.get_rope_index(this, torch.tensor([ids]), torch.tensor([types_]), grids("image"), grids("video"))
    return pos[:, 0].numpy(), int(delta[0, 0])


@pytest.mark.parametrize("parts", [
    [5, _item("image", 1, 4, 6), 3],
    [2, _item("image", 1, 8, 4, 1), 4, _item("image", 1, 4, 4, 2), 6],
    [3, _item("video", 3, 4, 6), 5],
    [1, _item("image", 1, 6, 6), 2, _item("video", 2, 8, 4, 3), 4],
], ids=["one-image", "two-images", "video", "image-and-video"])
def test_positions_equal_get_rope_index(parts):
    ids, types_, items, runs = _prompt(parts)
    want, delta = _oracle(ids, types_, items)
    media = PromptMedia.build(items, runs)
    assert media.delta == delta
    np.testing.assert_array_equal(media.positions(0, len(ids)), want)
    # any chunking gives the same positions; chunks outside the vision stretch are 1-D with an offset
    for a in range(0, len(ids), 5):
        n = min(5, len(ids) - a)
        got = media.positions(a, n)
        if got is None:
            np.testing.assert_array_equal(np.arange(a, a + n) + media.offset(a), want[0, a:a + n])
        else:
            np.testing.assert_array_equal(got, want[:, a:a + n])
    # decode continues from the last position
    assert media.offset(len(ids)) + len(ids) == want.max() + 1


def test_rows_cover_every_placeholder_once():
    ids, _, items, runs = _prompt([3, _item("video", 2, 4, 4), 2, _item("image", 1, 4, 8), 1])
    media = PromptMedia.build(items, runs)
    seen = {i: [] for i in range(len(items))}
    for a in range(0, len(ids), 3):  # chunks cutting through frames
        for i, r0, t0, c in media.rows(a, 3):
            assert all(ids[a + t0 + j] in (IMAGE, VIDEO) for j in range(c))
            seen[i] += range(r0, r0 + c)
    assert seen == {0: list(range(8)), 1: list(range(8))}


def test_key_ids_tell_equal_sized_images_apart():
    a, b = _item("image", 1, 4, 4, 0), _item("image", 1, 4, 4, 1)
    ids, _, _, runs = _prompt([2, a, 2])
    ka = PromptMedia.build([a], runs).key_ids(ids)
    kb = PromptMedia.build([b], runs).key_ids(ids)
    assert ka != kb and ka[:2] == kb[:2] == ids[:2]
    assert ka == PromptMedia.build([_item("image", 1, 4, 4, 0)], runs).key_ids(ids)  # same content, same key
    assert all(k < 0 for k in ka[2:6])


def test_runs_that_do_not_fit_are_refused():
    item = _item("image", 1, 4, 4)
    with pytest.raises(ValueError, match="placeholder"):
        PromptMedia.build([item], [[(0, 3)]])
    with pytest.raises(ValueError, match="1 media item"):
        PromptMedia.build([item], [])
