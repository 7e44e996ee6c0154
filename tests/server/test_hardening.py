"""Issue-7 reproductions: no request can hurt another, no 500 for bad input, limits a networked server needs.

Each test sends the request that used to break the server (or block its event loop) and checks that it now
gets a clear 4xx (or works) while the server keeps serving everyone else.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.server.conftest import wait_idle

AUTH = {"Authorization": "Bearer test-key"}
MSG = [{"role": "user", "content": "Say something."}]
NO_THINK = {"enable_thinking": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"]}}}]


def post(server, path, body=None, *, content=None, headers=AUTH, timeout=60):
    if content is not None:
        return httpx.post(server["url"] + path, content=content, timeout=timeout,
                          headers={**headers, "content-type": "application/json"})
    return httpx.post(server["url"] + path, json=body, headers=headers, timeout=timeout)


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["code"] == status and isinstance(err["type"], str)
    if param is not None:
        assert err["param"] == param, err
    return err


def assert_serving(server):
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200, r.text


# ---- 1-2: a request never breaks the engine, one request's failure ends that request only ----------------

@pytest.mark.parametrize("seed", [2**64, -2**63 - 1])
def test_out_of_range_seed_is_refused_and_engine_keeps_serving(server, seed):
    r = post(server, "/v1/completions", content=f'{{"prompt":"hi","max_tokens":2,"seed":{seed}}}')
    assert_error(r, 400, "seed")
    assert_serving(server)


def test_seed_overflowing_for_n_leaves_nothing_behind(server):
    r = post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "seed": 2**63 - 1, "n": 2})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["param"] == "seed"
    assert_serving(server)
    assert not server["state"].client.stats()["unfinished"]


@pytest.mark.parametrize("extra", [
    {"logprobs": True},  # chat logprobs without top_logprobs: the usual client call
    {"top_p": 5e-324}, {"temperature": 1e-300}, {"repetition_penalty": 5e-324},
])
def test_extreme_sampling_values_are_served(server, extra):
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": MSG, "max_tokens": 3,
                                              "chat_template_kwargs": NO_THINK, **extra})
    assert r.status_code in (200, 400), r.text  # served, or refused by a bound that names the field
    if r.status_code == 400:
        assert r.json()["error"]["param"] in extra
    else:
        assert r.json()["choices"][0]["finish_reason"] in ("length", "stop")
    assert_serving(server)


def test_completion_logprobs_zero(server):
    r = post(server, "/v1/completions", {"prompt": "Once", "max_tokens": 3, "logprobs": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == 3


# ---- 3: the event loop never blocks; bounded inputs ----------------------------------------------------

def test_event_loop_stays_responsive_under_big_inputs(server):
    """Big prompts and message lists are tokenised/rendered on worker threads: /health answers meanwhile."""
    big = "word " * 200_000  # ~1 MiB of text, far beyond the 1024-token context
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x " * 20} for i in range(9_999)]
    results = {}

    def send(name, path, body):
        t0 = time.perf_counter()
        results[name] = (post(server, path, body, timeout=120), time.perf_counter() - t0)

    threads = [threading.Thread(target=send, args=("tok", "/tokenize", {"prompt": big[: (1 << 20) - 100]})),
               threading.Thread(target=send, args=("chat", "/v1/chat/completions",
                                                   {"model": "tiny", "messages": many, "max_tokens": 2}))]
    for t in threads:
        t.start()
    worst = 0.0
    while any(t.is_alive() for t in threads):
        t0 = time.perf_counter()
        assert httpx.get(server["url"] + "/health", timeout=10).status_code == 200
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.02)
    for t in threads:
        t.join()
    assert worst < 1.0, f"/health took {worst:.2f} s while big requests were processed"
    err = assert_error(results["tok"][0], 400, "prompt")
    assert "max_model_len" in err["message"]
    assert_error(results["chat"][0], 400, "messages")  # longer than the context


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": MSG * 10_001}, "messages"),
    ("/v1/chat/completions", {"messages": MSG, "tools": TOOLS * 513}, "tools"),
    ("/v1/chat/completions", {"messages": MSG, "stop": ["x"] * 17}, "stop"),
    ("/v1/chat/completions", {"messages": MSG, "logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
    ("/v1/completions", {"prompt": ["a"] * 129}, "prompt"),
    ("/v1/completions", {"prompt": ["a"] * 100, "n": 3}, "n"),
])
def test_list_caps_name_the_limit(server, path, body, param):
    assert_error(post(server, path, body), 400, param)


# ---- 4: request chat templates --------------------------------------------------------------------------

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
BIG = '{{ ("x"*2000000000)|length }}'


def test_request_chat_template_refused_unless_trusted(server):
    assert_error(post(server, "/v1/chat/completions", {"messages": MSG, "chat_template": LOOP}), 400,
                 "chat_template")


def test_trusted_request_template_is_rendered_under_limits(server):
    state = server["state"]
    state.trust_request_chat_template = True
    try:
        for template in (LOOP, BIG):
            t0 = time.perf_counter()
            assert_error(post(server, "/v1/chat/completions", {"messages": MSG, "chat_template": template}), 400,
                         "chat_template")
            assert time.perf_counter() - t0 < 10
        r = post(server, "/v1/chat/completions", {
            "messages": MSG, "max_tokens": 2, "chat_template":
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "<|im_start|>assistant\n"})
        assert r.status_code == 200, r.text
    finally:
        state.trust_request_chat_template = False
    assert_serving(server)


# ---- 5: no 500 for bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("path,raw", [
    ("/v1/chat/completions", '{"messages":[{"role":"user","content":"\\ud800"}]}'),
    ("/v1/completions", '{"prompt":"a\\udfffb"}'),
    ("/tokenize", '{"prompt":"\\ud800"}'),
    ("/v1/chat/completions", "[" * 10_000 + "]" * 10_000),
    ("/v1/chat/completions", '["not an object"]'),
])
def test_broken_unicode_and_shapes_are_400(server, path, raw):
    assert_error(post(server, path, content=raw.encode()), 400)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"x": {"type": "array", "x-guidance": "zzz"}}},
    {"type": "object", "properties": {"x": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}]}}},
])
def test_hostile_tool_schemas_are_400(server, choice, schema):
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    r = post(server, "/v1/chat/completions", {"messages": MSG, "tools": tools, "tool_choice": choice})
    assert_error(r, 400, "tools")


@pytest.mark.parametrize("body", [
    {"messages": MSG, "chat_template_kwargs": {"messages": []}},
    {"messages": MSG, "chat_template_kwargs": {"add_generation_prompt": 1}},
    {"messages": [{"role": "assistant", "content": "only me"}]},
])
def test_tokenize_bad_template_inputs_are_400(server, body):
    assert_error(post(server, "/tokenize", body), 400)


def test_deeply_nested_model_output_in_array_parameter():
    from qwen35.server.parsers.tool_qwen import parse

    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "array"}}}}}]
    for text in ("[" * 5000, "[" * 1000 + "]" * 1000):
        _, calls = parse(f"<tool_call>\n<function=f>\n<parameter=a>\n{text}\n</parameter>\n</function>\n"
                         "</tool_call>", tools)
        assert json.loads(calls[0].arguments)["a"]  # kept as text when too deep to type


def test_internal_error_is_500_without_internals_and_server_survives(server, monkeypatch):
    state = server["state"]

    def boom(*a, **k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(state, "run_cpu", boom)
    with httpx.Client(base_url=server["url"], headers=AUTH, timeout=30) as c:
        r = c.post("/v1/chat/completions", json={"messages": MSG})
        assert r.status_code == 500 and "secret" not in r.text
        assert r.json()["error"]["type"] == "server_error"
        monkeypatch.undo()
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})  # same connection
        assert r.status_code == 200, r.text


# ---- 6: a non-streaming request whose client has gone is aborted -----------------------------------------

def test_non_streaming_request_is_aborted_when_client_leaves(server):
    state = server["state"]
    idle = wait_idle(state)
    with pytest.raises(httpx.TimeoutException):
        post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 1000, "ignore_eos": True}, timeout=0.5)
    deadline = time.time() + 3  # 1000 tokens take far longer than this: only an abort ends it in time
    while state.client.stats()["unfinished"] and time.time() < deadline:
        time.sleep(0.05)
    assert not state.client.stats()["unfinished"]
    usage = wait_idle(state)
    assert usage["blocks_free"] == idle["blocks_free"] and usage["slots_free"] == idle["slots_free"]
    assert state.in_flight == 0


# ---- 7: limits a networked server needs -----------------------------------------------------------------

def test_open_and_guarded_paths(server):
    for path in ("/health", "/metrics", "/ping", "/version"):
        assert httpx.get(server["url"] + path).status_code == 200, path
    for path in ("/tokenize", "/detokenize", "/v1/completions"):
        assert_error(httpx.post(server["url"] + path, json={}), 401)
    assert_error(httpx.post(server["url"] + "/tokenize", json={"prompt": "x"},
                            headers={"Authorization": "Bearer test-kez"}), 401)


def _raw(server, data: bytes, wait: float) -> bytes:
    host, port = server["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(data)
        s.settimeout(wait)
        return s.recv(4096)


def test_half_open_connections_are_closed(server, monkeypatch):
    from qwen35.server import guard
    from qwen35.server.http_protocol import TimedH11Protocol

    monkeypatch.setattr(TimedH11Protocol, "header_timeout", 0.5)
    t0 = time.perf_counter()
    assert _raw(server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", wait=10) == b""  # closed
    assert time.perf_counter() - t0 < 5
    monkeypatch.setattr(guard, "BODY_TIMEOUT", 0.5)
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
    assert _raw(server, head, wait=10).startswith(b"HTTP/1.1 408")
    assert_serving(server)


def test_waiting_queue_cap_is_503_with_retry_after(server):
    state = server["state"]
    saved = state.max_waiting_requests, state.max_running
    state.max_waiting_requests, state.max_running = 0, 0
    try:
        r = post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert_error(r, 503)
        assert r.headers["retry-after"]
    finally:
        state.max_waiting_requests, state.max_running = saved
    assert_serving(server)


def test_host_header_check(server):
    state = server["state"]
    state.allowed_hosts = ["api.example"]
    try:
        assert_error(httpx.get(server["url"] + "/v1/models", headers=AUTH), 400)
        assert httpx.get(server["url"] + "/v1/models", headers={**AUTH, "Host": "api.example:8000"}).status_code == 200
    finally:
        state.allowed_hosts = None


# ---- 8: metrics tell the truth --------------------------------------------------------------------------

def test_metrics_count_errors_by_status_and_reason(server):
    post(server, "/v1/chat/completions", {"messages": []})
    text = httpx.get(server["url"] + "/metrics").text
    assert 'qwen35_requests_total{endpoint="/v1/chat/completions",reason="invalid_request",status="400"}' in text
    for name in ("qwen35_prefix_cache_entries", "qwen35_prefix_cache_bytes", "qwen35_kv_cache_prefix_only_ratio",
                 "qwen35_requests_in_flight", "qwen35_request_finished_total"):
        assert name in text


# ---- request-level compatibility ------------------------------------------------------------------------

def test_named_tool_choice_yields_exactly_one_call(server):
    r = post(server, "/v1/chat/completions", {
        "messages": MSG, "tools": TOOLS, "max_tokens": 200, "temperature": 0, "chat_template_kwargs": NO_THINK,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        assert len(choice["message"]["tool_calls"]) == 1


def test_forced_tool_call_cut_off_is_not_presented_complete(server):
    r = post(server, "/v1/chat/completions", {
        "messages": MSG, "tools": TOOLS, "tool_choice": "required", "max_tokens": 12, "temperature": 0,
        "chat_template_kwargs": NO_THINK})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    for call in choice["message"].get("tool_calls") or []:
        args = call["function"]["arguments"]
        try:
            parsed = json.loads(args)
        except ValueError:
            continue  # partial, as generated
        assert {"city", "days"} <= set(parsed), args  # never a closed object missing required fields


@pytest.mark.parametrize("extra,check", [
    ({"structured_outputs": {"choice": ["yes", "no"]}}, lambda t: t in ("yes", "no")),
    ({"guided_choice": ["red", "blue"]}, lambda t: t in ("red", "blue")),
    ({"structured_outputs": {"regex": "[0-9]{3}"}}, lambda t: len(t) == 3 and t.isdigit()),
    ({"guided_json": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
                      "required": ["a"], "additionalProperties": False}},
     lambda t: isinstance(json.loads(t)["a"], int)),
])
def test_vllm_structured_outputs(server, extra, check):
    r = post(server, "/v1/completions", {"prompt": "Answer:", "max_tokens": 40, "temperature": 0, **extra})
    assert r.status_code == 200, r.text
    assert check(r.json()["choices"][0]["text"]), r.json()["choices"][0]["text"]


@pytest.mark.parametrize("body,param", [
    ({"prompt": "a", "suffix": "b"}, "suffix"),
    ({"prompt": "a", "best_of": 2}, "best_of"),
    ({"prompt": "a", "structured_outputs": {"choice": ["a"], "regex": "a"}}, "structured_outputs"),
    ({"prompt": "a", "guided_regex": "a", "guided_choice": ["a"]}, None),
])
def test_unsupported_completion_fields_are_refused(server, body, param):
    assert_error(post(server, "/v1/completions", body), 400, param)


def test_token_id_prompt_is_echoed(server):
    tok = server["state"].tokenizer
    ids = tok.encode("Hello there")
    r = post(server, "/v1/completions", {"prompt": ids, "max_tokens": 2, "echo": True, "ignore_eos": True})
    assert r.json()["choices"][0]["text"].startswith("Hello there")


def test_echo_with_logprobs_returns_prompt_logprobs(server):
    tok = server["state"].tokenizer
    r = post(server, "/v1/completions", {"prompt": "Hello there friend", "max_tokens": 2, "echo": True,
                                         "logprobs": 1, "ignore_eos": True})
    lp = r.json()["choices"][0]["logprobs"]
    n_prompt = len(tok.encode("Hello there friend"))
    assert len(lp["tokens"]) == n_prompt + 2
    assert lp["token_logprobs"][0] is None and all(x is not None for x in lp["token_logprobs"][1:])


def _streamed_choices(server, body) -> dict[int, dict]:
    """A streamed /v1/completions request's chunks joined per choice: text, tokens and text offsets."""
    out: dict[int, dict] = {}
    with httpx.stream("POST", server["url"] + "/v1/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:])["choices"]:
                got = out.setdefault(c["index"], {"text": "", "tokens": [], "text_offset": []})
                got["text"] += c["text"]
                if c["logprobs"]:
                    got["tokens"] += c["logprobs"]["tokens"]
                    got["text_offset"] += c["logprobs"]["text_offset"]
    return out


@pytest.mark.parametrize("logprobs", [None, 1])
def test_streamed_echo_and_offsets_match_the_whole_response(server, logprobs):
    """Each of n streamed choices starts with the echo (and the prompt's logprobs), and its text offsets run on
    across chunks, as in the response sent whole."""
    body = {"prompt": "Hello there friend", "max_tokens": 4, "n": 2, "echo": True, "temperature": 1.0,
            "seed": 3, "ignore_eos": True, "logprobs": logprobs}
    whole = post(server, "/v1/completions", body).json()["choices"]
    streamed = _streamed_choices(server, body)
    assert sorted(streamed) == [0, 1]
    for c in whole:
        got = streamed[c["index"]]
        assert got["text"] == c["text"] and got["text"].startswith("Hello there friend")
        if logprobs is not None:
            assert got["tokens"] == c["logprobs"]["tokens"]
            assert got["text_offset"] == c["logprobs"]["text_offset"]
            assert got["text_offset"][-1] + len(got["tokens"][-1]) == len(got["text"])


def test_echo_with_max_tokens_0_scores_the_prompt_alone(server):
    """What lm-evaluation-harness's loglikelihood sends: the prompt back, with its tokens' logprobs (the same as
    beside a generated token), no generated token, whole and streamed; without echo, 0 is a 400."""
    body = {"prompt": "Hello there friend", "echo": True, "logprobs": 1}
    scored = post(server, "/v1/completions", {**body, "max_tokens": 0}).json()
    choice, usage = scored["choices"][0], scored["usage"]
    assert choice["text"] == "Hello there friend" and choice["finish_reason"] == "length"
    assert usage["completion_tokens"] == 0 and usage["total_tokens"] == usage["prompt_tokens"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == usage["prompt_tokens"] and "".join(lp["tokens"]) == choice["text"]
    assert lp["token_logprobs"][0] is None and all(v <= 0 for v in lp["token_logprobs"][1:])
    beside = post(server, "/v1/completions", {**body, "max_tokens": 1, "temperature": 0}).json()["choices"][0]
    n = len(lp["tokens"])
    assert beside["logprobs"]["token_logprobs"][:n] == lp["token_logprobs"]
    assert _streamed_choices(server, {**body, "max_tokens": 0}) == {
        0: {"text": choice["text"], "tokens": lp["tokens"], "text_offset": lp["text_offset"]}}
    assert_error(post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 0}), 400, "max_tokens")
    assert_serving(server)


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": MSG, "top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ("/v1/chat/completions", {"messages": MSG, "logit_bias": {"99999999": 5}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": MSG, "stop_token_ids": [99999999]}, "stop_token_ids"),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"99999999": 5}}, "logit_bias"),
    ("/v1/completions", {"prompt": "hi", "stop_token_ids": [99999999]}, "stop_token_ids"),
    ("/v1/chat/completions", {"messages": MSG + [{"role": "assistant", "content": "Well"}],
                              "continue_final_message": True}, "continue_final_message"),
])
def test_requests_openai_and_vllm_refuse_are_400s(server, path, body, param):
    assert_error(post(server, path, {"max_tokens": 2, **body}), 400, param)
    assert_serving(server)


def test_wrong_method_is_a_405_with_allow(server):
    r = httpx.get(server["url"] + "/v1/chat/completions", headers=AUTH)
    err = assert_error(r, 405)
    assert err["type"] == "invalid_request_error" and "POST" in r.headers["allow"]


def test_chat_usage_counts_reasoning_tokens(server):
    """Thinking on (the prompt opens <think>): the random model never closes it, so every token is reasoning;
    thinking off: none is."""
    on = post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 5, "ignore_eos": True}).json()
    assert on["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}
    off = post(server, "/v1/chat/completions", {"messages": MSG, "max_tokens": 5, "ignore_eos": True,
                                                "chat_template_kwargs": NO_THINK}).json()
    assert "completion_tokens_details" not in off["usage"]


def test_tokenize_renders_tools(server):
    plain = post(server, "/tokenize", {"messages": MSG}).json()["count"]
    with_tools = post(server, "/tokenize", {"messages": MSG, "tools": TOOLS}).json()["count"]
    assert with_tools > plain + 20
