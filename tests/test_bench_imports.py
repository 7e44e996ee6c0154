"""The benches under bench/ are run by hand, not by the suite: every name they import from qwen35 (or from their
shared bench/machine.py), at the top or inside a function, must still exist, so a refactor cannot silently
break them (five did once, importing a helper that had moved)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _machine():
    spec = importlib.util.spec_from_file_location("machine", BENCH / "machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_bench_imports_resolve(script):
    missing = []
    for node in ast.walk(ast.parse((BENCH / script).read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
            continue
        if node.module == "machine":
            module = _machine()
        elif node.module.split(".")[0] == "qwen35":
            module = importlib.import_module(node.module)
        else:
            continue
        for alias in node.names:
            if not hasattr(module, alias.name):
                try:  # a submodule not imported by its package
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    missing.append(f"{node.module}.{alias.name} (line {node.lineno})")
    assert not missing, f"bench/{script} imports names that do not exist: {missing}"
