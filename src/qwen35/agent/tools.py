"""What the agent loop calls: a `Tool` (name, description, JSON-schema parameters, async `call`) and its
`ToolResult`. `FunctionTool` wraps a plain Python function, its schema read off the signature."""

from __future__ import annotations

import asyncio
import inspect
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass
class ToolResult:
    text: str
    is_error: bool = False
    files: list[str] = field(default_factory=list)  # images and other files the call produced


def clip(text: str, limit: int) -> str:
    """`text` within `limit` characters: its head and tail, and how much was cut between them."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


class Tool:
    """A tool the model may call. Subclasses implement `call`; `close` releases what the tool holds."""

    def __init__(self, name: str, description: str, parameters: dict[str, Any]) -> None:
        self.name, self.description, self.parameters = name, description, parameters

    def spec(self) -> dict[str, Any]:
        """The OpenAI `tools` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class FunctionTool(Tool):
    """A Python function (sync or async) as a tool: parameters from its annotations, the description from
    its docstring. A sync function runs on a worker thread, so a slow tool never blocks the loop."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> None:
        super().__init__(name or fn.__name__, description or inspect.getdoc(fn) or "", _schema(fn))
        self.fn = fn

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(**arguments)
        else:
            value = await asyncio.to_thread(self.fn, **arguments)
        if isinstance(value, ToolResult):
            return value
        return ToolResult(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str))


def _schema(fn: Callable[..., Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(fn)
    props, required = {}, []
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(name, str)
        origin = typing.get_origin(hint) or hint
        prop: dict[str, Any] = {"type": _JSON_TYPES.get(origin, "string")}
        if origin is typing.Literal:
            prop = {"type": "string", "enum": list(typing.get_args(hint))}
        props[name] = prop
        if p.default is p.empty:
            required.append(name)
    return {"type": "object", "properties": props, "required": required}
