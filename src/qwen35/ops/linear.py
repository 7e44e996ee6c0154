"""`y = x W^T` without bias, choosing the fastest kernel for the weight's layout and the input's rows.

On CPU, `prepack` moves a bf16/fp32 weight to oneDNN's blocked layout once (at load): it streams about 1.5x
faster than `F.linear` for decode-sized inputs and is no slower for prefill. An unpacked CPU weight still takes
`torch.mv` for a single row, as fast as the packed one (so the tied lm_head can stay plain); for 2 to
`FEW_ROWS` rows (the k + 1 rows of a speculative verification) it takes `W @ x^T` or `F.linear`, whichever
measured faster for that weight and row count on this machine (`_few_rows_kernel`). Everything else,
including CUDA, is `F.linear`, which is also the reference.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

FEW_ROWS = 16


def prepack(weight: torch.Tensor) -> torch.Tensor | None:
    """weight: [out, in] -> its oneDNN-packed copy, or None where packing does not apply (not CPU, other dtypes)."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float32):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)


def linear(x: torch.Tensor, weight: torch.Tensor | None, packed: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., in]; weight: [out, in] (may be None when `packed`, from `prepack`, is given). Returns [..., out]."""
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    if x.dim() == 2 and x.shape[0] <= FEW_ROWS and weight.device.type == "cpu":
        if x.shape[0] == 1:
            return torch.mv(weight, x[0]).unsqueeze(0)
        if _few_rows_kernel(x, weight) == "w_xt":
            return torch.mm(weight, x.t()).t()
    return F.linear(x, weight)


_FEW_ROWS_KERNEL: dict[tuple, str] = {}  # (weight, dtype, shape, rows) -> the faster of "w_xt" and "linear"


def _few_rows_kernel(x: torch.Tensor, weight: torch.Tensor) -> str:
    """Which kernel multiplies a few rows by a plain CPU weight faster, measured once per weight and row count:
    `W @ x^T` or `F.linear`. Neither wins everywhere: on one Intel Xeon the 248k-row lm_head takes 21 ms
    against 31 ms for 2-4 bf16 rows the first way, and 67 ms against 39 ms for 3 fp32 rows."""
    key = (weight.data_ptr(), weight.dtype, tuple(weight.shape), x.shape[0])
    choice = _FEW_ROWS_KERNEL.get(key)
    if choice is None:
        best = {}
        for name, fn in (("w_xt", lambda: torch.mm(weight, x.t())), ("linear", lambda: F.linear(x, weight))):
            fn()  # warm-up
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[name] = min(times)
        choice = _FEW_ROWS_KERNEL[key] = min(best, key=best.get)
    return choice


def linear_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference: fp32 matmul, cast back to x's dtype."""
    return (x.float() @ weight.float().T).to(x.dtype)
