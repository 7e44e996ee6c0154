"""The vision tower's fused kernels (csrc/vision.cpp) against the torch path they replace, on every
instruction set this CPU runs: the rotary (ops/vision.apply_rotary) and fc1's bias + tanh GELU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwen35.ops import native
from qwen35.ops.vision import apply_rotary

lib = native.ops()
pytestmark = pytest.mark.skipif(lib is None, reason="native kernels not built")

def _ulp(x: torch.Tensor) -> torch.Tensor:
    """One bf16 ulp at |x| (the spacing of bf16 values in x's binade; subnormal floor)."""
    e = torch.frexp(x.float().abs().clamp(min=2.0 ** -126))[1]
    return torch.ldexp(torch.ones_like(x, dtype=torch.float32), e - 8)


@pytest.mark.parametrize("N,H,d", [(1, 1, 64), (37, 3, 40), (5, 2, 8), (64, 12, 64), (3, 1, 6)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rotary_equals_torch_path(isa, N, H, d, dtype):
    """q and k read as strided slices of a qkv projection [N, 3, H, d]; the only difference from the torch
    path is fp32 rounding (fma vs. separate multiply and add), so bf16 outputs are equal up to 1 ulp in a
    few places and fp32 outputs to ~1e-6."""
    g = torch.Generator().manual_seed(N * 100 + H * 10 + d)
    qkv = (torch.randn(N, 3, H, d, generator=g) * 3).to(dtype)
    angles = torch.rand(N, d // 2, generator=g) * 50
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x = qkv[:, :2].transpose(0, 1)
    want = apply_rotary(x, cos, sin)
    got = lib.vision_rotary(x, cos[:, : d // 2], sin[:, : d // 2])
    assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    else:
        diff = (got.float() - want.float()).abs()
        assert (diff <= _ulp(want)).all()
        assert (diff == 0).float().mean() > 0.98


def _gelu_ref(y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch's two ops: x + b rounded to bf16, GELU (tanh) in fp32, rounded."""
    return F.gelu(y + b, approximate="tanh")


@pytest.mark.parametrize("N,I", [(1, 1), (1, 3072), (7, 45), (33, 16), (4, 100)])
def test_bias_gelu_equals_torch_path(isa, N, I):
    """Within 1 bf16 ulp of torch's F.gelu(y + b), plus 1e-6: below about -3 torch's 0.5 x (1 + tanh(u))
    cancels (1 + tanh(u) has an absolute error of ~6e-8, a large part of a value like 1e-6), where ours,
    x / (1 + exp(-2u)), stays accurate. Above -3 both round y + b the same way and evaluate GELU in fp32 to a
    few fp32 ulp, so they are equal except where the fp32 value sits at a bf16 rounding boundary."""
    g = torch.Generator().manual_seed(N * 1000 + I)
    wide = (torch.randn(N, I + 5, generator=g) * 4).bfloat16()
    y = wide[:, 2:I + 2]  # strided rows, as a column slice of a wider output
    b = (torch.randn(I, generator=g) * 2).bfloat16()
    want = _gelu_ref(y, b)
    got = lib.bias_gelu_tanh_(y.clone(), b)
    assert got.dtype == torch.bfloat16
    diff = (got.float() - want.float()).abs()
    assert (diff <= _ulp(want) + 1e-6).all(), diff.max()
    accurate = (y + b).float() > -3
    if accurate.sum() > 1000:
        assert (diff[accurate] == 0).float().mean() > 0.99
    # and in place through strides: only the slice changes
    before = wide.clone()
    lib.bias_gelu_tanh_(y, b)
    assert torch.equal(y, got) and torch.equal(wide[:, :2], before[:, :2]) and torch.equal(wide[:, I + 2:], before[:, I + 2:])


def test_bias_gelu_whole_range(isa):
    """Every bf16 value in [-20, 20] (where GELU is neither x nor 0) against an fp64 GELU: within 1 ulp (half
    an ulp of rounding plus the fp32 evaluation error), and 0 below -10 where the exact value is under 2e-37
    (torch's is -0 there already). The far ends: 0 for large negative inputs, x for large positive ones, NaN
    stays NaN, as in torch."""
    bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    x = bits[bits.float().isfinite() & (bits.float().abs() <= 20)]
    zero = torch.zeros(1, dtype=torch.bfloat16)
    got = lib.bias_gelu_tanh_(x.clone()[:, None], zero)[:, 0]
    xd = x.double()
    exact = xd * torch.sigmoid(2 * 0.7978845608028654 * (xd + 0.044715 * xd ** 3))  # = 0.5 x (1 + tanh(u))
    ok = (got.double() - exact).abs() <= _ulp(exact).double() + 2e-37
    assert ok.all(), x[~ok]
    torch.testing.assert_close(got, _gelu_ref(x, zero), rtol=2 ** -7, atol=1e-6)
    ends = torch.tensor([-3e38, -1e4, -90.0, 90.0, 1e4, 3e38, float("nan")]).bfloat16()
    got = lib.bias_gelu_tanh_(ends.clone()[:, None], zero)[:, 0]
    torch.testing.assert_close(got, _gelu_ref(ends, zero), rtol=0, atol=0, equal_nan=True)


def test_fp32():
    y, b = torch.randn(5, 33), torch.randn(33)
    torch.testing.assert_close(lib.bias_gelu_tanh_(y.clone(), b), F.gelu(y + b, approximate="tanh"),
                               rtol=1e-6, atol=1e-6)
