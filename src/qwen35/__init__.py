"""qwen35: a readable, fast Python implementation of Qwen3.5 (model, engine, server, agent runtime)."""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("qwen35")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "AsyncLLM", "EngineConfig"]


def __getattr__(name: str):
    # lazy: `import qwen35` stays light; the engine (and torch) load on first use
    if name in __all__:
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'qwen35' has no attribute {name!r}")
