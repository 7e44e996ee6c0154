"""The demo model's evaluation: scoring rules on hand-made replies."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from qwen35.train.scoring import answer_matches, check_call, has_reasoning, last_number, schema_errors


@dataclass(frozen=True)
class Sample:
    """The interface of `qwen35.train.synth.Sample` that the evaluation reads."""

    kind: str
    messages: list[dict]
    tools: list[dict] | None
    thinking: bool
    answer: str | None
    tool_call: dict | None
    lang: str = "en"

    def prompt_messages(self) -> list[dict]:
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "user")
        return self.messages[:last + 1]


def _tool(name: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": name,
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}}}


WEATHER = _tool("get_weather", {"city": {"type": "string"}, "unit": {"type": "string",
                                                                       "enum": ["celsius", "fahrenheit"]}}, ["city"])
TIMER = _tool("set_timer", {"minutes": {"type": "integer"}}, ["minutes"])
CURRENCY = _tool("convert_currency", {"amount": {"type": "number"}, "to": {"type": "string"}}, ["amount", "to"])
READ = _tool("read_file", {"path": {"type": "string"}}, ["path"])
WRITE = _tool("write_file", {"path": {"type": "string"}, "content": {"type": "string"}}, ["path", "content"])
FILES = _tool("read_multiple_files", {"paths": {"type": "array", "items": {"type": "string"}}}, ["paths"])


def user(text):
    return {"role": "user", "content": text}


def assistant(content, reasoning="", calls=()):
    msg = {"role": "assistant", "content": content, "reasoning_content": reasoning}
    if calls:
        msg["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
    return msg


def tool_msg(name, content):
    return {"role": "tool", "name": name, "content": content}


def reply(content="", reasoning=None, calls=()):
    """A reply's message as `model_dump()` gives it (arguments as JSON text)."""
    return {"role": "assistant", "content": content, "reasoning_content": reasoning,
            "tool_calls": [{"id": f"call_{i}", "type": "function",
                            "function": {"name": n, "arguments": a if isinstance(a, str) else json.dumps(a)}}
                           for i, (n, a) in enumerate(calls)] or None}


PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
ARITH = Sample("arith", [user("What is 347 + 589?"), assistant("347 + 589 = 936.", "trace")], None, True, "936", None)
WEATHER_SAMPLE = Sample("tool", [user("Weather in Paris?"), assistant("", "", [("get_weather", {"city": "Paris"})]),
                                 tool_msg("get_weather", '{"temp": 21}'), assistant("It is 21 degrees in Paris.")],
                        [TIMER, WEATHER], False, "21", PARIS)
CHAIN = Sample("tool", [user("Write hi to a.txt and read it back."),
                        assistant("", "", [("write_file", {"path": "a.txt", "content": "hi"})]),
                        tool_msg("write_file", "Successfully wrote to a.txt"),
                        assistant("", "", [("read_file", {"path": "a.txt"})]), tool_msg("read_file", "hi"),
                        assistant("a.txt now contains: hi")],
               [WRITE, READ], True, "hi", {"name": "write_file", "arguments": {"path": "a.txt", "content": "hi"}})
NO_TOOL = Sample("no_tool", [user("What is 12 x 3?"), assistant("12 x 3 = 36.")], [TIMER], False, "36", None)
SMALLTALK = Sample("smalltalk", [user("你好"), assistant("你好！", "greet")], None, True, None, None, "zh")


# ---- scoring a reply --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,number", [
    ("347 + 589 = 936.", "936"),
    ("The answer is 1,234,567 km.", "1234567"),
    ("12.5 x 2 = 25.0", "25.0"),
    ("600-123 = 477。", "477"),
    ("7 小时 = 420 分钟。", "420"),
    ("7시간은 420분입니다.", "420"),
    ("0 - 5 = -5", "-5"),
    ("3, 4 and 5", "5"),
    ("1,2345", "2345"),
    ("no numbers here", None),
    (None, None),
])
def test_last_number(text, number):
    assert last_number(text) == number


def test_answer_matches_the_last_number_exactly():
    assert answer_matches("347 + 589 = 936.", "936")
    assert answer_matches("That is 1,200 m.", "1200")
    assert not answer_matches("936, or maybe 937", "936")  # the last number counts
    assert not answer_matches("9360", "936") and not answer_matches("936.5", "936")
    assert not answer_matches("", "936")
    assert answer_matches("The capital of Japan is Tokyo.", "Tokyo")  # not a number: contained
    assert not answer_matches("The capital of Japan is Kyoto.", "Tokyo") and not answer_matches(None, "Tokyo")


@pytest.mark.parametrize("args,errors", [
    ({"city": "Paris"}, []),
    ({"city": "Paris", "unit": "celsius"}, []),
    ({"unit": "celsius"}, ["arguments: missing required 'city'"]),
    ({"city": "Paris", "unit": "kelvin"}, ['arguments.unit: "kelvin" is not one of ["celsius", "fahrenheit"]']),
    ({"city": 3}, ["arguments.city: expected string, got 3"]),
])
def test_schema_errors(args, errors):
    assert schema_errors(args, WEATHER["function"]["parameters"]) == errors


def test_schema_types_integer_number_boolean_array():
    minutes = TIMER["function"]["parameters"]
    assert schema_errors({"minutes": 5}, minutes) == []
    assert schema_errors({"minutes": 5.0}, minutes) == ["arguments.minutes: expected integer, got 5.0"]
    assert schema_errors({"minutes": "5"}, minutes) == ['arguments.minutes: expected integer, got "5"']
    assert schema_errors({"minutes": True}, minutes) == ["arguments.minutes: expected integer, got true"]
    amount = CURRENCY["function"]["parameters"]
    assert schema_errors({"amount": 5, "to": "EUR"}, amount) == []
    assert schema_errors({"amount": 5.5, "to": "EUR"}, amount) == []
    paths = FILES["function"]["parameters"]
    assert schema_errors({"paths": ["a", "b"]}, paths) == []
    assert schema_errors({"paths": ["a", 2]}, paths) == ["arguments.paths[1]: expected string, got 2"]
    assert schema_errors({"x": 1}, {"type": "object", "additionalProperties": False}) == ["arguments: unexpected 'x'"]


def test_check_call():
    tools = [TIMER, WEATHER]
    ok = check_call(reply(calls=[("get_weather", {"city": "Paris"})]), tools, PARIS)
    assert ok.valid and ok.exact and ok.why == ""
    other = check_call(reply(calls=[("get_weather", {"city": "Paris", "unit": "celsius"})]), tools, PARIS)
    assert other.valid and not other.exact  # valid call of the right tool, arguments not the expected ones
    for message, why in [
        (reply("It is sunny."), "0 tool calls"),
        (reply(calls=[("get_weather", {"city": "Paris"})] * 2), "2 tool calls"),
        (reply(calls=[("set_timer", {"minutes": 3})]), "called 'set_timer', expected 'get_weather'"),
        (reply(calls=[("get_weather", "{city: Paris")]), "arguments are not JSON"),
        (reply(calls=[("get_weather", "[1]")]), "arguments are not a JSON object"),
        (reply(calls=[("get_weather", {})]), "missing required 'city'"),
    ]:
        check = check_call(message, tools, PARIS)
        assert not check.valid and not check.exact and why in check.why
    assert "was not offered" in check_call(reply(calls=[("get_weather", {"city": "Paris"})]), [TIMER], PARIS).why
    integer = check_call(reply(calls=[("set_timer", {"minutes": 5.0})]), tools,
                         {"name": "set_timer", "arguments": {"minutes": 5}})
    assert not integer.valid and not integer.exact  # equal by value, but not an integer


def test_has_reasoning():
    assert has_reasoning({"reasoning_content": "347 + 589 ..."})
    assert has_reasoning({"reasoning": "vLLM's name"})
    assert not has_reasoning({"reasoning_content": None}) and not has_reasoning({"reasoning_content": " \n"})
    assert not has_reasoning({})
