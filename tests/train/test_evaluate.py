"""The demo model's evaluation: scoring rules on hand-made replies, the tool stages on a scripted server, and one
real `qwen35 serve` (random tiny checkpoint, junk replies) driven end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from qwen35.cli import main
from qwen35.train import evaluate as ev
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
    task: tuple = ()

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


# ---- one sample's stages on a scripted server -----------------------------------------------------------

class Scripted:
    """Stands in for the server: the replies to give in order, and the requests it was sent."""

    def __init__(self, *replies):
        self.replies, self.sent = list(replies), []

    def __call__(self, outcome, messages, tools, thinking):
        self.sent.append((json.loads(json.dumps(messages)), tools, thinking))
        outcome.requests += 1
        out = self.replies.pop(0)
        if isinstance(out, Exception):
            raise out
        outcome.content, outcome.finish = out.get("content"), out.pop("finish_reason", "stop")
        return out


def test_a_tool_sample_feeds_the_tool_result_after_the_models_own_call():
    ask = Scripted(reply(calls=[("get_weather", {"city": "Paris", "unit": "celsius"})]),
                   reply("It is 21 degrees."))
    o = ev.score_sample(ask, 0, WEATHER_SAMPLE)
    assert (o.valid_call, o.args_exact, o.final_ok, o.reasoning, o.requests) == (True, False, True, False, 2)
    history = ask.sent[1][0]
    assert history[0] == user("Weather in Paris?")
    assert history[1]["role"] == "assistant" and history[1]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}  # the model's call, not ours
    assert history[2] == tool_msg("get_weather", '{"temp": 21}')
    assert all(tools == [TIMER, WEATHER] and thinking is False for _, tools, thinking in ask.sent)


def test_a_chain_asks_once_per_call():
    ask = Scripted(reply(reasoning="write, then read", calls=[("write_file", {"path": "a.txt", "content": "hi"})]),
                   reply(calls=[("read_file", {"path": "a.txt"})]), reply("a.txt contains: hi"))
    o = ev.score_sample(ask, 3, CHAIN)
    assert (o.valid_call, o.args_exact, o.final_ok, o.reasoning, o.requests) == (True, True, True, True, 3)
    last = ask.sent[2][0]
    assert [m["role"] for m in last] == ["user", "assistant", "tool", "assistant", "tool"]
    assert last[1]["reasoning_content"] == "write, then read"
    assert last[4] == tool_msg("read_file", "hi")
    # answering before the chain is done, or calling again at the end, fails stage 2
    assert not ev.score_sample(Scripted(reply(calls=[("write_file", {"path": "a.txt", "content": "hi"})]),
                                        reply("done")), 3, CHAIN).final_ok
    assert not ev.score_sample(Scripted(reply(calls=[("write_file", {"path": "a.txt", "content": "hi"})]),
                                        reply(calls=[("read_file", {"path": "a.txt"})]),
                                        reply("hi", calls=[("read_file", {"path": "a.txt"})])), 3, CHAIN).final_ok


def test_stage_two_runs_after_an_invalid_call_but_no_call_ends_the_sample():
    o = ev.score_sample(Scripted(reply(calls=[("get_weather", {"town": "Paris"})]), reply("21 degrees")), 0,
                        WEATHER_SAMPLE)
    assert (o.valid_call, o.final_ok, o.requests) == (False, True, 2) and "missing required 'city'" in o.note
    o = ev.score_sample(Scripted(reply("It is 21 degrees.")), 0, WEATHER_SAMPLE)
    assert (o.valid_call, o.final_ok, o.requests) == (False, False, 1)


def test_a_call_cut_off_by_max_tokens_fails_without_being_sent_back():
    """The server keeps a cut-off call's partial arguments (not valid JSON): no tool result is sent for them."""
    cut = reply(calls=[("get_weather", {"city": "Paris"})]) | {"finish_reason": "length"}
    o = ev.score_sample(Scripted(cut), 0, WEATHER_SAMPLE)
    assert (o.final_ok, o.requests, o.finish, o.error) == (False, 1, "length", None)


def test_answers_no_tool_and_reasoning():
    o = ev.score_sample(Scripted(reply("347 + 589 = 936.", "ones: ...")), 0, ARITH)
    assert (o.answer_ok, o.reasoning, o.valid_call, o.no_call) == (True, True, None, None)
    o = ev.score_sample(Scripted(reply("12 x 3 = 36.")), 1, NO_TOOL)
    assert (o.answer_ok, o.no_call, o.reasoning) == (True, True, False)
    o = ev.score_sample(Scripted(reply("36", calls=[("set_timer", {"minutes": 36})])), 1, NO_TOOL)
    assert (o.answer_ok, o.no_call) == (True, False)


def test_smalltalk_is_the_reference_reply_whole():
    o = ev.score_sample(Scripted(reply("你好！\n", "greet")), 2, SMALLTALK)
    assert (o.smalltalk_ok, o.answer_ok, o.expected, o.failed) == (True, None, "你好！", [])
    o = ev.score_sample(Scripted(reply("不客气！你好！", "thanks")), 2, SMALLTALK)  # another intent's reply
    assert o.smalltalk_ok is False and o.failed == ["smalltalk"] and "expected: '你好！'" in o.describe()


def test_a_failed_request_fails_its_sample_and_is_noted():
    o = ev.score_sample(Scripted(TimeoutError("read timed out")), 0, WEATHER_SAMPLE)
    assert (o.valid_call, o.args_exact, o.final_ok, o.reasoning) == (False, False, False, None)
    assert o.error == "TimeoutError: read timed out"
    o = ev.score_sample(Scripted(reply(calls=[("get_weather", {"city": "Paris"})]), ConnectionError("reset")), 0,
                        WEATHER_SAMPLE)
    assert (o.valid_call, o.final_ok, o.reasoning) == (True, False, False) and o.error.startswith("ConnectionError")


def test_failed_samples_are_described_with_request_expectation_and_reply():
    bad = ev.score_sample(Scripted(reply(calls=[("get_weather", {"town": "Paris"})]), reply("It is sunny.")), 4,
                          WEATHER_SAMPLE)
    good = ev.score_sample(Scripted(reply("347 + 589 = 936.", "ones: ...")), 5, ARITH)
    assert bad.failed == ["tool"] and good.failed == []
    text = bad.describe()
    assert text.splitlines()[0] == "#4 tool/en/no_think get_weather: failed tool"
    assert "asked:    'Weather in Paris?'" in text and "expected: '21'" in text and "'It is sunny.'" in text
    assert "missing required 'city'" in text and """called:   get_weather {"town": "Paris"}""" in text
    errored = ev.score_sample(Scripted(TimeoutError("read timed out")), 6, ARITH)
    assert errored.failed == ["answer", "error"] and "error: TimeoutError: read timed out" in errored.describe()
    report = ev.Report("m", ev.summarize([bad, good]), [bad, good], 1.0, 10)
    assert report.failures() == bad.describe()
    assert ev.Report("m", ev.summarize([good]), [good], 1.0, 10).failures() == ""


def test_summary_counts_and_order():
    outcomes = [ev.score_sample(Scripted(*replies), i, s) for i, (s, replies) in enumerate([
        (ARITH, [reply("= 936", "trace")]),
        (ARITH, [reply("= 935", "trace")]),
        (NO_TOOL, [reply("36")]),
        (WEATHER_SAMPLE, [reply(calls=[("get_weather", {"city": "Paris"})]), reply("21")]),
        (SMALLTALK, [TimeoutError("slow")]),
    ])]
    spec = {"drafts": 10, "draft_tokens": 20, "accepted": 9, "per_pos": [7, 2]}
    m = ev.summarize(outcomes, spec)
    got = {k: (r.num, r.den) for k, r in m.items()}
    # the two ARITH samples are one task, which fails as one of them does
    assert got == {"answer": (2, 3), "answer/by_task": (1, 2), "answer/think": (1, 2), "answer/no_think": (1, 1),
                   "answer/arith/think": (1, 2), "answer/no_tool/no_think": (1, 1),
                   "tool": (1, 1), "tool/by_task": (1, 1), "tool/valid_call": (1, 1), "tool/args_exact": (1, 1),
                   "tool/final_answer": (1, 1),
                   "tool/get_weather": (1, 1), "no_tool": (1, 1), "smalltalk": (0, 1), "smalltalk/think": (0, 1),
                   "reasoning/think": (2, 2),
                   "reasoning/no_think": (0, 2),
                   "mtp/pos0": (7, 10), "mtp/pos1": (2, 10), "mtp/accepted_per_draft": (9, 10), "errors": (1, 5)}
    assert list(m)[:3] == ["answer", "answer/by_task", "answer/think"] and list(m)[-1] == "errors"
    report = ev.Report("demo", m, outcomes, 2.0, 100, targets=ev.TARGETS["demo"])
    table = report.table()
    assert "mtp/pos0                       0.700        7/10  >= 0.6 pass" in table
    assert "tool                           1.000         1/1  >= 0.95 pass" in table
    assert "answer                         0.667         2/3  >= 0.95 FAIL" in table
    assert "5 samples, 100 completion tokens in 2.0 s (50.0 tok/s)" in table
    d = json.loads(json.dumps(report.to_dict()))
    assert d["metrics"]["answer"] == {"num": 2, "den": 3, "value": 2 / 3}
    assert {"metric": "reasoning/no_think", "op": "<=", "value": 0.0, "measured": 0.0, "pass": True} in d["targets"]
    assert [s["index"] for s in d["samples"]] == [0, 1, 2, 3, 4] and d["samples"][4]["error"] == "TimeoutError: slow"


def test_spec_counters_from_a_metrics_page():
    page = "\n".join([
        "# HELP vllm:spec_decode_num_drafts_total Verification rounds with drafts",
        "# TYPE vllm:spec_decode_num_drafts_total counter",
        "vllm:spec_decode_num_drafts_total 40.0",
        "vllm:spec_decode_num_draft_tokens_total 80.0",
        "vllm:spec_decode_num_accepted_tokens_total 30.0",
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{position="1"} 8.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 22.0',
        "qwen35_generation_tokens_total 170.0"])
    assert ev.spec_counters(page) == {"drafts": 40, "draft_tokens": 80, "accepted": 30, "per_pos": [22, 8]}
    assert ev.spec_counters("qwen35_generation_tokens_total 170.0") is None
    before = {"drafts": 10, "draft_tokens": 20, "accepted": 5, "per_pos": [4, 1]}
    assert ev._delta(ev.spec_counters(page), before) == {"drafts": 30, "draft_tokens": 60, "accepted": 25,
                                                         "per_pos": [18, 7]}


# ---- a real server ----------------------------------------------------------------------------------------

SERVE = ["--dtype", "float32", "--max-model-len", "1024", "--kv-cache-memory", "64MB"]


@pytest.mark.slow  # 12 s: a real server in a subprocess; the scoring itself is tested above without one
def test_run_eval_end_to_end(tiny_ckpt):
    broken = Sample("arith", [{"role": "robot", "content": "1 + 1?"}, user("1 + 1?"), assistant("2")], None, False,
                    "2", None)
    samples = [ARITH, WEATHER_SAMPLE, broken, NO_TOOL, SMALLTALK]
    report = ev.run_eval(tiny_ckpt, samples, mtp_tokens=2, concurrency=3, max_tokens=12, serve_args=SERVE)
    assert [o.index for o in report.outcomes] == [0, 1, 2, 3, 4]
    assert [o.kind for o in report.outcomes] == [s.kind for s in samples]
    assert report.outcomes[2].error and "BadRequestError" in report.outcomes[2].error  # a 400, counted and noted
    assert report.metrics["errors"].num == 1 and report.metrics["errors"].den == 5
    assert report.metrics["answer"].den == 3 and report.metrics["tool"].den == 1 and report.metrics["no_tool"].den == 1
    assert report.metrics["reasoning/think"].den == 2 and report.metrics["reasoning/no_think"].den == 2
    assert report.metrics["mtp/pos0"].den > 0 and "mtp/pos1" in report.metrics  # drafts from the MTP head
    ok = [o for o in report.outcomes if o.error is None]
    assert all(o.requests >= 1 and o.completion_tokens > 0 for o in ok)
    assert report.completion_tokens == sum(o.completion_tokens for o in report.outcomes) > 0
    assert report.startup_s > 0 and report.wall_s > 0 and report.tokens_per_s > 0
    assert [t.metric for t in report.targets] == [t.metric for t in ev.TARGETS["demo"]]
    json.dumps(report.to_dict())


def test_a_server_that_cannot_start_is_a_clear_error(tmp_path):
    with pytest.raises(ev.EvalError, match=r"(?s)exited with status 2 before it was ready.*server stderr.*absent"):
        ev.run_eval(tmp_path / "absent", [ARITH])


def test_cli_prints_the_report_and_writes_json(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run_eval(model, samples, **kwargs):
        seen.update(model=model, n=len(samples), **kwargs)
        outcomes = [ev.score_sample(Scripted(reply("= 936")), 0, ARITH),
                     ev.score_sample(Scripted(reply("= 937")), 1, ARITH)]
        return ev.Report("m", ev.summarize(outcomes), outcomes, 1.0, 10, 2.0, ev.TARGETS["demo"])

    draws = []
    monkeypatch.setattr(ev, "heldout_samples", lambda recipe, n, draw: draws.append(draw) or [ARITH] * n)
    monkeypatch.setattr(ev, "run_eval", fake_run_eval)
    out = tmp_path / "report.json"
    assert main(["eval", "ckpt", "--samples", "7", "--json", str(out), "--port", "8123", "--mtp-tokens", "1",
                 "--serve-flags", "--device cuda", "--draw", "3"]) == 0
    assert seen["model"] == "ckpt" and seen["n"] == 7 and seen["port"] == 8123 and seen["mtp_tokens"] == 1
    assert draws == [3]
    assert seen["serve_args"] == ["--device", "cuda"] and seen["recipe_name"] == "demo"
    printed = capsys.readouterr().out
    assert "answer                         0.500         1/2  >= 0.95 FAIL" in printed
    assert "failed samples" not in printed
    assert "mtp/pos0" in printed and "n/a" in printed  # a target with nothing measured
    written = json.loads(out.read_text())
    assert written["metrics"]["answer"]["value"] == 0.5 and written["samples"][1]["expected"] == ARITH.answer
    assert main(["eval", "ckpt", "--samples", "2", "--failures"]) == 0 and draws == [3, 0]
    printed = capsys.readouterr().out
    assert "failed samples:\n#1 arith/" in printed and "replied:  '= 937'" in printed and "#0 " not in printed

    def failing(*args, **kwargs):
        raise ev.EvalError("the server exited with status 2 before it was ready")

    monkeypatch.setattr(ev, "run_eval", failing)
    assert main(["eval", "ckpt", "--samples", "1"]) == 1
    assert "qwen35 eval: error: the server exited" in capsys.readouterr().err


# ---- the held-out set itself -------------------------------------------------------------------------------

class Oracle:
    """Replies with the sample's own reference turns: the next assistant turn after what was sent."""

    def __init__(self, sample):
        self.sample = sample

    def __call__(self, outcome, messages, tools, thinking):
        outcome.requests += 1
        turns = [m for m in self.sample.messages[len(self.sample.prompt_messages()):] if m["role"] == "assistant"]
        sent = sum(m["role"] == "assistant" for m in messages[len(self.sample.prompt_messages()):])
        ref = turns[sent]
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in ref.get("tool_calls") or ()]
        out = reply(ref["content"], ref.get("reasoning_content") or None, calls)
        outcome.content = out["content"]
        return out


def test_the_reference_answers_of_the_heldout_set_score_full_marks():
    """The scoring rules and the synthetic data agree: the reference conversations pass every check."""
    synth = pytest.importorskip("qwen35.train.synth")
    samples = synth.heldout(300)
    outcomes = [ev.score_sample(Oracle(s), i, s) for i, s in enumerate(samples)]
    failed = [(o.kind, o.note, o.content, s.answer) for o, s in zip(outcomes, samples)
              if False in (o.answer_ok, o.valid_call, o.args_exact, o.final_ok, o.no_call)]
    assert not failed
    m = ev.summarize(outcomes)
    assert m["reasoning/think"].value == 1.0 and m["reasoning/no_think"].value == 0.0
    assert m["answer"].den > 50 and m["tool"].den > 30 and m["no_tool"].den > 10


def test_the_server_an_eval_starts_dies_with_it(tmp_path):
    """However the eval ends (SIGKILL included), the `qwen35 serve` it started does not outlive it, holding its
    port: the child arms a parent-death signal itself (`QWEN35_DIE_WITH_PARENT`, no preexec_fn)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "pid"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import os, subprocess, sys, time
from qwen35.cli import DIE_WITH_PARENT
arm = "from qwen35.cli import die_with_parent; die_with_parent(); import time; time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", arm], env={{**os.environ, DIE_WITH_PARENT: str(os.getpid())}})
time.sleep(3)  # the child has armed its signal (what ServerProcess.start does, the server's main() arms)
open({str(pid_file)!r}, "w").write(str(child.pid))
time.sleep(60)
"""])
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pid_file.read_text())
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # dead, waiting to be reaped by init
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the child outlived its parent")
    finally:
        holder.kill()
