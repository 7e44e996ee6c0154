"""Type a tool-call parameter's raw text by the tool's JSON schema (`output_format.schema_types`, the rules
the tool-call grammar generates by).

The model writes every value as bare text: strings as they are, numbers and booleans bare, objects and
arrays as JSON. Which of these a value is comes from the parameter's schema, as in vLLM's
`coerce_to_schema_type`:

* allowed types come from `type` (a name or a list, with aliases such as `int`, `float`, `dict`,
  `list`), from the values of `enum`, and from `anyOf` / `oneOf` / `allOf`;
* they are tried in the order null > integer > number > boolean > object > array > string;
* Python spellings the chat template puts into history (`None`, `True`, `False`, `{'k': 'v'}`) are
  accepted too (docs/FORMAT.md §2: the template renders history values with `| string`);
* when no allowed type fits, the text is read as JSON (or a Python literal) and otherwise kept as
  the string; a parameter the schema does not know stays a string.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from typing import Any

from ...output_format import is_plain_string, schema_types

_INTEGER = re.compile(r"[-+]?\d+")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NO_VALUE = object()


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def _literal(text: str) -> Any:
    """JSON first, then a Python literal; `_NO_VALUE` unless it is JSON-serialisable and finite."""
    try:
        value = json.loads(text)
    except RecursionError:  # nested deeper than the interpreter's stack: not a value we can type
        return _NO_VALUE
    except ValueError:
        try:
            with warnings.catch_warnings():  # e.g. SyntaxWarning for "\d" in a string literal
                warnings.simplefilter("ignore")
                value = ast.literal_eval(text)
        except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError on hostile text
            return _NO_VALUE
    if isinstance(value, tuple):
        value = list(value)
    return value if _json_safe(value) else _NO_VALUE


def _container(text: str, kind: type) -> Any:
    value = _literal(text)
    if isinstance(value, str):  # double-encoded, e.g. "{'k': 'v'}" inside JSON quotes
        value = _literal(value)
    return value if isinstance(value, kind) else _NO_VALUE


def _coerce_nested(value: Any, schema: Any) -> Any:
    """Type strings nested in objects and arrays by the sub-schemas (`properties`, `items`), as vLLM does:
    `{"n": "3"}` under `{"n": {"type": "integer"}}` becomes `{"n": 3}`. Values JSON already typed stay."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        return {k: _coerce_item(v, props.get(k)) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce_item(v, schema["items"]) for v in value]
    return value


def _coerce_item(v: Any, sub: Any) -> Any:
    if isinstance(v, str) and sub is not None and not is_plain_string(sub):
        return coerce_value(v, sub)
    return _coerce_nested(v, sub)


def coerce_value(raw: str, schema: Any) -> Any:
    """The typed value of parameter text `raw` (markup newlines already removed) under `schema`.

    `schema` is the parameter's entry in the tool's `properties`, or None when it has none.
    """
    if schema is None:
        return raw
    try:
        types = schema_types(schema) or set()
    except ValueError:  # a $ref cycle: nothing to type by
        types = set()
    text = raw.strip()
    lowered = text.lower()
    if "null" in types and lowered in ("null", "none"):
        return None
    if "integer" in types and _INTEGER.fullmatch(text):
        return int(text)
    if "number" in types and _NUMBER.fullmatch(text):
        number = int(text) if _INTEGER.fullmatch(text) else float(text)
        if _json_safe(number):
            return number
    if "boolean" in types and lowered in ("true", "false", "1", "0"):
        return lowered in ("true", "1")
    for name, kind in (("object", dict), ("array", list)):
        if name in types and (value := _container(text, kind)) is not _NO_VALUE:
            return _coerce_nested(value, schema)
    if "string" in types:
        return raw
    value = _literal(text)
    return raw if value is _NO_VALUE else value
