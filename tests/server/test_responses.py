"""The Responses API: input items -> chat messages, and the openai client's `responses.create` against a live
server, whole and streamed, with function tools and `previous_response_id`."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from qwen35.server.limits import RequestError
from qwen35.server.responses import ResponseStore, input_messages, reply_message
from tests.server.conftest import API_KEY, wait_idle

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon"]}},
                         "required": ["city"]}}]
OFF = {"chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True}


# ---- conversion ---------------------------------------------------------------------------------------

def test_input_string_is_one_user_message():
    assert input_messages("hi") == [{"role": "user", "content": "hi"}]


def test_input_items_become_chat_turns():
    items = [
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather "},
                                                        {"type": "input_text", "text": "in Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "look"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Lyon"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Sunny and rain."}]},
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
    ]
    got = input_messages(items)
    assert [m["role"] for m in got] == ["developer", "user", "assistant", "tool", "tool", "assistant", "user"]
    assert got[1]["content"] == "weather in Paris?"
    call_turn = got[2]
    assert call_turn["reasoning_content"] == "look"
    assert [c["id"] for c in call_turn["tool_calls"]] == ["c1", "c2"]
    assert got[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert got[5]["content"] == "Sunny and rain." and "tool_calls" not in got[5]
    assert got[6]["content"] == [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    assert all("_open" not in m for m in got)
    as_chat = {"type": "input_image", "image_url": {"url": "data:image/png;base64,AAAA"}}  # the chat API's form
    assert input_messages([{"role": "user", "content": [as_chat]}])[0]["content"] == got[6]["content"]


@pytest.mark.parametrize("item, says", [
    ({"type": "web_search_call"}, "item type 'web_search_call'"),
    ({"role": "robot", "content": "x"}, "role must be"),
    ({"role": "user", "content": [{"type": "input_audio"}]}, "part type 'input_audio'"),
    ({"type": "function_call", "arguments": "{}"}, "needs a name"),
    ({"role": "user", "content": [{"type": "input_image", "file_id": "f1"}]}, r"a URL string \(got NoneType"),
    ("text", "must be an object"),
])
def test_bad_input_items_are_named(item, says):
    with pytest.raises(RequestError, match=says):
        input_messages([item])


def test_store_is_bounded_and_copies():
    store = ResponseStore(max_entries=2)
    for i in range(3):
        store.put(f"r{i}", [{"role": "user", "content": str(i)}], {"id": f"r{i}"})
    assert len(store) == 2 and store.response("r0") is None
    conv = store.conversation("r2")
    conv.append({"role": "user", "content": "changed"})
    assert len(store.conversation("r2")) == 1
    with pytest.raises(RequestError, match="not found"):
        store.conversation("r0")


def test_reply_message_rebuilds_the_assistant_turn():
    out = [{"type": "reasoning", "content": [{"type": "reasoning_text", "text": "r"}]},
           {"type": "message", "content": [{"type": "output_text", "text": "t"}]},
           {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]
    assert reply_message(out) == {"role": "assistant", "content": "t", "reasoning_content": "r",
                                  "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "f", "arguments": "{}"}}]}


# ---- live -----------------------------------------------------------------------------------------------

def test_create_whole(client):
    r = client.responses.create(model="tiny", input="Say something.", max_output_tokens=8, temperature=0,
                                extra_body=OFF)
    assert r.object == "response" and r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert [o.type for o in r.output] == ["message"]
    assert r.output_text and r.output_text == r.output[0].content[0].text
    assert r.usage.output_tokens == 8 and r.usage.total_tokens == r.usage.input_tokens + 8


def test_stream_matches_whole(client):
    kw = dict(model="tiny", input="Say something.", max_output_tokens=10, temperature=0, extra_body=OFF)
    whole = client.responses.create(**kw).output_text
    events = list(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole
    assert events[-1].response.output_text == whole


def test_reasoning_item_when_thinking(client):
    r = client.responses.create(model="tiny", input="Say something.", max_output_tokens=6, temperature=0,
                                extra_body={"ignore_eos": True})
    # the random model never closes </think>: all of it is reasoning
    assert r.output[0].type == "reasoning" and r.output[0].content[0].text
    assert r.usage.output_tokens_details.reasoning_tokens == 6
    streamed = list(client.responses.create(model="tiny", input="Say something.", max_output_tokens=6,
                                            temperature=0, stream=True, extra_body={"ignore_eos": True}))
    assert streamed[-1].response.usage.output_tokens_details.reasoning_tokens == 6
    off = client.responses.create(model="tiny", input="Say something.", max_output_tokens=6, temperature=0,
                                  reasoning={"effort": "none"}, extra_body={"ignore_eos": True})
    assert "reasoning" not in [o.type for o in off.output]
    assert off.usage.output_tokens_details.reasoning_tokens == 0


def test_forced_function_call_then_continue(client, server):
    first = client.responses.create(model="tiny", input="Weather in Paris?", tools=TOOLS, max_output_tokens=64,
                                    tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
                                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    assert json.loads(calls[0].arguments)["city"] in ("Paris", "Lyon")
    events = list(client.responses.create(
        model="tiny", stream=True, previous_response_id=first.id, max_output_tokens=6, temperature=0,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}], extra_body=OFF))
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.previous_response_id == first.id
    # the stored conversation holds the call and its result, in the model's own format
    conv = server["state"].responses.conversation(events[-1].response.id)
    assert [m["role"] for m in conv] == ["user", "assistant", "tool", "assistant"]
    assert conv[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output[-1].type == "function_call"
    wait_idle(server["state"])


def test_streamed_function_call_events(client):
    events = list(client.responses.create(
        model="tiny", input="Weather in Paris?", tools=TOOLS, stream=True, max_output_tokens=200, temperature=0,
        tool_choice="required", parallel_tool_calls=False, extra_body={"chat_template_kwargs": {"enable_thinking": False}}))
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(added) == 1 and [d.item_id for d in done] == [added[0].item.id]
    for a, d in zip(added, done):
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta"
                         and e.item_id == a.item.id)
        assert json.loads(deltas) == json.loads(d.arguments) and d.name == "get_weather"
    final = events[-1].response
    assert [o.arguments for o in final.output if o.type == "function_call"] == [d.arguments for d in done]


@pytest.mark.parametrize("body, param", [
    ({"input": "x", "previous_response_id": "resp_nope"}, "previous_response_id"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input"),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
])
def test_bad_requests_are_400s_naming_the_field(server, body, param):
    r = httpx.post(server["url"] + "/v1/responses", json={"model": "tiny", **body},
                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_stored_response_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
