"""CPU runtime setup (runtime.py): env defaults that respect the user, idempotent setup, FTZ on every thread.

No timing: flush-to-zero is checked by its effect (a denormal times 1 is 0 on each OpenMP thread's share).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from qwen35 import runtime

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def threads_restored():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
    runtime.setup()  # leave FTZ on the team, as an engine would


def test_env_default_fills_only_unset_wait_policy():
    env: dict = {}
    assert runtime.configure_env(env) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert runtime.configure_env(env) == {}  # idempotent
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for user in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "100000"}, {"KMP_BLOCKTIME": "200"}):
        env = dict(user)
        assert runtime.configure_env(env) == {}
        assert env == user


def test_import_leaves_the_policy_and_serve_sets_it(monkeypatch):
    """Offline use keeps libgomp's default; `qwen35 serve` sets the passive policy before torch can load."""
    env = {k: v for k, v in os.environ.items() if k not in runtime.WAIT_VARS}
    env["PYTHONPATH"] = SRC
    code = "import os, sys, qwen35; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "False"]

    from qwen35.server import serve

    for var in runtime.WAIT_VARS:
        monkeypatch.setenv(var, "placeholder")  # recorded, so teardown restores the environment as it was
        monkeypatch.delenv(var)

    def stop(args):
        raise RuntimeError("stop here")

    monkeypatch.setattr(serve, "plan_serve", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        serve.serve(None)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_setup_is_idempotent_and_keeps_thread_count_unless_given(threads_restored):
    torch.set_num_threads(1)
    first = runtime.setup()
    assert first == runtime.setup()
    assert first["threads"] == 1 and first["denormals_flushed"]
    assert runtime.setup(2)["threads"] == 2
    assert runtime.setup(None)["threads"] == 2


def test_a_small_model_gets_one_thread_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    small, large = runtime.SMALL_MODEL_PARAMS - 1, runtime.SMALL_MODEL_PARAMS
    assert runtime.engine_threads(None, small) == 1
    assert runtime.engine_threads(None, large) is None  # torch's one per core
    assert runtime.engine_threads(3, small) == 3
    assert runtime.engine_threads(None, small, {"OMP_NUM_THREADS": "2"}) is None


def test_the_demo_engine_runs_on_one_thread(threads_restored, monkeypatch):
    from qwen35.engine import LLM

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    llm = LLM(max_model_len=64, max_num_seqs=1, kv_cache_memory=16 << 20)  # the embedded 3.5M-parameter model
    assert torch.get_num_threads() == 1
    assert llm.engine.threads_note.startswith("1 torch thread (a model under 8M parameters")  # the banner's
    llm = LLM(max_model_len=64, max_num_seqs=1, kv_cache_memory=16 << 20, threads=2)
    assert torch.get_num_threads() == 2 and llm.engine.threads_note == "2 torch threads"


def test_ftz_reaches_openmp_workers_started_before_setup(threads_restored):
    torch.set_num_threads(2)
    torch.set_flush_denormal(False)
    _on_all_threads(False)
    torch.ones(1 << 20).add_(1)  # the OpenMP team exists now, started without FTZ
    assert not runtime.denormals_flushed()
    torch.set_flush_denormal(True)  # what torch offers: the calling thread only
    assert not runtime.denormals_flushed()
    assert runtime.setup()["denormals_flushed"]


def test_opt_out_leaves_float_mode(threads_restored, monkeypatch):
    torch.set_flush_denormal(False)
    monkeypatch.setenv("QWEN35_FLUSH_DENORMAL", "0")
    assert not runtime.setup()["denormals_flushed"]


def test_engine_start_flushes_denormals_on_its_threads(tiny_ckpt, threads_restored):
    from qwen35.engine import LLM

    torch.set_flush_denormal(False)
    _on_all_threads(False)
    LLM(str(tiny_ckpt), dtype="float32", max_model_len=64, max_num_seqs=1, kv_cache_memory=16 << 20, threads=2)
    assert torch.get_num_threads() == 2
    tiny = float("5e-324")
    assert tiny > 0 and not runtime.denormals_flushed()  # Python floats on the caller keep IEEE semantics
    with runtime.flush_denormals():  # what LLMEngine.step does around the model
        assert runtime.denormals_flushed()
    seen = []  # a thread started afterwards (AsyncLLM's engine thread) gets the same inside its steps
    t = threading.Thread(target=lambda: seen.append((float("5e-324") > 0, _flushed_in_step())))
    t.start()
    t.join()
    assert seen == [(True, True)]


def _flushed_in_step() -> bool:
    with runtime.flush_denormals():
        return runtime.denormals_flushed()


def _on_all_threads(on: bool) -> None:
    assert runtime._on_openmp_team(lambda: torch.set_flush_denormal(on), torch.get_num_threads()) >= 1
