"""Synthetic chats for the demo model (issue 12): arithmetic with column traces, unit conversions, follow-ups,
tool calls in the qwen3_coder format, refusals to call tools that do not fit, and short small talk in English,
Chinese and Korean. `training(n)` and `heldout(n)` never share a question.
"""

from .mix import DEFAULT_MIX, generate, heldout, training
from .sample import Sample

__all__ = ["DEFAULT_MIX", "Sample", "generate", "heldout", "training"]
