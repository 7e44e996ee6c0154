"""Grouped-GEMM experts against the loop-over-experts reference; which path a batch takes on which CPU."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops import moe, native, quant
from qwen35.ops.moe import experts, experts_ref, route


@pytest.mark.parametrize("N", [1, 7, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_experts_match_reference(N, dtype):
    gen = torch.Generator().manual_seed(N)
    E, H, I, k = 8, 32, 16, 3
    x = torch.randn(N, H, generator=gen).to(dtype)
    gate_up = (torch.randn(E, 2 * I, H, generator=gen) * 0.1).to(dtype)
    down = (torch.randn(E, H, I, generator=gen) * 0.1).to(dtype)
    w, ids = route(torch.randn(N, E, generator=gen), k)
    assert torch.allclose(w.sum(-1), torch.ones(N))
    got, want = experts(x, gate_up, down, w, ids), experts_ref(x, gate_up, down, w, ids)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.skipif(native.ops() is None, reason="native kernels not built")
@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4"])
def test_prefill_runs_our_kernel_where_onednn_has_no_bf16_gemm(monkeypatch, fmt):
    """On an AVX2-only CPU torch's bf16 grouped GEMM is a slow fallback: a 300-token batch goes through our
    kernel instead (and so do quantised stacks up to 512 tokens); with oneDNN's bf16 GEMM it does not."""
    gen = torch.Generator().manual_seed(3)
    N, E, H, I, k = 300, 8, 64, 64, 3
    x = torch.randn(N, H, generator=gen).bfloat16()
    gate_up = (torch.randn(E, 2 * I, H, generator=gen) * 0.1).bfloat16()
    down = (torch.randn(E, H, I, generator=gen) * 0.1).bfloat16()
    w, ids = route(torch.randn(N, E, generator=gen), k)
    if fmt != "bf16":  # quantised stacks, and the reference over their dequantised weights
        stacks = [tuple(None if p[0][i] is None else torch.stack([q[i] for q in p]) for i in range(3))
                  for p in ([quant.quantize(fmt, m, 32) for m in s] for s in (gate_up, down))]
        gate_up, down = (torch.stack([quant.dequantize(fmt, q[e], s[e], None if z is None else z[e], torch.bfloat16)
                                      for e in range(E)]) for q, s, z in stacks)
    want = experts_ref(x, gate_up, down, w, ids).float()

    def run():
        if fmt == "bf16":
            return experts(x, gate_up, down, w, ids)
        return moe.experts_quant(x, fmt, *stacks, w, ids)

    def refused(*args, **kwargs):
        raise AssertionError("the grouped GEMM / expert loop ran")

    monkeypatch.setattr(torch, "_grouped_mm", refused)
    monkeypatch.setattr(moe, "_expert_matmul", refused)
    monkeypatch.setattr(moe, "onednn_bf16", lambda: False)
    got = run().float()
    assert float((got - want).abs().max() / want.abs().max()) < 0.03
    monkeypatch.setattr(moe, "onednn_bf16", lambda: True)
    with pytest.raises(AssertionError, match="ran"):
        run()
