"""The engine in a process of its own (`EngineProcess`) behind the live server: the openai client gets exactly
what it gets from the in-process engine, disconnects free the cache across the process boundary, and a dead
engine process fails requests cleanly instead of hanging them."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.server.conftest import API_KEY, ENGINE, live_server, wait_idle

MSG = [{"role": "user", "content": "Say something."}]
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def proc_server(tiny_ckpt):
    from qwen35.engine.config import EngineConfig
    from qwen35.engine.process import EngineProcess

    with live_server(EngineProcess(EngineConfig(model=str(tiny_ckpt), **ENGINE))) as srv:
        yield srv


def _openai(srv):
    import openai

    return openai.OpenAI(base_url=srv["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_same_answers_as_the_in_process_engine(proc_server, server):
    kw = dict(model="tiny", messages=MSG, max_tokens=10, temperature=0, extra_body=NO_THINK)
    here = _openai(server).chat.completions.create(**kw).choices[0].message.content
    there = _openai(proc_server).chat.completions.create(**kw).choices[0].message.content
    assert there == here
    chunks = list(_openai(proc_server).chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                                **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == here
    assert chunks[-1].usage.completion_tokens == 10


def test_seeds_logprobs_and_forced_tool_calls_cross_the_boundary(proc_server):
    client = _openai(proc_server)
    kw = dict(model="tiny", messages=MSG, max_tokens=6, temperature=1.0, seed=7, n=2, extra_body=NO_THINK)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=3, logprobs=2, echo=True,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].logprobs.token_logprobs[0] is None and len(r.choices[0].logprobs.tokens) > 3
    r = client.chat.completions.create(model="tiny", messages=MSG, tools=TOOLS, tool_choice="required",
                                       max_tokens=64, temperature=0, extra_body={"chat_template_kwargs": {
                                           "enable_thinking": False}})
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_disconnect_frees_the_cache_in_the_engine_process(proc_server):
    state = proc_server["state"]
    idle = wait_idle(state)
    with httpx.stream("POST", proc_server["url"] + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": "tiny", "messages": MSG, "max_tokens": 400, "stream": True,
                            "ignore_eos": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break
    usage = wait_idle(state)
    assert (usage["blocks_free"], usage["slots_free"]) == (idle["blocks_free"], idle["slots_free"])
    assert state.client.num_unfinished == 0


def test_a_dead_engine_process_fails_requests_and_health(proc_server, caplog):
    """Last in this module: it kills the engine process."""
    url, state = proc_server["url"], proc_server["state"]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.get(url + "/health").status_code == 200
    os.kill(state.client._proc.pid, signal.SIGKILL)
    deadline = time.time() + 10
    while state.client.healthy and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(url + "/health").status_code == 503
    assert "the engine process exited (killed by SIGKILL)" in caplog.text
    r = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers=auth, timeout=10)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
