"""Paged attention against the per-sequence fp32 reference on ragged batches over shuffled (non-contiguous) block
tables: the dispatching op (fresh-prompt SDPA or tiles), and each tiled kernel forced (CPU flash + log-sum-exp
merge, explicit online softmax)."""

from __future__ import annotations

import pytest
import torch

import qwen35.ops.attention as attn
from qwen35.ops.attention import paged_attention, paged_attention_ref, paged_attention_tiled
from qwen35.ops.batch import ForwardBatch, SeqSpec

BS = 16
HQ, HKV, D = 8, 2, 32


def _case(shape: list[tuple[int, int]], dtype: torch.dtype, seed: int = 0, device: str = "cpu"):
    """shape: (context_len, new tokens) per sequence. Returns q, k_cache, v_cache, batch; the cache holds random
    K/V for every position of every sequence, in blocks handed out in shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    need = [-(-(c + n) // BS) for c, n in shape]
    perm = torch.randperm(sum(need) + 3, generator=gen).tolist()  # spare blocks stay unused
    tables, at = [], 0
    for k in need:
        tables.append(perm[at:at + k])
        at += k
    rows = (sum(need) + 3) * BS
    k_cache = torch.randn(rows, HKV, D, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(rows, HKV, D, generator=gen).to(dtype).to(device)
    seqs = [SeqSpec([1] * n, c, i, t) for i, ((c, n), t) in enumerate(zip(shape, tables))]
    batch = ForwardBatch.build(seqs, BS, device)
    q = torch.randn(batch.num_tokens, HQ, D, generator=gen).to(dtype).to(device)
    return q, k_cache, v_cache, batch


def _new_kv(k_cache, v_cache, batch):
    return k_cache[batch.slot_mapping], v_cache[batch.slot_mapping]


SHAPES = {
    "decode-1": [(37, 1)],
    "decode-ragged": [(0, 1), (15, 1), (16, 1), (1000, 1), (3001, 1)],
    "prefill-fresh": [(0, 70)],
    "prefill-two-fresh": [(0, 70), (0, 5)],
    "chunk-after-context": [(2500, 300)],
    "mixed": [(5, 1), (0, 33), (4100, 1), (700, 129), (2, 2), (64, 1)],
    "ragged-chunks": [(10, 400), (3000, 2), (0, 3), (17, 1)],
    "decode-all-cached": [(1000, 1), (3001, 1), (517, 1)],  # keys below 512 need no mask
    "mixed-all-cached": [(300, 1), (1200, 40), (45, 3), (700, 1)],
}
IMPLS = ["flash_cpu", "online"]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}  # bf16: ~1 ulp


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.float(), want.float(), **TOL[want.dtype])


@pytest.mark.parametrize("one_tile_mask", [0, attn.ONE_TILE_MASK], ids=["split", "one-masked-tile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_paged_attention_matches_reference(name, dtype, one_tile_mask, monkeypatch):
    # one_tile_mask 0: keys below the shortest context always in a mask-free tile of their own
    monkeypatch.setattr(attn, "ONE_TILE_MASK", one_tile_mask)
    q, k_cache, v_cache, batch = _case(SHAPES[name], dtype)
    want = paged_attention_ref(q, k_cache, v_cache, batch, D ** -0.5)
    got = paged_attention(q, *_new_kv(k_cache, v_cache, batch), k_cache, v_cache, batch, D ** -0.5)
    assert got.dtype == dtype and got.shape == q.shape
    _close(got, want)
    for impl in IMPLS:
        _close(paged_attention_tiled(q, k_cache, v_cache, batch, D ** -0.5, impl=impl), want)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("budget", [1 << 12, 1 << 16], ids=["tiny-tiles", "small-tiles"])
def test_tile_boundaries_do_not_matter(budget, dtype, impl, monkeypatch):
    """Small score budgets force key tiles of one or a few blocks, not aligned with sequence ends."""
    q, k_cache, v_cache, batch = _case(SHAPES["mixed"], dtype, seed=3)
    want = paged_attention_ref(q, k_cache, v_cache, batch, D ** -0.5)
    monkeypatch.setattr(attn, "SCORE_BUDGET", budget)
    _close(paged_attention_tiled(q, k_cache, v_cache, batch, D ** -0.5, impl=impl), want)


def test_ragged_chunks_are_cut_into_query_tiles():
    """A long chunk next to short ones is cut into Q_TILE-row tiles instead of padding every chunk to it."""
    q, k_cache, v_cache, batch = _case([(0, 300), (9, 2), (0, 3), (40, 4)], torch.float32)
    decode_free = batch.query_tiles[-1]
    assert decode_free.rows.shape[1] == attn.Q_TILE
    assert decode_free.rows.numel() < 2 * batch.num_tokens + 3 * attn.Q_TILE


@pytest.mark.parametrize("impl", IMPLS)
def test_long_context_decode_and_chunk_bf16(impl, monkeypatch):
    """bf16 against fp32 maths over 8k keys in 512-key tiles: merging many tiles does not drift."""
    q, k_cache, v_cache, batch = _case([(8000, 1), (6000, 64)], torch.bfloat16, seed=5)
    want = paged_attention_ref(q, k_cache, v_cache, batch, D ** -0.5)
    monkeypatch.setattr(attn, "MAX_KEY_TILE", 512)
    _close(paged_attention_tiled(q, k_cache, v_cache, batch, D ** -0.5, impl=impl), want)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["decode-ragged", "mixed", "chunk-after-context"])
def test_paged_attention_cuda_matches_reference(name):
    q, k_cache, v_cache, batch = _case(SHAPES[name], torch.bfloat16, device="cuda")
    want = paged_attention_ref(q, k_cache, v_cache, batch, D ** -0.5)
    got = paged_attention(q, *_new_kv(k_cache, v_cache, batch), k_cache, v_cache, batch, D ** -0.5)
    assert got.is_cuda
    _close(got, want)
    _close(paged_attention_tiled(q, k_cache, v_cache, batch, D ** -0.5, impl="online"), want)


@pytest.mark.parametrize("start,end,per_key", [(0, 262144, 512), (4096, 4097, 16384), (0, 5000, 1 << 20)])
def test_key_tiles_cover_the_keys_within_the_budget(start, end, per_key):
    """Tiles are whole blocks, contiguous, cover [start, end), and never exceed the element budget."""
    spans = attn._key_tiles(start, end, per_key, BS)
    assert spans[0][0] == start and spans[-1][0] + spans[-1][1] >= end
    assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
    assert all(n % BS == 0 and (n * per_key <= attn.SCORE_BUDGET or n == BS) for _, n in spans)


@pytest.mark.parametrize("hq,hkv,d", [(8, 2, 32), (4, 2, 40), (16, 1, 64), (5, 5, 256), (6, 2, 20)])
def test_decode_kernel_matches_reference(isa, hq, hkv, d, monkeypatch):
    """csrc/decode_attention.cpp (bf16 decode steps: K/V read in place through shuffled block tables), on every
    ISA here: query heads per K/V head 1-16, head dims with and without a multiple of 8 (the plain loop), a
    sequence whose only key is its new token and ones across many blocks and chunks."""
    from qwen35.ops import native

    monkeypatch.setitem(globals(), "HQ", hq)  # the shapes _case makes
    monkeypatch.setitem(globals(), "HKV", hkv)
    monkeypatch.setitem(globals(), "D", d)
    q, k_cache, v_cache, batch = _case([(0, 1), (31, 1), (32, 1), (700, 1), (2049, 1)], torch.bfloat16, seed=d)
    assert attn._decode_kernel(q, k_cache, v_cache, batch) is native.ops()
    want = paged_attention_ref(q, k_cache, v_cache, batch, d ** -0.5)
    got = paged_attention(q, *_new_kv(k_cache, v_cache, batch), k_cache, v_cache, batch, d ** -0.5)
    _close(got, want)


def test_decode_kernel_rejects_a_block_outside_the_cache():
    q, k_cache, v_cache, batch = _case([(40, 1)], torch.bfloat16)
    from qwen35.ops import native

    tables = batch.block_tables.clone()
    tables[0, 1] = k_cache.shape[0] // BS
    with pytest.raises(RuntimeError, match="outside the cache"):
        native.ops().decode_attention(q, k_cache, v_cache, tables, batch.seq_lens, BS, 0.1)
