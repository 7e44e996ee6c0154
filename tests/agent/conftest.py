"""A live server on the embedded demo model, shared by the agent tests."""

from __future__ import annotations

import pytest

from tests.server.conftest import live_server


@pytest.fixture(scope="session")
def demo():
    """`qwen35 serve` on the embedded demo model (greedy, as its generation_config says)."""
    from qwen35.default_model import default_model_dir
    from qwen35.engine.async_engine import AsyncLLM
    from qwen35.engine.config import EngineConfig
    from qwen35.server.params import load_generation_defaults

    model = str(default_model_dir())
    engine = AsyncLLM(EngineConfig(model=model, dtype="float32", max_model_len=4096, max_num_seqs=4,
                                   kv_cache_memory=64 << 20))
    with live_server(engine, generation_defaults=load_generation_defaults(model, "auto"), use_presets=False) as srv:
        yield srv


