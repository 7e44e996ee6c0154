"""Soak: rounds of many concurrent streaming chats against the live server, half of them hung up on by the
client after a few chunks. After every round the cache pools are back at idle and nothing is in flight;
the server's memory (it runs in this process) stops growing after the first rounds. Run once plain and once
with MTP speculative decoding (drafts pending at every hang-up, rollbacks every step).

Slow (about a minute or two on 2 cores): `pytest -m slow tests/server/test_soak.py`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import re
import time
from dataclasses import dataclass

import pytest

from tests.server.conftest import API_KEY, ENGINE, live_server, wait_idle
from tests.server.fuzzing import sse_events, stream_problem, stream_text

pytestmark = pytest.mark.slow

ROUNDS = max(3, int(os.environ.get("QWEN35_SOAK_ROUNDS", 3)))  # more to watch memory longer
PER_ROUND = 200
CONCURRENCY = 24  # max_num_seqs is 8: the rest wait in the engine's queue
TIMEOUT = 120.0
PROMPTS = ["Tell me a story.", "What is a lighthouse?", "List three colours.", "Write a haiku about rain."]
MAX_TOKENS = (8, 16, 24, 32)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Spec:
    index: int
    prompt: str
    max_tokens: int
    cut_after: int | None  # hang up after this many SSE events (None: read to the end)
    greedy: bool

    def body(self) -> dict:
        body = {"model": "tiny", "messages": [{"role": "user", "content": self.prompt}], "stream": True,
                "max_tokens": self.max_tokens, "ignore_eos": True, "stream_options": {"include_usage": True},
                "chat_template_kwargs": {"enable_thinking": False}}
        if self.greedy:
            body["temperature"] = 0
        else:
            body.update(temperature=0.9, top_p=0.95, seed=self.index)
        return body


def _specs(rng: random.Random, n: int) -> list[Spec]:
    specs = []
    for i in range(n):
        cut = i % 2 == 0
        specs.append(Spec(i, rng.choice(PROMPTS), rng.choice(MAX_TOKENS), rng.randint(1, 4) if cut else None,
                          greedy=not cut or rng.random() < 0.5))
    rng.shuffle(specs)
    return specs


def rss_kib() -> int:
    """Resident memory of this process (the server runs in it), in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)\s+kB", f.read()).group(1))


async def _one(client, spec: Spec) -> tuple[str | None, str | None]:
    """(problem, text): a problem is a description of what went wrong; text is the full greedy answer."""
    try:
        async with client.stream("POST", "/v1/chat/completions", json=spec.body(), headers=AUTH) as r:
            if r.status_code != 200:
                return f"status {r.status_code}: {(await r.aread())[:500]!r}", None
            if spec.cut_after is not None:
                events = 0
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        if '"error"' in line:
                            return f"an error event before the hang-up: {line[:300]}", None
                        events += 1
                        if events >= spec.cut_after:
                            break  # leaving the block closes the half-read response: the connection goes
                return None, None
            body = b"".join([chunk async for chunk in r.aiter_bytes()])
    except Exception as e:
        return f"{type(e).__name__}: {e}", None
    problem = stream_problem(body)
    if problem:
        return problem, None
    text, finish = stream_text(body)
    last = json.loads(sse_events(body)[-2])
    used = (last.get("usage") or {}).get("completion_tokens")
    if finish != "length" or used != spec.max_tokens:
        return f"finish_reason {finish!r}, completion_tokens {used} (max_tokens {spec.max_tokens})", None
    return None, text if spec.greedy else None


async def _round(url: str, specs: list[Spec]):
    import httpx

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=limits) as client:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def guarded(spec):
            async with sem:
                return await _one(client, spec)

        return await asyncio.gather(*[guarded(s) for s in specs])


def _reference(url: str) -> dict[tuple[str, int], str]:
    """Each (prompt, max_tokens) answered alone, greedily: what every greedy answer in the soak must be."""
    import httpx

    out = {}
    for prompt in PROMPTS:
        for max_tokens in MAX_TOKENS:
            spec = Spec(0, prompt, max_tokens, None, True)
            r = httpx.post(url + "/v1/chat/completions", json=spec.body(), headers=AUTH, timeout=TIMEOUT)
            assert r.status_code == 200, r.text[:500]
            out[(prompt, max_tokens)] = stream_text(r.content)[0]
    return out


def _settle(state, idle: dict, timeout: float = 20.0) -> dict:
    usage = wait_idle(state)
    deadline = time.time() + timeout
    while state.in_flight and time.time() < deadline:
        time.sleep(0.05)
    assert (usage["blocks_free"], usage["slots_free"]) == (idle["blocks_free"], idle["slots_free"]), (usage, idle)
    assert usage["blocks_free"] == usage["blocks_total"] and usage["slots_free"] == usage["slots_total"], usage
    assert usage["running"] == 0 and usage["waiting"] == 0, usage
    assert not state.client.stats()["unfinished"]
    assert state.in_flight == 0, f"{state.in_flight} requests still counted in flight"
    return usage


@pytest.fixture(scope="module")
def spec_server(tiny_ckpt):
    """The same server with MTP speculative decoding (k = 2) on."""
    from qwen35.engine.async_engine import AsyncLLM
    from qwen35.engine.config import EngineConfig

    cfg = EngineConfig(model=str(tiny_ckpt), **ENGINE, speculative_config={"method": "mtp", "num_speculative_tokens": 2,
                                                                          "acceptance_floor": 0.0})
    with live_server(AsyncLLM(cfg)) as srv:
        yield srv


@pytest.mark.parametrize("which", ["server", "spec_server"])
def test_soak_streams_with_hangups(which, request, monkeypatch):
    server = request.getfixturevalue(which)
    state, url = server["state"], server["url"]
    engine = state.client.engine  # the fixture runs the engine in-process
    aborted = []  # requests the engine aborted while they were still running: the hang-ups reached it
    real_abort = engine.abort

    def counting_abort(request_id):
        was_running = request_id in engine.parents
        done = real_abort(request_id)
        if was_running:
            aborted.append(request_id)
        return done

    monkeypatch.setattr(engine, "abort", counting_abort)
    idle = wait_idle(state)
    assert idle["blocks_free"] == idle["blocks_total"] and idle["slots_free"] == idle["slots_total"], idle
    reference = _reference(url)
    _settle(state, idle)
    rng = random.Random(2024)
    rss, times, aborts = [], [], []
    for round_no in range(1, ROUNDS + 1):
        specs = _specs(rng, PER_ROUND)
        aborted.clear()
        start = time.perf_counter()
        results = asyncio.run(_round(url, specs))
        times.append(time.perf_counter() - start)
        failures = [f"request {s.index} ({s.body()}): {problem}" for s, (problem, _) in zip(specs, results)
                    if problem]
        assert not failures, (f"round {round_no}: {len(failures)} of {PER_ROUND} requests failed:\n" +
                              "\n".join(failures[:20]))
        wrong = [f"request {s.index} ({s.prompt!r}, max_tokens {s.max_tokens}): {text!r} != "
                 f"{reference[(s.prompt, s.max_tokens)]!r}" for s, (_, text) in zip(specs, results)
                 if text is not None and text != reference[(s.prompt, s.max_tokens)]]
        assert not wrong, f"round {round_no}: greedy answers differ from the same request alone:\n" + \
            "\n".join(wrong[:10])
        _settle(state, idle)
        aborts.append(len(aborted))
        gc.collect()
        rss.append(rss_kib())
    summary = (f"RSS after each round (KiB): {rss}; round times (s): {[round(t, 1) for t in times]}; "
               f"running requests aborted by hang-ups: {aborts} of {PER_ROUND // 2} per round")
    print(summary)
    assert min(aborts) > 0, f"no hang-up reached the engine while its request ran: {summary}"
    assert rss[2] <= rss[1] * 1.05, f"memory keeps growing: {summary}"
