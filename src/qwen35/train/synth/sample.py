"""One synthetic conversation (`Sample`) and the builders of its OpenAI-style messages.

Assistant turns always carry `reasoning_content` ("" when thinking is off); `tool_calls` is present only on
turns that call tools, with `arguments` as a dict (what the chat template iterates over). Tool dicts in
`tools` are shared between samples: do not mutate them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ...tokenizer.chat_template import render_chat
from ...tokenizer.tokenizer import DEFAULT_CHAT_TEMPLATE

HELPFUL = "You are a helpful assistant."
USE_TOOLS = "You are a helpful assistant. Use the tools."  # the Qwen-Agent example's system message
SYSTEM_SHARE = 0.25  # conversations that open with a system message


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict
    result: str  # the tool message's content


@dataclass(frozen=True)
class Sample:
    kind: str  # "arith" | "convert" | "followup" | "tool" | "no_tool" | "smalltalk"; drills: "echo" | "facts"
    messages: list[dict]
    tools: list[dict] | None
    thinking: bool  # the enable_thinking the conversation is rendered with
    answer: str | None  # text the last assistant turn must contain
    tool_call: dict | None  # kind "tool": the first call expected, {"name", "arguments"}
    lang: str  # "en" | "zh" | "ko"
    task: tuple = ()  # what makes the question that question (split.py's key); () where it has none

    def render(self) -> str:
        return render_chat(DEFAULT_CHAT_TEMPLATE, self.messages, tools=self.tools, add_generation_prompt=False,
                           enable_thinking=self.thinking)

    def prompt_messages(self) -> list[dict]:
        """The messages up to and including the last user message: what an eval sends."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "user")
        return self.messages[:last + 1]


@dataclass(frozen=True)
class Exchange:
    """A question and its direct answer: the one user turn and one assistant turn of most samples."""

    question: str
    reply: str
    reasoning: str  # used when thinking is on
    answer: str | None
    working: str = ""  # a calculation's trace, shown before the reply when thinking is off
    task: tuple = ()  # split.py's key of the question, where it has one

    def content(self, thinking: bool) -> str:
        return with_working(self.reply, "" if thinking else self.working)


def with_working(reply: str, working: str) -> str:
    """The reply, after the working when there is one (thinking off: the trace goes into the content)."""
    return f"{working}\n\n{reply}" if working else reply


def one_turn(kind: str, rng: random.Random, exchange: Exchange, thinking: bool, lang: str,
             tools: list[dict] | None = None) -> Sample:
    messages = system(rng, (USE_TOOLS,) if tools else ()) + turns(exchange, thinking)
    return Sample(kind, messages, tools, thinking, exchange.answer, None, lang, exchange.task)


def turns(exchange: Exchange, thinking: bool) -> list[dict]:
    """The user's question and the assistant's direct answer."""
    return [user(exchange.question), assistant(exchange.content(thinking), exchange.reasoning if thinking else "")]


def system(rng: random.Random, extra: tuple[str, ...] = ()) -> list[dict]:
    """No system message, or one of the usual ones (`extra` adds choices, e.g. for tool use)."""
    if rng.random() >= SYSTEM_SHARE:
        return []
    return [{"role": "system", "content": rng.choice((HELPFUL,) + extra)}]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(content: str, reasoning: str = "", calls: tuple[ToolCall, ...] = ()) -> dict:
    message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
    if calls:
        message["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": dict(c.arguments)}}
                                 for c in calls]
    return message


def tool_result(call: ToolCall) -> dict:
    return {"role": "tool", "name": call.name, "content": call.result}
