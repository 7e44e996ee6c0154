"""`y = x W^T` without bias, choosing the fastest kernel for the weight's layout and the input's rows.

No kernel wins on every CPU (docs/KERNELS.md), so the choices are measured on the machine, at load:
- Layout, per weight shape (`prefer_packed`): oneDNN's blocked layout (`prepack`, streams about 1.5x faster
  than `F.linear` for decode-sized inputs, no slower for prefill) or the plain weight read by our C++ kernel
  (`ops/native.py`) for a few rows. The loader times both, for one and eight rows, over the model's weights
  of that shape.
- Our kernel's one-row order (`choose_in_order`, once per load on the lm_head): its blocks of weight rows, or
  on an AVX512-BF16 CPU the rows one after another where that is `IN_ORDER_MARGIN` faster.
- For a plain CPU weight and 1 to `FEW_ROWS` rows (decode, the k + 1 rows of a speculative verification),
  `_few_rows_kernel` times our kernel, `torch.mv` (one row), `F.linear` and `W @ x^T` once per weight and row
  count, and keeps the default (mv / F.linear) unless another is `SWITCH_MARGIN` faster (ours, on the AMD
  hosts where mv reads the lm_head at a third of the bandwidth).
Everything else, including CUDA, is `F.linear`, which is also the reference; on a CPU without a bf16 GEMM
(AVX2 only) bf16 weights are widened to fp32 for it.
"""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import native

FEW_ROWS = 16


def packing_applies(weight: torch.Tensor) -> bool:
    """Whether oneDNN can pack `weight`: a CPU weight in fp32, or in bf16 on a CPU with oneDNN's bf16 path
    (AVX512-BF16/AVX-NE-CONVERT or AVX512BW/VL/DQ; an AVX2-only CPU has none and packing raises)."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float32):
        return False
    return weight.dtype == torch.float32 or onednn_bf16()


@functools.cache
def onednn_bf16() -> bool:
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def prepack(weight: torch.Tensor) -> torch.Tensor | None:
    """weight: [out, in] -> its oneDNN-packed copy, or None where packing does not apply (`packing_applies`)."""
    if not packing_applies(weight):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)


def linear(x: torch.Tensor, weight: torch.Tensor | None, packed: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., in]; weight: [out, in] (may be None when `packed`, from `prepack`, is given). Returns [..., out]."""
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    if x.dim() == 2 and x.shape[0] <= FEW_ROWS and weight.device.type == "cpu":
        kernel = _few_rows_kernel(x, weight)
        if kernel == "native":
            return native.ops().gemm_bf16(x if x.stride(-1) == 1 else x.contiguous(), weight, _in_order)
        if kernel == "mv":
            return torch.mv(weight, x[0]).unsqueeze(0)
        if kernel == "w_xt":
            return torch.mm(weight, x.t()).t()
    return plain_linear(x, weight)


def plain_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)`, but bf16 on a CPU without a bf16 GEMM (AVX2 only) runs in fp32: torch's fallback
    there ran 5x slower than fp32 for 64-512 rows (a prefill through int8 weights dequantised to bf16: 26 s for
    8 x 64 tokens of dense-0.8b, against 4 s in bf16)."""
    if weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and not onednn_bf16():
        return F.linear(x.float(), weight.float()).to(x.dtype)
    return F.linear(x, weight)


_FEW_ROWS_KERNEL: dict[tuple, str] = {}  # (weight, dtype, shape, rows) -> a candidate's name (_few_rows_kernel)
SWITCH_MARGIN = 1.2  # another kernel replaces the default only when this much faster: a stable choice


def _few_rows_kernel(x: torch.Tensor, weight: torch.Tensor) -> str:
    """How to multiply a few rows by a plain CPU weight, measured once per weight and row count: the default
    (`torch.mv` for one row, `F.linear` for more) unless another candidate (our kernel for bf16, `W @ x^T`,
    F.linear) is at least `SWITCH_MARGIN` times faster, so the choice (and bf16 rounding with it) does not
    flip between runs. None wins everywhere: on one Intel Xeon the 248k-row bf16 lm_head takes 19 ms by mv,
    22 ms by ours and 25 ms by F.linear for one row, 20 ms by `W @ x^T` and 31 ms by F.linear for 2-4 rows,
    but 67 ms against 39 ms for 3 fp32 rows; on an AMD Zen 5 mv read the same bf16 lm_head at 8 GB/s."""
    rows = x.shape[0]
    key = (weight.data_ptr(), weight.dtype, tuple(weight.shape), rows)
    choice = _FEW_ROWS_KERNEL.get(key)
    if choice is None:
        candidates = {}
        if _native_applies(x, weight):
            candidates["native"] = lambda: native.ops().gemm_bf16(x.contiguous(), weight, _in_order)
        if rows == 1:
            candidates["mv"] = lambda: torch.mv(weight, x[0])
        candidates.update({"linear": lambda: F.linear(x, weight), "w_xt": lambda: torch.mm(weight, x.t())})
        best = {name: _time(fn) for name, fn in candidates.items()}
        choice = "mv" if rows == 1 else "linear"
        fastest = min(best, key=best.get)
        if best[fastest] * SWITCH_MARGIN <= best[choice]:
            choice = fastest
        _FEW_ROWS_KERNEL[key] = choice
    return choice


_in_order = False  # one input row through gemm_bf16's in-order variant (choose_in_order)
IN_ORDER_MARGIN = 1.1  # in order replaces the blocks only when this much faster: a stable choice


def choose_in_order(weight: torch.Tensor) -> bool:
    """Our bf16 kernel's order for one input row, measured on `weight` (the lm_head: the largest bf16 weight a
    token reads, and one that streams from memory) and kept for the process: the rows one after another
    (`gemm_bf16(x, w, in_order=True)`) where that is `IN_ORDER_MARGIN` faster than the blocks, medians of five
    alternating calls; otherwise, on another ISA, or on a weight under twice the last-level cache (it would time
    the cache), the blocks. On an AMD Zen 4 the lm_head of dense-0.8b read at 25-32 against 20-22 GB/s in order
    in some runs and about as fast in others, the host's memory speed moving between runs (docs/KERNELS.md);
    Intel hosts read at the bandwidth in blocks. The orders sum in different orders: a choice that flipped
    between runs could flip greedy outputs, hence the margin."""
    global _in_order
    _in_order = False
    lib = native.ops()
    if (lib is None or native.isa() != "avx512_bf16" or weight.dtype != torch.bfloat16 or weight.device.type != "cpu"
            or not weight.is_contiguous() or weight.numel() * 2 < _cache_flush_bytes()):
        return False
    x = torch.randn(1, weight.shape[1]).to(weight.dtype)
    lib.gemm_bf16(x, weight, True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(5):
        for order in (False, True):
            t0 = time.perf_counter()
            lib.gemm_bf16(x, weight, order)
            times[order].append(time.perf_counter() - t0)
    _in_order = statistics.median(times[True]) * IN_ORDER_MARGIN <= statistics.median(times[False])
    return _in_order


def _native_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dtype == weight.dtype == torch.bfloat16 and weight.is_contiguous() and x.device.type == "cpu"
            and native.ops() is not None)


PLAIN_BATCH_LOSS = 1.3  # the most 8 rows may be slower in the plain layout
MEASURE_MIN_BYTES = 16 << 20  # weight groups smaller than this are packed without measuring (tiny models)


def prefer_packed(weights: list[torch.Tensor], evict: list[torch.Tensor] = (),
                  sample_bytes: int = 32 << 20) -> bool:
    """Whether weights of one shape should take oneDNN's packed layout (True) or stay plain for our kernel.

    Times both over up to `sample_bytes` of the weights for one row (single-sequence decode, in the order
    `choose_in_order` chose) and 8 rows (a batch), reading `evict` (other weights already in memory, up to
    twice the last-level cache) before each repetition so that the sample streams from memory as in a decode
    step; nothing large is allocated besides the sample's packed copies. Plain when ours is at least 5% faster
    for one row, that gain is at least the 8-row loss as ratios (one row 1.35x faster and 8 rows 0.8x as fast:
    plain), and 8 rows are at most `PLAIN_BATCH_LOSS` slower; prefill is no slower either way (F.linear for
    more than `FEW_ROWS` rows). Packed wherever oneDNN can pack and our kernel cannot run; plain wherever
    oneDNN cannot pack (`packing_applies`)."""
    w0 = weights[0]
    nbytes = w0.numel() * w0.element_size()
    if not packing_applies(w0):
        return False
    if (w0.dtype != torch.bfloat16 or native.ops() is None
            or not all(w.is_contiguous() for w in weights) or nbytes * len(weights) < MEASURE_MIN_BYTES):
        return True
    sample = weights[:max(1, sample_bytes // nbytes)]
    packed = [prepack(w) for w in sample]
    flush, budget = [], _cache_flush_bytes()
    for t in evict:
        if budget <= 0:
            break
        flush.append(t)
        budget -= t.numel() * t.element_size()

    def cold(fn):
        return _time(fn, repeats=2, before=lambda: [t.sum() for t in flush])

    gemm, onednn = native.ops().gemm_bf16, torch.ops.mkldnn._linear_pointwise
    x1, x8 = (torch.randn(rows, w0.shape[1]).to(w0.dtype) for rows in (1, 8))
    ours1 = cold(lambda: [gemm(x1, w, _in_order) for w in sample])
    packed1 = cold(lambda: [onednn(x1, p, None, "none", [], "") for p in packed])
    if not ours1 * 1.05 < packed1:
        return True
    plain8 = min(cold(lambda: [gemm(x8, w) for w in sample]), cold(lambda: [F.linear(x8, w) for w in sample]))
    packed8 = cold(lambda: [onednn(x8, p, None, "none", [], "") for p in packed])
    # packed: the one-row gain smaller than the 8-row loss, or that loss over the cap
    return packed1 / ours1 < plain8 / packed8 or plain8 > packed8 * PLAIN_BATCH_LOSS


def _cache_flush_bytes() -> int:
    """Twice the last-level cache (from sysfs), 64 to 512 MiB: reading that much evicts most of the weights
    (a virtual machine's share of a large shared L3 is smaller than the size it reports)."""
    size = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
            size = max(size, int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
                       if text[-1] in "KM" else int(text))
        except (OSError, ValueError):
            continue
    return min(max(2 * size, 64 << 20), 512 << 20)


def _time(fn, repeats: int = 3, before=None) -> float:
    """Best of `repeats` timings of `fn` after a warm-up; `before` (untimed) runs ahead of each."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def linear_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference: fp32 matmul, cast back to x's dtype."""
    return (x.float() @ weight.float().T).to(x.dtype)
