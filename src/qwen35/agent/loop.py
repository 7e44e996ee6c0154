"""The agent loop: think -> call tools -> feed the results back -> answer, against any OpenAI-compatible chat
endpoint (our server by default), streamed as events.

One step is one streamed chat completion. Its reasoning, text and tool calls arrive as `Reasoning`,
`Text` and (once complete) `ToolCall` events; the calls then run concurrently (`parallel_calls`), each
result a `ToolResultEvent`, and the next step starts. The loop ends with `Finished` when the model answers
without calling, at `max_steps`, or when the reply hits the length limit.

The conversation (`messages`, extended in place) stays in the model's own format: each assistant turn
keeps its `reasoning_content` and its calls with their arguments exactly as generated, and results follow
in call order, so the chat template renders every earlier step byte for byte as the model produced it and
the server's prefix cache covers the whole history on each step.

Nothing a tool does ends the loop: an unknown tool, arguments that are not JSON, an exception or a
timeout become an error result the model reads. Cancelling the consumer (Ctrl-C in `qwen35 chat`) closes
the HTTP stream, which aborts the request on the server, and cancels running tools; what the model had
said so far stays in the conversation.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

from .tools import Tool, ToolResult, clip


@dataclass
class Reasoning:
    text: str


@dataclass
class Text:
    text: str


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # as the model wrote them (JSON text)


@dataclass
class ToolResultEvent:
    id: str
    name: str
    result: ToolResult
    seconds: float


@dataclass
class Finished:
    reason: str  # "answer" | "max_steps" | "length"
    steps: int
    usage: dict[str, int] = field(default_factory=dict)  # summed over the steps (cached_tokens: prefix-cache hits)


Event = Reasoning | Text | ToolCall | ToolResultEvent | Finished
_SDK_FIELDS = ("temperature", "top_p", "max_tokens", "seed")  # sampling fields the openai SDK takes by name


class Agent:
    def __init__(self, client: Any, model: str, tools: Sequence[Tool] = (), *, max_steps: int = 10,
                 thinking: bool | None = None, parallel_calls: bool = True, tool_timeout: float = 300.0,
                 tool_choice: str | None = None, sampling: dict[str, Any] | None = None,
                 max_result_chars: int = 20_000) -> None:
        """`client`: an `openai.AsyncOpenAI`. `thinking`: None keeps the server's default. `tool_choice`:
        "required" or a tool's name forces a call on the first step of each run (later steps are "auto", so
        the model can answer). `sampling`: extra request fields (temperature, max_tokens, top_k, ...).
        `max_result_chars`: a tool result longer than this reaches the model as its head and tail (a 1 MB
        result would overflow the context on this and every later turn)."""
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.client, self.model, self.tools = client, model, {t.name: t for t in tools}
        self.max_steps, self.thinking, self.parallel_calls = max_steps, thinking, parallel_calls
        self.tool_timeout, self.sampling = tool_timeout, dict(sampling or {})
        self.max_result_chars = max_result_chars
        if tool_choice not in (None, "auto", "none", "required") and tool_choice not in self.tools:
            raise ValueError(f"tool_choice must be auto, none, required or a tool's name, got {tool_choice!r}")
        self.tool_choice = tool_choice

    async def run(self, messages: list[dict[str, Any]]) -> AsyncIterator[Event]:
        """Continue `messages` (ending with the user's turn) until the model answers; `messages` grows by the
        assistant turns and tool results."""
        total: dict[str, int] = {}
        for step in range(1, self.max_steps + 1):
            turn: dict[str, Any] = {"role": "assistant", "content": ""}
            finish = None
            try:
                async for event in self._step(messages, turn, total, self.tool_choice if step == 1 else None):
                    if isinstance(event, str):
                        finish = event
                    else:
                        yield event
            finally:
                if turn["content"] or turn.get("reasoning_content") or turn.get("tool_calls"):
                    messages.append(turn)  # also a turn cut short by cancellation: what was said was said
            calls = turn.get("tool_calls") or []
            if not calls:
                yield Finished("length" if finish == "length" else "answer", step, total)
                return
            results = await self._run_tools(calls)
            for call, (result, seconds) in zip(calls, results):
                messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                                 "content": result.text})
                yield ToolResultEvent(call["id"], call["function"]["name"], result, seconds)
            if finish == "length":
                yield Finished("length", step, total)
                return
        yield Finished("max_steps", self.max_steps, total)

    def _request(self, messages: list[dict[str, Any]], tool_choice: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True,
                                  "stream_options": {"include_usage": True}}
        kwargs.update({k: v for k, v in self.sampling.items() if k in _SDK_FIELDS})
        extra = {k: v for k, v in self.sampling.items() if k not in _SDK_FIELDS}
        if self.tools:
            kwargs["tools"] = [t.spec() for t in self.tools.values()]
            kwargs["parallel_tool_calls"] = self.parallel_calls
            if tool_choice is not None:
                kwargs["tool_choice"] = tool_choice if tool_choice in ("auto", "none", "required") else \
                    {"type": "function", "function": {"name": tool_choice}}
        if self.thinking is not None:
            extra["chat_template_kwargs"] = {**extra.get("chat_template_kwargs", {}), "enable_thinking": self.thinking}
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    async def _step(self, messages, turn: dict[str, Any], total: dict[str, int],
                    tool_choice: str | None) -> AsyncIterator[Event | str]:
        """One streamed completion into `turn`; yields events, then the finish reason (a str)."""
        calls: dict[int, dict[str, Any]] = {}
        finish = None
        stream = await self.client.chat.completions.create(**self._request(messages, tool_choice))
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
                        total[k] = total.get(k, 0) + (getattr(chunk.usage, k, 0) or 0)
                    details = getattr(chunk.usage, "prompt_tokens_details", None)
                    cached = (getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
                    total["cached_tokens"] = total.get("cached_tokens", 0) + cached
                for choice in chunk.choices:
                    delta = choice.delta
                    reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                    if reasoning:
                        turn["reasoning_content"] = turn.get("reasoning_content", "") + reasoning
                        yield Reasoning(reasoning)
                    if delta.content:
                        turn["content"] += delta.content
                        yield Text(delta.content)
                    for tc in delta.tool_calls or []:
                        slot = calls.setdefault(tc.index if tc.index is not None else len(calls),
                                                {"id": None, "name": "", "arguments": ""})
                        slot["id"] = slot["id"] or tc.id
                        if tc.function is not None:
                            slot["name"] = slot["name"] or (tc.function.name or "")
                            slot["arguments"] += tc.function.arguments or ""
                        turn["tool_calls"] = [_call(c, i) for i, c in sorted(calls.items())]
                    if choice.finish_reason:
                        finish = choice.finish_reason
        finally:
            await stream.close()
        for call in turn.get("tool_calls") or []:
            yield ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"])
        yield finish or "stop"

    async def _run_tools(self, calls: list[dict[str, Any]]) -> list[tuple[ToolResult, float]]:
        if self.parallel_calls:
            return list(await asyncio.gather(*(self._run_one(c) for c in calls)))
        return [await self._run_one(c) for c in calls]

    async def _run_one(self, call: dict[str, Any]) -> tuple[ToolResult, float]:
        start = time.perf_counter()
        name, raw = call["function"]["name"], call["function"]["arguments"]
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools) or "none"
            return ToolResult(f"error: there is no tool named {name!r} (tools: {known})", is_error=True), 0.0
        try:
            args = json.loads(raw or "{}")
            if not isinstance(args, dict):
                raise ValueError("the arguments must be a JSON object")
        except ValueError as e:
            return ToolResult(f"error: the arguments of {name} are not a JSON object: {e}", is_error=True), 0.0
        try:
            result = await asyncio.wait_for(tool.call(args), self.tool_timeout)
        except asyncio.TimeoutError:
            result = ToolResult(f"error: {name} did not finish within {self.tool_timeout:g} s", is_error=True)
        except TypeError as e:  # arguments the function does not take
            result = ToolResult(f"error: {name} was called with wrong arguments: {e}", is_error=True)
        except Exception as e:  # noqa: BLE001 -- the model reads the failure and may try again
            result = ToolResult(f"error: {name} failed: {type(e).__name__}: {e}", is_error=True)
        if not isinstance(result, ToolResult) or not isinstance(result.text, str):
            result = ToolResult(f"error: {name} returned {type(result).__name__}, not a ToolResult with text",
                                is_error=True)
        result.text = clip(result.text, self.max_result_chars)
        return result, time.perf_counter() - start


def _call(slot: dict[str, Any], index: int) -> dict[str, Any]:
    return {"id": slot["id"] or f"call_{index}", "type": "function",
            "function": {"name": slot["name"], "arguments": slot["arguments"]}}


async def close_tools(tools: Sequence[Tool]) -> None:
    await asyncio.gather(*(t.close() for t in tools), return_exceptions=True)
