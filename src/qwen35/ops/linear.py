"""`y = x W^T` without bias, choosing the fastest kernel for the weight's layout and the input's rows.

On CPU, `prepack` moves a bf16/fp32 weight to oneDNN's blocked layout once (at load): it streams about 1.5x
faster than `F.linear` for decode-sized inputs and is no slower for prefill. An unpacked CPU weight still takes
`torch.mv` for a single row (as fast as the packed one on Intel, so the tied lm_head can stay plain) and
`F.linear` for 2 to `FEW_ROWS` rows (the k + 1 rows of a speculative verification), unless another kernel
measured clearly faster for that weight and row count on this machine (`_few_rows_kernel`). Everything
else, including CUDA, is `F.linear`, which is also the reference.
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
        kernel = _few_rows_kernel(x, weight)
        if kernel == "mv":
            return torch.mv(weight, x[0]).unsqueeze(0)
        if kernel == "w_xt":
            return torch.mm(weight, x.t()).t()
    return F.linear(x, weight)


_FEW_ROWS_KERNEL: dict[tuple, str] = {}  # (weight, dtype, shape, rows) -> "mv" | "w_xt" | "linear"
SWITCH_MARGIN = 1.2  # another kernel replaces the default only when this much faster: a stable choice


def _few_rows_kernel(x: torch.Tensor, weight: torch.Tensor) -> str:
    """How to multiply a few rows by a plain CPU weight, measured once per weight and row count: the default
    (`torch.mv` for one row, `F.linear` for more) unless `W @ x^T` (or, for one row, `F.linear`) is at least
    `SWITCH_MARGIN` times faster. None wins everywhere: on one Intel Xeon the 248k-row bf16 lm_head takes
    21 ms by mv and 29 ms by F.linear for one row, 20 ms by `W @ x^T` and 31 ms by F.linear for 2-4 rows,
    but 67 ms against 39 ms for 3 fp32 rows; on an AMD Zen 5 mv read the same bf16 lm_head at 8 GB/s."""
    rows = x.shape[0]
    key = (weight.data_ptr(), weight.dtype, tuple(weight.shape), rows)
    choice = _FEW_ROWS_KERNEL.get(key)
    if choice is None:
        candidates = {"mv": lambda: torch.mv(weight, x[0])} if rows == 1 else {}
        candidates.update({"linear": lambda: F.linear(x, weight), "w_xt": lambda: torch.mm(weight, x.t())})
        best = {name: _time(fn) for name, fn in candidates.items()}
        choice = "mv" if rows == 1 else "linear"
        fastest = min(best, key=best.get)
        if best[fastest] * SWITCH_MARGIN <= best[choice]:
            choice = fastest
        _FEW_ROWS_KERNEL[key] = choice
    return choice


def _time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def linear_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference: fp32 matmul, cast back to x's dtype."""
    return (x.float() @ weight.float().T).to(x.dtype)
