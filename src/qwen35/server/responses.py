"""The OpenAI Responses API (`POST /v1/responses`, `GET /v1/responses/{id}`) over the chat path.

A Responses request is translated into a chat request (`to_chat_body`) and runs through the same
preparation, engine and output parser as `/v1/chat/completions`; only the shapes differ:

- `input` (a string, or a list of items: messages with `input_text` / `input_image` / `output_text` parts,
  `function_call`, `function_call_output` and `reasoning` items) and `instructions` become chat messages;
  a run of `function_call` items becomes one assistant turn with `tool_calls`, a reasoning item the next
  assistant turn's `reasoning_content`.
- Function tools are flat (`{"type": "function", "name", "parameters"}`); other tool types (web search,
  file search, computer use) are refused by name. `tool_choice` `{"type": "function", "name"}` forces one.
- `reasoning.effort` "none" or "minimal" turns thinking off, another effort on (unless the server's
  `--default-chat-template-kwargs` sets `enable_thinking`); `text.format` is the response format;
  `max_output_tokens` is max_tokens.
- Output items: a `reasoning` item (the model's thinking as `reasoning_text` content, the shape open-weight
  servers use), a `message` with `output_text`, and one `function_call` per tool call.
- Streaming sends the typed events (`response.created`, `response.output_item.added`,
  `response.reasoning_text.delta`, `response.output_text.delta`, `response.function_call_arguments.delta`,
  ... `response.completed` or `response.incomplete`), each with a `sequence_number`, and no `[DONE]`.
- `store` (default true) keeps the conversation (input messages and the reply) in memory under the
  response id, so that a later request can continue it with `previous_response_id`; the store is bounded
  (`ResponseStore`: oldest entries go first). A stored id that is gone is a 400 naming the parameter.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .chat import ChatPlan, prepare_chat
from .limits import MAX_MESSAGES, MAX_TOOLS, RequestError
from .protocol import REASONING_EFFORTS, ChatCompletionRequest

# request fields that carry over to the chat request unchanged (the sampling extras clients send)
_PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                "repetition_penalty", "seed", "stop", "parallel_tool_calls", "chat_template_kwargs",
                "enable_thinking", "thinking_token_budget", "logit_bias", "min_tokens", "allowed_token_ids",
                "bad_words", "cache_salt", "truncate_prompt_tokens")


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[dict[str, Any]] = Field(max_length=MAX_MESSAGES)
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    stream: bool = False
    store: bool = True
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None


# ---- request -> chat ----------------------------------------------------------------------------------

def _text_of(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's content as chat content: text parts (input_text / output_text / text) and images."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of parts", where)
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, dict) and isinstance(url.get("url"), str):  # the chat API's form, taken too
                url = url["url"]
            if not isinstance(url, str):
                raise RequestError(f"{where}.content[{j}]: input_image needs image_url, a URL string "
                                   f"(got {type(url).__name__}; file_id is not supported)", where)
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise RequestError(f"{where}.content[{j}]: part type {kind!r} is not supported (input_text, "
                               "output_text, input_image)", where)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses input items -> chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    reasoning: str | None = None  # a reasoning item waits for the assistant turn it belongs to

    def assistant() -> dict[str, Any]:
        """The assistant turn the next output item joins: the last message if it is an open assistant turn."""
        nonlocal reasoning
        if not (messages and messages[-1]["role"] == "assistant" and messages[-1].get("_open")):
            messages.append({"role": "assistant", "content": "", "_open": True})
        if reasoning is not None:
            messages[-1]["reasoning_content"] = reasoning
            reasoning = None
        return messages[-1]

    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError(f"{where} must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise RequestError(f"{where}.role must be user, system, developer or assistant, got {role!r}",
                                   "input")
            content = _text_of(item.get("content", ""), where)
            if role == "assistant":
                turn = assistant()
                turn["content"] = (turn["content"] or "") + (content if isinstance(content, str) else "")
            else:
                messages.append({"role": role, "content": content})
        elif kind == "reasoning":
            texts = [c.get("text", "") for c in item.get("content") or [] if isinstance(c, dict)]
            texts = texts or [s.get("text", "") for s in item.get("summary") or [] if isinstance(s, dict)]
            reasoning = "".join(texts)
        elif kind == "function_call":
            name, args = item.get("name"), item.get("arguments", "{}")
            if not isinstance(name, str) or not name:
                raise RequestError(f"{where}: a function_call needs a name", "input")
            call_id = item.get("call_id") or item.get("id") or f"call_{uuid.uuid4().hex[:24]}"
            assistant().setdefault("tool_calls", []).append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}})
        elif kind == "function_call_output":
            output = item.get("output", "")
            if isinstance(output, list):
                output = _text_of(output, where)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": output if isinstance(output, (str, list)) else json.dumps(output)})
        else:
            raise RequestError(f"{where}: item type {kind!r} is not supported (message, function_call, "
                               "function_call_output, reasoning)", "input")
    for m in messages:  # an assistant turn stays open while assistant items follow; a user or tool message ends it
        m.pop("_open", None)
    return messages


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise RequestError(f"tools[{i}]: tool type {kind!r} is not supported; this server runs function "
                               "tools only", "tools")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise RequestError(f"tools[{i}] needs a name", "tools")
        fn = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not choice.get("name"):
            raise RequestError("tool_choice must be none, auto, required or {'type': 'function', 'name': ...}",
                               "tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name", "response"), "schema": fmt.get("schema")}}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    raise RequestError(f"text.format.type {fmt.get('type')!r} is not one of text, json_object, json_schema",
                       "text.format")


def to_chat_body(body: ResponsesRequest, history: list[dict[str, Any]]) -> ChatCompletionRequest:
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + \
        history + input_messages(body.input)
    if not messages:
        raise RequestError("input is empty", "input")
    chat: dict[str, Any] = {"model": body.model, "messages": messages, "stream": body.stream,
                            "tools": chat_tools(body.tools), "tool_choice": chat_tool_choice(body.tool_choice),
                            "max_tokens": body.max_output_tokens, "response_format": _response_format(body.text)}
    extra = {**(body.model_extra or {}), "temperature": body.temperature, "top_p": body.top_p,
             "parallel_tool_calls": body.parallel_tool_calls}
    chat.update({k: extra[k] for k in _PASSTHROUGH if extra.get(k) is not None})
    effort = (body.reasoning or {}).get("effort")
    if effort in REASONING_EFFORTS:  # switches thinking as in chat requests; other values are ignored
        chat["reasoning_effort"] = effort
    return ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})


# ---- the store ------------------------------------------------------------------------------------------

class ResponseStore:
    """Stored responses (the conversation up to and including the reply, and the response object), at most
    `max_entries` and about `max_bytes` of JSON; the oldest go first. Thread-safe: worker threads read it."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 256 << 20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[str, tuple[list[dict], dict, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response_id: str, conversation: list[dict[str, Any]], response: dict[str, Any]) -> None:
        size = len(json.dumps(conversation, ensure_ascii=False)) + len(json.dumps(response, ensure_ascii=False))
        if size > self.max_bytes:
            return
        with self._lock:
            self._items[response_id] = (conversation, response, size)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, _, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def conversation(self, response_id: str) -> list[dict[str, Any]]:
        with self._lock:
            got = self._items.get(response_id)
        if got is None:
            raise RequestError(f"previous response {response_id!r} not found (it was not stored, or the store "
                               f"kept only the newest {self.max_entries})", "previous_response_id")
        return copy.deepcopy(got[0])

    def response(self, response_id: str) -> dict[str, Any] | None:
        with self._lock:
            got = self._items.get(response_id)
        return None if got is None else got[1]

    def __len__(self) -> int:
        return len(self._items)


# ---- prepare (worker thread) -------------------------------------------------------------------------

@dataclass
class ResponsesPlan:
    chat: ChatCompletionRequest
    plan: ChatPlan
    conversation: list[dict[str, Any]]  # the chat messages the reply continues (stored with the reply)


def prepare_response(body: ResponsesRequest, server) -> ResponsesPlan:
    history = server.responses.conversation(body.previous_response_id) if body.previous_response_id else []
    history = [m for m in history if m.get("role") != "system"] if body.instructions else history
    chat = to_chat_body(body, history)
    conversation = copy.deepcopy(chat.messages)
    return ResponsesPlan(chat, prepare_chat(chat, server), conversation)


# ---- output ---------------------------------------------------------------------------------------------

def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class ResponseRun:
    """One response: its object, built whole (`response`) or by events (`events`)."""

    body: ResponsesRequest
    model: str
    id: str = field(default_factory=lambda: _new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.output: list[dict[str, Any]] = []
        self.seq = 0
        self.current: dict[str, Any] | None = None  # the item being streamed

    def envelope(self, status: str, usage_: dict[str, Any] | None = None, reason: str | None = None) -> dict:
        b = self.body
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "error": None, "incomplete_details": {"reason": reason} if reason else None,
                "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": self.model,
                "output": self.output, "parallel_tool_calls": b.parallel_tool_calls,
                "previous_response_id": b.previous_response_id, "reasoning": b.reasoning or {"effort": None,
                                                                                              "summary": None},
                "store": b.store, "temperature": b.temperature, "top_p": b.top_p,
                "text": b.text or {"format": {"type": "text"}},
                "tool_choice": b.tool_choice or "auto", "tools": b.tools or [], "truncation": "disabled",
                "usage": usage_, "user": b.user, "metadata": b.metadata or {}}

    # -- whole -------------------------------------------------------------------------------------------
    def response(self, chat_response: dict[str, Any]) -> dict[str, Any]:
        choice = chat_response["choices"][0]
        message = choice["message"]
        if message.get("reasoning_content"):
            self.output.append(_reasoning_item(_new_id("rs"), message["reasoning_content"], "completed"))
        if message.get("content") or not message.get("tool_calls"):
            self.output.append(_message_item(_new_id("msg"), message.get("content") or "", "completed"))
        for call in message.get("tool_calls") or []:
            self.output.append(_call_item(_new_id("fc"), call["id"], call["function"]["name"],
                                          call["function"]["arguments"], "completed"))
        reason = "max_output_tokens" if choice["finish_reason"] == "length" else None
        return self.envelope("incomplete" if reason else "completed", response_usage(chat_response["usage"]),
                             reason)

    # -- streamed ----------------------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def start(self) -> list[str]:
        created = self.envelope("in_progress")
        return [self.event("response.created", response=created), self.event("response.in_progress",
                                                                              response=created)]

    def events(self, chunk: dict[str, Any]) -> list[str]:
        """A chat stream chunk -> Responses events."""
        out: list[str] = []
        for choice in chunk.get("choices", []):
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._open("reasoning")
                self.current["text"] += delta["reasoning_content"]
                out.append(self.event("response.reasoning_text.delta", item_id=self.current["item"]["id"],
                                      output_index=self.current["index"], content_index=0,
                                      delta=delta["reasoning_content"]))
            if delta.get("content"):
                out += self._open("message")
                self.current["text"] += delta["content"]
                out.append(self.event("response.output_text.delta", item_id=self.current["item"]["id"],
                                      output_index=self.current["index"], content_index=0,
                                      delta=delta["content"], logprobs=[]))
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                if call.get("id"):
                    out += self._close()
                    out += self._open("function_call", call_id=call["id"], name=fn.get("name", ""))
                if fn.get("arguments") and self.current and self.current["kind"] == "function_call":
                    self.current["text"] += fn["arguments"]
                    out.append(self.event("response.function_call_arguments.delta",
                                          item_id=self.current["item"]["id"], output_index=self.current["index"],
                                          delta=fn["arguments"]))
        return out

    def finish(self, usage_: dict[str, Any] | None, finish_reason: str | None) -> list[str]:
        out = self._close()
        reason = "max_output_tokens" if finish_reason == "length" else None
        final = self.final = self.envelope("incomplete" if reason else "completed", usage_, reason)
        out.append(self.event("response.incomplete" if reason else "response.completed", response=final))
        return out

    def fail(self, message: str, code: str) -> list[str]:
        out = self._close()
        failed = self.envelope("failed")
        failed["error"] = {"code": code, "message": message}
        return out + [self.event("error", code=code, message=message, param=None),
                      self.event("response.failed", response=failed)]

    def _open(self, kind: str, **call: str) -> list[str]:
        if self.current is not None and self.current["kind"] == kind and kind != "function_call":
            return []
        out = self._close()
        index = len(self.output)
        if kind == "reasoning":
            item = _reasoning_item(_new_id("rs"), "", "in_progress")
            item["content"] = []
        elif kind == "message":
            item = _message_item(_new_id("msg"), "", "in_progress")
            item["content"] = []
        else:
            item = _call_item(_new_id("fc"), call["call_id"], call["name"], "", "in_progress")
        self.current = {"kind": kind, "item": item, "index": index, "text": ""}
        out.append(self.event("response.output_item.added", output_index=index, item=item))
        if kind == "message":
            out.append(self.event("response.content_part.added", item_id=item["id"], output_index=index,
                                  content_index=0, part=_text_part("")))
        self.output.append(item)
        return out

    def _close(self) -> list[str]:
        cur, self.current = self.current, None
        if cur is None:
            return []
        item_id, index, text = cur["item"]["id"], cur["index"], cur["text"]
        out = []
        if cur["kind"] == "reasoning":
            done = _reasoning_item(item_id, text, "completed")
            out.append(self.event("response.reasoning_text.done", item_id=item_id, output_index=index,
                                  content_index=0, text=text))
        elif cur["kind"] == "message":
            done = _message_item(item_id, text, "completed")
            out.append(self.event("response.output_text.done", item_id=item_id, output_index=index,
                                  content_index=0, text=text, logprobs=[]))
            out.append(self.event("response.content_part.done", item_id=item_id, output_index=index,
                                  content_index=0, part=_text_part(text)))
        else:
            done = _call_item(item_id, cur["item"]["call_id"], cur["item"]["name"], text, "completed")
            out.append(self.event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                                  name=done["name"], arguments=text))
        self.output[index] = done
        out.append(self.event("response.output_item.done", output_index=index, item=done))
        return out


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [_text_part(text)]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def response_usage(chat_usage: dict[str, Any]) -> dict[str, Any]:
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    return {"input_tokens": chat_usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": chat_usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": chat_usage["total_tokens"]}


def reply_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The response's output items as the chat assistant message a continuation renders."""
    message: dict[str, Any] = {"role": "assistant", "content": ""}
    for item in output:
        if item["type"] == "reasoning":
            message["reasoning_content"] = "".join(c.get("text", "") for c in item["content"])
        elif item["type"] == "message":
            message["content"] = "".join(c.get("text", "") for c in item["content"])
        elif item["type"] == "function_call":
            message.setdefault("tool_calls", []).append(
                {"id": item["call_id"], "type": "function",
                 "function": {"name": item["name"], "arguments": item["arguments"]}})
    return message
