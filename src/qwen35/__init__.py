"""qwen35: a readable, fast Python implementation of Qwen3.5 (model, engine, server, agent runtime)."""

__version__ = "0.1.0"
