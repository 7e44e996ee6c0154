"""Grouped-GEMM experts against the loop-over-experts reference; sampler filters."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops.moe import experts, experts_ref, route
from qwen35.ops.sampling import sample


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


def test_greedy_and_filters():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    assert sample(logits, temperature=0).item() == 1
    gen = torch.Generator().manual_seed(0)
    assert {sample(logits, 1.0, top_k=1, generator=gen).item() for _ in range(20)} == {1}
    got = {sample(logits, 1.0, top_k=2, generator=gen).item() for _ in range(200)}
    assert got == {1, 2}
    # top_p: p(1)=0.64, p(2)=0.24: 0.7 keeps tokens 1 and 2 only
    got = {sample(logits, 1.0, top_p=0.7, generator=gen).item() for _ in range(300)}
    assert got == {1, 2}
    # min_p 0.5 of the max prob keeps only token 1 (0.24 < 0.32)
    assert {sample(logits, 1.0, min_p=0.5, generator=gen).item() for _ in range(50)} == {1}


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(1, 1000)
    a = [sample(logits, 1.0, generator=torch.Generator().manual_seed(7)).item() for _ in range(3)]
    assert len(set(a)) == 1
