"""The chunked delta rule and the recurrent one agree (outputs and final states), on odd shapes."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops.conv1d import causal_conv1d, causal_conv1d_step
from qwen35.ops.gdn import chunked_gated_delta_rule, l2norm, recurrent_gated_delta_rule


def _inputs(B, T, H, dk, dv, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = l2norm(torch.randn(B, T, H, dk, generator=gen, dtype=dtype)) * dk ** -0.5
    k = l2norm(torch.randn(B, T, H, dk, generator=gen, dtype=dtype))
    v = torch.randn(B, T, H, dv, generator=gen, dtype=dtype)
    g = -torch.rand(B, T, H, generator=gen, dtype=dtype) * 0.5
    beta = torch.rand(B, T, H, generator=gen, dtype=dtype)
    s0 = torch.randn(B, H, dk, dv, generator=gen, dtype=dtype) * 0.1
    return q, k, v, g, beta, s0


@pytest.mark.parametrize("B,T,H,dk,dv", [(1, 1, 1, 8, 8), (2, 63, 3, 16, 8), (1, 64, 2, 8, 16), (3, 130, 2, 16, 16)],
                         ids=["one-token", "under-one-chunk", "exact-chunk", "three-chunks"])
def test_chunked_equals_recurrent(B, T, H, dk, dv):
    q, k, v, g, beta, s0 = _inputs(B, T, H, dk, dv)
    s_rec, s_chk = s0.clone(), s0.clone()
    o_rec = recurrent_gated_delta_rule(q, k, v, g, beta, s_rec)
    o_chk = chunked_gated_delta_rule(q, k, v, g, beta, s_chk)
    assert torch.allclose(o_rec, o_chk, atol=1e-10)
    assert torch.allclose(s_rec, s_chk, atol=1e-10)


def test_padding_rows_leave_state_untouched():
    """beta = g = 0 rows appended after the real tokens change neither outputs nor the final state."""
    q, k, v, g, beta, s0 = _inputs(1, 70, 2, 8, 8)
    s_ref = s0.clone()
    o_ref = chunked_gated_delta_rule(q, k, v, g, beta, s_ref)
    pad = lambda x: torch.cat([x, torch.randn_like(x[:, :10])], 1)  # noqa: E731
    g_p, b_p = torch.cat([g, torch.zeros_like(g[:, :10])], 1), torch.cat([beta, torch.zeros_like(beta[:, :10])], 1)
    s_pad = s0.clone()
    o_pad = chunked_gated_delta_rule(pad(q), pad(k), pad(v), g_p, b_p, s_pad)
    assert torch.allclose(o_pad[:, :70], o_ref, atol=1e-10)
    assert torch.allclose(s_pad, s_ref, atol=1e-10)


def test_fp32_chunked_stays_close_to_fp64():
    """State drift: a long fp32 run against the fp64 reference."""
    q, k, v, g, beta, s0 = _inputs(1, 1000, 2, 32, 32)
    s64 = s0.clone()
    o64 = recurrent_gated_delta_rule(q, k, v, g, beta, s64)
    s32 = s0.float().clone()
    o32 = chunked_gated_delta_rule(q.float(), k.float(), v.float(), g.float(), beta.float(), s32)
    assert (o32.double() - o64).abs().max() < 1e-4
    assert (s32.double() - s64).abs().max() < 1e-4


def test_conv_prefill_then_steps_equals_one_pass():
    gen = torch.Generator().manual_seed(0)
    B, T, C, K = 2, 12, 6, 4
    x = torch.randn(B, T, C, generator=gen, dtype=torch.float64)
    w = torch.randn(C, 1, K, generator=gen, dtype=torch.float64)
    lens = torch.tensor([T, T])
    full = causal_conv1d(x, lens, w, torch.zeros(B, C, K - 1, dtype=torch.float64))
    state = torch.zeros(B, C, K - 1, dtype=torch.float64)
    part = causal_conv1d(x[:, :7], torch.tensor([7, 7]), w, state)
    steps = [causal_conv1d_step(x[:, t], w, state) for t in range(7, T)]
    assert torch.allclose(torch.cat([part, torch.stack(steps, 1)], 1), full)


def test_conv_state_follows_each_sequences_length():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 1, 4, generator=gen, dtype=torch.float64)
    state = torch.zeros(2, 3, 3, dtype=torch.float64)
    causal_conv1d(x, torch.tensor([5, 2]), w, state)
    assert torch.equal(state[0], x[0, 2:5].T)
    assert torch.equal(state[1, :, 1:], x[1, :2].T) and torch.equal(state[1, :, 0], torch.zeros(3, dtype=torch.float64))
