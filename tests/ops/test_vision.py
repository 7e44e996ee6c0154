"""ops/vision.py: the tower's position tables equal transformers' (vision_utils, the rotary module), frames of
equal length are grouped without losing the input order, and frame-wise attention equals a per-frame loop."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops.vision import (FramePlan, frame_attention, interpolation_taps, patch_rows_cols, reference_attention,
                               rotary_tables)

GRIDS = [(1, 16, 16), (2, 8, 24), (1, 6, 4), (1, 2, 2)]


@pytest.mark.parametrize("merge", [1, 2])
def test_tables_equal_transformers(merge):
    vision_utils = pytest.importorskip("transformers.vision_utils")
    grid_thw = torch.tensor(GRIDS)
    side = 48
    want_idx, want_w = vision_utils.get_vision_interpolation_indices_and_weights(
        grid_thw, side, mode="bilinear", align_corners=True, spatial_merge_size=merge)
    want_pos = vision_utils.get_vision_position_ids(grid_thw, merge)
    idx, w, pos = [], [], []
    for t, h, ww in GRIDS:
        i, wt = interpolation_taps(h, ww, merge, side)
        rows, cols = patch_rows_cols(h, ww, merge)
        idx += [i] * t
        w += [wt] * t
        pos += [torch.stack([rows, cols], -1)] * t
    assert torch.equal(torch.cat(idx), want_idx)
    assert torch.equal(torch.cat(w), want_w)
    assert torch.equal(torch.cat(pos), want_pos)


def test_rotary_equals_transformers():
    modeling = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig

    rope = modeling.Qwen3_5VisionRotaryEmbedding(Qwen3_5VisionConfig(hidden_size=768, num_heads=12))
    rows, cols = patch_rows_cols(8, 12, 2)
    want_cos, want_sin = rope(torch.zeros(1), torch.stack([rows, cols], -1))
    cos, sin = rotary_tables(8, 12, 2, 64, 10_000.0)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)


def test_plan_groups_equal_lengths_in_first_seen_order():
    plan = FramePlan.build([(1, 8, 8), (2, 4, 12), (1, 8, 8), (1, 6, 8)])  # lengths 64, 48, 48, 64, 48
    assert plan.runs == ((2, 64), (3, 48))
    assert plan.frames == ((8, 8), (8, 8), (4, 12), (4, 12), (6, 8))
    want = torch.cat([torch.arange(0, 64), torch.arange(160, 224), torch.arange(64, 160), torch.arange(224, 272)])
    assert torch.equal(plan.order, want)
    assert torch.equal(plan.merged_order(2), want[::4] // 4)
    same = FramePlan.build([(3, 8, 12), (1, 16, 16)])
    assert same.order is None and same.runs == ((3, 96), (1, 256))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frame_attention_equals_per_frame_loop(dtype):
    grids = [(1, 8, 8), (2, 4, 12), (1, 8, 8), (1, 6, 8)]
    n = sum(t * h * w for t, h, w in grids)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 3, 16, generator=gen).to(dtype) for _ in range(3))
    plan = FramePlan.build(grids)
    got = frame_attention(q[plan.order], k[plan.order], v[plan.order], plan.runs)
    got = torch.empty_like(got).index_copy_(0, plan.order, got)
    want = reference_attention(q, k, v, grids)
    assert (got.float() - want.float()).abs().max().item() < (1e-5 if dtype == torch.float32 else 2e-2)
