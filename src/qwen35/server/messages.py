"""Clean incoming chat messages before the template sees them (docs/FORMAT.md §1).

The official template trips on shapes real clients send; each fix below is one of them:
- `developer` role -> `system`; system messages that are not first are merged into the first one;
- content given as a list of parts -> the text parts joined (non-text parts are refused: no vision yet);
- assistant messages without `content` (tool-call turns) -> empty content;
- `reasoning` (vLLM's name) in history -> `reasoning_content` (the template's name);
- tool-call `arguments` given as a JSON string (the OpenAI wire format) -> a dict for the template;
- tool messages without `tool_call_id` (Qwen-Agent) are fine: the template matches results by order.
"""

from __future__ import annotations

import json
from typing import Any

from .limits import RequestError

ROLES = ("system", "developer", "user", "assistant", "tool")


class MessageError(RequestError):
    """A message the server cannot turn into a prompt; the text names the message and field."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "messages")


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                raise MessageError(f"{where}.content[{j}] has type {part.get('type')!r}: only text parts are "
                                   "supported (this server has no vision input yet)")
            else:
                raise MessageError(f"{where}.content[{j}] must be a string or an object")
        return "".join(parts)
    raise MessageError(f"{where}.content must be a string, a list of parts or null")


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise MessageError(f"{where}.tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise MessageError(f"{where}.tool_calls[{j}] needs function.name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise MessageError(f"{where}.tool_calls[{j}].function.arguments is not valid JSON: {e}") from None
        if not isinstance(args, dict):
            raise MessageError(f"{where}.tool_calls[{j}].function.arguments must be a JSON object")
        out.append({**call, "type": call.get("type", "function"),
                    "function": {**fn, "arguments": args}})
    return out


def normalize_messages(messages: list[Any]) -> list[dict[str, Any]]:
    system_parts: list[str] = []
    rest: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise MessageError(f"{where} must be an object")
        role = msg.get("role")
        if role not in ROLES:
            raise MessageError(f"{where}.role must be one of {ROLES}, got {role!r}")
        content = _text(msg.get("content"), where)
        if role in ("system", "developer"):
            system_parts.append(content)
            continue
        clean: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant":
            reasoning = msg.get("reasoning_content", msg.get("reasoning"))
            if reasoning:
                clean["reasoning_content"] = _text(reasoning, where + ".reasoning_content")
            if msg.get("tool_calls"):
                clean["tool_calls"] = _tool_calls(msg["tool_calls"], where)
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if key in msg:
                    clean[key] = msg[key]
        rest.append(clean)
    if not rest:
        raise MessageError("messages must contain at least one user, assistant or tool message")
    if system_parts:
        rest.insert(0, {"role": "system", "content": "\n\n".join(system_parts)})
    return rest
