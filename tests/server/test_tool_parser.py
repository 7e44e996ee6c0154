"""The qwen3_coder tool-call parser and the combined chat output parser.

Every fixture (docs/FORMAT.md §2) is parsed whole and streamed in every chunking; the streams must
give the same content and calls, and the tool-call deltas must have the shape docs/FORMAT.md §4 requires
(checked by assembling them the way the openai SDK's `accumulate_delta` and Qwen-Agent do).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re

import pytest

from qwen35.server.parsers import ChatOutputParser, ToolCallParser, new_call_id
from qwen35.server.parsers.schema import coerce_value
from qwen35.server.parsers.tool_qwen import parse
from tests.server.chunking import chunkings


def fn(name: str, **props: dict) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": props}}}


WEATHER = fn("get_weather", city={"type": "string"}, days={"type": "integer"})
WRITE = {"name": "write_file",  # the bare function form is accepted too
         "parameters": {"properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}
TYPED = fn("typed", s={"type": "string"}, i={"type": "integer"}, n={"type": "number"}, b={"type": "boolean"},
           o={"type": "object"}, a={"type": "array"}, ni={"type": ["integer", "null"]},
           ns={"anyOf": [{"type": "string"}, {"type": "null"}]}, e={"enum": [1, 2, 3]}, any={"description": "?"},
           u={"type": "uint32"}, f={"type": "float"}, d={"type": "dict"})
TOOLS = [WEATHER, WRITE, TYPED]


def call(name: str, *params: tuple[str, str]) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params)
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


PARIS = call("get_weather", ("city", "Paris"), ("days", "2"))
ROME = call("get_weather", ("city", "Rome"))
CODE = ('def f(a, b):\n    return "</parameter> is a tag"  # and <parameter=x> too\n'
        "s = '</function>' + \"\\n\\t\"\nprint(\"</tool_call>\", a<b, {'k': [1]})\n")

# id, output, tools, content, [(name, arguments)]
CASES = [
    ("single-call", PARIS, TOOLS, "", [("get_weather", {"city": "Paris", "days": 2})]),
    ("prose-before-call", "Let me check.\n\n" + PARIS, TOOLS, "Let me check.",
     [("get_weather", {"city": "Paris", "days": 2})]),
    ("two-calls", PARIS + "\n" + ROME, TOOLS, "",
     [("get_weather", {"city": "Paris", "days": 2}), ("get_weather", {"city": "Rome"})]),
    ("two-functions-in-one-tool-call",  # vLLM #43713
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n"
     "<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>", TOOLS, "",
     [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]),
    ("missing-last-parameter-close",  # vLLM #57699
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n"
     "</function>\n</tool_call>", TOOLS, "", [("get_weather", {"city": "Paris", "days": 2})]),
    ("missing-parameter-close-between",
     "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n<parameter=days>\n2\n</parameter>\n"
     "</function>\n</tool_call>", TOOLS, "", [("get_weather", {"city": "Paris", "days": 2})]),
    ("truncated-after-value", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n",
     TOOLS, "", [("get_weather", {"city": "Paris"})]),
    ("truncated-mid-value", "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", TOOLS, "",
     [("get_weather", {"city": "Par"})]),
    ("truncated-mid-closing-tag", "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n</para", TOOLS, "",
     [("get_weather", {"days": 3})]),
    ("truncated-after-parameter-tag", "<tool_call>\n<function=get_weather>\n<parameter=city>", TOOLS, "",
     [("get_weather", {"city": ""})]),
    ("truncated-after-function-tag", "<tool_call>\n<function=get_weather>\n", TOOLS, "", [("get_weather", {})]),
    ("truncated-in-function-name", "Sure.\n<tool_call>\n<function=get_wea", TOOLS,
     "Sure.\n<tool_call>\n<function=get_wea", []),
    ("prose-mention-then-call", "I will use the <tool_call> tag now.\n\n" + PARIS, TOOLS,  # vLLM #58227
     "I will use the <tool_call> tag now.", [("get_weather", {"city": "Paris", "days": 2})]),
    ("prose-mention-only", "Wrap calls in <tool_call> and </tool_call>.", TOOLS,
     "Wrap calls in <tool_call> and </tool_call>.", []),
    ("nous-json-call-is-content", '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>', TOOLS,
     '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>', []),
    ("template-placeholder-name", "<tool_call>\n<function={{ tool.name }}>\n</function>\n</tool_call>", TOOLS,
     "<tool_call>\n<function={{ tool.name }}>\n</function>\n</tool_call>", []),
    ("bare-function",  # no <tool_call>: still a call, as in vLLM
     "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>", TOOLS, "",
     [("get_weather", {"city": "Paris"})]),
    ("bare-function-after-prose-with-stray-end",
     "Checking.\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>\nOK",
     TOOLS, "Checking.OK", [("get_weather", {"city": "Paris"})]),
    ("bare-function-mid-line-is-prose", "Write <function=get_weather> to call it.\nThen <function=x>", TOOLS,
     "Write <function=get_weather> to call it.\nThen <function=x>", []),
    ("bare-function-bad-name-is-prose", "<function=get weather>\n", TOOLS, "<function=get weather>\n", []),
    ("parameter-name-with-a-space", call("get_weather", ("my city", "Oslo")), TOOLS, "",
     [("get_weather", {"my city": "Oslo"})]),
    ("no-arguments", "<tool_call>\n<function=get_weather>\n</function>\n</tool_call>", TOOLS, "",
     [("get_weather", {})]),
    ("unknown-function", call("search", ("q", "42")), TOOLS, "", [("search", {"q": "42"})]),
    ("no-tools-in-request", call("get_weather", ("days", "2")), None, "", [("get_weather", {"days": "2"})]),
    ("unknown-parameter", call("get_weather", ("unit", "1"), ("days", "5")), TOOLS, "",
     [("get_weather", {"unit": "1", "days": 5})]),
    ("typed-values", call("typed", ("s", "42"), ("i", "-4"), ("n", "3.5"), ("b", "true"), ("o", '{"k": [1, null]}'),
                          ("a", '[1, "two", 3.5]'), ("ni", "7"), ("ns", "null"), ("e", "2"), ("any", "[1, 2]"),
                          ("u", "12"), ("f", "2"), ("d", '{"x": {}}')), TOOLS, "",
     [("typed", {"s": "42", "i": -4, "n": 3.5, "b": True, "o": {"k": [1, None]}, "a": [1, "two", 3.5], "ni": 7,
                 "ns": None, "e": 2, "any": [1, 2], "u": 12, "f": 2, "d": {"x": {}}})]),
    ("python-literals-from-history", call("typed", ("b", "True"), ("ni", "None"), ("ns", "None"), ("s", "None"),
                                          ("o", "{'a': True, 'b': None}"), ("a", "(1, 2)")), TOOLS, "",
     [("typed", {"b": True, "ni": None, "ns": None, "s": "None", "o": {"a": True, "b": None}, "a": [1, 2]})]),
    ("failed-typing-keeps-text", call("typed", ("i", "abc"), ("n", "nan"), ("b", "yes"), ("o", "not json"),
                                      ("a", "{}"), ("any", "plain words")), TOOLS, "",
     [("typed", {"i": "abc", "n": "nan", "b": "yes", "o": "not json", "a": {}, "any": "plain words"})]),
    ("number-forms", call("typed", ("n", "1e3"), ("i", "+7"), ("f", "-0.25"), ("u", " 9 ")), TOOLS, "",
     [("typed", {"n": 1000.0, "i": 7, "f": -0.25, "u": 9})]),
    ("multi-line-json-value", call("typed", ("o", '{\n  "a": 1,\n  "b": [\n    true\n  ]\n}')), TOOLS, "",
     [("typed", {"o": {"a": 1, "b": [True]}})]),
    ("string-keeps-inner-whitespace", call("typed", ("s", "  indented\n\nlines  \n")), TOOLS, "",
     [("typed", {"s": "  indented\n\nlines  \n"})]),
    ("code-with-literal-tags", call("write_file", ("path", "a.py"), ("content", CODE)), TOOLS, "",
     [("write_file", {"path": "a.py", "content": CODE})]),
    ("value-without-newlines", "<tool_call><function=get_weather><parameter=city>Paris</parameter></function>"
     "</tool_call>", TOOLS, "", [("get_weather", {"city": "Paris"})]),
    ("empty-value", call("get_weather", ("city", "")), TOOLS, "", [("get_weather", {"city": ""})]),
    ("duplicate-parameter", call("get_weather", ("city", "Paris"), ("city", "Rome"), ("days", "1")), TOOLS, "",
     [("get_weather", {"city": "Paris", "days": 1})]),
    ("stray-text-before-parameters", "<tool_call>\n<function=get_weather>\nhmm <b>\n<parameter=city>\nParis\n"
     "</parameter>\n</function>\n</tool_call>", TOOLS, "", [("get_weather", {"city": "Paris"})]),
    ("text-after-parameter-close-is-value",  # no tag after </parameter>: it was literal text
     call("get_weather", ("city", "Paris\n</parameter>\noops")), TOOLS, "",
     [("get_weather", {"city": "Paris\n</parameter>\noops"})]),
    ("text-after-call", PARIS + "\nDone.", TOOLS, "Done.", [("get_weather", {"city": "Paris", "days": 2})]),
    ("prose-between-calls", PARIS + "\nAnd also:\n" + ROME, TOOLS, "And also:",
     [("get_weather", {"city": "Paris", "days": 2}), ("get_weather", {"city": "Rome"})]),
    ("whitespace-around-calls", "\n\n" + PARIS + "\n\n \n" + ROME + "\n", TOOLS, "",
     [("get_weather", {"city": "Paris", "days": 2}), ("get_weather", {"city": "Rome"})]),
    ("missing-tool-call-close-between-calls",
     "<tool_call>\n<function=get_weather>\n</function>\n" + ROME, TOOLS, "",
     [("get_weather", {}), ("get_weather", {"city": "Rome"})]),
    ("missing-function-close", "<tool_call>\n<function=get_weather>\n<parameter=days>\n1\n</parameter>\n"
     "</tool_call>\n" + ROME, TOOLS, "", [("get_weather", {"days": 1}), ("get_weather", {"city": "Rome"})]),
    ("missing-function-close-next-function", "<tool_call>\n<function=get_weather>\n<parameter=days>\n1\n"
     "</parameter>\n<function=write_file>\n</function>\n</tool_call>", TOOLS, "",
     [("get_weather", {"days": 1}), ("write_file", {})]),
    ("unicode-and-escapes", call("get_weather", ("city", 'Zürich "Altstadt" \\ 東京 🌍\t')), TOOLS, "",
     [("get_weather", {"city": 'Zürich "Altstadt" \\ 東京 🌍\t'})]),
    ("template-rendered-example",  # docs/FORMAT.md §1: bools and None as the template renders them
     call("get_weather", ("city", "Paris"), ("days", "2"), ("opts", '{"units": "C"}'), ("flag", "True"),
          ("missing", "None")),
     [fn("get_weather", city={"type": "string"}, days={"type": "integer"}, opts={"type": "object"},
         flag={"type": "boolean"}, missing={"type": ["string", "null"]})], "",
     [("get_weather", {"city": "Paris", "days": 2, "opts": {"units": "C"}, "flag": True, "missing": None})]),
    ("plain-content", "The weather in Paris is sunny.\n\n", TOOLS, "The weather in Paris is sunny.\n\n", []),
    ("empty-output", "", TOOLS, "", []),
]


def counter_ids():
    count = itertools.count()
    return lambda: f"call_{next(count):024x}"


# -- clients' view of the stream ------------------------------------------------------------------------
def check_shape(deltas: list[dict]) -> None:
    """docs/FORMAT.md §4: header first (index, id, type, name, arguments ""), then index + arguments only;
    calls one after another; never a name or id twice."""
    seen: list[int] = []
    for d in deltas:
        assert isinstance(d["index"], int)
        if d["index"] not in seen:
            assert d["index"] == len(seen), "calls are numbered 0, 1, 2, ... in order"
            seen.append(d["index"])
            assert set(d) == {"index", "id", "type", "function"} and d["type"] == "function"
            assert re.fullmatch(r"call_[0-9a-f]{24}", d["id"])
            assert d["function"]["name"] and d["function"]["arguments"] == ""
            assert set(d["function"]) == {"name", "arguments"}
        else:
            assert d["index"] == seen[-1], "a call's deltas never come after the next call started"
            assert set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
            assert d["function"]["arguments"]


def assemble_sdk(deltas: list[dict]) -> list[dict]:
    """openai SDK `accumulate_delta`: merge by index, concatenate strings, overwrite index and type."""
    calls: dict[int, dict] = {}
    for d in deltas:
        acc = calls.setdefault(d["index"], {"function": {}})
        for key, value in d.items():
            if key == "function":
                for k, v in value.items():
                    acc["function"][k] = acc["function"].get(k, "") + v
            elif key in ("index", "type"):
                acc[key] = value
            else:
                acc[key] = acc.get(key, "") + value
    return [{"id": c["id"], "type": c["type"], "function": c["function"]} for _, c in sorted(calls.items())]


def assemble_qwen_agent(deltas: list[dict]) -> list[dict]:
    """Qwen-Agent `_chat_stream`: a new id starts a call (name and arguments must be strings), anything
    else is appended to the last call; index and type are ignored."""
    calls: list[dict] = []
    for d in deltas:
        f = d["function"]
        if d.get("id") and (not calls or calls[-1]["id"] != d["id"]):
            assert isinstance(f.get("name"), str) and isinstance(f.get("arguments"), str)
            calls.append({"id": d["id"], "type": "function", "function": {"name": f["name"], "arguments": ""}})
        calls[-1]["function"]["name"] += f.get("name", "") if not d.get("id") else ""
        calls[-1]["function"]["arguments"] += f.get("arguments", "")
    return calls


def stream_tools(chunks: list[str], tools) -> tuple[str, list[dict]]:
    parser = ToolCallParser(tools, id_factory=counter_ids())
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish()
    content = "".join(v for kind, v in events if kind == "content")
    return content, [v.to_openai() for kind, v in events if kind == "tool_call"]


def expected_calls(calls: list[tuple[str, dict]]) -> list[dict]:
    ids = counter_ids()
    return [{"id": ids(), "type": "function", "function": {"name": name, "arguments": json.dumps(args,
                                                                                              ensure_ascii=False)}}
            for name, args in calls]


@pytest.mark.parametrize("text, tools, content, calls", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case_whole_and_streamed(text, tools, content, calls):
    want = expected_calls(calls)
    got_content, got_calls = parse(text, tools, id_factory=counter_ids())
    assert (got_content, [c.to_openai() for c in got_calls]) == (content, want)
    for chunks in chunkings(text):
        streamed_content, deltas = stream_tools(chunks, tools)
        assert streamed_content == content, chunks
        check_shape(deltas)
        assert assemble_sdk(deltas) == want, chunks
        assert assemble_qwen_agent(deltas) == want, chunks


# Output cut by max_tokens (finish(truncated=True)): an open call keeps its partial arguments, and markup the cut
# left unfinished is dropped, never shown as content or inside a value.
TRUNCATED = [
    ("call-opened", "Sure.\n<tool_call>\n", "Sure.", None),
    ("start-tag-cut", "Sure.\n<tool_", "Sure.", None),
    ("function-name-cut", "Sure.\n<tool_call>\n<function=get_wea", "Sure.", None),
    ("value-then-closing-tag-cut", "<tool_call>\n<function=get_weather>\n<parameter=city>\n Paris\n</", "",
     '{"city": " Paris'),
    ("value-then-newline", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n", "",
     '{"city": "Paris'),
    ("typed-value-tag-cut", "<tool_call>\n<function=get_weather>\n<parameter=days>\n3\n</param", "",
     '{"days": 3'),
    ("end-tag-cut", "<tool_call>\n<function=get_weather>\n</function>\n</tool", "", "{}"),
    ("plain-text", "Hello <b>there", "Hello <b>there", None),
]


@pytest.mark.parametrize("text, content, arguments", [c[1:] for c in TRUNCATED], ids=[c[0] for c in TRUNCATED])
def test_truncated_output_drops_unfinished_markup(text, content, arguments):
    for chunks in chunkings(text):
        parser = ToolCallParser(TOOLS, id_factory=counter_ids())
        events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish(truncated=True)
        assert "".join(v for kind, v in events if kind == "content") == content, chunks
        assert [c.arguments for c in parser.calls] == ([] if arguments is None else [arguments]), chunks


# -- the combined parser (what the chat endpoint uses) -----------------------------------------------------
CHAT_CASES = [
    ("thinking-then-call", True, True, "Need weather.\n</think>\n\nLet me check.\n\n" + PARIS,
     "Need weather.", "Let me check.", [("get_weather", {"city": "Paris", "days": 2})]),
    ("call-before-end-tag", True, True, "Need weather.\n" + PARIS,
     "Need weather.", "", [("get_weather", {"city": "Paris", "days": 2})]),
    ("parse-tools-off-keeps-markup", True, False, "Need weather.\n</think>\n\n" + PARIS,
     "Need weather.", PARIS, []),
    ("parse-tools-off-call-before-end-tag", True, False, "Need weather.\n" + PARIS, "Need weather.", PARIS, []),
    ("nous-mode-json-call", True, False, 'Plan.\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {}}\n'
     "</tool_call>", "Plan.", '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', []),
    ("truncated-thinking", True, True, "Thinking about <tool_call> usage", "Thinking about <tool_call> usage", "",
     []),
    ("thinking-off-with-call", False, True, "Sure.\n\n" + ROME, None, "Sure.", [("get_weather", {"city": "Rome"})]),
    ("draft-call-in-thinking", True, True,  # vLLM parity: the first call ends the reasoning and is real
     "Draft:\n" + call("write_file") + "\nHmm no.\n</think>\n\n" + ROME, "Draft:", "Hmm no.",
     [("write_file", {}), ("get_weather", {"city": "Rome"})]),
    ("old-template-explicit-think", False, True, "<think>\nPlan.\n</think>\n\n" + ROME, "Plan.", "",
     [("get_weather", {"city": "Rome"})]),
]


def stream_chat(chunks: list[str], started: bool, parse_tools: bool) -> tuple[str, str, list[dict]]:
    parser = ChatOutputParser(started, TOOLS, parse_tools, id_factory=counter_ids())
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish()
    assert all(value for _, value in events), "no empty events"
    text = {kind: "".join(v for k, v in events if k == kind) for kind in ("reasoning", "content")}
    return text["reasoning"], text["content"], [v for kind, v in events if kind == "tool_call"]


@pytest.mark.parametrize("started, parse_tools, text, reasoning, content, calls", [c[1:] for c in CHAT_CASES],
                         ids=[c[0] for c in CHAT_CASES])
def test_chat_whole_and_streamed(started, parse_tools, text, reasoning, content, calls):
    want = expected_calls(calls)
    parser = ChatOutputParser(started, TOOLS, parse_tools, id_factory=counter_ids())
    assert parser.parse_all(text) == (reasoning, content, want)
    for chunks in chunkings(text):
        streamed_reasoning, streamed_content, deltas = stream_chat(chunks, started, parse_tools)
        assert (streamed_reasoning or None, streamed_content) == (reasoning, content), chunks
        check_shape(deltas)
        assert assemble_sdk(deltas) == want == assemble_qwen_agent(deltas), chunks


FUZZ_PIECES = ["<tool_call>", "</tool_call>", "<function=get_weather>", "<function=typed>", "<function=x y>",
               "</function>", "<parameter=city>", "<parameter=days>", "<parameter=o>", "</parameter>", "<think>",
               "</think>", "\n", "\n\n", " ", "Paris", "12", '{"a": 1}', "True", "<", "</", "<tool_", "</para",
               "<function=", "é🌍", '"\\', "text"]


@pytest.mark.parametrize("seed", range(4))
def test_random_markup_streams_like_whole(seed):
    """Random soups of tag pieces: any chunking agrees with `parse_all`, arguments are JSON objects."""
    rng = random.Random(seed)
    for _ in range(100):
        text = "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(0, 40)))
        started, parse_tools = rng.random() < 0.5, rng.random() < 0.8
        reasoning, content, calls = ChatOutputParser(started, TOOLS, parse_tools,
                                                     id_factory=counter_ids()).parse_all(text)
        assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)
        for _ in range(4):
            cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 30)))) if text else []
            chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            streamed_reasoning, streamed_content, deltas = stream_chat(chunks, started, parse_tools)
            assert (streamed_reasoning or None, streamed_content) == (reasoning, content), chunks
            check_shape(deltas)
            assert assemble_sdk(deltas) == calls == assemble_qwen_agent(deltas), chunks


def test_chat_finish_reason_and_reuse():
    parser = ChatOutputParser(True, TOOLS, True)
    assert parser.finish_reason("stop") == "stop"
    reasoning, content, calls = parser.parse_all("r\n</think>\n\n" + ROME)
    assert parser.finish_reason("stop") == "tool_calls"
    assert parser.finish_reason("length") == "length"
    assert re.fullmatch(r"call_[0-9a-f]{24}", calls[0]["id"])
    again = parser.parse_all("r\n</think>\n\n" + ROME)  # parse_all starts from a fresh state
    assert [c["function"] for c in again[2]] == [c["function"] for c in calls] and again[:2] == (reasoning, content)


def test_header_before_arguments_and_string_values_stream():
    parser = ToolCallParser(TOOLS, id_factory=counter_ids())
    assert parser.feed("Hi\n<tool_call>\n<function=write") == [("content", "Hi")]
    (kind, header), (_, args) = parser.feed("_file>\n<parameter=content>\nline one\n")
    assert kind == "tool_call" and header.to_openai()["function"] == {"name": "write_file", "arguments": ""}
    assert args.to_openai() == {"index": 0, "function": {"arguments": '{"content": "line one'}}  # "\n" held
    (_, args), = parser.feed("line two")  # a string value streams before its parameter closes
    assert args.to_openai() == {"index": 0, "function": {"arguments": "\\nline two"}}
    parser.feed("\n</parameter>\n<parameter=path>\na.txt\n</parameter>\n</function>\n</tool_call>")
    parser.finish()
    assert json.loads(parser.calls[0].arguments) == {"content": "line one\nline two", "path": "a.txt"}


def test_typed_value_waits_for_its_parameter_to_close():
    parser = ToolCallParser(TOOLS, id_factory=counter_ids())
    parser.feed("<tool_call>\n<function=get_weather>\n<parameter=days>\n12")
    assert parser.feed("3") == []
    assert parser.feed("\n</parameter>\n") == []  # literal text unless a tag (or the end) follows
    assert [e[1].arguments for e in parser.feed("</function>")] == ['{"days": 123}']


def test_unknown_function_warns(caplog):
    with caplog.at_level(logging.WARNING):
        parse(call("search", ("q", "x")), TOOLS)
    assert "search" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        parse(call("search", ("q", "x")), None)  # no tools in the request: nothing to check against
    assert not caplog.text


def test_default_ids_are_unique():
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)


@pytest.mark.parametrize("raw, schema, value", [
    ("5", None, "5"),
    ("5", {"type": "string"}, "5"),
    (" 5 ", {"type": "int"}, 5),
    ("5", {"type": "long"}, 5),
    ("2.5", {"type": "double"}, 2.5),
    ("inf", {"type": "number"}, "inf"),
    ("1e999", {"type": "number"}, "1e999"),
    ("FALSE", {"type": "bool"}, False),
    ("1", {"type": "boolean"}, True),
    ("null", {"type": "null"}, None),
    ("null", {"type": "string"}, "null"),
    ("NaN", {}, "NaN"),
    ("{}", {"type": ["object", "string"]}, {}),
    ("x", {"type": ["object", "string"]}, "x"),
    ('"{\'k\': 1}"', {"type": "object"}, {"k": 1}),
    ("[1, 2]", {"type": "list"}, [1, 2]),
    ("{1, 2}", {"type": "array"}, "{1, 2}"),
    ("3", {"oneOf": [{"type": "integer"}, {"type": "string"}]}, 3),
    ("a", {"enum": ["a", "b"]}, "a"),
    ("true", {"allOf": [{"type": "boolean"}]}, True),
    ("'\\d'", {}, "\\d"),
])
def test_coerce_value(raw, schema, value):
    assert coerce_value(raw, schema) == value


def test_nested_values_are_typed_by_sub_schemas():
    from qwen35.server.parsers.schema import coerce_value

    schema = {"type": "object", "properties": {
        "n": {"type": "integer"}, "flag": {"type": "boolean"}, "name": {"type": "string"},
        "pts": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}}}}}}
    got = coerce_value('{"n": "3", "flag": "true", "name": "7", "pts": [{"x": "1.5"}, {"x": 2}]}', schema)
    assert got == {"n": 3, "flag": True, "name": "7", "pts": [{"x": 1.5}, {"x": 2}]}
