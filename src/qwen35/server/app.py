"""FastAPI routes: translate HTTP to the async engine and back. No model maths here.

Errors are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`): 400 for invalid parameters
(named), bad messages and prompts longer than the context; 401 without the API key; 404 for an unknown
model; 413 for oversized bodies. A client that disconnects mid-stream aborts its request, which frees its
cache. Nothing a request does can stop the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.async_engine import AsyncLLM
from ..tokenizer.chat_template import render_chat
from .chat import ChatRun, RequestError, dumps, prepare_chat, usage
from .messages import MessageError, normalize_messages
from .metrics import Metrics
from .params import sampling_params
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

log = logging.getLogger("qwen35.server")


@dataclass
class ServerState:
    engine: AsyncLLM
    served_names: list[str]
    api_key: str | None = None
    chat_template: str | None = None
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    use_presets: bool = True
    max_request_bytes: int = 16 << 20
    # set from `qwen35 serve` flags (serve.py); the defaults are what a library user of create_app gets
    trust_request_chat_template: bool = False  # --trust-request-chat-template: allow `chat_template` in requests
    max_waiting_requests: int = 256  # --max-waiting-requests: past this many queued, 503 + Retry-After
    allowed_origins: list[str] = field(default_factory=list)  # --allowed-origins: CORS ("*" for any)
    allowed_hosts: list[str] | None = None  # --allowed-hosts: Host header check (None: any)
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # --default-chat-template-kwargs
    max_logprobs: int = 20  # --max-logprobs
    log_requests: bool = False  # --enable-log-requests
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.tokenizer = self.engine.engine.tokenizer
        self.max_model_len = self.engine.engine.max_model_len
        self.chat_template = self.chat_template or self.tokenizer.chat_template


def error(status: int, message: str, param: str | None = None, kind: str | None = None) -> JSONResponse:
    kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                    413: "invalid_request_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="qwen35", docs_url=None, redoc_url=None)
    app.state.server = state

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if state.api_key and request.url.path.startswith("/v1"):
            if request.headers.get("authorization", "") != f"Bearer {state.api_key}":
                return error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > state.max_request_bytes:
            return error(413, f"request body of {length} bytes exceeds the limit of {state.max_request_bytes}")
        return await call_next(request)

    app.add_middleware(_BodyLimit, limit=state.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", []) if p != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return error(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', msg)}")
        return error(400, f"{param}: {msg}" if param else msg, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error")
        return error(500, f"internal error: {type(exc).__name__}: {exc}")

    def check_model(name: str | None) -> JSONResponse | None:
        if name is not None and name not in state.served_names:
            return error(404, f"the model {name!r} does not exist; this server serves {state.served_names}",
                         "model", "not_found_error")
        return None

    @app.get("/health")
    async def health():
        return {}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": state.created, "owned_by": "qwen35",
             "max_model_len": state.max_model_len} for name in state.served_names]}

    @app.get("/metrics")
    async def metrics():
        state.metrics.update_cache(await asyncio.to_thread(state.engine.call, lambda e: e.cache_usage()))
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if (bad := check_model(body.model)) is not None:
            return bad
        if body.messages is not None:
            try:
                text = render_chat(state.chat_template, normalize_messages(body.messages),
                                   add_generation_prompt=body.add_generation_prompt,
                                   **(body.chat_template_kwargs or {}))
            except MessageError as e:
                return error(400, str(e), "messages")
        elif body.prompt is not None:
            text = body.prompt
        else:
            return error(400, "give either prompt or messages", "prompt")
        ids = state.tokenizer.encode(text)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.max_model_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if (bad := check_model(body.model)) is not None:
            return bad
        vocab = state.engine.engine.model_cfg.text.vocab_size
        if any(t < 0 or t >= vocab for t in body.tokens):
            return error(400, f"token ids must be in [0, {vocab})", "tokens")
        return {"prompt": state.tokenizer.decode(body.tokens)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        if (bad := check_model(body.model)) is not None:
            return bad
        try:
            plan = prepare_chat(body, state)
        except MessageError as e:
            return error(400, str(e), "messages")
        except RequestError as e:
            return error(400, str(e), e.param)
        except ValueError as e:
            return error(400, str(e))
        run = ChatRun(plan, body.model or state.served_names[0], state.tokenizer)
        rid = run.id
        start = time.perf_counter()
        try:
            stream = await _primed(state.engine.generate(plan.prompt_ids, plan.params, request_id=rid))
        except ValueError as e:
            return error(400, str(e))
        if body.stream:
            return StreamingResponse(_sse_chat(state, run, stream, body.include_usage, start),
                                     media_type="text/event-stream")
        final = await _last(stream)
        _record(state, "chat", final, start)
        return run.response(final)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if (bad := check_model(body.model)) is not None:
            return bad
        prompts = body.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            return error(400, "prompt must not be empty", "prompt")
        if len(prompts) > 1 and body.stream:
            return error(400, "streaming supports one prompt per request", "prompt")
        id_lists = [state.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        for ids in id_lists:
            if not ids:
                return error(400, "prompt must not be empty", "prompt")
            if len(ids) >= state.max_model_len:
                return error(400, f"the prompt is {len(ids)} tokens; this model's context is "
                                  f"{state.max_model_len} tokens (max_model_len)", "prompt")
        try:
            params = [sampling_params(body, max_tokens=min(body.max_tokens or 16, state.max_model_len - len(ids)),
                                      thinking=None, defaults=state.generation_defaults, use_presets=False,
                                      logprobs=body.logprobs) for ids in id_lists]
        except ValueError as e:
            return error(400, str(e), str(e).split(" ", 1)[0])
        cid = f"cmpl-{uuid.uuid4().hex}"
        model = body.model or state.served_names[0]
        start = time.perf_counter()
        if body.stream:
            try:
                stream = await _primed(state.engine.generate(id_lists[0], params[0], request_id=cid))
            except ValueError as e:
                return error(400, str(e))
            return StreamingResponse(_sse_completion(state, cid, model, stream, body, start),
                                     media_type="text/event-stream")
        try:
            finals = await asyncio.gather(*[_last(state.engine.generate(ids, p, request_id=f"{cid}-{k}"))
                                            for k, (ids, p) in enumerate(zip(id_lists, params))])
        except ValueError as e:
            return error(400, str(e))
        choices, total = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for k, final in enumerate(finals):
            _record(state, "completions", final, start)
            for c in final.outputs:
                text = (prompts[k] if body.echo and isinstance(prompts[k], str) else "") + c.text
                choices.append({"index": k * body.n + c.index, "text": text, "finish_reason": _reason(c),
                                "logprobs": _completion_logprobs(state, c, c.token_ids, c.logprobs)})
            for key, v in usage(final).items():
                if key in total:
                    total[key] += v
        return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": total}

    return app


class _BodyLimit:
    """ASGI guard for bodies sent without Content-Length (chunked): counts bytes as they arrive; past the
    limit the app sees a disconnect (it stops reading), its own answer is dropped, and the client gets 413."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen, exceeded = 0, False

        async def limited():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await error(413, f"request body exceeds the limit of {self.limit} bytes")(scope, receive, send)


async def _last(stream):
    final = None
    try:
        async for out in stream:
            final = out
    finally:
        await stream.aclose()
    return final


async def _primed(stream):
    """Wait for the first output, so a request the engine refuses becomes a 400 before any streaming."""
    first = await stream.__anext__()

    async def rest():
        try:
            yield first
            async for out in stream:
                yield out
        finally:
            await stream.aclose()  # a disconnected client lands here: aborts the request

    return rest()


def _reason(c) -> str | None:
    return "stop" if c.finish_reason == "abort" else c.finish_reason


def _record(state: ServerState, endpoint: str, final, start: float) -> None:
    m = state.metrics
    m.requests.labels(endpoint, "ok").inc()
    if final is not None:
        m.prompt_tokens.inc(len(final.prompt_token_ids))
        m.generation_tokens.inc(sum(len(c.token_ids) for c in final.outputs))
    m.e2e.observe(time.perf_counter() - start)


def _completion_logprobs(state: ServerState, c, token_ids, entries) -> dict[str, Any] | None:
    if not entries:
        return None
    tok = state.tokenizer
    tokens = [tok.token_bytes(t).decode("utf-8", errors="replace") for t in token_ids]
    return {"tokens": tokens, "token_logprobs": [e[t] for t, e in zip(token_ids, entries)],
            "top_logprobs": [{tok.token_bytes(t).decode("utf-8", errors="replace"): lp for t, lp in e.items()}
                             for e in entries],
            "text_offset": []}


async def _sse_chat(state: ServerState, run: ChatRun, stream, include_usage: bool, start: float):
    final, first, last = None, None, None
    try:
        async for out in stream:
            final = out
            now = time.perf_counter()
            if first is None:
                first = now
                state.metrics.ttft.observe(now - start)
            elif last is not None:
                state.metrics.itl.observe(now - last)
            last = now
            for chunk in run.stream_chunks(out):
                yield f"data: {dumps(chunk)}\n\n"
        if include_usage and final is not None:
            yield f"data: {dumps(run.chunk([], usage=usage(final)))}\n\n"
        _record(state, "chat", final, start)
    except ValueError as e:
        yield f"data: {dumps({'error': {'message': str(e), 'type': 'invalid_request_error', 'code': 400}})}\n\n"
    except Exception as e:  # keep the connection well-formed: the SDK raises APIError on an `error` chunk
        log.exception("stream failed")
        yield f"data: {dumps({'error': {'message': str(e), 'type': 'server_error', 'code': 500}})}\n\n"
    finally:
        await stream.aclose()
    yield "data: [DONE]\n\n"


async def _sse_completion(state: ServerState, cid: str, model: str, stream, body: CompletionRequest, start: float):
    final = None
    created = int(time.time())
    try:
        async for out in stream:
            final = out
            for c in out.outputs:
                if not c.delta_text and not c.finished:
                    continue
                lp = (_completion_logprobs(state, c, c.delta_token_ids, c.logprobs[-len(c.delta_token_ids):])
                      if c.logprobs and c.delta_token_ids else None)
                chunk = {"id": cid, "object": "text_completion", "created": created, "model": model,
                         "choices": [{"index": c.index, "text": c.delta_text, "logprobs": lp,
                                      "finish_reason": _reason(c) if c.finished else None}]}
                yield f"data: {dumps(chunk)}\n\n"
        if body.include_usage and final is not None:
            chunk = {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [],
                     "usage": usage(final)}
            yield f"data: {dumps(chunk)}\n\n"
        _record(state, "completions", final, start)
    except ValueError as e:
        yield f"data: {dumps({'error': {'message': str(e), 'type': 'invalid_request_error', 'code': 400}})}\n\n"
    finally:
        await stream.aclose()
    yield "data: [DONE]\n\n"
