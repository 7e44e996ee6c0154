"""Checkpoints for the tensor-parallel tests: the embedded demo model (dense, trained, with an MTP head that
drafts well) and a random MoE model of the tiny-moe shape with the demo's 4,096-token vocabulary (so the
vocabulary-parallel logits stay small), both loaded in fp32."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qwen35.config import preset
from qwen35.default_model import default_model_dir
from qwen35.loading.writer import write_random_checkpoint

SCENARIO = Path(__file__).with_name("scenario.py")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@pytest.fixture(scope="session")
def moe_ckpt(tmp_path_factory) -> Path:
    demo = default_model_dir()
    cfg = preset("tiny-moe")
    eos = json.loads((demo / "config.json").read_text()).get("eos_token_id")
    cfg = replace(cfg, text=replace(cfg.text, vocab_size=4096, eos_token_id=eos))
    out = write_random_checkpoint(cfg, tmp_path_factory.mktemp("tp_moe"), seed=3, dtype=torch.float32,
                                  shard_bytes=16 << 20, tokenizer=False)
    for name in TOKENIZER_FILES:
        shutil.copy(demo / name, out / name)
    return out


def run_scenario(ckpt: Path, *flags: str, timeout: float = 240, env: dict | None = None) -> dict:
    """tests/parallel/scenario.py in a process of its own: 2 ranks against 1, compared. `env`: added to the
    environment (QWEN35_SHM_ALLREDUCE=0: all-reduce through gloo)."""
    proc = subprocess.run([sys.executable, str(SCENARIO), str(ckpt), *flags], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
