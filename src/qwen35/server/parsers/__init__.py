"""Output parsers for Qwen3.5 replies: the `<think>` reasoning split (`reasoning`), `qwen3_coder` XML tool
calls (`tool_qwen`, typed by `schema`), and `ChatOutputParser`, which chains the two for the chat endpoint.

Each parser module exposes its `START` / `END` markers, a one-shot `parse(...)` and a streaming class
with `feed(delta)` / `finish()`; the streamed pieces always concatenate to the one-shot result.
"""

from .output import ChatOutputParser
from .reasoning import ReasoningParser, prompt_ends_in_reasoning
from .tool_qwen import ToolCall, ToolCallDelta, ToolCallParser, new_call_id

__all__ = ["ChatOutputParser", "ReasoningParser", "ToolCall", "ToolCallDelta", "ToolCallParser", "new_call_id",
           "prompt_ends_in_reasoning"]
