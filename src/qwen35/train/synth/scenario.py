"""A request that tools answer (`Scenario`): the calls in order with their results, and the reply."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .sample import ToolCall, assistant, tool_result, user


@dataclass(frozen=True)
class Scenario:
    request: str
    calls: tuple[ToolCall, ...]
    reasons: tuple[str, ...]  # the reasoning before each call, then before the reply
    reply: str
    answer: str  # what the reply must contain

    def __post_init__(self) -> None:
        assert len(self.reasons) == len(self.calls) + 1

    @property
    def key(self) -> tuple:
        """The task: the first call's tool and arguments, or for a call without arguments
        (list_allowed_directories) what the tool returns, which the reply must copy. Keyed on its empty
        arguments alone, such a task would be held out always or never."""
        first = self.calls[0]
        what = first.arguments or first.result
        return ("tool", first.name, json.dumps(what, sort_keys=True, ensure_ascii=False))

    def messages(self, thinking: bool) -> list[dict]:
        """The user's request, one assistant turn and one tool message per call, then the reply."""
        out = [user(self.request)]
        for call, reason in zip(self.calls, self.reasons):
            out += [assistant("", reason if thinking else "", (call,)), tool_result(call)]
        return out + [assistant(self.reply, self.reasons[-1] if thinking else "")]


def as_json(value: dict) -> str:
    """A tool's JSON result as an API returns it."""
    return json.dumps(value, ensure_ascii=False)
