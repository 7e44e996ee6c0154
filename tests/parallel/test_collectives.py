"""`Group`'s collectives among 3 ranks (processes on this machine), through shared memory and through gloo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qwen35.parallel.launch import free_port

SCRIPT = Path(__file__).with_name("collectives.py")


def test_collectives_among_three_ranks():
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), str(r), "3", port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "OK", err[-2000:]
