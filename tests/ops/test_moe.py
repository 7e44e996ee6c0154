"""Grouped-GEMM experts against the loop-over-experts reference."""

from __future__ import annotations

import pytest
import torch

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
