"""The embedded default model: a small random checkpoint of the real architecture, made on first use.

It lets `make run` work on a fresh machine with no weights. Its outputs are random text; point
`--model` at a real Qwen3.5 checkpoint directory for real answers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_PRESET = "tiny"


def cache_root() -> Path:
    return Path(os.environ.get("QWEN35_CACHE") or Path.home() / ".cache" / "qwen35")


def default_model_dir() -> Path:
    """Path of the default checkpoint, written (atomically) the first time it is needed."""
    target = cache_root() / f"default-{DEFAULT_PRESET}"
    if (target / "config.json").exists():
        return target
    from .config import preset  # writing one needs torch; finding one does not
    from .loading.writer import write_random_checkpoint

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".default-", dir=target.parent))
    try:
        write_random_checkpoint(preset(DEFAULT_PRESET), tmp, seed=0)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
