"""Our C++ kernels (ops/native.py, csrc/) against the reference ops, on every instruction set this CPU runs."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops import native, quant

lib = native.ops()
pytestmark = pytest.mark.skipif(lib is None, reason="native kernels not built")

def _close(y: torch.Tensor, ref: torch.Tensor, tol: float = 8e-3) -> None:
    err = (y.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-6)
    assert err < tol, f"max error {err:.2e} relative to max |ref|"


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 8, 9, 16])
@pytest.mark.parametrize("N,K", [(7, 96), (64, 1024), (33, 130), (5, 17)])
def test_bf16_and_int8(isa, M, N, K):
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    x, w = torch.randn(M, K, generator=g).bfloat16(), torch.randn(N, K, generator=g).bfloat16()
    _close(lib.gemm_bf16(x, w), x.float() @ w.float().T)
    q, s = quant.quantize_int8(w)
    q8 = isa != "scalar" and K % 64 == 0  # these kernels round x to int8 per 32 inputs
    _close(lib.gemm_int8(x, q, s), quant.matmul_ref(x, "int8", q, s, q8_inputs=q8).float())


@pytest.mark.parametrize("N,K", [(7, 96), (64, 1024), (33, 130), (5, 17), (9, 160), (1030, 256)])
def test_bf16_in_order(isa, N, K):
    """One input row against weight rows read one after another (csrc/gemm.cpp: bf16_in_order_avx512): K a
    multiple of 128, of 32 only, and neither; N splits unevenly between threads. Elsewhere it is the blocks."""
    g = torch.Generator().manual_seed(N + K)
    x, w = torch.randn(1, K, generator=g).bfloat16(), torch.randn(N, K, generator=g).bfloat16()
    _close(lib.gemm_bf16(x, w, True), x.float() @ w.float().T)
    x3 = torch.randn(3, K, generator=g).bfloat16()  # more rows: the blocks, whatever in_order says
    assert torch.equal(lib.gemm_bf16(x3, w, True), lib.gemm_bf16(x3, w))


@pytest.mark.parametrize("M", [1, 2, 3, 6])
@pytest.mark.parametrize("group", [32, 64, 96, 128])  # 96: a group that ends inside a block of 64 inputs
@pytest.mark.parametrize("zeros", [False, True])
def test_int4(isa, M, group, zeros):
    N, K = 37, 384
    g = torch.Generator().manual_seed(M + group)
    x, w = torch.randn(M, K, generator=g).bfloat16(), torch.randn(N, K, generator=g)
    q, s = quant.quantize_int4(w, group)
    z = torch.randint(0, 16, s.shape, dtype=torch.uint8, generator=g) if zeros else None
    want = quant.matmul_ref(x, "int4", q, s, z, q8_inputs=isa != "scalar").float()
    _close(lib.gemm_int4(x, q, s, z, group), want)


@pytest.mark.parametrize("fmt,K", [("bf16", 1024), ("bf16", 130), ("int8", 1024), ("int8", 130), ("int4", 1024)])
def test_rows_do_not_depend_on_the_batch_on_avx2_and_plain(isa, fmt, K):
    # csrc/gemm.cpp: each output is one sum in one order, whether its input row comes alone or with 8 others
    if isa == "avx512_bf16":
        pytest.skip("the AVX512 blocks are not claimed batch-invariant")
    g = torch.Generator().manual_seed(K)
    x, w = torch.randn(9, K, generator=g).bfloat16(), torch.randn(37, K, generator=g)
    if fmt == "bf16":
        gemm, args = lib.gemm_bf16, (w.bfloat16(),)
    elif fmt == "int8":
        gemm, args = lib.gemm_int8, quant.quantize_int8(w)
    else:
        gemm, args = lib.gemm_int4, (*quant.quantize_int4(w, 64), None, 64)
    alone = torch.cat([gemm(x[i:i + 1], *args) for i in range(9)])
    assert torch.equal(gemm(x, *args), alone)
    assert torch.equal(gemm(x[:4], *args), alone[:4])


@pytest.mark.parametrize("zeros", [False, True])
def test_int4_rows_do_not_depend_on_their_place_in_a_block(isa, zeros):
    # the AVX2 int4 kernel sums 8 weight rows in the lanes of one register: a row's output must not depend on
    # which lane it took or on the rows beside it (a tail block repeats its last row)
    if isa == "avx512_bf16":
        pytest.skip("the AVX512 blocks are not claimed batch-invariant")
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(3, 256, generator=g).bfloat16(), torch.randn(45, 256, generator=g)
    q, s = quant.quantize_int4(w, 32)
    z = torch.randint(0, 16, s.shape, dtype=torch.uint8, generator=g) if zeros else None
    whole = lib.gemm_int4(x, q, s, z, 32)
    for first in (1, 3, 8, 41):
        part = lib.gemm_int4(x, q[first:], s[first:], None if z is None else z[first:], 32)
        assert torch.equal(part, whole[:, first:])


def test_strided_rows_and_bf16_output():
    """x may be a row slice of a wider tensor (a split of a fused projection); the output is x's dtype."""
    w = torch.randn(16, 64).bfloat16()
    wide = torch.randn(3, 100).bfloat16()
    x = wide[:, 10:74]
    y = lib.gemm_bf16(x, w)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 16)
    _close(y, x.float() @ w.float().T)


def test_q8_activations_are_what_the_avx512_and_avx2_kernels_compute(isa):
    """Tight agreement with the reference that rounds x as the kernels do; 1-2% from the unrounded one."""
    if isa == "scalar":
        pytest.skip("the plain kernels widen the weights and keep x")
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(3, 256, generator=g).bfloat16(), torch.randn(40, 256, generator=g)
    for fmt in ("int8", "int4"):
        q, s = quant.quantize_int8(w) if fmt == "int8" else quant.quantize_int4(w)
        y = (lib.gemm_int8(x, q, s) if fmt == "int8" else lib.gemm_int4(x, q, s, None, 32)).float()
        _close(y, quant.matmul_ref(x, fmt, q, s, q8_inputs=True).float(), tol=2e-3)
        _close(y, quant.matmul_ref(x, fmt, q, s).float(), tol=4e-2)


def test_int4_quantiser_round_trip():
    w = torch.randn(8, 128)
    q, s = quant.quantize_int4(w)
    assert q.shape == (8, 64) and q.dtype == torch.uint8 and s.shape == (8, 4) and s.dtype == torch.float16
    err = (quant.dequantize_int4(q, s) - w).abs().max() / w.abs().max()
    assert err < 0.1
    assert torch.equal(quant.unpack_int4(quant.pack_int4(torch.arange(128).remainder(16).to(torch.uint8)
                                                         .expand(2, 128).contiguous())),
                       torch.arange(128).remainder(16).to(torch.uint8).expand(2, 128))


def test_bad_inputs_name_the_problem():
    w = torch.randn(4, 64).bfloat16()
    with pytest.raises(RuntimeError, match="columns"):
        lib.gemm_bf16(torch.randn(1, 32).bfloat16(), w)
    with pytest.raises(RuntimeError, match="bf16"):
        lib.gemm_bf16(torch.randn(1, 64), w)
    with pytest.raises(RuntimeError, match="scale"):
        lib.gemm_int8(torch.randn(1, 64).bfloat16(), torch.zeros(4, 64, dtype=torch.int8), torch.ones(3))
    with pytest.raises(RuntimeError, match="group"):
        lib.gemm_int4(torch.randn(1, 64).bfloat16(), torch.zeros(4, 32, dtype=torch.uint8),
                      torch.ones(4, 2).half(), None, 48)
    with pytest.raises((RuntimeError, ValueError), match="cannot run|unknown"):
        native.force_isa("avx1024")


def test_quant_matmul_falls_back_to_reference_for_fp32_inputs():
    w = torch.randn(8, 64)
    q, s = quant.quantize_int8(w)
    x = torch.randn(2, 64)
    assert torch.allclose(quant.matmul(x, "int8", q, s), quant.matmul_ref(x, "int8", q, s), atol=1e-4)


@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_moe_experts_read_only_the_routed_experts_and_match_the_loop(isa, T, fmt):
    from qwen35.ops import moe

    g = torch.Generator().manual_seed(T)
    E, H, I, k = 8, 128, 64, 3
    gu, dn = torch.randn(E, 2 * I, H, generator=g) * 0.1, torch.randn(E, H, I, generator=g) * 0.1
    x = torch.randn(T, H, generator=g).bfloat16()
    w, ids = moe.route(torch.randn(T, E, generator=g), k)
    if fmt == "bf16":
        args, ref_w = (gu.bfloat16(), None, None, dn.bfloat16(), None, None, 0), (gu.bfloat16(), dn.bfloat16())
    elif fmt == "int8":
        (q1, s1), (q2, s2) = quant.quantize_int8(gu), quant.quantize_int8(dn)
        args, ref_w = (q1, s1, None, q2, s2, None, 0), (quant.dequantize_int8(q1, s1), quant.dequantize_int8(q2, s2))
    else:
        (q1, s1), (q2, s2) = quant.quantize_int4(gu), quant.quantize_int4(dn)
        args, ref_w = (q1, s1, None, q2, s2, None, 32), (quant.dequantize_int4(q1, s1), quant.dequantize_int4(q2, s2))
    want = moe.experts_ref(x.float(), ref_w[0].float(), ref_w[1].float(), w, ids)
    # quantised experts on AVX512 and AVX2 see their inputs rounded to int8 per 32 (quant.q8_activations)
    _close(lib.moe_experts(x, ids, w, *args), want, tol=1e-2 if fmt == "bf16" or isa == "scalar" else 3e-2)


def test_moe_experts_refuse_bad_ids():
    gu, dn = torch.zeros(4, 32, 64).bfloat16(), torch.zeros(4, 64, 16).bfloat16()
    with pytest.raises(RuntimeError, match="out of range"):
        lib.moe_experts(torch.zeros(1, 64).bfloat16(), torch.tensor([[4]]), torch.ones(1, 1), gu, None, None, dn,
                        None, None, 0)


def test_without_the_build_every_op_runs_its_torch_path():
    """QWEN35_NATIVE=0 (or no compiler): ops() is None and the linear, quantised and MoE ops still answer."""
    import subprocess
    import sys

    code = """
import torch
from qwen35.ops import native, quant, moe, linear
assert native.ops() is None and native.isa() == "none"
torch.manual_seed(0)
def close(a, b):
    return (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max()
w = torch.randn(16, 64).bfloat16(); x = torch.randn(2, 64).bfloat16()
assert close(linear.linear(x, w), linear.linear_ref(x, w))
q, s = quant.quantize_int4(w.float())
assert close(quant.matmul(x, "int4", q, s), quant.matmul_ref(x, "int4", q, s))
gu, dn = torch.randn(4, 32, 64).bfloat16(), torch.randn(4, 64, 16).bfloat16()
wt, ids = moe.route(torch.randn(2, 4), 2)
assert close(moe.experts(x, gu, dn, wt, ids), moe.experts_ref(x, gu, dn, wt, ids))
print("ok")
"""
    env = {**__import__("os").environ, "QWEN35_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_int4_kernels_isa_is_chosen_by_measurement_and_forced_isas_win():
    """`quant.choose_int4_isa` may cap the int4 kernels at AVX2 (measured faster on a Zen 4); forcing an ISA
    (tests) clears that cap, and no measurement runs while an ISA is forced."""
    if native.isa() != "avx512_bf16":
        pytest.skip("only a CPU with AVX512-BF16 has two int4 paths to choose from")
    try:
        assert lib.set_int4_isa("avx2") == "avx2" and lib.int4_isa() == "avx2"
        native.force_isa("avx512_bf16")
        assert lib.int4_isa() == "avx512_bf16"
        quant._int4_isa_chosen = False
        quant.choose_int4_isa()  # forced: nothing measured, nothing changed
        assert not quant._int4_isa_chosen and lib.int4_isa() == "avx512_bf16"
        with pytest.raises((RuntimeError, ValueError), match="unknown ISA"):
            lib.set_int4_isa("avx1024")
    finally:
        native.force_isa(None)
    quant.choose_int4_isa()  # measured now: either path, by this machine's timings
    assert quant._int4_isa_chosen and lib.int4_isa() in ("avx512_bf16", "avx2")
