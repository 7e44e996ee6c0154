"""The machine a benchmark ran on: every bench prints these beside its ratios (timings differ 3x between hosts)."""

from __future__ import annotations

import platform
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def read_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Single-process read bandwidth (GB/s): the best of `repeats` sums over a `mib` MiB fp32 tensor."""
    import torch

    x = torch.ones(mib << 18)  # mib MiB of fp32
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def describe() -> str:
    import torch

    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, read bandwidth {read_bandwidth_gbs():.1f} GB/s"
