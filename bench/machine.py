"""The machine a benchmark ran on: every bench prints these beside its ratios (timings differ 3x between hosts);
`timed`, the best-of-n wall time every bench uses; and `cache_root`, where benches keep what they write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from qwen35.runtime import cpu_model  # noqa: F401  (the benches read it from here)


def cache_root() -> Path:
    """Where benches keep the checkpoints and builds they make once: $QWEN35_CACHE, or ~/.cache/qwen35."""
    return Path(os.environ.get("QWEN35_CACHE") or Path.home() / ".cache" / "qwen35")


def memory_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: best of `repeats` sums of an fp32 tensor far larger than the caches (decode
    streams the weights the same way), with the benchmark's thread count."""
    import torch

    x = torch.ones(nbytes // 4)
    x.sum()  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def describe() -> str:
    import torch

    return f"{cpu_model()}, {torch.get_num_threads()} torch threads, read bandwidth {memory_bandwidth():.1f} GB/s"


def run_worker(cmd: list[str], env: dict, what: str) -> dict:
    """Run a benchmark worker process (a fresh one, so its environment applies to torch's runtime); its last
    stdout line is a JSON object. A failed worker ends the benchmark with the tail of its stderr."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` calls of `fn` after one untimed warm-up (kernel choices, allocator)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def per_call(fn, calls: int = 200, rounds: int = 5, warmup: int = 20) -> float:
    """Best mean seconds a call over `rounds` rounds of `calls` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best
