"""The real `openai` client against a live server: models, chat, completions, streaming, n, seeds, usage,
logprobs."""

from __future__ import annotations

import json
import pytest

from tests.server.conftest import API_KEY, wait_idle

MSG = [{"role": "user", "content": "Say something."}]


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_chat_non_stream_with_usage(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=8, temperature=0,
                                       extra_body={"ignore_eos": True,
                                                   "chat_template_kwargs": {"enable_thinking": False}})
    c = r.choices[0]
    assert c.finish_reason == "length" and c.message.role == "assistant"
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat_stream_matches_non_stream(client):
    kw = dict(model="tiny", messages=MSG, max_tokens=10, temperature=0,
              extra_body={"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}})
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


def test_thinking_mode_splits_reasoning(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True})
    msg = r.choices[0].message
    # the random model never closes </think>: everything is reasoning, content empty
    assert getattr(msg, "reasoning_content", None) is not None


def test_n_and_seed_reproducibility(client):
    kw = dict(model="tiny", messages=MSG, max_tokens=6, temperature=1.0, seed=42, n=3,
              extra_body={"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert len(a.choices) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_completions_and_logprobs(client):
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    c = r.choices[0]
    assert c.finish_reason == "length" and len(c.logprobs.token_logprobs) == 5
    assert all(len(t) >= 1 for t in c.logprobs.top_logprobs)
    s = list(client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True}))
    assert "".join(ch.choices[0].text for ch in s if ch.choices) == c.text


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs.content
    assert len(lp) == 4 and all(len(t.top_logprobs) == 2 for t in lp)
    assert all(t.logprob >= t.top_logprobs[-1].logprob for t in lp)


def test_tokenize_detokenize(server):
    import httpx

    auth = {"Authorization": "Bearer test-key"}
    assert httpx.post(server["url"] + "/tokenize", json={"prompt": "hi"}).status_code == 401  # costs CPU: guarded
    r = httpx.post(server["url"] + "/tokenize", json={"prompt": "hello world"}, headers=auth)
    ids = r.json()["tokens"]
    assert r.json()["token_strs"] is None
    assert httpx.post(server["url"] + "/detokenize", json={"tokens": ids}, headers=auth).json()["prompt"] == \
        "hello world"
    r = httpx.post(server["url"] + "/tokenize", json={"prompt": "hello world", "return_token_strs": True},
                   headers=auth)
    assert r.json()["tokens"] == ids and r.json()["token_strs"] == ["hello", "Ġworld"]  # vLLM's option


def test_metrics_and_health(server, client):
    import httpx

    assert httpx.get(server["url"] + "/health").status_code == 200
    client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    text = httpx.get(server["url"] + "/metrics").text
    for name in ("qwen35_requests_total", "qwen35_generation_tokens_total", "qwen35_kv_cache_usage_ratio",
                 "qwen35_prefix_cache_hits", "qwen35_time_to_first_token_seconds_bucket"):
        assert name in text


@pytest.mark.parametrize("body,status,param", [
    ({"model": "tiny", "messages": MSG, "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "tiny", "messages": MSG, "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "messages": MSG, "n": 1000}, 400, "n"),
    ({"model": "tiny", "messages": MSG, "top_p": 5}, 400, "top_p"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages"),
    ({"model": "tiny", "messages": MSG, "tools": []}, 400, "tools"),
    ({"model": "tiny", "messages": MSG, "tool_choice": "required"}, 400, "tool_choice"),
    ({"model": "nope", "messages": MSG}, 404, "model"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "word " * 1200}]}, 400, "messages"),
    ({"model": "tiny", "messages": MSG, "allowed_token_ids": []}, 400, "allowed_token_ids"),
    ({"model": "tiny", "messages": MSG, "allowed_token_ids": [10**9]}, 400, "allowed_token_ids"),
    ({"model": "tiny", "messages": MSG, "bad_words": [""]}, 400, "bad_words"),
    ({"model": "tiny", "messages": MSG, "truncate_prompt_tokens": 0}, 400, "truncate_prompt_tokens"),
    ({"model": "tiny", "messages": MSG, "truncate_prompt_tokens": 1025}, 400, "truncate_prompt_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "word " * 1200}], "truncate_prompt_tokens": 1024},
     400, "truncate_prompt_tokens"),  # cut to the whole context: still no room for an answer
    ({"model": "tiny", "messages": MSG, "cache_salt": ""}, 400, "cache_salt"),
    ({"model": "tiny", "truncate_prompt_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "Hi"}]}]},
     400, "truncate_prompt_tokens"),  # no cut may take images or video
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    import httpx

    r = httpx.post(server["url"] + "/v1/chat/completions", json=body,
                   headers={"Authorization": "Bearer test-key"}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_malformed_json_auth_and_size(server):
    import httpx

    url = server["url"] + "/v1/chat/completions"
    auth = {"Authorization": "Bearer test-key", "content-type": "application/json"}
    r = httpx.post(url, content=b"{not json", headers=auth)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert httpx.post(url, json={"model": "tiny", "messages": MSG}).status_code == 401
    r = httpx.post(url, content=b"x" * (2 << 20), headers=auth)
    assert r.status_code == 413

    def chunks():  # no Content-Length: the body arrives chunked
        for _ in range(40):
            yield b"x" * (64 << 10)

    r = httpx.post(url, content=chunks(), headers=auth)
    assert r.status_code == 413
    r = httpx.post(url, json={"model": "tiny", "messages": MSG, "max_tokens": 2, "some_vendor_field": 1},
                   headers=auth)
    assert r.status_code == 200  # unknown fields are ignored, as vLLM does


def test_disconnect_mid_stream_frees_the_cache(server):
    import httpx

    state = server["state"]
    idle = wait_idle(state)
    aborted = state.metrics.registry.get_sample_value("qwen35_request_finished_total", {"finish_reason": "abort"})
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": "Bearer test-key"},
                      json={"model": "tiny", "messages": MSG, "max_tokens": 400, "stream": True,
                            "extra_body": None, "ignore_eos": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break  # hang up mid-stream
    usage = wait_idle(state)
    assert usage["blocks_free"] == idle["blocks_free"] and usage["slots_free"] == idle["slots_free"]
    # /metrics counts the abort (the stream's generator closes when the client leaves)
    assert state.metrics.registry.get_sample_value("qwen35_request_finished_total",
                                                   {"finish_reason": "abort"}) == (aborted or 0) + 1
    r = httpx.post(server["url"] + "/v1/chat/completions", headers={"Authorization": "Bearer test-key"},
                   json={"model": "tiny", "messages": MSG, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200


def test_logit_bias(client, server):
    tok = server["state"].tokenizer
    target = tok.encode(" lighthouse")[0]
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=3, temperature=0,
                                  logit_bias={str(target): 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].text == tok.decode([target] * 3)


def test_allowed_token_ids_bad_words_and_truncate_prompt_tokens(client, server):
    """vLLM's sampling extras through `extra_body`: the reply keeps to allowed_token_ids, never writes a bad
    word, and a prompt longer than the context is cut to its last k tokens instead of refused."""
    tok = server["state"].tokenizer
    allowed = tok.encode(" lighthouse keeper")
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, temperature=1.0, seed=3,
                                  extra_body={"ignore_eos": True, "allowed_token_ids": allowed})
    assert set(tok.encode(r.choices[0].text)) <= set(allowed)
    extra = {"ignore_eos": True, "allowed_token_ids": allowed}  # words that decode and encode back alike
    free = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0, extra_body=extra)
    first = tok.encode(free.choices[0].text)[0]
    banned = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0,
                                       extra_body={**extra, "bad_words": [tok.decode([first])]}).choices[0].text
    assert first not in tok.encode(banned)
    import httpx

    r = httpx.post(server["url"] + "/v1/completions", headers={"Authorization": "Bearer test-key"}, timeout=60,
                   json={"model": "tiny", "prompt": "Hello", "allowed_token_ids": [tok.im_end_id], "min_tokens": 2})
    assert r.status_code == 400 and "allowed_token_ids leaves no token to sample" in r.text, r.text
    word = tok.decode([allowed[0]])  # a one-token bad word, the only id allowed
    r = httpx.post(server["url"] + "/v1/completions", headers={"Authorization": "Bearer test-key"}, timeout=60,
                   json={"model": "tiny", "prompt": "Hello", "allowed_token_ids": [allowed[0], tok.im_end_id],
                         "bad_words": [word], "min_tokens": 1})
    assert r.status_code == 400 and "allowed_token_ids leaves no token to sample" in r.text, r.text
    long = "word " * 1500  # more than the 1,024-token context
    r = client.completions.create(model="tiny", prompt=long, max_tokens=2, echo=True,
                                  extra_body={"truncate_prompt_tokens": 5})
    assert r.usage.prompt_tokens == 5 and r.choices[0].text.startswith(tok.decode(tok.encode(long)[-5:]))
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long}], max_tokens=2,
                                       extra_body={"truncate_prompt_tokens": -1})
    assert r.usage.prompt_tokens == 1023
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2,
                                       extra_body={"truncate_prompt_tokens": 1024})  # TRL's max_prompt_length
    assert r.usage.prompt_tokens < 30
    salted = [client.chat.completions.create(model="tiny", messages=MSG, max_tokens=1,
                                             extra_body={"cache_salt": "tenant-x"}) for _ in range(2)]
    assert salted[0].usage.prompt_tokens == salted[1].usage.prompt_tokens  # accepted (the engine tests the keys)


def test_response_role_token_ids_and_forced_usage(client, server):
    """--return-tokens-as-token-ids (or the request's own return_tokens_as_token_ids) names logprob tokens
    'token_id:N', text offsets still counting characters; --response-role names the reply's role;
    --enable-force-include-usage ends every stream with usage."""
    import httpx

    state = server["state"]
    tok = state.tokenizer
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, logprobs=2, echo=True,
                                  extra_body={"ignore_eos": True, "return_tokens_as_token_ids": True})
    lp = r.choices[0].logprobs
    ids = [int(t.removeprefix("token_id:")) for t in lp.tokens]
    assert all(t.startswith("token_id:") for t in lp.tokens) and ids[:1] == tok.encode("Hello")
    assert tok.decode(ids) == r.choices[0].text
    assert lp.text_offset == [sum(len(tok.decode([i])) for i in ids[:k]) for k in range(len(ids))]
    assert all(k.startswith("token_id:") for top in lp.top_logprobs[1:] for k in top)
    saved = state.response_role, state.return_tokens_as_token_ids, state.force_include_usage
    state.response_role, state.return_tokens_as_token_ids, state.force_include_usage = "bot", True, True
    try:
        body = {"model": "tiny", "messages": MSG, "max_tokens": 3, "logprobs": True, "top_logprobs": 1}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        got = httpx.post(server["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=60).json()
        assert got["choices"][0]["message"]["role"] == "bot"
        assert all(e["token"].startswith("token_id:") for e in got["choices"][0]["logprobs"]["content"])
        got = httpx.post(server["url"] + "/v1/chat/completions", json={**body, "return_tokens_as_token_ids": False},
                         headers=headers, timeout=60).json()
        assert not any(e["token"].startswith("token_id:") for e in got["choices"][0]["logprobs"]["content"])
        chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=3, stream=True))
        assert chunks[0].choices[0].delta.role == "bot"
        cont = {"model": "tiny", "max_tokens": 2, "add_generation_prompt": False, "continue_final_message": True,
                "messages": MSG + [{"role": "assistant", "content": "Well"}]}  # continuing a message: its role
        got = httpx.post(server["url"] + "/v1/chat/completions", json=cont, headers=headers, timeout=60).json()
        assert got["choices"][0]["message"]["role"] == "assistant"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    finally:
        state.response_role, state.return_tokens_as_token_ids, state.force_include_usage = saved


def test_completions_usage_counts_cached_prompt_tokens(client):
    """Like the chat endpoint, a completion's usage says how many prompt tokens the prefix cache served."""
    prompt = list(range(1000, 1060))
    first = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
    follow = prompt + first.choices[0].model_extra["token_ids"] + [7, 8]  # the next turn: the saved sequence + more
    r = client.completions.create(model="tiny", prompt=follow, max_tokens=1)
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens > 0


def test_continuous_usage_stats(client):
    """vLLM's stream_options.continuous_usage_stats: every chunk carries the usage so far."""
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=5, stream=True,
                                            stream_options={"include_usage": True, "continuous_usage_stats": True},
                                            extra_body={"ignore_eos": True}))
    counts = [c.usage.completion_tokens for c in chunks]
    assert all(c.usage is not None and c.usage.prompt_tokens == 1 for c in chunks)
    assert counts == sorted(counts) and counts[-1] == 5 and counts[0] < 5
    chunks = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=3, n=2, stream=True,
                                            stream_options={"include_usage": True, "continuous_usage_stats": True},
                                            extra_body={"ignore_eos": True}))
    per_choice = [c.usage.completion_tokens for c in chunks if c.choices and c.choices[0].index == 1]
    assert max(per_choice) == 3 and chunks[-1].usage.completion_tokens == 6  # each choice its own; the end, all


def test_prompt_logprobs_and_return_token_ids(server):
    """vLLM's prompt_logprobs (per prompt token: None first, then the token and the k most likely with rank and
    text) and return_token_ids (the prompt's ids, each choice's ids; streamed: with the first chunk, then each
    chunk's), on both endpoints."""
    import httpx

    tok, url = server["state"].tokenizer, server["url"]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def post(path, body):
        r = httpx.post(url + path, json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    prompt = "The lighthouse keeper said"
    ids = tok.encode(prompt)
    got = post("/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 3, "echo": True, "logprobs": 1,
                                   "prompt_logprobs": 3, "return_token_ids": True, "ignore_eos": True})
    choice = got["choices"][0]
    plp = choice["prompt_logprobs"]
    assert choice["prompt_token_ids"] == ids and len(choice["token_ids"]) == 3 and len(plp) == len(ids)
    assert plp[0] is None and all(str(t) in e and 3 <= len(e) <= 4 for t, e in zip(ids[1:], plp[1:]))
    assert all(sorted(v["rank"] for v in e.values() if v["rank"] is not None) == [1, 2, 3] for e in plp[1:])
    echo = choice["logprobs"]  # the echo's own count (1), from the same numbers
    assert all(len(e) <= 2 for e in echo["top_logprobs"][1:len(ids)])
    assert echo["token_logprobs"][1:len(ids)] == [e[str(t)]["logprob"] for t, e in zip(ids[1:], plp[1:])]
    chat = post("/v1/chat/completions", {"model": "tiny", "messages": MSG, "max_tokens": 3, "prompt_logprobs": 0,
                                         "return_token_ids": True})
    assert len(chat["prompt_logprobs"]) == len(chat["prompt_token_ids"]) == chat["usage"]["prompt_tokens"]
    assert len(chat["choices"][0]["token_ids"]) == chat["usage"]["completion_tokens"]
    body = {"model": "tiny", "messages": MSG, "max_tokens": 5, "stream": True, "return_token_ids": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert events[0]["prompt_token_ids"] == chat["prompt_token_ids"]
    streamed = [t for e in events for c in e["choices"] for t in c.get("token_ids", [])]
    assert len(streamed) == events[-1]["usage"]["completion_tokens"]
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "stream": True,
                                                  "prompt_logprobs": 1}, headers=headers, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_logprobs"
    echo_only = {"model": "tiny", "prompt": prompt, "max_tokens": 0, "echo": True, "return_token_ids": True}
    whole = post("/v1/completions", echo_only)["choices"][0]
    with httpx.stream("POST", url + "/v1/completions", json={**echo_only, "stream": True}, headers=headers,
                      timeout=60) as r:
        streamed = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert whole["prompt_token_ids"] == streamed[0]["choices"][0]["prompt_token_ids"] == ids
    assert whole["token_ids"] == streamed[0]["choices"][0]["token_ids"] == []


def test_streamed_text_offsets_match_the_whole_response(client, server):
    """Offsets count token texts in both forms, also where a token is a third of a character (no text yet)."""
    tok = server["state"].tokenizer
    parrot = tok.encode("🦜")  # a character of several byte tokens
    kwargs = dict(model="tiny", prompt="Hello", max_tokens=6, logprobs=0, temperature=0, echo=True,
                  extra_body={"ignore_eos": True, "allowed_token_ids": parrot})
    whole = client.completions.create(**kwargs).choices[0].logprobs.text_offset
    streamed = [o for c in client.completions.create(stream=True, **kwargs) for o in c.choices[0].logprobs.text_offset]
    assert len(parrot) > 1 and streamed == whole and whole == sorted(whole)


def test_a_client_gone_before_its_first_token_is_aborted_in_the_queue(tiny_ckpt):
    """With one sequence running, a second request waits in the queue; when its client gives up there, it is
    aborted at once (its queue place freed), not run to completion after the first for nobody. (Streamed or
    not, a request waits for its first output in `_start`.)"""
    import threading
    import time

    import httpx

    from qwen35.engine.async_engine import AsyncLLM
    from qwen35.engine.config import EngineConfig
    from tests.server.conftest import ENGINE, live_server

    engine = AsyncLLM(EngineConfig(model=str(tiny_ckpt), **{**ENGINE, "max_num_seqs": 1}))
    step = engine.engine.step
    engine.engine.step = lambda: (time.sleep(0.005), step())[1]  # a slower model: the first request runs for seconds
    with live_server(engine) as srv:
        url, state = srv["url"] + "/v1/chat/completions", srv["state"]
        headers = {"Authorization": "Bearer test-key"}
        body = {"model": "tiny", "messages": MSG, "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as first:
            lines = first.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)  # the first request runs
            waiter = threading.Thread(target=lambda: _gives_up(url, headers))
            waiter.start()
            deadline = time.monotonic() + 10
            while state.in_flight < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert state.in_flight == 2  # the second one waits behind it
            waiter.join()
            while state.in_flight > 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            got = state.client.stats()
            assert state.in_flight == 1 and (got["running"], got["waiting"]) == (1, 0)  # the first still runs
            assert state.metrics.registry.get_sample_value("qwen35_request_finished_total",
                                                           {"finish_reason": "abort"}) == 1


def _gives_up(url: str, headers: dict) -> None:
    import httpx

    body = {"model": "tiny", "messages": MSG, "max_tokens": 5}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url, json=body, headers=headers, timeout=0.5)


def test_the_capacity_check_holds_for_prompts_started_together(tiny_ckpt):
    """Prompts of one completion request enter the engine together, yet each is counted before the next is
    checked: five prompts on a server that takes two at a time and queues none are a 503."""
    import httpx

    from qwen35.engine.async_engine import AsyncLLM
    from qwen35.engine.config import EngineConfig
    from tests.server.conftest import ENGINE, live_server

    with live_server(AsyncLLM(EngineConfig(model=str(tiny_ckpt), **{**ENGINE, "max_num_seqs": 2})),
                     max_waiting_requests=0) as srv:
        r = httpx.post(srv["url"] + "/v1/completions", headers={"Authorization": "Bearer test-key"}, timeout=60,
                       json={"model": "tiny", "prompt": ["a", "b", "c", "d", "e"], "max_tokens": 2})
        assert r.status_code == 503 and "at capacity" in r.json()["error"]["message"]
        assert srv["state"].in_flight == 0  # the prompts that had started were aborted
