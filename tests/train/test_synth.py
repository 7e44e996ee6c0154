"""The synthetic chat data: deterministic, renderable with the real template, right answers, tool calls that
round-trip through the server's parser and fit their schemas, and a held-out split training never asks."""

from __future__ import annotations

import collections
import json
import re

import pytest

from qwen35.server.parsers.tool_qwen import parse
from qwen35.tokenizer.chat_template import render_chat
from qwen35.tokenizer.tokenizer import DEFAULT_CHAT_TEMPLATE
from qwen35.train.synth import DEFAULT_MIX, generate, heldout, training
from qwen35.train.synth.catalogue import FILESYSTEM_TOOLS, TOOLS
from qwen35.train.synth.split import is_heldout
from qwen35.train.synth.tools import SCENARIOS

EQUATION = re.compile(r"^(\d+) ([-+x]) (\d+) = (\d+)(?:\.|。|입니다\.)$")
COLUMN = re.compile(r"^[a-z-]+: ((?:\d+[-+x]\d+=\d+, )*)(?:(\d)-(\d+)<0, )?(\d+)([-+x])(\d+)=(\d+), write (\d+)"
                    r"(?:, (carry|borrow) (\d))?$")
CARRY_OUT = re.compile(r"^[a-z-]+: carry (\d), write (\d)$")  # what a sum's or a product's last column carries
STEP = re.compile(r"^(\d+) ([x/]) (\d+) = (\d+)$")  # a conversion by a power of ten
FACTORS = {("km", "m"): 1000, ("m", "cm"): 100, ("cm", "mm"): 10, ("kg", "g"): 1000, ("L", "mL"): 1000,
           ("hour", "minute"): 60, ("minute", "second"): 60, ("day", "hour"): 24, ("foot", "inch"): 12}
SINGULAR = {"hours": "hour", "minutes": "minute", "seconds": "second", "days": "day", "feet": "foot",
            "inches": "inch"}


@pytest.fixture(scope="module")
def train_set():
    return training(3000)


@pytest.fixture(scope="module")
def heldout_set():
    return heldout(600)


def last_assistant(sample) -> dict:
    return sample.messages[-1]


def test_same_seed_same_samples_other_seed_others():
    assert generate(200, 5) == generate(200, 5)
    assert generate(200, 5) != generate(200, 6)


def test_kinds_thinking_and_languages_follow_the_mix(train_set):
    kinds = collections.Counter(s.kind for s in train_set)
    for kind, share in DEFAULT_MIX.items():
        assert abs(kinds[kind] / len(train_set) - share) < 0.03, kind
    assert abs(sum(s.thinking for s in train_set) / len(train_set) - 0.7) < 0.03
    arith = [s for s in train_set if s.kind == "arith"]
    assert abs(sum(s.lang == "en" for s in arith) / len(arith) - 0.8) < 0.05
    assert {s.lang for s in train_set} == {"en", "zh", "ko"}


def test_every_sample_renders_and_its_prompt_is_a_prefix(train_set, heldout_set):
    for sample in train_set[:1500] + heldout_set[:300]:
        text = sample.render()
        prompt = render_chat(DEFAULT_CHAT_TEMPLATE, sample.prompt_messages(), tools=sample.tools,
                             add_generation_prompt=True, enable_thinking=sample.thinking)
        assert text.startswith(prompt)
        assert sample.prompt_messages()[-1]["role"] == "user"
        if sample.answer is not None:
            assert sample.answer in last_assistant(sample)["content"]
        reasoning = [m["reasoning_content"] for m in sample.messages if m["role"] == "assistant"]
        assert all(reasoning) if sample.thinking else not any(reasoning)


def check_trace(trace: str, result: int) -> None:
    """Every column line is right, and the written digits read back as the result."""
    lines = trace.split("\n")
    assert lines[-1] == f"result: {result}"
    for step in filter(None, map(STEP.match, lines)):
        a, op, b, value = step.groups()
        assert (int(a) * int(b) if op == "x" else int(a) / int(b)) == int(value) == result
    writes = []
    columns = [line for line in lines if COLUMN.match(line)]
    for i, line in enumerate(columns):
        first, short, lower, x, op, y, value, write, carry_kind, carry = COLUMN.match(line).groups()
        steps = [*re.findall(r"(\d+)([-+x])(\d+)=(\d+)", first), (x, op, y, value)]
        multiply = steps[0][1] == "x"
        # every step has two operands; later columns take a carry, a product's digit by digit
        assert len(steps) == (3 if i and multiply else 2 if i else 1), line
        for a, o, b, v in steps:
            assert eval(f"{a}{o.replace('x', '*')}{b}") == int(v), line
        if i and multiply:
            (_, _, _, product), (digit, _, _, ones), (tens_digit, _, carried, tens) = steps
            assert (digit, int(tens_digit), int(carried)) == (product[-1], int(product) // 10, int(ones) // 10), line
            value = str(10 * int(tens) + int(ones) % 10)
        elif i:
            assert steps[0][3] in (steps[1][0], steps[1][2]), line  # the second step uses the first's value
        if op == "-":  # a column that borrows first says that its own digit is short: "2-3<0, 12-3=9"
            assert (short is not None) == (int(x) >= 10), line
            assert short is None or (int(short), lower) == (int(x) - 10, y) and int(short) < int(lower), line
        if op != "-":  # every column of a sum or a product writes one digit and carries the rest
            assert carry_kind == "carry" and (int(write), int(carry)) == (int(value) % 10, int(value) // 10), line
        elif i == len(columns) - 1:
            assert carry_kind is None and write == value, line
        else:
            assert (write, carry_kind, int(carry)) == (value, "borrow", int(int(x) >= 10)), line
        writes.append(write)
    if columns:
        carried = [m for line in lines if (m := CARRY_OUT.match(line))]
        assert len(carried) <= 1 and lines[-2] == (carried[0].string if carried else columns[-1])
        if op != "-":  # a last column's carry gets a line of its own, the same digit written
            assert [(m[1], m[2]) for m in carried] == ([(carry, carry)] if carry != "0" else [])
            writes += [m[1] for m in carried]
        assert int("".join(reversed(writes))) == result


def reply_and_trace(message: dict) -> tuple[str, str]:
    """An answer's closing reply and its trace: the reasoning, or with thinking off the working before the
    reply ("" when the answer came at once)."""
    working, _, reply = message["content"].rpartition("\n\n")
    trace = message["reasoning_content"].removeprefix("No tool fits this request, so I answer directly.\n")
    return reply, trace or working


def test_arithmetic_answers_and_traces_are_right(train_set):
    checked = collections.Counter()
    for sample in train_set:
        if sample.kind not in ("arith", "followup", "no_tool"):
            continue
        reply, trace = reply_and_trace(last_assistant(sample))
        match = EQUATION.match(reply)
        if sample.kind == "no_tool" and not match:
            continue
        a, op, b, result = match.groups()
        assert eval(f"{a} {op.replace('x', '*')} {b}") == int(result) == int(sample.answer)
        assert trace.split("\n")[0] == f"{a} {op} {b}"  # thinking off: worked out in the reply, one digit too
        check_trace(trace, int(result))
        checked[sample.thinking, max(int(a), int(b)) > 9] += 1
    assert checked[True, True] > 600 and checked[False, True] > 200 and checked[False, False] > 5, checked


def test_followups_start_from_the_previous_result(train_set):
    for sample in (s for s in train_set if s.kind == "followup"):
        first, second = (EQUATION.match(reply_and_trace(m)[0]) for m in sample.messages if m["role"] == "assistant")
        assert second.group(1) == first.group(4)


def test_conversions_are_right(train_set):
    for sample in (s for s in train_set if s.kind == "convert"):
        reply, trace = reply_and_trace(last_assistant(sample))
        check_trace(trace, int(sample.answer))
        if sample.lang != "en":
            continue
        q, source, result, target = re.match(r"^(\d+) (\w+) = (\d+) (\w+)\.$", reply).groups()
        source, target = SINGULAR.get(source, source), SINGULAR.get(target, target)
        if (source, target) in FACTORS:
            assert int(q) * FACTORS[source, target] == int(result) == int(sample.answer)
        else:
            assert int(result) * FACTORS[target, source] == int(q)


def matches_schema(value, schema: dict) -> bool:
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return False
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list) and all(matches_schema(v, schema.get("items", {})) for v in value)
    return kind is None or (kind == "object" and isinstance(value, dict))


def check_arguments(name: str, arguments: dict) -> None:
    parameters = TOOLS[name]["function"]["parameters"]
    assert set(parameters["required"]) <= set(arguments) <= set(parameters["properties"]), name
    for key, value in arguments.items():
        assert matches_schema(value, parameters["properties"][key]), (name, key, value)


def rendered_calls(sample) -> list[tuple[str, dict]]:
    """Every call the rendered assistant turns make, parsed back by the server's parser."""
    calls = []
    for turn in sample.render().split("<|im_start|>assistant\n")[1:]:
        content = turn.split("<|im_end|>")[0].split("</think>\n\n")[-1]
        _, parsed = parse(content, sample.tools)
        calls += [(call.name, json.loads(call.arguments)) for call in parsed]
    return calls


def test_tool_calls_round_trip_through_the_parser_and_fit_their_schemas(train_set, heldout_set):
    tool_samples = [s for s in train_set + heldout_set if s.kind == "tool"]
    for sample in tool_samples:
        expected = [(c["function"]["name"], c["function"]["arguments"])
                    for m in sample.messages for c in m.get("tool_calls", [])]
        assert rendered_calls(sample) == expected
        assert expected[0] == (sample.tool_call["name"], sample.tool_call["arguments"])
        offered = {tool["function"]["name"] for tool in sample.tools}
        for name, arguments in expected:
            assert name in offered
            check_arguments(name, arguments)
    assert any(len(s.tools) >= len(FILESYSTEM_TOOLS) for s in tool_samples)
    chains = [s for s in tool_samples if len(rendered_calls(s)) > 1]
    assert 0.05 < len(chains) / len(tool_samples) < 0.25


def test_samples_without_tool_use_make_no_call(train_set):
    for sample in (s for s in train_set if s.kind != "tool"):
        assert rendered_calls(sample) == []
        assert sample.tool_call is None
        assert (sample.tools is not None) == (sample.kind == "no_tool")


def task_key(sample) -> tuple | None:
    if sample.kind == "tool":
        call = sample.tool_call  # a call without arguments is keyed by its result (list_allowed_directories)
        what = call["arguments"] or next(m["content"] for m in sample.messages if m["role"] == "tool")
        return ("tool", call["name"], json.dumps(what, sort_keys=True, ensure_ascii=False))
    match = EQUATION.match(reply_and_trace(last_assistant(sample))[0])
    if sample.kind in ("arith", "followup", "no_tool") and match:
        a, op, b, _ = match.groups()
        return ("arith", int(a), op, int(b))
    return None


def test_heldout_tasks_never_appear_in_training(train_set, heldout_set):
    train_keys = {task_key(s) for s in train_set} - {None}
    heldout_keys = {task_key(s) for s in heldout_set} - {None}
    assert len(heldout_keys) > 200
    assert not any(is_heldout(key) for key in train_keys)
    assert all(is_heldout(key) for key in heldout_keys)
    train_questions = {s.prompt_messages()[-1]["content"] for s in train_set if s.kind == "arith"}
    assert not train_questions & {s.prompt_messages()[-1]["content"] for s in heldout_set if s.kind == "arith"}


def test_another_draw_asks_other_held_out_questions(heldout_set):
    other = heldout(600, draw=1)
    assert [s.messages for s in other] != [s.messages for s in heldout_set]
    assert all(is_heldout(s.task) for s in other if s.task)
    assert [s.messages for s in heldout(5, draw=1)] == [s.messages for s in heldout(5, draw=1)]


def test_samples_carry_the_task_key_their_split_was_drawn_by(train_set, heldout_set):
    for s in train_set + heldout_set:
        if task_key(s) is not None:  # the key read back from the text
            assert s.task == task_key(s), s.messages
    scored = [s for s in heldout_set if s.kind in ("arith", "convert", "followup", "tool")]
    assert all(s.task and is_heldout(s.task) for s in scored)
    assert len({s.task for s in scored}) < len(scored)  # some questions are asked more than once


def test_training_sees_every_tool_and_the_hard_ones_more_often(train_set, heldout_set):
    def shares(samples) -> collections.Counter:
        names = collections.Counter(s.tool_call["name"] for s in samples if s.kind == "tool")
        return collections.Counter({name: n / sum(names.values()) for name, n in names.items()})

    train, held = shares(train_set), shares(heldout_set)
    assert set(held) <= set(train)
    assert "filesystem-list_allowed_directories" in train  # an argument-free call is not held out always
    natural = {make.__name__: weight / sum(SCENARIOS.values()) for make, weight in SCENARIOS.items()}
    unboosted = train["get_weather"] / natural["weather"]  # boosts elsewhere shrink every other share
    for name, make in (("filesystem-list_directory", "listing"), ("filesystem-move_file", "move"),
                       ("send_email", "email")):
        assert train[name] / natural[make] > 1.5 * unboosted  # training only: TRAINING_BOOST


def test_a_head_read_replies_with_its_lines_in_a_fence(train_set):
    heads = [s for s in train_set if s.kind == "tool" and "head" in s.tool_call["arguments"]]
    assert len(heads) >= 5
    for s in heads:
        lines = s.messages[-2]["content"]  # the tool's result
        assert len(lines.split("\n")) == s.tool_call["arguments"]["head"]
        assert s.messages[-1]["content"].endswith(f"\n```\n{lines}\n```")


def test_fact_drills_answer_without_tools():
    drills = generate(200, 4, mix={"facts": 1.0})
    assert all(s.tools is None and s.kind == "facts" and rendered_calls(s) == [] for s in drills)
    answered = [s for s in drills if s.answer]
    assert answered and all(s.answer in last_assistant(s)["content"] for s in answered)


def test_copy_drills_repeat_the_request_text():
    drills = generate(300, 3, mix={"echo": 1.0})
    for sample in drills:
        reply = last_assistant(sample)["content"]
        assert reply == sample.answer and reply in sample.prompt_messages()[-1]["content"]
        assert sample.tools is None and rendered_calls(sample) == []
    assert len({s.answer for s in drills}) > 200
    random_like = r"[0-9A-Za-z._-]{3,12}|[\u4e00-\u9fff\uac00-\ud7a3]{2,8}"
    scrambled = [s.answer for s in drills if re.fullmatch(random_like, s.answer)]
    # half repeat a random string; some names match the pattern too (a sixth of the drills with no random
    # strings at all), so the bound sits between a sixth and two thirds of the 300
    assert len(scrambled) > 100
    assert {s.lang for s in drills} == {"en", "zh", "ko"}


def test_training_asks_for_tools_in_chinese_and_korean_more_often_than_the_heldout_set():
    def share(samples):
        tool_chats = [s for s in samples if s.kind == "tool"]
        return sum(s.lang != "en" for s in tool_chats) / len(tool_chats)

    assert share(training(3000)) > 0.33 and share(heldout(3000)) < 0.25


def test_generation_is_fast():
    import time

    start = time.perf_counter()
    training(10_000)
    assert time.perf_counter() - start < 5.0


def tool_results(samples, name: str) -> list[tuple[dict, str]]:
    """(the call's arguments, the tool's result) of every sample whose first call is `name`."""
    return [(s.tool_call["arguments"], next(m["content"] for m in s.messages if m["role"] == "tool"))
            for s in samples if s.kind == "tool" and s.tool_call["name"] == name]


def test_training_results_cannot_be_guessed_from_the_request():
    """Training shows listings and search hits unsorted and translations that are not the phrase's (the
    stand-ins of synth/tools.py); the held-out set keeps what the tools return: sorted, faithful."""
    from qwen35.train.synth.api_calls import LANGUAGES, PHRASES

    def names(result: str) -> list[str]:  # "[FILE] a.txt" -> "a.txt", "/tmp/x/docs/a.txt" -> "a.txt"
        return [line.split("] ", 1)[-1].rsplit("/", 1)[-1] for line in result.splitlines()]

    def sorted_share(samples, name: str) -> float:
        results = [names(r) for _, r in tool_results(samples, name) if len(r.splitlines()) > 1]
        return sum(r == sorted(r) for r in results) / len(results)

    more_train, more_heldout = training(5000), heldout(3000)  # enough listings, searches and translations
    for name in ("filesystem-list_directory", "filesystem-search_files"):
        assert sorted_share(more_heldout, name) == 1.0
        assert sorted_share(more_train, name) < 0.6

    def faithful_share(samples) -> float:
        pairs = tool_results(samples, "translate")
        local = {zh: en for en, (zh, ko) in LANGUAGES.items()} | {ko: en for en, (zh, ko) in LANGUAGES.items()}
        right = [json.loads(r)["translation"] == PHRASES[a["text"]][list(LANGUAGES).index(
            local.get(a["target_language"], a["target_language"]))] for a, r in pairs]
        return sum(right) / len(right)

    assert faithful_share(more_heldout) == 1.0
    assert 0.3 < faithful_share(more_train) < 0.8


def header(sample) -> str:
    """The rendered text before the first user turn: the system message that lists the tools."""
    text = sample.render()
    return text[:text.index("<|im_start|>user")]


def test_tool_siblings_share_a_header_and_ask_for_its_tools_or_none():
    from qwen35.train.recipe import DEMO_MIX
    from qwen35.train.synth.no_tool import NEVER_OFFERED

    assert generate(300, 2, tool_siblings=1) == generate(300, 2)
    samples = generate(3000, 2, mix=dict(DEMO_MIX), tool_siblings=4)
    assert len(samples) == 3000
    with_tools = [s for s in samples if s.tools]
    groups = collections.Counter(header(s) for s in with_tools)
    assert len(groups) < 0.5 * len(with_tools)  # 0.77 without siblings, 0.33 with
    for sample in with_tools:
        calls = rendered_calls(sample)
        assert (sample.kind == "tool") == bool(calls)
        assert all(name in offered_names(sample) for name, _ in calls)
        if sample.kind == "no_tool" and sample.answer:
            assert sample.answer in last_assistant(sample)["content"]
    # siblings that answer directly never come with a tool that could have answered them (NO_TOOL's
    # NEVER_OFFERED): a sum never with code_interpreter
    sums = [s for s in with_tools if s.kind == "no_tool" and task_key(s) is not None]
    assert len(sums) > 20 and not any(NEVER_OFFERED["arith"] & offered_names(s) for s in sums)
    assert not any(is_heldout(task_key(s)) for s in samples if task_key(s) is not None)


def offered_names(sample) -> set[str]:
    return {tool["function"]["name"] for tool in sample.tools}
