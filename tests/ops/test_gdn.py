"""The chunked delta rule and the recurrent one agree (outputs and final states), on odd shapes; the snapshot
variants of the delta rule and the conv leave exactly the states of running each prefix alone."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops.conv1d import causal_conv1d, causal_conv1d_step
from qwen35.ops.gdn import (chunked_gated_delta_rule, gated_delta_rule, gated_delta_rule_with_snapshots, l2norm,
                            recurrent_gated_delta_rule)


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


def _pad_to_lens(x, lens):
    """Zero every row past each sequence's length (the padding convention: g = beta = 0 there)."""
    keep = torch.arange(x.shape[1])[None, :] < torch.tensor(lens)[:, None]
    return x * keep.view(*keep.shape, *[1] * (x.dim() - 2))


@pytest.mark.parametrize("lens,S", [([4, 4], 4), ([1, 4, 2], 4), ([9, 5, 12], 4), ([130, 3, 70], 4), ([40, 40], 1)],
                         ids=["verify-only", "shorter-than-S", "recurrent-head", "chunked-head", "one-snapshot"])
def test_delta_rule_snapshots_equal_prefix_states(lens, S):
    B, T, H, dk, dv = len(lens), max(lens), 2, 8, 16
    q, k, v, g, beta, s0 = _inputs(B, T, H, dk, dv)
    g, beta = _pad_to_lens(g, lens), _pad_to_lens(beta, lens)
    pool = torch.full((B * S + 1, H, dk, dv), float("nan"), dtype=s0.dtype)
    index = torch.arange(B * S).view(B, S)
    state = s0.clone()
    o = gated_delta_rule_with_snapshots(q, k, v, g, beta, state, torch.tensor(lens), pool, index)
    s_plain = s0.clone()
    o_plain = gated_delta_rule(q, k, v, g, beta, s_plain)
    for b, n in enumerate(lens):
        assert torch.allclose(o[b, :n], o_plain[b, :n], atol=1e-10)
        assert torch.allclose(state[b], s_plain[b], atol=1e-10)
        for i in range(S):
            t = n - S + i  # the snapshot holds the state after token t
            if t < 0:
                continue
            s_ref = s0[b:b + 1].clone()
            recurrent_gated_delta_rule(q[b:b + 1, :t + 1], k[b:b + 1, :t + 1], v[b:b + 1, :t + 1],
                                       g[b:b + 1, :t + 1], beta[b:b + 1, :t + 1], s_ref)
            assert torch.allclose(pool[index[b, i]], s_ref[0], atol=1e-10), (b, i)
    assert pool[-1].isnan().all()  # nothing outside the index is written


def test_delta_rule_snapshots_in_fp32_match_prefix_runs():
    """fp32, chunked head: each snapshot within fp32 rounding of the prefix's own state."""
    lens, S = [100, 67], 4
    q, k, v, g, beta, s0 = (x.float() for x in _inputs(2, 100, 2, 16, 16))
    g, beta = _pad_to_lens(g, lens), _pad_to_lens(beta, lens)
    pool, index = torch.zeros(8, 2, 16, 16), torch.arange(8).view(2, S)
    gated_delta_rule_with_snapshots(q, k, v, g, beta, s0.clone(), torch.tensor(lens), pool, index)
    for b, n in enumerate(lens):
        for i in range(S):
            s_ref = s0[b:b + 1].clone()
            t = n - S + i + 1
            gated_delta_rule(q[b:b + 1, :t], k[b:b + 1, :t], v[b:b + 1, :t], g[b:b + 1, :t], beta[b:b + 1, :t], s_ref)
            err = (pool[index[b, i]] - s_ref[0]).abs().max() / s_ref.abs().max()
            assert err < 1e-5, (b, i, err)


@pytest.mark.parametrize("lens,S", [([6, 2, 9], 4), ([1, 1], 3)], ids=["prefill", "decode-lengths"])
def test_conv_snapshots_equal_prefix_states(lens, S):
    gen = torch.Generator().manual_seed(2)
    B, T, C, K = len(lens), max(lens), 5, 4
    x = torch.randn(B, T, C, generator=gen, dtype=torch.float64)
    w = torch.randn(C, 1, K, generator=gen, dtype=torch.float64)
    s0 = torch.randn(B, C, K - 1, generator=gen, dtype=torch.float64)
    pool = torch.full((B * S, C, K - 1), float("nan"), dtype=torch.float64)
    index = torch.arange(B * S).view(B, S)
    state = s0.clone()
    causal_conv1d(x, torch.tensor(lens), w, state, snapshots=(pool, index))
    if T == 1:  # the one-token step writes the last snapshot only
        step_pool, step_state = torch.full_like(pool, float("nan")), s0.clone()
        causal_conv1d_step(x[:, 0], w, step_state, snapshots=(step_pool, index))
        assert torch.equal(step_pool[index[:, -1]], pool[index[:, -1]])
        assert torch.equal(step_state, state)
    for b, n in enumerate(lens):
        for i in range(S):
            t = n - S + i
            if t < 0:
                continue
            s_ref = s0[b:b + 1].clone()
            causal_conv1d(x[b:b + 1, :t + 1], torch.tensor([t + 1]), w, s_ref)
            assert torch.equal(pool[index[b, i]], s_ref[0]), (b, i)
        assert torch.equal(pool[index[b, -1]], state[b])


@pytest.mark.parametrize("T,chunk,span", [(5, 64, 256), (100, 64, 256), (300, 64, 128), (300, 32, 64), (257, 128, 256)],
                         ids=["far-under-one-chunk", "partial-last-chunk", "several-spans", "chunk-32",
                              "chunk-128"])
def test_chunked_spans_and_partial_chunks(T, chunk, span, monkeypatch):
    """T not a multiple of the chunk, spans of a few chunks (the precompute's groups), other chunk sizes."""
    import qwen35.ops.gdn as gdn

    monkeypatch.setattr(gdn, "_SPAN_TOKENS", span)
    q, k, v, g, beta, s0 = _inputs(2, T, 3, 16, 8)
    s_rec, s_chk = s0.clone(), s0.clone()
    o_rec = recurrent_gated_delta_rule(q, k, v, g, beta, s_rec)
    o_chk = chunked_gated_delta_rule(q, k, v, g, beta, s_chk, chunk=chunk)
    assert torch.allclose(o_rec, o_chk, atol=1e-10)
    assert torch.allclose(s_rec, s_chk, atol=1e-10)


def test_chunked_right_padded_batch_equals_each_sequence_alone():
    """B > 1, right-padded (g = beta = 0 past each length, junk q/k/v there): every sequence's outputs and
    final state are those of running it alone."""
    lens = [200, 77, 5]
    q, k, v, g, beta, s0 = _inputs(len(lens), max(lens), 2, 16, 16)
    g, beta = _pad_to_lens(g, lens), _pad_to_lens(beta, lens)
    state = s0.clone()
    o = chunked_gated_delta_rule(q, k, v, g, beta, state)
    for b, n in enumerate(lens):
        s_ref = s0[b:b + 1].clone()
        o_ref = recurrent_gated_delta_rule(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], g[b:b + 1, :n],
                                           beta[b:b + 1, :n], s_ref)
        assert torch.allclose(o[b:b + 1, :n], o_ref, atol=1e-10)
        assert torch.allclose(state[b], s_ref[0], atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_strong_decays(dtype):
    """Per-token log-decays down to -40 (transformers' random init reaches -20; cumulative in-chunk decays then
    fall far below the exp(-60) cutoff and into fp32's denormal/underflow range), some heads weak: the same as
    the recurrent form, with nothing non-finite."""
    q, k, v, g, beta, s0 = _inputs(2, 150, 3, 16, 16, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    g = -40 * torch.rand(2, 150, 3, generator=gen, dtype=dtype) ** 2
    g[:, :, 1] *= 1e-3  # one weakly decaying head
    s_rec, s_chk = s0.clone(), s0.clone()
    o_rec = recurrent_gated_delta_rule(q, k, v, g, beta, s_rec)
    o_chk = chunked_gated_delta_rule(q, k, v, g, beta, s_chk)
    atol = 1e-10 if dtype == torch.float64 else 1e-5
    assert o_chk.isfinite().all() and s_chk.isfinite().all()
    assert torch.allclose(o_rec, o_chk, atol=atol)
    assert torch.allclose(s_rec, s_chk, atol=atol)
