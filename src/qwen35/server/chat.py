"""Chat completions: messages -> prompt -> engine -> (reasoning, content, tool calls), whole or streamed.

Everything protocol-specific about a chat request is decided here once (`prepare_chat`): the prompt, the
thinking mode read off the rendered prompt, the sampling parameters, constrained decoding for forced tool
calls and response formats, and how to parse the output. `ChatRun` then turns engine outputs into
OpenAI responses or SSE chunks.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jinja2

from ..engine.outputs import ranked
from ..engine.structured import STRUCTURED_LABELS, GuidedDecoding
from ..multimodal.load import load_media
from ..multimodal.prompt import expand_placeholders
from ..output_format import tool_call_grammar
from ..tokenizer.chat_template import (RESERVED_VARS, TemplateLimitError, continue_final_message, render_chat,
                                      render_chat_isolated)
from ..tokenizer.control_tokens import mark
from .limits import RequestError, encode_bounded
from .messages import MediaRef, check_media_limits, normalize_chat
from .params import sampling_params
from .parsers import ChatOutputParser, prompt_ends_in_reasoning
from .protocol import THINKING_OFF, ChatCompletionRequest

log = logging.getLogger("qwen35.server")


@dataclass
class ChatPlan:
    prompt_ids: list[int]
    params: Any  # SamplingParams
    started_in_reasoning: bool
    tools: list[dict] | None
    parse_tools: bool  # the request has tools: tool-call markup is parsed out of the content
    drop_tool_calls: bool  # tool_choice "none" with tools: markup the model still wrote is removed, no calls
    forced_name: str | None  # tool_choice naming a function: finish_reason stays "stop" (OpenAI)
    include_reasoning: bool
    media: list = field(default_factory=list)  # the prompt's MediaItems, in placeholder order


def _tool_choice(body: ChatCompletionRequest) -> tuple[str, str | None]:
    choice = body.tool_choice
    if choice is None:
        return ("auto" if body.tools else "none"), None
    if choice in ("none", "auto", "required"):
        if choice != "none" and not body.tools:
            raise RequestError(f"tool_choice={choice!r} needs tools", "tool_choice")
        return choice, None
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        names = [t["function"]["name"] for t in body.tools or []]
        if not name or name not in names:
            raise RequestError(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
        return "named", name
    raise RequestError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', ...}", "tool_choice")


def structured_spec(body: Any) -> tuple[dict[str, Any], str] | None:
    """The request's structured-output constraint as `GuidedDecoding` fields, and the field it came from:
    OpenAI's `response_format`, vLLM's `structured_outputs` or its older `guided_*` fields (one of them)."""
    found: list[tuple[dict[str, Any], str]] = []
    fmt = getattr(body, "response_format", None)
    if fmt:
        kind = fmt.get("type")
        if kind == "json_schema":
            spec = fmt.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise RequestError("response_format.json_schema.schema must be a JSON schema object",
                                   "response_format")
            found.append(({"json_schema": schema}, "response_format"))
        elif kind == "json_object":
            found.append(({"json_object": True}, "response_format"))
        elif kind not in ("text", None):
            raise RequestError(f"response_format.type {kind!r} is not one of text, json_object, json_schema",
                               "response_format")
    so = body.structured_outputs
    if so:
        given = {k: v for k, v in so.items() if v is not None and v is not False}
        unknown = set(given) - {"json", "regex", "choice", "grammar", "json_object"}
        if unknown:
            raise RequestError(f"structured_outputs.{sorted(unknown)[0]} is not supported (supported: json, "
                               "regex, choice, grammar, json_object)", "structured_outputs")
        if len(given) != 1:
            raise RequestError("structured_outputs needs exactly one of json, regex, choice, grammar, json_object",
                               "structured_outputs")
        (key, value), = given.items()
        found.append((_spec(key, value, f"structured_outputs.{key}"), "structured_outputs"))
    for key in ("json", "regex", "choice", "grammar"):
        value = getattr(body, f"guided_{key}")
        if value is not None:
            found.append((_spec(key, value, f"guided_{key}"), f"guided_{key}"))
    if len(found) > 1:
        raise RequestError(f"give one structured-output constraint, not {' and '.join(f for _, f in found)}",
                           found[1][1])
    return found[0] if found else None


def _spec(key: str, value: Any, where: str) -> dict[str, Any]:
    if key == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise RequestError(f"{where} is not valid JSON: {e}", where) from None
        if not isinstance(value, dict):
            raise RequestError(f"{where} must be a JSON schema object", where)
        return {"json_schema": value}
    return {{"json_object": "json_object"}.get(key, key): value}


def build_guided(spec: dict[str, Any], where: str, after: int | None, budget: int | None) -> GuidedDecoding:
    """Compile a constraint; any failure (llguidance, a hostile schema) is a 400 naming `where`."""
    try:
        return GuidedDecoding(**spec, start_after=after, reasoning_budget=budget)
    except Exception as e:  # ValueError from llguidance, and TypeError/RecursionError from odd schemas
        text = str(e)
        for label in STRUCTURED_LABELS:  # the engine names its own field; the client sent `where`
            if text.startswith(label + ": "):
                text = text[len(label) + 2:]
                break
        raise RequestError(f"{where}: {text}", where) from None


def _guided(body: ChatCompletionRequest, choice: str, forced: str | None, after: int | None,
            max_tokens: int) -> GuidedDecoding | None:
    """Constrained decoding for forced tool calls (native XML) and structured outputs, after `</think>`.
    With thinking on, reasoning may use `thinking_token_budget` tokens (default: half of max_tokens, at most
    2048 kept for the answer); then `</think>` is forced, so the constrained answer always gets room. A
    `thinking_token_budget` without a constraint is enforced alone (vLLM's field)."""
    budget = None
    if after is not None:
        budget = body.thinking_token_budget  # validated >= 0 by the protocol model
        if budget is None:
            budget = max_tokens - min(max_tokens // 2, 2048)
    if choice in ("required", "named"):
        # a named function is called exactly once (vLLM); required may call several unless parallel is off
        multiple = body.parallel_tool_calls and forced is None
        try:
            grammar = tool_call_grammar(body.tools, [forced] if forced else None, allow_multiple=multiple)
        except Exception as e:
            raise RequestError(str(e), "tools") from None
        return build_guided({"grammar": grammar}, "tools", after, budget)
    found = structured_spec(body)
    if found is None:  # a budget alone caps the reasoning and leaves the answer free
        return None if after is None or body.thinking_token_budget is None else \
            GuidedDecoding(start_after=after, reasoning_budget=budget)
    return build_guided(found[0], found[1], after, budget)


def render_prompt(server, messages: list[Any], *, tools: list[dict] | None, add_generation_prompt: bool,
                  template_kwargs: dict[str, Any] | None, request_template: str | None = None
                  ) -> tuple[str, list[MediaRef]]:
    """Messages -> prompt text with the server's template (or, if the server trusts request templates, the
    request's, rendered in a child process under limits), and the images / videos its placeholders stand for,
    in order. Every failure is a RequestError."""
    if request_template is not None and not server.trust_request_chat_template:
        raise RequestError("chat_template in a request is refused: this server was not started with "
                           "--trust-request-chat-template", "chat_template")
    kwargs = {**server.default_chat_template_kwargs, **(template_kwargs or {})}
    reserved = [k for k in RESERVED_VARS if k in kwargs]
    if reserved:
        raise RequestError(f"chat_template_kwargs may not set {reserved[0]!r}: it is a request field",
                           "chat_template_kwargs")
    clean, media = normalize_chat(messages)
    # the client's strings, as the template will read them (arguments parsed, text parts joined), keys too:
    # any control-token text in them is encoded as text (tokenizer/control_tokens.py)
    tokens_re = server.tokenizer.control_tokens_re
    clean, tools = mark(clean, tokens_re), mark(tools, tokens_re)
    try:
        if request_template is not None:
            return render_chat_isolated(request_template, clean, tools=tools,
                                        add_generation_prompt=add_generation_prompt, **kwargs), media
        return render_chat(server.chat_template, clean, tools=tools, add_generation_prompt=add_generation_prompt,
                           **kwargs), media
    except TemplateLimitError as e:
        raise RequestError(str(e), "chat_template") from None
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as e:
        # raise_exception() in the template, or messages whose shape the template cannot handle
        raise RequestError(f"the chat template rejected the messages: {e}", "messages") from None


def with_media(server, ids: list[int], refs: list[MediaRef], mm_kwargs: dict[str, Any] | None,
               ) -> tuple[list[int], list]:
    """Fetch, decode and process the request's images and videos and expand their placeholders in `ids`
    (blocking: a worker thread runs it). RequestError naming what is wrong: too many, a server without the
    tower, a URL the media policy refuses, data that is not an image or video."""
    if not refs:
        return ids, []
    if not server.client.info.vision:
        raise RequestError(f"the messages contain images or video, but this server takes text only: "
                           f"{server.client.info.vision_note}", "messages")
    check_media_limits(refs, server.mm_limits)
    try:
        # each item's placeholder in `ids` becomes its tokens; at least one token is left for the answer
        items = load_media(refs, server.media_policy, server.processor, mm_kwargs,
                           max_tokens=server.max_model_len - 1 - len(ids) + len(refs))
        ids = expand_placeholders(ids, items, server.tokenizer)
    except ValueError as e:  # MediaError, a placeholder count the template got wrong
        raise RequestError(str(e), "messages") from None
    if len(ids) >= server.max_model_len:
        raise RequestError(f"the prompt has {len(ids)} tokens with its images and video, the model's context is "
                           f"{server.max_model_len} tokens (max_model_len)", "messages")
    return ids, items


def prepare_chat(body: ChatCompletionRequest, server) -> ChatPlan:
    """Everything CPU-bound about a chat request (render, tokenise, compile grammars): run it off the loop."""
    tok = server.tokenizer
    choice, forced = _tool_choice(body)
    if body.top_logprobs and not body.logprobs:  # as OpenAI and vLLM
        raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
    if body.logprobs and (body.top_logprobs or 0) > server.max_logprobs:
        raise RequestError(f"top_logprobs must be at most {server.max_logprobs} (--max-logprobs)", "top_logprobs")
    if (body.prompt_logprobs or 0) > server.max_logprobs:
        raise RequestError(f"prompt_logprobs must be at most {server.max_logprobs} (--max-logprobs)",
                           "prompt_logprobs")
    if body.continue_final_message and body.add_generation_prompt:
        raise RequestError("continue_final_message and add_generation_prompt cannot both be true (set "
                           "add_generation_prompt: false to continue the last message)", "continue_final_message")
    kwargs = dict(body.chat_template_kwargs or {})
    if body.enable_thinking is not None:
        kwargs.setdefault("enable_thinking", body.enable_thinking)
    if body.reasoning_effort is not None and "enable_thinking" not in server.default_chat_template_kwargs:
        # as vLLM: only where neither the request nor --default-chat-template-kwargs says
        kwargs.setdefault("enable_thinking", body.reasoning_effort not in THINKING_OFF)
    tools = body.tools if choice != "none" else None
    text, refs = render_prompt(server, body.messages, tools=tools, add_generation_prompt=body.add_generation_prompt,
                               template_kwargs=kwargs, request_template=body.chat_template)
    if body.continue_final_message:
        text = continue_final_message(text, body.messages)
    ids = encode_bounded(tok, text, server.max_model_len, "messages", marked=True,
                         truncate=body.truncate_prompt_tokens, media=bool(refs))
    ids, media = with_media(server, ids, refs, body.mm_processor_kwargs)
    started_in_reasoning = prompt_ends_in_reasoning(text)
    thinking = True if started_in_reasoning else (False if text.endswith("</think>\n\n") else None)
    after = tok.think_end_id if started_in_reasoning else None

    budget = server.max_model_len - len(ids)
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None and max_tokens > budget:
        max_tokens = budget  # vLLM errors here; clamping keeps agent loops with long histories alive
    guided = _guided(body, choice, forced, after, max_tokens or budget)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    body.skip_special_tokens = False  # <think>, </think>, <tool_call> are special tokens the parsers need
    try:
        params = sampling_params(body, max_tokens=max_tokens or budget, thinking=thinking,
                                 defaults=server.generation_defaults, use_presets=server.use_presets,
                                 logprobs=logprobs, guided=guided, vocab_size=server.vocab_size,
                                 prompt_logprobs=body.prompt_logprobs)
    except ValueError as e:
        raise RequestError(str(e), str(e).split(" ", 1)[0].rstrip(":")) from None
    return ChatPlan(ids, params, started_in_reasoning, body.tools, parse_tools=bool(body.tools),
                    drop_tool_calls=choice == "none",
                    forced_name=forced, include_reasoning=body.include_reasoning, media=media)


@dataclass
class ChatRun:
    """Turns engine outputs of one request into OpenAI chat responses or chunks."""

    plan: ChatPlan
    model: str
    tokenizer: Any
    emit_reasoning_alias: bool = True  # also send `reasoning` (vLLM's name) next to `reasoning_content`
    role: str = "assistant"  # --response-role
    return_token_ids: bool = False  # vLLM's return_token_ids: the prompt's and each choice's ids in the response
    token_ids_as_tokens: bool = False  # logprobs name tokens 'token_id:N' (--return-tokens-as-token-ids)
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        n = self.plan.params.n
        self.parsers = [ChatOutputParser(self.plan.started_in_reasoning, self.plan.tools, self.plan.parse_tools)
                        for _ in range(n)]
        self.tool_called = [False] * n
        self.sent_role = [False] * n

    # -- whole response -----------------------------------------------------------------------------
    def response(self, final) -> dict[str, Any]:
        choices = []
        for c in final.outputs:
            reasoning, content, calls = self.parsers[c.index].parse_all(c.text, c.finish_reason == "length")
            if self.plan.drop_tool_calls:
                calls = []
            # null beside calls or a reasoning (a reply cut off inside <think>), as in vLLM; "" for an empty reply
            message: dict[str, Any] = {"role": self.role,
                                       "content": content or (None if calls or reasoning is not None else content)}
            if reasoning is not None and self.plan.include_reasoning:
                message["reasoning_content"] = reasoning
                if self.emit_reasoning_alias:
                    message["reasoning"] = reasoning
            if calls:
                message["tool_calls"] = calls
            choice = {"index": c.index, "message": message, "logprobs": self._logprobs(c, c.token_ids, c.logprobs),
                      "finish_reason": self._finish_reason(c.finish_reason, bool(calls))}
            if self.return_token_ids:
                choice["token_ids"] = list(c.token_ids)
            choices.append(choice)
        out = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
               "choices": choices, "usage": self.usage(final)}
        if self.plan.params.prompt_logprobs is not None:
            out["prompt_logprobs"] = prompt_logprobs_json(final.prompt_logprobs, self.plan.params.prompt_logprobs,
                                                          self.tokenizer)
        if self.return_token_ids:
            out["prompt_token_ids"] = list(final.prompt_token_ids)
        return out

    def usage(self, final) -> dict[str, Any]:
        return usage(final, self.tokenizer.think_end_id if self.plan.started_in_reasoning else None)

    # -- streaming ----------------------------------------------------------------------------------
    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def stream_chunks(self, out) -> list[dict[str, Any]]:
        chunks = []
        for c in out.outputs:
            i = c.index
            if not self.sent_role[i]:
                self.sent_role[i] = True
                first = {"prompt_token_ids": list(out.prompt_token_ids)} if self.return_token_ids else {}
                chunks.append(self.chunk([{"index": i, "delta": {"role": self.role, "content": ""},
                                           "logprobs": None, "finish_reason": None}], **first))
            deltas = self.parsers[i].feed(c.delta_text) if c.delta_text else []
            if c.finished:
                deltas += self.parsers[i].finish(c.finish_reason == "length")
            lp = self._logprobs(c, c.delta_token_ids, c.logprobs[-len(c.delta_token_ids):]
                                if c.logprobs and c.delta_token_ids else None)
            # this step's token ids go with its first chunk, as its logprobs do
            ids = {"token_ids": list(c.delta_token_ids)} if self.return_token_ids and c.delta_token_ids else {}
            for d in deltas:
                delta = self._delta(d, i)
                if delta:
                    chunks.append(self.chunk([{"index": i, "delta": delta, "logprobs": lp, "finish_reason": None,
                                               **ids}]))
                    lp, ids = None, {}
            if lp is not None or ids:
                chunks.append(self.chunk([{"index": i, "delta": {}, "logprobs": lp, "finish_reason": None, **ids}]))
            if c.finished:
                chunks.append(self.chunk([{"index": i, "delta": {}, "logprobs": None,
                                           "finish_reason": self._finish_reason(c.finish_reason,
                                                                                self.tool_called[i])}]))
        return chunks

    def _delta(self, d, i: int) -> dict[str, Any]:
        kind, value = d
        if kind == "reasoning":
            if not value or not self.plan.include_reasoning:
                return {}
            out = {"reasoning_content": value}
            if self.emit_reasoning_alias:
                out["reasoning"] = value
            return out
        if kind == "content":
            return {"content": value} if value else {}
        if self.plan.drop_tool_calls:
            return {}
        self.tool_called[i] = True
        return {"tool_calls": [value]}

    def _finish_reason(self, reason: str | None, called: bool) -> str | None:
        if reason == "stop" and called and self.plan.forced_name is None:
            return "tool_calls"
        if reason == "abort":
            return "stop"
        return reason

    def _logprobs(self, c, token_ids: list[int], entries) -> dict[str, Any] | None:
        if self.plan.params.logprobs is None or not entries:
            return None
        content = []
        for tok_id, entry in zip(token_ids, entries):
            top = sorted(entry.items(), key=lambda kv: -kv[1])[: self.plan.params.logprobs]
            content.append({"token": self._tok(tok_id), "logprob": entry[tok_id],
                            "bytes": list(self.tokenizer.token_bytes(tok_id)),
                            "top_logprobs": [{"token": self._tok(t), "logprob": lp,
                                              "bytes": list(self.tokenizer.token_bytes(t))} for t, lp in top]})
        return {"content": content}

    def _tok(self, tok_id: int) -> str:
        return token_text(self.tokenizer, tok_id, self.token_ids_as_tokens)


def token_text(tokenizer, tok_id: int, as_id: bool = False) -> str:
    """A token as logprobs show it: its bytes as UTF-8, a cut character replaced; `as_id`: 'token_id:N' (vLLM's
    --return-tokens-as-token-ids, for clients that must map logprobs back to ids whatever the bytes are)."""
    if as_id:
        return f"token_id:{tok_id}"
    return tokenizer.token_bytes(tok_id).decode("utf-8", errors="replace")


def prompt_logprobs_json(entries: list[dict[int, float] | None] | None, k: int, tokenizer) -> list | None:
    """vLLM's `prompt_logprobs` field: per prompt token None (the first) or {"id": {logprob, rank, decoded_token}}
    for the token and the k most likely (an entry computed for more keeps its k best); -inf is -9999.0 (JSON has
    no infinity), as vLLM clamps it."""
    if entries is None:
        return None
    out: list[dict[str, Any] | None] = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        out.append({str(t): {"logprob": max(lp.logprob, -9999.0), "rank": lp.rank, "decoded_token": lp.decoded_token}
                    for t, lp in ranked(top_of(entry, k), k, lambda t: tokenizer.decode([t])).items()})
    return out


def top_of(entry: dict[int, float], k: int) -> dict[int, float]:
    """A logprob entry (the chosen token first) cut to the chosen token and the k most likely."""
    chosen = next(iter(entry))
    return {chosen: entry[chosen], **dict(sorted(entry.items(), key=lambda kv: -kv[1])[:k])}


def usage(final, think_end: int | None = None) -> dict[str, Any]:
    """OpenAI usage of a finished request. `think_end`: the `</think>` id when the reply started inside the
    reasoning; its tokens through `</think>` (all of them without one) are then counted as reasoning tokens."""
    prompt = len(final.prompt_token_ids)
    completion = sum(len(c.token_ids) for c in final.outputs)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if final.num_cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": final.num_cached_tokens}
    if think_end is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": sum(
            c.token_ids.index(think_end) + 1 if think_end in c.token_ids else len(c.token_ids)
            for c in final.outputs)}
    return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
