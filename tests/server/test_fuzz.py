"""Fuzz the live server with a few hundred generated bad requests (deterministic: seeded), while one
well-formed streaming chat runs through the middle of it untouched.

Every response must be below 500; every error OpenAI-shaped; every 200 stream valid SSE ending in
`data: [DONE]`. Afterwards the cache pools are back at their idle counts, no request is in flight and the
engine has nothing left to run. The cases themselves are built in `fuzzing.py`.

When requests go wrong, each is sent again alone, and the report says which fail on their own and which
only failed beside another request (e.g. one whose engine step crashed the batch). Knobs for digging:
QWEN35_FUZZ_COUNT (requests, default 450), QWEN35_FUZZ_FULL=1 (every targeted case, not a sample),
QWEN35_FUZZ_SKIP=note,note (leave out cases whose note contains one of these).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time

from tests.server.conftest import API_KEY, wait_idle
from tests.server.fuzzing import (Case, Failure, make_cases, response_problem, sse_events, stream_problem,
                                  stream_text)

SEED = 35
COUNT = int(os.environ.get("QWEN35_FUZZ_COUNT", 450))  # requests in the fuzz (targeted + random)
CONCURRENCY = 8
TIMEOUT = 60.0  # a request with no answer in this long is a hang
GOOD = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me a story about a lighthouse."}],
        "max_tokens": 64, "temperature": 0, "ignore_eos": True, "stream": True,
        "chat_template_kwargs": {"enable_thinking": False}}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def _send(client, case: Case) -> tuple[int | None, Failure | None]:
    start = time.perf_counter()
    try:
        r = await client.post(case.endpoint, content=case.body, headers=case.headers)
    except Exception as e:  # a timeout (hang), a dropped connection, a broken response
        return None, Failure(case, f"no response: {type(e).__name__}: {e}", seconds=time.perf_counter() - start)
    problem = response_problem(case, r.status_code, r.headers.get("content-type", ""), r.content)
    if problem:
        return r.status_code, Failure(case, problem, r.status_code, r.content, time.perf_counter() - start)
    return r.status_code, None


async def _good_stream(client) -> tuple[int, bytes]:
    r = await client.post("/v1/chat/completions", json=GOOD, headers=AUTH)
    return r.status_code, r.content


async def _fuzz(url: str, cases: list[Case]):
    import httpx

    limits = httpx.Limits(max_connections=CONCURRENCY + 2, max_keepalive_connections=CONCURRENCY + 2)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=limits) as client:
        sem = asyncio.Semaphore(CONCURRENCY)
        done = 0
        good_window: dict[str, int] = {}
        good_started = asyncio.Event()

        async def one(case: Case):
            nonlocal done
            async with sem:
                result = await _send(client, case)
            done += 1
            if done >= min(30, len(cases) // 4):
                good_started.set()
            return result

        async def good():
            await good_started.wait()  # in the middle of the fuzz, not before it
            good_window["start"] = done
            result = await _good_stream(client)
            good_window["end"] = done
            return result

        good_task = asyncio.ensure_future(good())
        results = await asyncio.gather(*[one(c) for c in cases])
        good_started.set()  # (a fuzz too short to reach the mark)
        good_status, good_body = await good_task
        return results, (good_status, good_body), good_window


def _replay_alone(url: str, cases: list[Case]) -> list[bool]:
    """Send each case again, one at a time: does it still go wrong?"""
    import httpx

    again = []
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for case in cases:
            try:
                r = client.post(case.endpoint, content=case.body, headers=case.headers)
            except Exception:
                again.append(True)
                continue
            again.append(response_problem(case, r.status_code, r.headers.get("content-type", ""), r.content)
                         is not None)
    return again


def _alone(url: str) -> tuple[int, bytes]:
    import httpx

    r = httpx.post(url + "/v1/chat/completions", json=GOOD, headers=AUTH, timeout=TIMEOUT)
    return r.status_code, r.content


def _settled(state, idle: dict, timeout: float = 10.0) -> list[str]:
    """What is not back at idle: cache pools, the admitted-requests counter, the engine's queues."""
    usage = wait_idle(state)
    deadline = time.time() + timeout
    while state.in_flight and time.time() < deadline:  # the last streams' cleanup may still be running
        time.sleep(0.05)
    problems = []
    if (usage["blocks_free"], usage["slots_free"]) != (idle["blocks_free"], idle["slots_free"]):
        problems.append(f"cache pools not back at idle: {usage}, idle was {idle}")
    if usage["blocks_free"] != usage["blocks_total"] or usage["slots_free"] != usage["slots_total"]:
        problems.append(f"cache pools not all free: {usage}")
    if usage["running"] or usage["waiting"] or state.client.stats()["unfinished"]:
        problems.append(f"the engine still has requests: {usage}")
    if state.in_flight != 0:
        problems.append(f"state.in_flight is {state.in_flight}, not 0")
    return problems


def test_fuzz_bad_requests_leave_the_server_healthy(server):
    state = server["state"]
    url = server["url"]
    idle = wait_idle(state)
    assert idle["slots_free"] == idle["slots_total"] and idle["blocks_free"] == idle["blocks_total"], idle
    assert state.in_flight == 0

    cases = make_cases(SEED, COUNT, full=bool(os.environ.get("QWEN35_FUZZ_FULL")))
    skip = [s for s in os.environ.get("QWEN35_FUZZ_SKIP", "").split(",") if s]  # bisecting: notes to leave out
    cases = [c for c in cases if not any(s in c.note for s in skip)]
    start = time.perf_counter()
    results, (good_status, good_body), window = asyncio.run(_fuzz(url, cases))
    elapsed = time.perf_counter() - start

    failures = [f for _, f in results if f is not None]
    statuses = collections.Counter(s for s, _ in results)
    summary = f"{len(cases)} requests in {elapsed:.1f}s, statuses {dict(sorted(statuses.items(), key=str))}"
    problems: list[str] = []
    if not (statuses[200] > 0 and statuses[400] > 100):
        problems.append(f"the fuzz did not exercise both valid and invalid requests: {summary}")

    # the well-formed stream ran in the middle of the fuzz and came through untouched
    text = None
    if good_status != 200 or stream_problem(good_body) is not None:
        problems.append(f"the well-formed stream failed: {good_status} {stream_problem(good_body)} "
                        f"{good_body[-600:]!r}")
    else:
        text, finish = stream_text(good_body)
        if finish != "length" or any("error" in json.loads(e) for e in sse_events(good_body)[:-1]):
            problems.append(f"the well-formed stream ended with {finish!r}: {good_body[-600:]!r}")
        if not window["end"] > window["start"]:
            problems.append(f"the well-formed stream did not overlap the fuzz: {window}")

    # the pools are back at idle, nothing is admitted or left in the engine
    problems += _settled(state, idle)

    # greedy: the same request alone gives the same text
    if text is not None:
        alone_status, alone_body = _alone(url)
        alone = stream_text(alone_body) if alone_status == 200 else alone_body[:300]
        if alone != (text, "length"):
            problems.append(f"the stream run alone differs from the one run during the fuzz:\n  during: "
                            f"{text!r}\n  alone:  {alone_status} {alone!r}")
        problems += _settled(state, idle)

    if failures:  # tell the requests that fail on their own from those failed by another one
        alone = _replay_alone(url, [f.case for f in failures[:40]])
        tagged = sorted(zip(failures, alone + [None] * len(failures)), key=lambda fa: fa[1] is not True)
        report = [f"[{ {True: 'fails alone', False: 'passes alone', None: 'not replayed'}[again]}] {f}"
                  for f, again in tagged]
        problems.insert(0, f"{len(failures)} of {summary} went wrong:\n\n" + "\n\n".join(report))
    assert not problems, "\n\n".join(problems)
