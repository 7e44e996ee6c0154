"""The inference engine: scheduler, hybrid cache management, model runner, sampler, Python APIs.

Exports load lazily so the torch-free parts (scheduler, cache manager) import without torch.
"""

import importlib

_EXPORTS = {"AsyncLLM": "async_engine", "LLM": "llm", "EngineConfig": "config", "LLMEngine": "llm_engine",
            "CompletionOutput": "outputs", "RequestOutput": "outputs", "RequestFailed": "outputs",
            "SamplingParams": "sampling_params"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'qwen35.engine' has no attribute {name!r}")
