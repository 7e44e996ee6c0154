"""Shared fixtures: random checkpoints written by transformers (the oracle) and by `qwen35 init`."""

from __future__ import annotations

import fcntl
import math
import os

import pytest
import torch

from qwen35.config import preset
from qwen35.loading.writer import write_random_checkpoint

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one torch thread each, or the workers' thread pools fight over
    # the cores (a spinning OpenMP pool made a 4 s test take 30 s)
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def qwen35_cache(tmp_path_factory):
    """QWEN35_CACHE for every test, xdist worker and server they start: a directory of the tests' own beside
    pytest's numbered run directories, so tests never touch the user's cache and the built-in 248k vocabulary
    is built once per machine (seconds), by the first worker, under a lock the others wait on. Parsing it is
    left to the tests that use it."""
    from qwen35.tokenizer.vocab import cache_key, default_vocab_file, load_vocab_tokenizer

    run = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run = run.parent  # the run's directory, shared by the workers
    cache = run.parent / "qwen35_cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QWEN35_CACHE", str(cache))
        with open(run.parent / "qwen35_cache.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cache.mkdir(exist_ok=True)
            if not (cache / f"qwen35-tokenizer-{cache_key(default_vocab_file())}.json").is_file():
                load_vocab_tokenizer()  # builds and writes it
        yield cache


@pytest.fixture(autouse=True)
def _torch_threads():
    """A test that sets torch's thread count (training does) leaves it as it found it."""
    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)

HF_SHAPE = dict(vocab_size=1024, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                linear_key_head_dim=16, linear_value_head_dim=16, rms_norm_eps=1e-6)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Give every weight a clearly non-trivial value (HF init leaves norms at 0 and biases tiny)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("dt_bias"):  # Mamba-style: softplus(dt_bias) log-uniform in [1e-3, 1e-1]
                dt = torch.exp(torch.rand(p.shape, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
                continue
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(1, 16, generator=gen).log())
                continue
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if "linear_attn.norm" in name else 0.0))
            elif "conv1d" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.08)


def hf_checkpoint(tmp_dir, moe: bool, seed: int = 0, tie: bool = False, **config):
    """A random transformers model saved to `tmp_dir`; `config` overrides HF_SHAPE or adds config keys
    (e.g. `rope_parameters`, `max_position_embeddings`)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    shape = {**HF_SHAPE, **config}
    if moe:
        from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig
        cfg = Qwen3_5MoeTextConfig(**shape, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                   shared_expert_intermediate_size=48, tie_word_embeddings=tie)
        model = transformers.Qwen3_5MoeForCausalLM(cfg)
    else:
        cfg = transformers.Qwen3_5TextConfig(**shape, intermediate_size=96, tie_word_embeddings=tie)
        model = transformers.Qwen3_5ForCausalLM(cfg)
    _randomize(model, seed)
    model.eval()
    model.save_pretrained(tmp_dir)
    return model


@pytest.fixture(scope="session")
def hf_dense(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_dense")
    return d, hf_checkpoint(d, moe=False)


@pytest.fixture(scope="session")
def hf_moe(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_moe")
    return d, hf_checkpoint(d, moe=True, seed=1)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return write_random_checkpoint(preset("tiny"), d, seed=0, shard_bytes=16 << 20, tokenizer=False)


@pytest.fixture(scope="session")
def tiny_moe_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_moe")
    return write_random_checkpoint(preset("tiny-moe"), d, seed=1, shard_bytes=16 << 20, tokenizer=False)


@pytest.fixture(scope="session")
def vision_tiny_ckpt(tmp_path_factory):
    """tiny's text model with a 2-block vision tower of width 64 (4 heads), non-trivial vision biases."""
    from tests.model.test_vision import _write

    return _write(tmp_path_factory, "vision_tiny", "tiny", 3, depth=2, hidden_size=64, num_heads=4,
                  intermediate_size=128)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skip them where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
