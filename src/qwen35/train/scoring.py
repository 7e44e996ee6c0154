"""Scoring one reply of the demo model's evaluation (evaluate.py): the answer number, a tool call against the
expected one and the tool's JSON schema, reasoning presence. Pure functions on replies as dicts (the openai
client's `message.model_dump()`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# a number with comma thousands separators, or a plain one; a minus sign only when no digit precedes it
_NUMBER = re.compile(r"(?<![0-9])-?(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?")


def last_number(text: str | None) -> str | None:
    """The last number in `text` as written, without thousands separators ("1,234.5" -> "1234.5")."""
    found = _NUMBER.findall(text or "")
    return found[-1].replace(",", "") if found else None


def answer_matches(content: str | None, answer: str) -> bool:
    """A number (arithmetic, conversions): the last number in `content` is exactly `answer`. Anything else
    (a fact such as a capital, asked of no_tool samples): `content` contains `answer`."""
    if _NUMBER.fullmatch(answer):
        return last_number(content) == answer.replace(",", "")
    return answer in (content or "")


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def schema_errors(value: Any, schema: dict, where: str = "arguments") -> list[str]:
    """What in `value` breaks `schema`: the JSON Schema subset tool parameters use (type, a list of types,
    enum, const, required, properties, additionalProperties, items). An integer must be written as one
    (5.0 is a number, not an integer)."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_JSON_TYPES.get(t, lambda v: True)(value) for t in names):
            return [f"{where}: expected {' or '.join(names)}, got {json.dumps(value)}"]
    errors = []
    if "enum" in schema and not any(same_value(value, e) for e in schema["enum"]):
        errors.append(f"{where}: {json.dumps(value)} is not one of {json.dumps(schema['enum'])}")
    if "const" in schema and not same_value(value, schema["const"]):
        errors.append(f"{where}: must be {json.dumps(schema['const'])}")
    if isinstance(value, dict):
        errors += [f"{where}: missing required {name!r}" for name in schema.get("required", ()) if name not in value]
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unexpected {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{where}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def same_value(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (5 == 5.0), but booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


@dataclass(frozen=True)
class CallCheck:
    valid: bool  # exactly one call, of the expected tool, arguments valid under its schema
    exact: bool  # ... and its arguments equal the expected ones
    why: str  # what is wrong ("" when valid)


def check_call(message: dict, tools: list[dict] | None, expected: dict) -> CallCheck:
    """Stage 1 of a tool sample: `message` (a reply's message as a dict) against the expected first call
    `{"name", "arguments"}` and the offered `tools`."""
    calls = message.get("tool_calls") or []
    if len(calls) != 1:
        return CallCheck(False, False, f"{len(calls)} tool calls")
    fn = calls[0].get("function") or {}
    name, raw = fn.get("name"), fn.get("arguments")
    if name != expected["name"]:
        return CallCheck(False, False, f"called {name!r}, expected {expected['name']!r}")
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        return CallCheck(False, False, f"arguments are not JSON: {e}")
    if not isinstance(args, dict):
        return CallCheck(False, False, "arguments are not a JSON object")
    schema = next((t["function"].get("parameters") or {} for t in tools or () if t["function"]["name"] == name),
                  None)
    if schema is None:
        return CallCheck(False, False, f"{name!r} was not offered")
    errors = schema_errors(args, schema)
    exact = same_value(args, expected["arguments"])
    return CallCheck(not errors, exact and not errors, "; ".join(errors))


def has_reasoning(message: dict) -> bool:
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return bool(reasoning and reasoning.strip())
