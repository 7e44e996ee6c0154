"""The optimiser's native step (train/adamw.py, csrc/adamw.cpp) gives torch's single-tensor AdamW bit for bit."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops import native
from qwen35.train.adamw import AdamW

LIB = native.ops()
# torch's vector loops take 16 or 32 floats at a time and finish with scalar code; the roots come in blocks
SIZES = [1, 2, 7, 15, 16, 17, 31, 32, 33, 53, 63, 64, 65, 100, 127, 129, 2047, 2048, 2049, 4097, 16384 + 5,
         160 * 480]


def _run(optimizer, lib, monkeypatch, steps=4, wd=0.1, lr=2e-3, dims=(1,), seed=0, **kwargs):
    """Params after `steps` steps on fixed random gradients of mixed scales, and the optimiser's state."""
    monkeypatch.setattr(native, "ops", lambda: lib)
    gen = torch.Generator().manual_seed(seed)
    shapes = [(n,) if len(dims) == 1 else (n, 3) for n in SIZES]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.1) for s in shapes]
    opt = optimizer([{"params": params[::2], "weight_decay": wd}, {"params": params[1::2], "weight_decay": 0.0}],
                    lr=lr, betas=(0.9, 0.95), **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 10.0 ** torch.randint(-7, 1, (), generator=gen).item()
        opt.step()
    return params, opt


def _same(a, b):
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.skipif(LIB is None, reason="native kernels not built")
@pytest.mark.parametrize("lr,wd,dims", [(2e-3, 0.1, (1,)), (2e-3, 0.0, (1,)), (0.3, 0.5, (1,)), (1e-4, 0.1, (2,))])
def test_native_adamw_is_torchs_single_tensor_adamw_bit_for_bit(monkeypatch, lr, wd, dims):
    want, want_opt = _run(torch.optim.AdamW, None, monkeypatch, lr=lr, wd=wd, dims=dims, foreach=False)
    got, got_opt = _run(AdamW, LIB, monkeypatch, lr=lr, wd=wd, dims=dims)
    for i, (a, b) in enumerate(zip(got, want)):
        assert _same(a.detach(), b.detach()), f"param {i} ({a.numel()} floats)"
        sa, sb = got_opt.state[a], want_opt.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert _same(sa[key], sb[key]), f"{key} of param {i} ({a.numel()} floats)"


@pytest.mark.skipif(LIB is None, reason="native kernels not built")
def test_a_run_resumed_from_torchs_state_continues_bit_for_bit(monkeypatch):
    """State saved by either step loads into the other: two torch steps then two native ones equal four torch
    steps (the state's layout is torch's; the step counts go on from the loaded ones)."""
    want, _ = _run(torch.optim.AdamW, None, monkeypatch, steps=4, foreach=False)
    params, opt = _run(torch.optim.AdamW, None, monkeypatch, steps=2, foreach=False)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = AdamW([{"params": resumed[::2], "weight_decay": 0.1}, {"params": resumed[1::2], "weight_decay": 0.0}],
                 lr=2e-3, betas=(0.9, 0.95))
    opt2.load_state_dict(opt.state_dict())
    monkeypatch.setattr(native, "ops", lambda: LIB)
    gen = torch.Generator().manual_seed(0)  # replay the gradients _run drew, skipping the initial params
    [torch.randn(p.shape, generator=gen) for p in params]
    for step in range(4):
        grads = [torch.randn(p.shape, generator=gen) * 10.0 ** torch.randint(-7, 1, (), generator=gen).item()
                 for p in params]
        if step >= 2:
            for p, g in zip(resumed, grads):
                p.grad = g
            opt2.step()
    for i, (a, b) in enumerate(zip(resumed, want)):
        assert _same(a.detach(), b.detach()), f"param {i}"


def test_what_the_native_step_does_not_cover_runs_torchs_step(monkeypatch):
    """amsgrad (and a missing build) fall back to torch's own loop: same results as torch.optim.AdamW."""
    want, _ = _run(torch.optim.AdamW, None, monkeypatch, amsgrad=True, foreach=False)
    got, _ = _run(AdamW, LIB, monkeypatch, amsgrad=True)
    assert all(_same(a.detach(), b.detach()) for a, b in zip(got, want))
    got, _ = _run(AdamW, None, monkeypatch, amsgrad=True)
    assert all(_same(a.detach(), b.detach()) for a, b in zip(got, want))


def test_the_native_step_checks_its_tensors():
    if LIB is None:
        pytest.skip("native kernels not built")
    p = torch.zeros(4)
    with pytest.raises(RuntimeError, match=r"exp_avgs\[0\] must be a contiguous fp32 tensor"):
        LIB.adamw_step([p], [p.clone()], [torch.zeros(5)], [torch.zeros(4)], 1.0, 0.1, 0.95, 0.05, 1.0, 1e-8, -1e-3)
