"""The embedded default model: `qwen35-demo`, a 3.9M-parameter model of the Qwen3.5 dense architecture trained
here on synthetic chats (`qwen35 train --recipe demo`, train/), shipped in the package.

It lets `make run`, `qwen35 serve` and `LLM()` without a model show real behaviour on any machine in the first
minute: step-by-step arithmetic in `<think>`, unit conversions, tool calls in the qwen3_coder format (and no
call when no tool fits), short replies in English, Chinese and Korean, and MTP drafts worth accepting; the
formats are right, answers and tool arguments sometimes wrong (docs/DEMO.md). Point `--model` at a real Qwen3.5
checkpoint directory for a real model.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_NAME = "qwen35-demo"
CAPABILITIES = ("a 3.9M-parameter Qwen3.5-architecture model trained on synthetic chats (qwen35 train --recipe demo): "
                "arithmetic with step-by-step <think>, unit conversions, tool calls (get_weather, get_time, "
                "convert_currency, the MCP filesystem tools, ...), short replies in English/Chinese/Korean, in the "
                "right formats, with about 19 in 20 answers and 19 in 20 tool loops right; it knows nothing else")


def default_model_dir() -> Path:
    """Path of the shipped demo checkpoint (inside the installed package)."""
    path = Path(str(resources.files(__package__).joinpath("demo_model")))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the embedded demo model is missing from {path}: reinstall qwen35, or rebuild it "
                                "with `qwen35 train --recipe demo --out " + str(path) + "`")
    return path
