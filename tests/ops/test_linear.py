"""The linear op's fast paths (oneDNN-packed weight, `torch.mv` for one row) against the fp32 reference."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops import linear as ops_linear
from qwen35.ops import native
from qwen35.ops.linear import linear, linear_ref, packing_applies, prepack


@pytest.mark.parametrize("rows", [1, 3, 64], ids=["one-row", "few-rows", "prefill"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_linear_matches_reference(rows, dtype, packed):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=gen).to(dtype)
    w = (torch.randn(80, 96, generator=gen) * 0.1).to(dtype)
    if packed and not packing_applies(w):
        pytest.skip("oneDNN has no bf16 path on this CPU (AVX2 only)")
    p = prepack(w) if packed else None
    assert (p is not None) == packed  # CPU fp32 weights always pack, bf16 ones where oneDNN has a bf16 path
    got = linear(x, None if packed else w, p)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    assert got.shape == (rows, 80) and got.dtype == dtype
    torch.testing.assert_close(got.float(), linear_ref(x, w).float(), **tol)


def test_prepack_skips_what_it_cannot_pack():
    assert prepack(torch.zeros(4, 4, dtype=torch.float16)) is None
    x = torch.randn(2, 3, 4)  # batched input goes through F.linear
    w = torch.randn(5, 4)
    torch.testing.assert_close(linear(x, w), linear_ref(x, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_every_few_rows_kernel_matches_the_reference(dtype, rows):
    """Whichever kernel the load-time measurement picks for a plain weight, the result is the reference's."""
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(300, 64, generator=gen).to(dtype)
    x = torch.randn(rows, 64, generator=gen).to(dtype)
    want = ops_linear.linear_ref(x, w).float()
    key = (w.data_ptr(), w.dtype, tuple(w.shape), rows)
    native = ["native"] if ops_linear._native_applies(x, w) else []
    for kernel in native + (["mv"] if rows == 1 else []) + ["linear", "w_xt"]:
        ops_linear._FEW_ROWS_KERNEL[key] = kernel
        got = ops_linear.linear(x, w).float()
        assert got.shape == want.shape
        assert (got - want).abs().max() <= (1e-4 if dtype == torch.float32 else 0.05)
    del ops_linear._FEW_ROWS_KERNEL[key]
    ops_linear.linear(x, w)  # measured choice
    assert ops_linear._FEW_ROWS_KERNEL[key] in native + ["mv", "linear", "w_xt"]


def test_bf16_weights_stay_plain_where_onednn_has_no_bf16_path(monkeypatch):
    """An AVX2-only CPU: packing a bf16 weight would raise, so it is not packed and the plain kernels serve."""
    monkeypatch.setattr(ops_linear, "onednn_bf16", lambda: False)
    w = torch.randn(80, 96).bfloat16()
    assert prepack(w) is None and not ops_linear.prefer_packed([w])
    assert prepack(w.float()) is not None
    for rows in (3, 64):  # the few-rows kernels, then F.linear in fp32
        x = torch.randn(rows, 96).bfloat16()
        got = linear(x, w)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), linear_ref(x, w).float(), atol=2e-2, rtol=2e-2)


def test_prefer_packed_measures_only_where_our_kernel_applies():
    assert ops_linear.prefer_packed([torch.randn(64, 32)])  # fp32: always packed
    w = [torch.randn(64, 32).bfloat16() for _ in range(3)]
    assert ops_linear.prefer_packed(w) in (True, False)


def test_quantised_prefill_runs_in_fp32_where_onednn_has_no_bf16_path(monkeypatch):
    """The dequantised weight of a long prefill goes through `plain_linear` too: in bf16 on an AVX2-only CPU
    torch's fallback GEMM was 5x slower."""
    from qwen35.ops import quant

    monkeypatch.setattr(ops_linear, "onednn_bf16", lambda: False)
    seen, real = [], torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w: seen.append((x.dtype, w.dtype)) or real(x, w))
    w = torch.randn(48, 128)
    x = torch.randn(quant.PREFILL_ROWS, 128).bfloat16()
    for fmt in ("int8", "int4"):
        q, s = quant.quantize_int8(w) if fmt == "int8" else quant.quantize_int4(w)
        got = quant.matmul(x, fmt, q, s)
        assert got.dtype == torch.bfloat16 and seen.pop() == (torch.float32, torch.float32)
        want = quant.matmul_ref(x, fmt, q, s).float()  # fp32 weights; ours were dequantised to bf16
        assert (got.float() - want).abs().max() / want.abs().max() < 1e-2


def test_the_one_row_order_is_measured_only_where_it_can_tell(monkeypatch):
    """`choose_in_order` times our kernel's two orders on a weight that streams from memory; on one that the
    cache holds, or without the AVX512-BF16 kernels, the blocks stay. Either order gives the reference's result."""
    small = torch.randn(256, 64).bfloat16()
    assert not ops_linear.choose_in_order(small) and not ops_linear._in_order
    x = torch.randn(1, 64).bfloat16()
    monkeypatch.setattr(ops_linear, "_in_order", True)
    key = (small.data_ptr(), small.dtype, tuple(small.shape), 1)
    monkeypatch.setitem(ops_linear._FEW_ROWS_KERNEL, key, "native")
    if ops_linear._native_applies(x, small):
        got = ops_linear.linear(x, small).float()
        assert (got - ops_linear.linear_ref(x, small).float()).abs().max() <= 0.05
    monkeypatch.setattr(ops_linear, "_cache_flush_bytes", lambda: 0)  # as if this weight streamed from memory
    chose = ops_linear.choose_in_order(small)
    assert chose == ops_linear._in_order and (not chose or native.isa() == "avx512_bf16")
