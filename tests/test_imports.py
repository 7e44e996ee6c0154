"""Layering checks: the HTTP side and the scheduler never import torch (or the model)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("modules", [
    # everything the server process runs when the engine has a process of its own
    "qwen35.cli, qwen35.server.app, qwen35.server.serve, qwen35.engine.client, qwen35.engine.process, "
    "qwen35.output_format, qwen35.engine.structured",
    # media loading and message parsing run there too, on the server's worker threads
    "qwen35.multimodal.media, qwen35.multimodal.http_get, qwen35.multimodal.inputs, qwen35.server.messages",
    # the scheduler and cache bookkeeping are plain Python
    "qwen35.engine.scheduler, qwen35.engine.kv_cache_manager, qwen35.engine.request",
])
def test_imports_no_torch(modules):
    code = (f"import sys, {modules}\n"
            "print(sorted(m for m in ('torch', 'transformers', 'qwen35.model', 'qwen35.engine.llm_engine') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{modules} pulled in {out.stdout.strip()}"
