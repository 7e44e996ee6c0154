"""Our C++ CPU kernels (`src/qwen35/csrc/*.cpp`), built once per machine and torch version.

`make install` builds them (`python -m qwen35.ops.native`, about a minute with g++); the first `ops()` call
of a process loads the build (or builds it, when the install step did not). Each source file registers its
ops in the `torch.ops.qwen35` namespace, so adding a kernel is adding a file. Every kernel picks its
instruction set at run time (AVX512-BF16, AVX2+FMA, or plain C++), and every caller keeps the torch
reference path: when the build is unavailable (no compiler, `QWEN35_NATIVE=0`) `ops()` is None and the
model runs as before, after one warning naming the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent.parent / "csrc"
NAME = "qwen35_native"
log = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[str, object] = {}


def _sources() -> list[str]:
    return sorted(str(p) for p in CSRC.glob("*.cpp"))


def build_directory() -> Path:
    """One build per source tree, torch version and Python: two checkouts never overwrite each other."""
    key = hashlib.sha1(f"{CSRC}|{torch.__version__}|{sys.version_info[:2]}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen35" / "native"
    return root / key


def build(verbose: bool = False) -> None:
    """Compile (if the sources or torch changed) and load the extension; raises on failure."""
    from torch.utils import cpp_extension

    build_dir = build_directory()
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=NAME, sources=_sources(), extra_include_paths=[str(CSRC)], is_python_module=False,
        build_directory=str(build_dir),
        extra_cflags=["-O3", "-fopenmp", "-DNDEBUG"], extra_ldflags=["-fopenmp"], verbose=verbose)


def ops():
    """`torch.ops.qwen35` with our kernels loaded, or None where they are unavailable (see module doc)."""
    if "ops" not in _loaded:
        with _lock:
            if "ops" not in _loaded:
                _loaded["ops"] = _load()
    return _loaded["ops"]


def _load():
    if os.environ.get("QWEN35_NATIVE", "1") == "0":
        return None
    try:
        build()
    except Exception as e:  # noqa: BLE001 - any build failure means: run the reference path
        log.warning("qwen35 native CPU kernels unavailable, using torch kernels (%s: %s)", type(e).__name__,
                    str(e).strip().splitlines()[-1] if str(e).strip() else "")
        return None
    return torch.ops.qwen35


def isa() -> str:
    """The instruction set the kernels dispatch to on this machine ('avx512_bf16', 'avx2', 'scalar'),
    or 'none' without the build."""
    lib = ops()
    return "none" if lib is None else lib.isa()


_forced = False  # a test chose the ISA: machine-measured choices (quant.choose_int4_isa) stay out of its way


def force_isa(name: str | None) -> str:
    """Tests: make every kernel use `name` ('avx512_bf16', 'avx2', 'scalar'; None: the best this CPU has).
    Returns the ISA now in use."""
    global _forced
    _forced = name is not None
    return ops().set_isa(name or "")


if __name__ == "__main__":
    build(verbose=True)
    print(f"qwen35 native kernels built: {isa()}")
