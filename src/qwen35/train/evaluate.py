"""`qwen35 eval`: score a trained checkpoint on held-out synthetic chats, through the OpenAI-compatible server.

`evaluate` drives a running server with the openai client (greedy, a max_tokens bound, a per-request timeout,
a few requests at a time); `run_eval` starts `qwen35 serve` in a subprocess with MTP drafting, evaluates, and
stops it. The scores depend only on the replies, and are gathered in sample order.

What each sample kind is scored on (`Sample` in train/synth):
- arith, convert, followup, and no_tool samples with an answer: the LAST number in the reply's content
  (thousands separators dropped) equals `sample.answer`, or, for an answer that is not a number (a no_tool
  fact), the content contains it ("answer", split by kind and thinking mode);
- tool: stage 1 asks with the prompt and tools; the reply must hold exactly one call, of the expected tool,
  whose arguments are a JSON object that validates against the tool's schema ("tool/valid_call"); argument
  equality with the expected call is reported apart ("tool/args_exact"). Stage 2 appends the model's own
  call and the sample's tool results and asks again, once per call of a chain; the final reply must contain
  `sample.answer` ("tool/final_answer"). The headline "tool" needs both stages; it is also split by the
  expected tool ("tool/get_weather", "tool/write_file": Qwen-Agent's "filesystem-" prefix dropped);
- no_tool: the reply calls no tool;
- smalltalk (a greeting, thanks, "who are you", ...): the reply's content is the reference reply, whole
  ("smalltalk", by thinking mode; no target: what a user's first "Hi" gets);
- every sample: whether the first reply carries reasoning ("reasoning/think" should be 1, "reasoning/no_think"
  0).
Samples drawn from a small task space repeat one task (a time conversion converts 1..9, so its held-out tenth
is a few tasks), so "answer/by_task" and "tool/by_task" count distinct tasks, a task passing when every one of
its samples does: how many questions the score rests on.
MTP acceptance per draft position comes from the server's /metrics counters (before/after difference).

A request that fails (HTTP error, timeout) fails its sample in every metric the sample counts in (its error is
kept, and counted under "errors"); samples that failed before any reply are left out of the reasoning
metrics, which measure presence rather than success. The evaluation goes on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cli import DIE_WITH_PARENT
from .scoring import answer_matches, check_call, has_reasoning

ANSWER_KINDS = ("arith", "convert", "followup", "no_tool")
MODES = {True: "think", False: "no_think"}


# ---- the report -----------------------------------------------------------------------------------------

@dataclass
class Ratio:
    num: int = 0
    den: int = 0

    @property
    def value(self) -> float | None:
        return self.num / self.den if self.den else None


@dataclass
class Outcome:
    """One sample's scores: None where the sample is not scored on that metric."""

    index: int
    kind: str
    thinking: bool
    lang: str
    tool: str | None = None  # kind "tool": the expected tool's name
    answer_ok: bool | None = None
    valid_call: bool | None = None
    args_exact: bool | None = None
    final_ok: bool | None = None
    no_call: bool | None = None
    smalltalk_ok: bool | None = None
    reasoning: bool | None = None  # the first reply's; None when no reply came
    requests: int = 0
    completion_tokens: int = 0
    content: str | None = None  # the last reply's content
    finish: str | None = None  # and its finish_reason ("length": max_tokens ran out)
    calls: list[str] = field(default_factory=list)  # every tool call the replies made, `name {arguments}`
    note: str = ""  # why a tool call is not valid
    error: str | None = None
    request: str = ""  # the last user message sent
    expected: str | None = None  # what the final reply must contain
    task: str = ""  # the question's task key (synth/split.py), or its kind and request where it has none

    @property
    def tool_loop(self) -> bool | None:
        """The headline "tool": a valid call and then a final answer from its result (None: not a tool sample)."""
        return None if self.valid_call is None else bool(self.valid_call and self.final_ok)

    @property
    def failed(self) -> list[str]:
        """The checks this sample failed ("answer", "tool", "no_tool", "smalltalk"), "error" for a failed
        request."""
        checks = {"answer": self.answer_ok, "tool": self.tool_loop, "no_tool": self.no_call,
                  "smalltalk": self.smalltalk_ok}
        return [name for name, ok in checks.items() if ok is False] + (["error"] if self.error else [])

    def describe(self) -> str:
        """A failed sample in a few lines: what was asked, what the reply had to contain, what it said."""
        mode = "think" if self.thinking else "no_think"
        head = f"#{self.index} {self.kind}/{self.lang}/{mode}" + (f" {self.tool}" if self.tool else "")
        lines = [f"{head}: failed {', '.join(self.failed)}", f"  asked:    {self.request!r}",
                 f"  expected: {self.expected!r}", f"  replied:  {self.content!r}"]
        lines += [f"  called:   {call}" for call in self.calls]
        lines += [f"  {label}: {text}" for label, text in (("note", self.note), ("error", self.error)) if text]
        return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    metric: str
    op: str  # ">=" or "<="
    value: float

    def passes(self, ratio: Ratio | None) -> bool | None:
        if ratio is None or ratio.value is None:
            return None
        return ratio.value >= self.value if self.op == ">=" else ratio.value <= self.value


# per recipe; "answer" pools arith, convert, followup and no_tool answers
TARGETS: dict[str, tuple[Target, ...]] = {
    "demo": (Target("answer", ">=", 0.95), Target("tool", ">=", 0.95), Target("no_tool", ">=", 0.90),
             Target("reasoning/think", ">=", 1.0), Target("reasoning/no_think", "<=", 0.0),
             Target("mtp/pos0", ">=", 0.6)),
}


@dataclass
class Report:
    model: str
    metrics: dict[str, Ratio]
    outcomes: list[Outcome]
    wall_s: float  # evaluation only
    completion_tokens: int
    startup_s: float | None = None  # server start, when run_eval started one
    targets: tuple[Target, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict:
        return {"model": self.model,
                "metrics": {k: {"num": r.num, "den": r.den, "value": r.value} for k, r in self.metrics.items()},
                "targets": [{**asdict(t), "measured": self._value(t.metric),
                             "pass": t.passes(self.metrics.get(t.metric))} for t in self.targets],
                "wall_s": self.wall_s, "startup_s": self.startup_s, "completion_tokens": self.completion_tokens,
                "tokens_per_s": self.tokens_per_s, "samples": [asdict(o) for o in self.outcomes]}

    def _value(self, metric: str) -> float | None:
        return self.metrics[metric].value if metric in self.metrics else None

    def table(self) -> str:
        targets = {t.metric: t for t in self.targets}
        width = max([28, *map(len, self.metrics)])
        rows = [f"{'metric':<{width}} {'value':>7} {'n/N':>11}  target"]
        for name, r in self.metrics.items():
            value = "-" if r.value is None else f"{r.value:.3f}"
            line = f"{name:<{width}} {value:>7} {f'{r.num}/{r.den}':>11}"
            if name in targets:
                t = targets[name]
                verdict = {True: "pass", False: "FAIL", None: "n/a"}[t.passes(r)]
                line += f"  {t.op} {t.value:g} {verdict}"
            rows.append(line)
        rows += [f"{t.metric:<{width}} {'-':>7} {'-':>11}  {t.op} {t.value:g} n/a" for t in self.targets
                 if t.metric not in self.metrics]
        start = f", server start {self.startup_s:.1f} s" if self.startup_s is not None else ""
        rows.append(f"{len(self.outcomes)} samples, {self.completion_tokens} completion tokens in {self.wall_s:.1f} s "
                    f"({self.tokens_per_s:.1f} tok/s){start}")
        return "\n".join(rows)

    def failures(self) -> str:
        """Every sample that failed a headline check, described (`Outcome.describe`); "" when none did."""
        return "\n".join(o.describe() for o in self.outcomes if o.failed)


def summarize(outcomes: Sequence[Outcome], spec: dict | None = None) -> dict[str, Ratio]:
    """The metrics, in a fixed order, from the per-sample outcomes and the spec-decode counter deltas."""
    m: dict[str, Ratio] = {}

    def add(name: str, oks) -> None:  # None: not scored on this metric
        scored = [ok for ok in oks if ok is not None]
        if scored:
            m[name] = Ratio(sum(scored), len(scored))

    def by_task(name: str, scored) -> None:  # (task, ok): the tasks all of whose samples passed
        tasks: dict[str, bool] = {}
        for task, ok in scored:
            if ok is not None:
                tasks[task] = tasks.get(task, True) and ok
        add(name, tasks.values())

    add("answer", (o.answer_ok for o in outcomes))
    by_task("answer/by_task", ((o.task, o.answer_ok) for o in outcomes))
    for mode, tag in MODES.items():
        add(f"answer/{tag}", (o.answer_ok for o in outcomes if o.thinking == mode))
    for kind in ANSWER_KINDS:
        for mode, tag in MODES.items():
            add(f"answer/{kind}/{tag}", (o.answer_ok for o in outcomes if (o.kind, o.thinking) == (kind, mode)))
    add("tool", (o.tool_loop for o in outcomes))
    by_task("tool/by_task", ((o.task, o.tool_loop) for o in outcomes))
    add("tool/valid_call", (o.valid_call for o in outcomes))
    add("tool/args_exact", (o.args_exact for o in outcomes))
    add("tool/final_answer", (o.final_ok for o in outcomes))
    for name in sorted({o.tool for o in outcomes if o.tool is not None}):  # which tools the loop fails on
        add(f"tool/{name.removeprefix('filesystem-')}", (o.tool_loop for o in outcomes if o.tool == name))
    add("no_tool", (o.no_call for o in outcomes))
    add("smalltalk", (o.smalltalk_ok for o in outcomes))
    for mode, tag in MODES.items():
        add(f"smalltalk/{tag}", (o.smalltalk_ok for o in outcomes if o.thinking == mode))
    for mode, tag in MODES.items():
        add(f"reasoning/{tag}", (o.reasoning for o in outcomes if o.thinking == mode))
    if spec and spec["drafts"] > 0:
        for pos, accepted in enumerate(spec["per_pos"]):
            m[f"mtp/pos{pos}"] = Ratio(accepted, spec["drafts"])
        m["mtp/accepted_per_draft"] = Ratio(spec["accepted"], spec["drafts"])
    m["errors"] = Ratio(sum(o.error is not None for o in outcomes), len(outcomes))
    return m


# ---- driving a server -----------------------------------------------------------------------------------

class EvalError(RuntimeError):
    """No openai client, or the server did not start or died during the evaluation (the text ends with its
    stderr tail)."""


def _root(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


def spec_counters(metrics_text: str) -> dict | None:
    """The `vllm:spec_decode_*` counters in a /metrics page: {"drafts", "draft_tokens", "accepted", "per_pos"}
    (per_pos[i]: drafts whose token i was accepted), or None when the server does not speculate."""
    found: dict[str, float] = {}
    per_pos: dict[int, float] = {}
    for line in metrics_text.splitlines():
        m = re.match(r'vllm:spec_decode_(\w+?)(?:_total)?(?:\{position="(\d+)"\})? (\S+)$', line)
        if not m:
            continue
        name, pos, value = m.groups()
        if name == "num_accepted_tokens_per_pos" and pos is not None:
            per_pos[int(pos)] = float(value)
        elif pos is None:
            found[name] = float(value)
    if "num_drafts" not in found:
        return None
    return {"drafts": int(found["num_drafts"]), "draft_tokens": int(found.get("num_draft_tokens", 0)),
            "accepted": int(found.get("num_accepted_tokens", 0)),
            "per_pos": [int(per_pos[i]) for i in sorted(per_pos)]}


def read_spec_counters(base_url: str, timeout: float = 10.0) -> dict | None:
    try:
        with urllib.request.urlopen(_root(base_url) + "/metrics", timeout=timeout) as r:
            return spec_counters(r.read().decode())
    except OSError:
        return None


def _delta(after: dict | None, before: dict | None) -> dict | None:
    if after is None:
        return None
    if before is None:
        return after
    old = before["per_pos"] + [0] * len(after["per_pos"])
    per_pos = [a - old[i] for i, a in enumerate(after["per_pos"])]
    return {k: after[k] - before[k] for k in ("drafts", "draft_tokens", "accepted")} | {"per_pos": per_pos}


class _Asker:
    """One chat request per call, greedy, with the sample's tools and thinking mode."""

    def __init__(self, client, model: str, max_tokens: int) -> None:
        self.client, self.model, self.max_tokens = client, model, max_tokens

    def __call__(self, outcome: Outcome, messages: list[dict], tools: list[dict] | None, thinking: bool) -> dict:
        kwargs: dict[str, Any] = {"tools": tools} if tools else {}
        outcome.requests += 1
        resp = self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=0, max_tokens=self.max_tokens,
            extra_body={"chat_template_kwargs": {"enable_thinking": thinking}}, **kwargs)
        outcome.completion_tokens += resp.usage.completion_tokens if resp.usage else 0
        message = resp.choices[0].message.model_dump()
        outcome.content, outcome.finish = message.get("content"), resp.choices[0].finish_reason
        return message


def _as_history(message: dict) -> dict:
    """A reply's message as the next request's assistant turn (tool-call arguments stay JSON text)."""
    turn = {"role": "assistant", "content": message.get("content") or ""}
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        turn["reasoning_content"] = reasoning
    if message.get("tool_calls"):
        turn["tool_calls"] = [{"id": c.get("id"), "type": "function",
                               "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
                              for c in message["tool_calls"]]
    return turn


def _tool_results(sample) -> list[list[dict]]:
    """The sample's tool messages after its prompt, one group per call turn of the reference answer."""
    groups: list[list[dict]] = []
    for msg in sample.messages[len(sample.prompt_messages()):]:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            groups.append([])
        elif msg["role"] == "tool" and groups:
            groups[-1].append(msg)
    return groups


def score_sample(ask: _Asker, index: int, sample) -> Outcome:
    """Ask the sample's questions (`ask`: one request) and score the replies; never raises."""
    o = Outcome(index, sample.kind, sample.thinking, sample.lang, expected=sample.answer)
    # what the sample counts in, failed until shown otherwise
    if sample.kind in ANSWER_KINDS and sample.answer is not None:
        o.answer_ok = False
    if sample.kind == "tool":
        o.tool = sample.tool_call["name"]
        o.valid_call = o.args_exact = o.final_ok = False
    if sample.kind == "no_tool":
        o.no_call = False
    if sample.kind == "smalltalk":
        o.smalltalk_ok, o.expected = False, sample.messages[-1]["content"]
    prompt = sample.prompt_messages()
    o.request = str(prompt[-1].get("content") or "")
    o.task = repr(sample.task) if sample.task else f"{sample.kind}: {o.request}"
    try:
        message = _noted(o, ask(o, prompt, sample.tools, sample.thinking))
        o.reasoning = has_reasoning(message)
        if o.answer_ok is not None:
            o.answer_ok = answer_matches(message.get("content"), sample.answer)
        if o.no_call is not None:
            o.no_call = not message.get("tool_calls")
        if o.smalltalk_ok is not None:
            o.smalltalk_ok = (message.get("content") or "").strip() == o.expected
        if sample.kind == "tool":
            check = check_call(message, sample.tools, sample.tool_call)
            o.valid_call, o.args_exact, o.note = check.valid, check.exact, check.why
            if message.get("tool_calls"):
                o.final_ok = _stage2(ask, o, sample, prompt, message)
    except Exception as e:  # noqa: BLE001 - a failed request fails its sample, not the evaluation
        o.error = f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]
    return o


def _stage2(ask: _Asker, o: Outcome, sample, prompt: list[dict], message: dict) -> bool:
    """Feed the sample's tool results after the model's own calls until it answers; does it give the answer?"""
    history = list(prompt)
    groups = _tool_results(sample)
    for i, results in enumerate(groups):
        if o.finish == "length":  # a call cut off by max_tokens keeps partial arguments: nothing to answer
            return False
        history += [_as_history(message), *results]
        message = _noted(o, ask(o, history, sample.tools, sample.thinking))
        if i + 1 < len(groups) and not message.get("tool_calls"):
            break  # answered before the chain was done
    content = message.get("content") or ""
    return not message.get("tool_calls") and sample.answer is not None and sample.answer in content


def _noted(o: Outcome, message: dict) -> dict:
    """`message`, its tool calls added to the outcome's."""
    o.calls += [f"{c['function']['name']} {c['function']['arguments']}" for c in message.get("tool_calls") or []]
    return message


def _openai():
    try:
        import openai
    except ImportError:
        raise EvalError("the evaluation talks to the server with the openai client: pip install 'qwen35[eval]' "
                        "(or openai)") from None
    return openai


def evaluate(base_url: str, model_name: str, samples: Sequence, *, max_tokens: int = 512, concurrency: int = 4,
             request_timeout: float = 300.0, api_key: str = "EMPTY",
             progress: Callable[[int, int], None] | None = None) -> Report:
    """Score `samples` (synth `Sample`s) against the server at `base_url` (with or without /v1)."""
    client = _openai().OpenAI(base_url=_root(base_url) + "/v1", api_key=api_key, timeout=request_timeout, max_retries=0)
    ask = _Asker(client, model_name, max_tokens)
    before = read_spec_counters(base_url)
    done, lock = [0], threading.Lock()

    def one(item: tuple[int, Any]) -> Outcome:
        outcome = score_sample(ask, *item)
        if progress is not None:
            with lock:
                done[0] += 1
                progress(done[0], len(samples))
        return outcome

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        outcomes = list(pool.map(one, enumerate(samples)))
    wall = time.perf_counter() - t0
    spec = _delta(read_spec_counters(base_url), before)
    return Report(model_name, summarize(outcomes, spec), outcomes, wall, sum(o.completion_tokens for o in outcomes))


# ---- a server of our own --------------------------------------------------------------------------------

@dataclass
class ServerProcess:
    """`qwen35 serve` in a subprocess: started, waited on until it prints its ready line, stopped."""

    model_dir: str | None  # None: the embedded default model
    port: int = 0  # 0: any free port (the ready line names it)
    mtp_tokens: int = 2
    extra_args: Sequence[str] = ()
    startup_timeout: float = 600.0
    url: str = ""
    tail: deque = field(default_factory=lambda: deque(maxlen=40))
    proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        model = [str(self.model_dir)] if self.model_dir is not None else []
        cmd = [sys.executable, "-m", "qwen35.cli", "serve", *model, "--port", str(self.port),
               "--generation-config", "vllm"]  # greedy means greedy: no penalties from generation_config.json
        if self.mtp_tokens:
            cmd += ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": self.mtp_tokens})]
        return cmd + list(self.extra_args)

    def start(self) -> str:
        ready = threading.Event()
        # the server dies with this process, however it ends, so no server is left holding its port (cli.py)
        env = {**os.environ, DIE_WITH_PARENT: str(os.getpid())}
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     errors="replace", env=env)

        def read() -> None:
            for line in self.proc.stderr:
                self.tail.append(line.rstrip("\n"))
                m = re.match(r"qwen35 ready: (\S+)", line)
                if m and not ready.is_set():
                    self.url = m.group(1)
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while not ready.wait(0.2):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain the last lines
                raise EvalError(f"the server exited with status {self.proc.returncode} before it was ready"
                                + self.stderr_tail())
            if time.monotonic() > deadline:
                self.stop()
                raise EvalError(f"the server was not ready after {self.startup_timeout:.0f} s" + self.stderr_tail())
        return self.url

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_tail(self) -> str:
        return "\n--- server stderr (last lines) ---\n" + "\n".join(self.tail) if self.tail else ""

    def stop(self) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def served_model(base_url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(_root(base_url) + "/v1/models", timeout=timeout) as r:
        return json.load(r)["data"][0]["id"]


def heldout_samples(recipe_name: str, n: int, draw: int = 0) -> list:
    """The recipe's held-out set (its questions never appear in training); `draw` as for `synth.heldout`."""
    from .recipe import recipe
    from .synth import heldout

    recipe(recipe_name)  # an unknown name is a ConfigError naming the choices
    return heldout(n, draw)


def run_eval(model_dir: str | Path, samples: Sequence | None = None, *, n: int = 300, recipe_name: str = "demo",
             mtp_tokens: int = 2, port: int = 0, concurrency: int = 4, serve_args: Sequence[str] = (),
             startup_timeout: float = 600.0, progress: Callable[[int, int], None] | None = None,
             **eval_kwargs) -> Report:
    """Start `qwen35 serve MODEL_DIR` with `mtp_tokens` MTP drafts (0: none), evaluate `samples` (default: the
    recipe's `n` held-out samples) with `concurrency` requests in flight, stop the server. EvalError when the
    server fails to start or dies."""
    _openai()  # before a server starts for nothing
    if samples is None:
        samples = heldout_samples(recipe_name, n)
    server = ServerProcess(str(model_dir), port, mtp_tokens, serve_args, startup_timeout)
    t0 = time.perf_counter()
    try:
        url = server.start()
        startup = time.perf_counter() - t0
        report = evaluate(url, served_model(url), samples, concurrency=concurrency, progress=progress,
                          **eval_kwargs)
        if not server.alive():
            raise EvalError(f"the server exited with status {server.proc.returncode} during the evaluation"
                            + server.stderr_tail())
    finally:
        server.stop()
    report.startup_s = startup
    report.targets = TARGETS.get(recipe_name, ())
    return report
