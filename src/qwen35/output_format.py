"""What Qwen3.5 writes, in one place: the reasoning and tool-call markers, how tool-call values are typed by
their JSON schema, and the grammar that forces a tool call. The output parsers (`server/parsers/`) read
replies with these rules and structured output (`engine/structured.py`) generates by them, so the two cannot
drift apart. Torch-free.

A reply (the chat template's format; `<think>`, `</think>`, `<tool_call>`, `</tool_call>` are single special
tokens, the `<function=...>` / `<parameter=...>` tags are ordinary text):

    <think>
    ...reasoning...
    </think>

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Values are bare text: strings as they are, everything else as compact JSON (`json.dumps` separators, which
is also how the chat template's `tojson` renders arguments in the history).
"""

from __future__ import annotations

import json
from typing import Any

import llguidance

THINK_START, THINK_END = "<think>", "</think>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
FUNCTION, FUNCTION_END = "<function=", "</function>"
PARAMETER, PARAMETER_END = "<parameter=", "</parameter>"

# Compact JSON, as json.dumps writes it: a model cannot loop on whitespace, and the text parses as is.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


# ---- schema typing -----------------------------------------------------------------------------------------

def _type_name(name: str) -> str | None:
    """A declared type, with the aliases tool authors write (`int`, `float`, `dict`, `list`, ...)."""
    t = name.strip().lower()
    if t in ("string", "str", "text", "varchar", "char", "enum"):
        return "string"
    if t.startswith(("int", "uint", "long", "short", "unsigned")):
        return "integer"
    if t.startswith(("num", "float", "double", "decimal")):
        return "number"
    if t in ("boolean", "bool", "binary"):
        return "boolean"
    if t == "object" or t.startswith("dict"):
        return "object"
    if t in ("array", "arr", "sequence", "tuple") or t.startswith("list"):
        return "array"
    if t in ("null", "none"):
        return "null"
    return None


def json_type(value: Any) -> str:
    """The JSON type of a Python value."""
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                       (dict, "object"), (list, "array")):
        if isinstance(value, kind):
            return name
    return "null"


def resolve_ref(schema: Any, defs: dict | None) -> Any:
    """Follow a local `#/$defs/X` or `#/definitions/X` reference (a few levels); {} when it is unknown."""
    depth = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and depth < 8:
        parts = schema["$ref"].split("/")
        if not defs or len(parts) != 3 or parts[0] != "#" or parts[2] not in defs.get(parts[1], {}):
            return {}  # unknown reference: no constraint
        schema, depth = defs[parts[1]][parts[2]], depth + 1
    return schema


def schema_types(schema: Any, defs: dict | None = None, depth: int = 0) -> set[str] | None:
    """The JSON types a parameter schema allows, or None when it does not say (any value).

    Types come from `type` (a name or a list, aliases included), from the values of `enum` / `const`, and
    from the branches of `anyOf` / `oneOf` / `allOf` (a branch that allows anything makes the whole schema
    allow anything); with none of these, `properties` means an object and `items` an array. ValueError for
    a `$ref` cycle that never reaches a type, such as `{"A": {"anyOf": [{"$ref": "#/$defs/A"}]}}`.
    """
    if depth > 16:
        raise ValueError("the schema's $ref definitions refer to each other without ever naming a type")
    schema = resolve_ref(schema, defs)
    if not isinstance(schema, dict):
        return None
    declared = schema.get("type")
    types = {_type_name(t) for t in (declared if isinstance(declared, list) else [declared]) if isinstance(t, str)}
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if isinstance(values, list):
        types |= {json_type(v) for v in values}
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        for branch in branches if isinstance(branches, list) else []:
            sub = schema_types(branch, defs, depth + 1)
            if sub is None:
                return None
            types |= sub
    types.discard(None)
    if not types and "properties" in schema:
        types = {"object"}
    if not types and "items" in schema:
        types = {"array"}
    return types or None


def is_plain_string(schema: Any) -> bool:
    """True when a value is raw text whatever it says: a parameter the tool does not describe, or one
    typed `string` and nothing else."""
    if schema is None:
        return True
    try:
        return schema_types(schema) == {"string"}
    except ValueError:
        return False


# ---- the forced tool call ----------------------------------------------------------------------------------

def lit(s: str) -> str:
    """A Lark string literal matching exactly `s`."""
    return json.dumps(s, ensure_ascii=False)


def validate_grammar(grammar: str) -> str:
    """'' if an llguidance grammar compiles, else the error (warnings are ignored)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
    return messages[0].strip() if is_error else ""


def tool_call_grammar(tools: list[dict], names: list[str] | None = None, allow_multiple: bool = True) -> str:
    """A Lark grammar for one or more tool calls in the format above, and nothing else.

    tools: OpenAI tools (`{"type": "function", "function": {"name", "parameters"}}`) or bare function dicts.
    names: the functions that may be called (None: any of `tools`); a named tool_choice passes [name].
    allow_multiple: False (`parallel_tool_calls=false`, or a named function) allows exactly one call; True
    one or more, joined by "\\n" as the chat template joins them.

    Up to two newlines may come first (the model writes "\\n\\n" after `</think>`); the output ends after the
    last `</tool_call>`. Parameters come in the schema's `properties` order, each at most once, every
    `required` one present. Values follow `schema_types`: a string is raw text (never containing
    "\\n</parameter>"; `enum`/`const`, `minLength`/`maxLength` are enforced, `pattern`/`format` are not);
    numbers, integers, booleans, null, objects and arrays are compact JSON constrained by the sub-schema; a
    value that may be a string among other types, or has no type, is any text.
    Raises ValueError for an unknown name, a tool without a name, or a schema llguidance rejects.
    """
    funcs = []
    for i, tool in enumerate(tools or []):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}]: expected a function with a name")
        funcs.append((i, fn))
    if not funcs:
        raise ValueError("tools: at least one function is needed to force a tool call")
    known = {fn["name"] for _, fn in funcs}
    for name in names or []:
        if name not in known:
            raise ValueError(f"tool_choice: function {name!r} is not in tools")
    chosen = [(i, fn) for i, fn in funcs if names is None or fn["name"] in names]

    rules: list[str] = []
    alts = []
    for k, (i, fn) in enumerate(chosen):
        alts.append(f"f{k}")
        rules += _function_rules(f"f{k}", fn, f"tools[{i}].function.parameters")
    more = ' ("\\n" call)*' if allow_multiple else ""
    lines = [f"start: LEAD? call{more}",
             f'call: {TOOL_CALL_START} "\\n" ({" | ".join(alts)}) "\\n" {TOOL_CALL_END}',
             *rules,
             'LEAD: /\\n{1,2}/']
    lark = "\n".join(lines) + "\n"
    error = validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark))
    if error:
        raise ValueError(f"tools: cannot build the tool-call grammar: {error}")
    return lark


def _function_rules(rule: str, fn: dict, where: str) -> list[str]:
    params = fn.get("parameters") or {}
    if not isinstance(params, dict):
        raise ValueError(f"{where}: expected a JSON schema object, got {type(params).__name__}")
    props = params.get("properties") or {}
    required = params.get("required") or []
    if not isinstance(props, dict) or not isinstance(required, list):
        raise ValueError(f"{where}: 'properties' must be an object and 'required' a list")
    defs = {k: params[k] for k in ("$defs", "definitions") if isinstance(params.get(k), dict)}
    order = list(props) + [r for r in required if isinstance(r, str) and r not in props]
    body, rules = [], []
    for j, name in enumerate(order):
        p = f"{rule}_p{j}"
        rules.append(f'{p}: {lit(f"{PARAMETER}{name}>" + chr(10))} {p}_v "\\n"')
        rules += _value_rules(f"{p}_v", props.get(name, {}), defs, f"{where}.properties.{name}")
        body.append(p if name in required else f"{p}?")
    head = lit(f"{FUNCTION}{fn['name']}>\n")
    return [f'{rule}: {" ".join([head, *body])} {lit(FUNCTION_END)}', *rules]


_CLOSE = "\\n<\\/parameter>"  # "\n</parameter>" inside /.../


def _value_rules(rule: str, schema: Any, defs: dict, where: str) -> list[str]:
    """Rules for `rule`: a parameter's value followed by "\\n</parameter>"."""
    schema = resolve_ref(schema, defs)
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: expected a JSON schema object, got {type(schema).__name__}")
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if isinstance(values, list) and values:
        texts = dict.fromkeys(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values)
        return [f'{rule}: ({" | ".join(lit(t) for t in texts)}) "\\n</parameter>"']
    types = schema_types(schema, defs)
    if types is None or "string" in types:  # any text, or a string among other types: raw text
        lo = schema.get("minLength", 0) if types == {"string"} else 0
        hi = schema.get("maxLength") if types == {"string"} else None
        lo = lo if isinstance(lo, int) and lo > 0 else 0
        count = "*" if not isinstance(hi, int) and not lo else f"{{{lo},{hi if isinstance(hi, int) else ''}}}"
        # lazy: the value ends at the first "\n</parameter>"
        return [f"{rule}[lazy]: /(?s:.{count}){_CLOSE}/"]
    options = schema.get("x-guidance", {})
    if not isinstance(options, dict):
        raise ValueError(f"{where}: x-guidance must be an object of llguidance options, got {options!r}")
    sub = {**defs, **schema, "x-guidance": {**JSON_OPTIONS, **options}}
    return [f'{rule}: %json {json.dumps(sub, ensure_ascii=False)} "\\n</parameter>"']
