"""One assistant reply -> reasoning, content and tool calls: the reasoning split, then the tool parser
on the content. This is what the chat endpoint uses, streamed (`feed` / `finish`) or whole
(`parse_all`); both give the same result for any chunking of the text.

Events come in output order, ready for an OpenAI delta:

* `("reasoning", str)` -> `delta.reasoning_content`
* `("content", str)` -> `delta.content`
* `("tool_call", dict)` -> one entry of `delta.tool_calls` (docs/FORMAT.md §4: the first for a call has
  index, id, type, name and `arguments: ""`; the rest only index and an arguments fragment)

With `parse_tools=False` (no tools in the request, `tool_choice="none"`, or a client such as
Qwen-Agent's default mode that parses `<tool_call>` itself), tool-call markup stays in the content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .reasoning import ReasoningParser
from .tool_qwen import ToolCall, ToolCallParser, new_call_id

Event = tuple[str, Any]


class ChatOutputParser:
    """Streaming parser for one choice: `feed(delta) -> events`, then `finish() -> events`."""

    def __init__(self, started_in_reasoning: bool, tools: list[dict] | None = None, parse_tools: bool = True, *,
                 id_factory: Callable[[], str] = new_call_id) -> None:
        self.started_in_reasoning = started_in_reasoning
        self.tools = tools
        self.parse_tools = parse_tools
        self._id_factory = id_factory
        self._reset()

    def _reset(self) -> None:
        self._reasoning = ReasoningParser(started_in_reasoning=self.started_in_reasoning)
        self._tools = ToolCallParser(self.tools, id_factory=self._id_factory) if self.parse_tools else None

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Calls seen so far (complete after `finish()`)."""
        return self._tools.calls if self._tools is not None else []

    def feed(self, delta: str) -> list[Event]:
        return self._route(*self._reasoning.feed(delta), final=False)

    def finish(self, truncated: bool = False) -> list[Event]:
        """End of output: flush held-back text and close an unterminated call, unless the output was
        `truncated` by max_tokens: then an open call keeps its partial arguments."""
        return self._route(*self._reasoning.finish(), final=True, truncated=truncated)

    def finish_reason(self, stop_reason: str | None) -> str | None:
        """`tool_calls` when calls were made and the engine stopped on its own; `length` stays `length`.
        (A server that forced one function by name reports `stop`, as OpenAI does.)"""
        return "tool_calls" if stop_reason == "stop" and self.tool_calls else stop_reason

    def parse_all(self, text: str, truncated: bool = False) -> tuple[str | None, str, list[dict[str, Any]]]:
        """Parse a whole reply on a fresh state: `(reasoning or None, content, tool_calls as OpenAI dicts)`."""
        self._reset()
        events = self.feed(text) + self.finish(truncated)
        reasoning = "".join(v for kind, v in events if kind == "reasoning")
        content = "".join(v for kind, v in events if kind == "content")
        return reasoning or None, content, [call.to_openai() for call in self.tool_calls]

    def _route(self, reasoning: str, content: str, final: bool, truncated: bool = False) -> list[Event]:
        events: list[Event] = [("reasoning", reasoning)] if reasoning else []
        if self._tools is None:
            return events + ([("content", content)] if content else [])
        tool_events = self._tools.feed(content) if content else []
        if final:
            tool_events += self._tools.finish(truncated)
        for kind, value in tool_events:
            events.append((kind, value.to_openai() if kind == "tool_call" else value))
        return events
