"""Process-wide CPU runtime: OpenMP wait policy, torch thread count, flush-to-zero for denormal floats.

A decode step is ~2,000 small torch ops, each an OpenMP parallel region ending in a barrier. With libgomp's
default wait policy a thread that reaches the barrier first spins (300k iterations) before it sleeps; when
another process holds a core, the spinning thread burns the time slice the descheduled thread needs, and
every region waits a scheduler tick. Measured on 2 cores with one competing busy process: 2-thread decode
fell ~10x. `OMP_WAIT_POLICY=PASSIVE` (waiting threads sleep at once) keeps it proportional, at no measurable
cost when the machine is idle (docs/LOG.md has the numbers; `bench/bench_shared_cpu.py` re-measures).

Two entry points:
- `configure_env()` runs when `qwen35 serve` starts, before torch loads libgomp (which reads its environment
  once, when it is loaded; the engine process inherits it). A server always shares its cores with HTTP and
  tokenisation work, so it waits passively. Offline use (`LLM`, the benches) keeps libgomp's spinning, 13-17%
  faster when the cores are free (docs/LOG.md). It only fills in variables the user has not set; call it
  before `import torch` to get the server's policy elsewhere.
- `setup(threads)` runs when an engine starts; calling it again is harmless. It sets the torch thread count
  (`engine_threads`: an explicit count, else the user's OMP_NUM_THREADS, else one thread for a model under
  `SMALL_MODEL_PARAMS`, else torch's default of one per core) and turns on
  flush-to-zero/denormals-are-zero (FTZ/DAZ) on the OpenMP worker threads, which only ever run torch ops.
  FTZ is per thread (MXCSR): `torch.set_flush_denormal` sets only the caller's, so workers started earlier
  keep computing with denormals (>10x slower per op).
- `flush_denormals()` turns FTZ/DAZ on for the calling thread while the model computes (`LLMEngine.step`).
  Not for longer: with DAZ on, Python's own float arithmetic on that thread (and on threads it starts, which
  inherit its mode) reads denormals as zero, so a request's `top_p: 5e-324` would fail `top_p > 0`.
  `QWEN35_FLUSH_DENORMAL=0` leaves the floating-point mode alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("qwen35.runtime")

# Any of these set by the user means the user chose the wait policy (GOMP_SPINCOUNT: libgomp, KMP_BLOCKTIME:
# Intel's libiomp5); we then set none of them.
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
WAIT_POLICY_DEFAULT = "PASSIVE"
_lock = threading.Lock()
_late: list[str] = []  # variables configure_env set after torch (and its OpenMP runtime) had loaded


def configure_env(environ: dict | None = None) -> dict[str, str]:
    """Fill in the OpenMP wait policy unless the user set one; returns what was set. Call before `import torch`."""
    env = os.environ if environ is None else environ
    set_now: dict[str, str] = {}
    if not any(v in env for v in WAIT_VARS):
        env["OMP_WAIT_POLICY"] = set_now["OMP_WAIT_POLICY"] = WAIT_POLICY_DEFAULT
    if environ is None and set_now and "torch" in sys.modules:
        _late.extend(set_now)
    return set_now


# Below this many parameters one torch thread decodes fastest: the ops are too small for a second thread to
# pay for waking it (passive wait) or for its barriers. Measured on 2 cores (AMD EPYC, AVX2; docs/LOG.md,
# 2026-12-07 third session): the 3.5M-parameter demo model decodes at 4.2-5.9 ms a token with one thread,
# 7.4-13 ms with two under the server's passive wait; the 16M `tiny` preset 10.9 against 9.7 ms, the 0.75B
# dense-0.8b 167 against 138 ms, where two threads win.
SMALL_MODEL_PARAMS = 8_000_000


def engine_threads(explicit: int | None, params: int, environ: dict | None = None) -> int | None:
    """The torch thread count an engine sets for a model of `params` parameters: `explicit` when given; None
    (leave torch's count: the user's OMP_NUM_THREADS, else one per core) unless the model is under
    `SMALL_MODEL_PARAMS` and the user set no OMP_NUM_THREADS, which gives 1."""
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    return 1 if params < SMALL_MODEL_PARAMS and "OMP_NUM_THREADS" not in env else None


def setup(threads: int | None = None) -> dict:
    """Threads and FTZ/DAZ for the calling thread and its OpenMP team; returns a summary (see `info`)."""
    import torch

    with _lock:
        if threads:
            torch.set_num_threads(threads)
        if _ftz_wanted():
            _on_openmp_team(lambda: torch.set_flush_denormal(True), torch.get_num_threads())
            torch.set_flush_denormal(False)  # the caller (a member of its team) keeps IEEE semantics
        info = runtime_info()
        if info["wait_policy"] and not info["wait_policy_applied"]:
            log.info("torch was imported before qwen35: OMP_WAIT_POLICY=%s does not apply to this process",
                     info["wait_policy"])
        return info


def runtime_info() -> dict:
    """Thread count, wait policy (and whether libgomp saw it), and whether model compute flushes denormals."""
    import torch

    with flush_denormals():
        flushed = denormals_flushed()
    return {"threads": torch.get_num_threads(),
            "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "wait_policy_applied": "OMP_WAIT_POLICY" not in _late,
            "denormals_flushed": flushed}


def _ftz_wanted() -> bool:
    return os.environ.get("QWEN35_FLUSH_DENORMAL", "1") != "0"


@contextlib.contextmanager
def flush_denormals():
    """FTZ/DAZ on the calling thread for the block (model compute); IEEE semantics again afterwards."""
    if not _ftz_wanted():
        yield
        return
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def denormals_flushed() -> bool:
    """True if a denormal times 1 is 0 on this thread and on every thread of its OpenMP team (no timing)."""
    import torch

    n = max(1, torch.get_num_threads()) * 65536  # above the parallel grain size: every thread gets a share
    x = torch.full((n,), 0x000AE398, dtype=torch.int32).view(torch.float32)  # 1e-39, made from bits
    return not bool((x * 1.0).view(torch.int32).any())  # compare bits: DAZ would hide a denormal


def _openmp_library() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded (libgomp, or libiomp5, which exports the same GOMP_ entry points)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libgomp" in line or "libiomp5" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)  # already loaded: dlopen returns the same handle
            lib.GOMP_parallel  # noqa: B018 - checks the symbol exists
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _on_openmp_team(fn, num_threads: int) -> int:
    """Run `fn()` once on each thread of the caller's OpenMP team (created now if needed); returns how many ran."""
    lib = _openmp_library()
    if lib is None:
        log.info("no OpenMP runtime found; flush-to-zero is set on the calling thread only")
        return 0
    ran = []
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    def each(_data):  # runs on an OpenMP thread; ctypes takes the GIL for it
        fn()
        ran.append(threading.get_native_id())

    callback = callback_type(each)
    lib.GOMP_parallel.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.GOMP_parallel.restype = None
    lib.GOMP_parallel(callback, None, num_threads, 0)  # CDLL releases the GIL, so the workers can take it
    return len(ran)


def cpu_model() -> str:
    """`lscpu`'s Model name (or /proc/cpuinfo's), for reading numbers across machines."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
