"""Session-scoped checkpoints for the loading tests, written without tokenizer files (the loader never
reads them), plus their block-FP8 copies."""

from __future__ import annotations

import pytest

from qwen35.config import preset
from qwen35.loading.fp8 import quantize_checkpoint_fp8
from qwen35.loading.writer import write_random_checkpoint

from .util import copy_ckpt

SHARD = 16 << 20  # several shards even at tiny size: the dense embedding alone is 31.8 MB


@pytest.fixture(scope="session")
def dense_ckpt(tmp_path_factory):
    return write_random_checkpoint(preset("tiny"), tmp_path_factory.mktemp("dense"), seed=0, shard_bytes=SHARD,
                                   tokenizer=False)


@pytest.fixture(scope="session")
def moe_ckpt(tmp_path_factory):
    return write_random_checkpoint(preset("tiny-moe"), tmp_path_factory.mktemp("moe"), seed=1, shard_bytes=SHARD,
                                   tokenizer=False)


@pytest.fixture(scope="session")
def dense_fp8(dense_ckpt, tmp_path_factory):
    return quantize_checkpoint_fp8(dense_ckpt, tmp_path_factory.mktemp("dense_fp8"))


@pytest.fixture(scope="session")
def moe_fp8(moe_ckpt, tmp_path_factory):
    return quantize_checkpoint_fp8(moe_ckpt, tmp_path_factory.mktemp("moe_fp8"))


@pytest.fixture
def dense_copy(dense_ckpt, tmp_path):
    """A private copy of the dense checkpoint that a test may break."""
    return copy_ckpt(dense_ckpt, tmp_path / "ckpt")


@pytest.fixture
def moe_copy(moe_ckpt, tmp_path):
    return copy_ckpt(moe_ckpt, tmp_path / "ckpt")
