"""Structured output, the request side: `GuidedDecoding` says what a request's output must match (a JSON
schema, "any JSON object", a Lark grammar, a regex, or one of a list of choices) and compiles it with
llguidance when it is built, so a bad grammar is a ValueError while the request is prepared. Torch-free: the
server builds these and hands them to the engine in `SamplingParams.guided`; `guided.py` turns them into
per-request matchers that mask logits.

For `tool_choice="required"` / a named tool the server builds the grammar with
`output_format.tool_call_grammar`, which describes Qwen3.5's native XML tool calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import llguidance

from ..output_format import JSON_OPTIONS, lit, validate_grammar

_KINDS = ("json_schema", "json_object", "grammar", "regex", "choice")
# How errors name each kind: the OpenAI / vLLM request field it usually comes from.
_LABELS = {"json_schema": "response_format.json_schema", "json_object": "response_format",
           "grammar": "structured_outputs.grammar", "regex": "structured_outputs.regex",
           "choice": "structured_outputs.choice", "budget": "thinking_token_budget"}
STRUCTURED_LABELS = tuple(sorted(set(_LABELS.values()), key=len, reverse=True))  # the fields errors start with


@dataclass
class GuidedDecoding:
    """What a request's output must match: exactly one of the five kinds, plus `start_after`.

    json_schema: a JSON schema (dict); json_object: True for any JSON object; grammar: a Lark grammar in
    llguidance's syntax (GBNF is converted); regex: the whole output matches it; choice: one of the strings.
    start_after: a token id (e.g. `</think>`) before which generation is free; None: constrained from
    the first token. reasoning_budget: at most this many free tokens; then `start_after` is forced (a model
    that would think forever still produces the constrained answer). A budget with `start_after` and no
    grammar is allowed: it caps the reasoning and leaves the answer free (`thinking_token_budget` alone).

    Construction compiles the grammar (without a tokenizer) and raises ValueError naming the problem.
    """

    json_schema: dict | None = None
    json_object: bool = False
    grammar: str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    start_after: int | None = None
    reasoning_budget: int | None = None
    _compiled: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if self.start_after is not None and (not isinstance(self.start_after, int) or isinstance(
                self.start_after, bool) or self.start_after < 0):
            raise ValueError(f"guided decoding start_after must be a token id, got {self.start_after!r}")
        if not given and self.budget_only:
            return
        if len(given) != 1:
            raise ValueError(f"guided decoding needs exactly one of {', '.join(_KINDS)}; got "
                             f"{', '.join(given) or 'none'}")
        self._compiled = _compile(self.kind, getattr(self, self.kind))
        error = validate_grammar(self._compiled)
        if error and self.kind == "regex":  # name the regex the request wrote, not its ASCII rewrite
            error = validate_grammar(llguidance.LLMatcher.grammar_from_regex(self.regex)) or error
        if error:
            raise ValueError(f"{self.label}: {error}")

    @property
    def budget_only(self) -> bool:
        """No grammar: only the reasoning budget (before `start_after`) is enforced."""
        return (self.start_after is not None and self.reasoning_budget is not None
                and all(getattr(self, k) in (None, False) for k in _KINDS))

    @property
    def kind(self) -> str:
        return next((k for k in _KINDS if getattr(self, k) not in (None, False)), "budget")

    @property
    def label(self) -> str:
        return _LABELS[self.kind]

    @property
    def llguidance_grammar(self) -> str:
        """The grammar in llguidance's serialised form (what `LLMatcher` takes)."""
        return self._compiled


_ALIAS_KEYS = frozenset({"$ref", "$defs", "definitions", "$schema", "$id", "$comment", "title", "description"})


def _ref_cycle(schema: dict) -> str | None:
    """A `$ref` that a chain of pure references (`{"$ref": "#"}`, a -> b -> a) reaches twice, or None.
    llguidance compiles such a schema, and the output is then empty: not JSON."""
    starts = [schema] + [v for k in ("$defs", "definitions") if isinstance(schema.get(k), dict)
                         for v in schema[k].values()]
    for node in starts:
        seen: set[str] = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and set(node) <= _ALIAS_KEYS:
            ref = node["$ref"]
            if ref in seen:
                return ref
            seen.add(ref)
            node = _local_ref(schema, ref)
    return None


def _local_ref(root: dict, ref: str) -> Any:
    """What a local JSON pointer (`#`, `#/$defs/a`) names in `root`, or None."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in [p.replace("~1", "/").replace("~0", "~") for p in ref[1:].split("/")[1:]]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _compile(kind: str, value: Any) -> str:
    label = _LABELS[kind]
    M = llguidance.LLMatcher
    if kind == "json_schema":
        if not isinstance(value, dict):
            raise ValueError(f"{label}: the schema must be a JSON object, got {type(value).__name__}")
        cycle = _ref_cycle(value)
        if cycle is not None:
            raise ValueError(f"{label}: $ref {cycle!r} leads back to itself through references alone, so no value "
                             "can match it")
        try:
            return M.grammar_from_json_schema(json.dumps(value), defaults=JSON_OPTIONS)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{label}: {e}") from None
    if kind == "json_object":
        if value is not True:
            raise ValueError(f"{label}: json_object must be True, got {value!r}")
        return M.grammar_from_json_schema('{"type": "object"}', defaults=JSON_OPTIONS)
    if kind == "grammar":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{label}: the grammar must be a non-empty string")
        try:
            return llguidance.grammar_from("grammar", value)  # Lark, or GBNF converted to Lark
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
    if kind == "regex":
        if not isinstance(value, str):
            raise ValueError(f"{label}: the regex must be a string, got {type(value).__name__}")
        return M.grammar_from_regex(ascii_classes(value))
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) and c for c in value):
        raise ValueError(f"{label}: choice must be a non-empty list of non-empty strings")
    return M.grammar_from_lark("start: " + " | ".join(lit(c) for c in value))


# \d, \w and their negations as ASCII classes: outside a bracket class, and inside one (POSIX classes there).
_OUTSIDE = {"d": "[0-9]", "D": "[^0-9]", "w": "[0-9A-Za-z_]", "W": "[^0-9A-Za-z_]"}
_INSIDE = {"d": "[:digit:]", "D": "[:^digit:]", "w": "[:word:]", "W": "[:^word:]"}


def ascii_classes(regex: str) -> str:
    """`regex` with `\\d`, `\\w`, `\\D` and `\\W` meaning ASCII digits and word characters, as in a JSON
    schema's `pattern` (ECMA-262) and in vLLM's default structured-output backend. llguidance's regexes take
    them as Unicode classes, so `\\d{3}` let a model write full-width or Arabic-Indic digits."""
    out, i, depth = [], 0, 0  # depth: how many bracket classes are open
    while i < len(regex):
        c = regex[i]
        if c == "\\" and i + 1 < len(regex):
            e = regex[i + 1]
            out.append((_INSIDE if depth else _OUTSIDE).get(e, c + e))
            i += 2
            continue
        if depth and regex.startswith("[:", i):  # a POSIX class inside a bracket class: copied whole
            end = regex.find(":]", i + 2)
            if end != -1:
                out.append(regex[i:end + 2])
                i = end + 2
                continue
        if c == "[":
            depth += 1
            out.append(c)
            i += 1
            if regex.startswith("^", i):
                out.append("^")
                i += 1
            if regex.startswith("]", i):  # a leading ] is a literal
                out.append("]")
                i += 1
            continue
        if c == "]" and depth:
            depth -= 1
        out.append(c)
        i += 1
    return "".join(out)
