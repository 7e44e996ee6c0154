"""FastAPI routes: translate HTTP to the async engine and back. No model maths here. `/` is the browser chat
UI (webui/index.html); `/v1/responses` runs through the chat path (responses.py).

Errors are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`): 400 for invalid parameters
(named), bad messages and prompts longer than the context; 401 without the API key; 404 for an unknown
model; 413 for oversized bodies; 503 with `Retry-After` when the waiting queue is full; 500 only for a
failure inside the server, and then without internal text. `guard.py` applies what holds for every route.

The event loop only moves bytes: parsing and validating bodies, rendering templates, tokenising, compiling
grammars and detokenising run in the server's worker threads (`ServerState.run_cpu`), and the model runs
in the engine's process (on a thread of this one with `--no-engine-process`). A client that disconnects,
streaming or not, aborts its request, which frees its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.client import EngineClient
from ..engine.outputs import RequestFailed
from ..multimodal.media import MediaPolicy
from ..multimodal.processor_config import ProcessorConfig
from .chat import ChatRun, dumps, prepare_chat, render_prompt, usage, with_media
from .completions import CompletionRun, prepare_completion
from .guard import Guard, error
from .limits import RequestError, encode_bounded, parse_json
from .messages import MEDIA_PARTS
from .metrics import Metrics
from .serve_args import DEFAULT_MM_LIMITS
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .responses import (ResponseRun, ResponsesRequest, ResponseStore, prepare_response, reply_message,
                        response_usage)

log = logging.getLogger("qwen35.server")


@dataclass
class ServerState:
    client: EngineClient  # AsyncLLM (engine on a thread) or EngineProcess (engine in its own process)
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
    response_role: str = "assistant"  # --response-role
    return_tokens_as_token_ids: bool = False  # --return-tokens-as-token-ids (a request's own field wins)
    force_include_usage: bool = False  # --enable-force-include-usage: every stream ends with usage
    mm_limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MM_LIMITS))  # --limit-mm-per-prompt
    media_policy: MediaPolicy = field(default_factory=MediaPolicy)  # where media URLs may point
    cpu_threads: int = 4  # workers for parsing, templates, tokenising and grammars
    metrics: Metrics = field(default_factory=Metrics)
    responses: ResponseStore = field(default_factory=ResponseStore)  # stored for previous_response_id
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        info = self.client.info
        self.tokenizer = self.client.tokenizer
        self.max_model_len = info.max_model_len
        self.vocab_size = info.vocab_size
        self.max_running = info.max_num_seqs
        self.chat_template = self.chat_template or self.tokenizer.chat_template
        self.cpu = ThreadPoolExecutor(self.cpu_threads, thread_name_prefix="qwen35-cpu")
        # requests with images or video prepare on at most half the workers: fetching and decoding media can take
        # seconds each, and the other half stays free for text (4 slow videos held every worker: a "hello" took
        # 19 s). Waiting for the gate holds no thread. With a single worker there is no half to keep free.
        self.media_gate = asyncio.Semaphore(max(1, self.cpu_threads // 2))
        self.processor = ProcessorConfig.from_checkpoint(info.model) if info.vision else None

    def stream_usage(self, body) -> tuple[bool, bool]:
        """(whether a stream ends with a usage chunk: the request's stream_options, or the server's flag;
        whether every chunk carries the usage so far: vLLM's continuous_usage_stats, with the first)."""
        include = body.include_usage or self.force_include_usage
        return include, include and body.continuous_usage

    def token_ids_as_tokens(self, body) -> bool:
        """Whether logprobs name tokens as 'token_id:N': the request's field, else the server's flag."""
        own = body.return_tokens_as_token_ids
        return self.return_tokens_as_token_ids if own is None else own

    @property
    def in_flight(self) -> int:
        """Generation requests admitted and not yet finished (running or waiting): the client counts them."""
        return self.client.num_unfinished

    async def run_cpu(self, fn, *args: Any) -> Any:
        """Run CPU-bound `fn(*args)` on a worker thread; the event loop keeps serving meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu, functools.partial(fn, *args))


class Overloaded(Exception):
    """The waiting queue is full: 503."""


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="qwen35", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    app.add_middleware(Guard, state=state)
    if state.allowed_origins:  # outside the guard: preflights are answered before the API key check
        app.add_middleware(CORSMiddleware, allow_origins=state.allowed_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in state.allowed_origins)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def prepare(request: Request, model: type[BaseModel], work) -> tuple[Any, Any] | JSONResponse:
        """Parse and validate the body, check the model name, then run `work(body, state)` (the request's
        CPU-bound preparation) on a worker thread: `(body, result)`, or the 4xx that says what is wrong."""
        raw = await request.body()
        try:
            body, media = await state.run_cpu(_parse, raw, model)
            if body.model is not None and body.model not in state.served_names:
                return error(404, f"the model {body.model!r} does not exist; this server serves "
                                  f"{state.served_names}", "model", "not_found_error")
            async with state.media_gate if media else contextlib.nullcontext():
                return body, await state.run_cpu(work, body, state)
        except RequestError as e:
            return error(400, str(e), e.param)
        except ValidationError as e:
            return _validation_error(e)

    page = (Path(__file__).parent / "webui" / "index.html").read_bytes()

    @app.get("/")
    async def chat_ui():
        """The browser chat UI (webui/index.html): one static page, open without the API key (it asks for one)."""
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                                            "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    @app.get("/health")
    async def health():
        return {} if state.client.healthy else error(503, "the engine is not running")

    @app.get("/ping")
    async def ping():
        return {}

    @app.get("/version")
    async def version():
        from .. import __version__

        return {"version": __version__}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": state.created, "owned_by": "qwen35",
             "max_model_len": state.max_model_len, "vision": state.client.info.vision}
            for name in state.served_names]}

    @app.get("/metrics")
    async def metrics():
        state.metrics.update_cache(await asyncio.to_thread(state.client.stats), state.in_flight)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache():
        await asyncio.to_thread(state.client.reset_prefix_cache)
        return {}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        got = await prepare(request, TokenizeRequest, _tokenize)
        if isinstance(got, JSONResponse):
            return got
        ids, strs = got[1]
        return {"tokens": ids, "count": len(ids), "max_model_len": state.max_model_len, "token_strs": strs}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        got = await prepare(request, DetokenizeRequest, _detokenize)
        return got if isinstance(got, JSONResponse) else {"prompt": got[1]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        got = await prepare(request, ChatCompletionRequest, prepare_chat)
        if isinstance(got, JSONResponse):
            return got
        body, plan = got
        # vLLM's rule: a reply that continues the last message (no generation prompt) takes that message's role
        role = state.response_role if body.add_generation_prompt else str(body.messages[-1].get("role", "assistant"))
        run = ChatRun(plan, body.model or state.served_names[0], state.tokenizer, role=role,
                      token_ids_as_tokens=state.token_ids_as_tokens(body), return_token_ids=body.return_token_ids)
        start = time.perf_counter()
        stream = await _admit(state, request, plan, run.id)
        if isinstance(stream, Response):
            return stream
        if body.stream:
            return StreamingResponse(_sse(state, stream, run.stream_chunks, run.chunk, *state.stream_usage(body),
                                          start=start, usage_of=run.usage),
                                     media_type="text/event-stream", background=BackgroundTask(stream.aclose))
        finals = await _whole(state, request, stream)
        if isinstance(finals, Response):
            return finals
        _record(state, finals[0], start)
        return await state.run_cpu(_json, run.response, finals[0])  # parsing a long reply is CPU work

    @app.post("/v1/completions")
    async def completions(request: Request):
        got = await prepare(request, CompletionRequest, prepare_completion)
        if isinstance(got, JSONResponse):
            return got
        body, plan = got
        run = CompletionRun(plan, body, body.model or state.served_names[0], state.tokenizer,
                            token_ids_as_tokens=state.token_ids_as_tokens(body))
        start = time.perf_counter()
        # every prompt enters the engine at once (they batch), then all or nothing: on any failure the ones
        # that started are aborted
        ids_of = [run.id if len(plan.id_lists) == 1 else f"{run.id}-{k}" for k in range(len(plan.id_lists))]
        started = await asyncio.gather(*[_start(state, request, ids, params, rid) for ids, params, rid
                                         in zip(plan.id_lists, plan.params, ids_of)], return_exceptions=True)
        streams = [s for s in started if isinstance(s, _Admitted)]
        failed = next((e for e in started if isinstance(e, BaseException)), None)
        if failed is not None:
            for s in streams:
                await s.aclose()
            sequences = sum(p.n for p in plan.params)
            if isinstance(failed, _ClientGone):
                _record_unfinished(state, None, "abort", sequences)
                return Response(status_code=499)
            if isinstance(failed, RequestFailed):
                _record_unfinished(state, None, "error", sequences)
                return _failed(run.id)
            if streams:  # the prompts that had started were given up
                _record_unfinished(state, None, "abort", sum(len(s.first.outputs) for s in streams))
            if isinstance(failed, Overloaded):
                return _overloaded(failed)
            if isinstance(failed, ValueError):
                return error(400, str(failed))
            raise failed
        if body.stream:
            return StreamingResponse(_sse(state, streams[0], run.stream_chunks, run.chunk, *state.stream_usage(body),
                                          start=start, usage_of=run.usage), media_type="text/event-stream",
                                     background=BackgroundTask(streams[0].aclose))
        finals = await _unless_disconnected(state, request, streams)
        if finals is None:
            return Response(status_code=499)
        if isinstance(finals, JSONResponse):
            return finals
        for final in finals:
            _record(state, final, start)
        return await state.run_cpu(_json, run.response, finals)

    @app.post("/v1/responses")
    async def responses(request: Request):
        got = await prepare(request, ResponsesRequest, prepare_response)
        if isinstance(got, JSONResponse):
            return got
        body, planned = got
        model = body.model or state.served_names[0]
        chat_run = ChatRun(planned.plan, model, state.tokenizer, emit_reasoning_alias=False)
        run = ResponseRun(body, model)
        start = time.perf_counter()
        stream = await _admit(state, request, planned.plan, run.id)
        if isinstance(stream, Response):
            return stream
        if body.stream:
            return StreamingResponse(_response_events(state, stream, chat_run, run, planned, start),
                                     media_type="text/event-stream", background=BackgroundTask(stream.aclose))
        finals = await _whole(state, request, stream)
        if isinstance(finals, Response):
            return finals
        _record(state, finals[0], start)
        return await state.run_cpu(_whole_response, state, chat_run, run, planned, finals[0])

    @app.get("/v1/responses/{response_id}")
    async def stored_response(response_id: str):
        found = state.responses.response(response_id)
        if found is None:
            return error(404, f"response {response_id!r} not found (not stored, or no longer kept)",
                         "response_id", "not_found_error")
        return found

    return app


# ---- request parsing (worker threads) -----------------------------------------------------------------

def _parse(raw: bytes, model: type[BaseModel]) -> tuple[BaseModel, bool]:
    """The validated body, and whether it names an image or video (`_names_media`)."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise RequestError(f"the body must be a JSON object, got {type(data).__name__}")
    return model.model_validate(data), _names_media(data)


def _names_media(data: dict) -> bool:
    """Whether a request may bring images or video to prepare: a dict anywhere in its body with a key of any
    form messages.py takes (message contents, tool outputs, Responses input items alike), or a
    `previous_response_id`, whose stored conversation may hold them."""
    if data.get("previous_response_id") is not None:
        return True
    stack: list[Any] = [data]
    while stack:  # iterative: a body may nest deeply
        node = stack.pop()
        if isinstance(node, dict):
            if any(k in node for k in MEDIA_PARTS):
                return True
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return False


def _json(build, *args: Any) -> Response:
    return Response(dumps(build(*args)), media_type="application/json")


def _validation_error(exc: ValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", [])]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    return error(400, f"{param}: {msg}" if param else msg, param)


def _tokenize(body: TokenizeRequest, state: ServerState) -> tuple[list[int], list[str | None] | None]:
    """The ids, and with `return_token_strs` (vLLM's) each one's token string (byte-level, e.g. 'Ġhello')."""
    if body.messages is not None:
        text, refs = render_prompt(state, body.messages, tools=body.tools,
                                   add_generation_prompt=body.add_generation_prompt,
                                   template_kwargs=body.chat_template_kwargs)
        ids = encode_bounded(state.tokenizer, text, state.max_model_len, "messages", marked=True)
        ids = with_media(state, ids, refs, None)[0]
    elif body.prompt is not None:
        ids = encode_bounded(state.tokenizer, body.prompt, state.max_model_len, "prompt")
    else:
        raise RequestError("give either prompt or messages", "prompt")
    return ids, [state.tokenizer.id_to_token(t) for t in ids] if body.return_token_strs else None


def _detokenize(body: DetokenizeRequest, state: ServerState) -> str:
    if any(t < 0 or t >= state.vocab_size for t in body.tokens):
        raise RequestError(f"token ids must be in [0, {state.vocab_size})", "tokens")
    return state.tokenizer.decode(body.tokens)


# ---- generation -------------------------------------------------------------------------------------

class _ClientGone(Exception):
    """The client disconnected before its request's first output; the request was aborted."""


async def _start(state: ServerState, request: Request, prompt_ids: list[int], params, request_id: str,
                 media: list | None = None) -> _Admitted:
    """Admit one request into the engine and wait for its first output, so that a request the engine
    refuses becomes a 400 before any streaming. Raises Overloaded when the waiting queue is full (the check
    and the client's count of the new request happen with no await between them), and _ClientGone when the
    client leaves first: a request waiting in the queue or in its prefill is aborted then, not run for
    nobody (and its place in the queue is free again)."""
    if state.in_flight >= state.max_running + state.max_waiting_requests:
        raise Overloaded(f"{state.in_flight} requests are running or waiting "
                         f"(--max-num-seqs {state.max_running} + --max-waiting-requests {state.max_waiting_requests})")
    if state.log_requests:
        log.info("request %s: %d prompt tokens, n=%d max_tokens=%s temperature=%s top_p=%s seed=%s%s", request_id,
                 len(prompt_ids), params.n, params.max_tokens, params.temperature, params.top_p, params.seed,
                 f" guided={params.guided.kind}" if params.guided else "")
    stream = state.client.generate(prompt_ids, params, request_id=request_id, media=media)
    # The first __anext__ runs in this task, so the client counts the request before anything else runs (the
    # capacity check above stays exact); a disconnect meanwhile cancels this task, which aborts the request as
    # the cancellation unwinds the client stream.
    me, waiting = asyncio.current_task(), [True]
    gone = asyncio.ensure_future(_disconnected(request))
    gone.add_done_callback(lambda g: me.cancel() if waiting[0] and not g.cancelled() else None)
    try:
        first = await stream.__anext__()
        waiting[0] = False
        return _Admitted(stream, first)
    except asyncio.CancelledError:
        await stream.aclose()
        if gone.done() and not gone.cancelled():
            me.uncancel()
            raise _ClientGone(request_id) from None
        raise
    except BaseException:
        await stream.aclose()
        raise
    finally:
        waiting[0] = False
        gone.cancel()


async def _admit(state: ServerState, request: Request, plan, request_id: str) -> _Admitted | Response:
    """Admit a prepared chat request: its stream, or the response that says why not (503, 400, 500; 499
    when the client left before the first output)."""
    try:
        return await _start(state, request, plan.prompt_ids, plan.params, request_id, plan.media)
    except _ClientGone:
        _record_unfinished(state, None, "abort", plan.params.n)
        return Response(status_code=499)
    except Overloaded as e:
        return _overloaded(e)
    except ValueError as e:
        return error(400, str(e))
    except RequestFailed:
        _record_unfinished(state, None, "error", plan.params.n)
        return _failed(request_id)


async def _whole(state: ServerState, request: Request, stream) -> list | Response:
    """The final output of a non-streamed request, or the response instead (499 when the client left)."""
    finals = await _unless_disconnected(state, request, [stream])
    return Response(status_code=499) if finals is None else finals  # 499: nobody listens; aborted


class _Admitted:
    """An admitted request's outputs, its first one already received. `aclose()` (idempotent, also when never
    iterated) aborts the request if it is still running, which gives its place in the queue back."""

    def __init__(self, stream, first) -> None:
        self.stream, self.first = stream, first

    async def __aiter__(self):
        try:
            yield self.first
            async for out in self.stream:
                yield out
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()  # runs the client stream's abort when it has not finished


async def _last(stream: _Admitted):
    final = None
    try:
        async for out in stream:
            final = out
    finally:
        await stream.aclose()
    return final


async def _unless_disconnected(state: ServerState, request: Request, streams: list) -> list | JSONResponse | None:
    """Run the streams to their final outputs, unless the client goes away first: then abort them all
    and return None. A request that fails inside the engine is a 500 without internal text."""
    sequences = sum(len(s.first.outputs) for s in streams)  # n per prompt
    work = asyncio.ensure_future(asyncio.gather(*[_last(s) for s in streams]))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            for s in streams:
                await s.aclose()
            _record_unfinished(state, None, "abort", sequences)
            return None
        try:
            return work.result()
        except ValueError as e:
            _record_unfinished(state, None, "error", sequences)
            return error(400, str(e))
        except RequestFailed as e:
            log.error("request %s failed: %s", request.url.path, e)
            _record_unfinished(state, None, "error", sequences)
            return error(500, "the request failed inside the engine (see the server log)")
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _choice_usage(total: dict[str, Any], out, choices: list[dict[str, Any]]) -> dict[str, Any]:
    """A chunk's continuous usage: with n > 1, its own choice's completion tokens (as vLLM counts them)."""
    if len(out.outputs) == 1 or len(choices) != 1:
        return total
    n = next((len(o.token_ids) for o in out.outputs if o.index == choices[0]["index"]), 0)
    return {"prompt_tokens": total["prompt_tokens"], "completion_tokens": n, "total_tokens": total["prompt_tokens"] + n}


async def _sse(state: ServerState, stream, to_chunks, chunk, include_usage: bool, continuous: bool, *,
               start: float, usage_of=usage):
    """The SSE stream of one request; `continuous` (vLLM's continuous_usage_stats): each chunk with its usage."""
    final, first, last = None, None, None
    unfinished = "abort"  # until the stream ends well (a client that leaves closes this generator)
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
            so_far = usage_of(out) if continuous else None
            for c in to_chunks(out):
                if so_far is not None:
                    c["usage"] = _choice_usage(so_far, out, c["choices"])
                yield f"data: {dumps(c)}\n\n"
        _record(state, final, start)
        unfinished = None
        if include_usage and final is not None:
            yield f"data: {dumps(chunk([], usage=usage_of(final)))}\n\n"
    except ValueError as e:
        unfinished = "error"
        yield f"data: {dumps({'error': {'message': str(e), 'type': 'invalid_request_error', 'code': 400}})}\n\n"
    except Exception:  # keep the stream well-formed: the SDK raises APIError on an `error` chunk
        unfinished = "error"
        log.exception("stream failed")
        message = "the request failed inside the server (see the server log)"
        yield f"data: {dumps({'error': {'message': message, 'type': 'server_error', 'code': 500}})}\n\n"
    finally:
        if unfinished == "abort" and final is not None and all(c.finish_reason for c in final.outputs):
            _record(state, final, start)  # it had finished: the client left before the last chunks
        elif unfinished is not None:
            _record_unfinished(state, final, unfinished)
        await stream.aclose()
    yield "data: [DONE]\n\n"


def _whole_response(state: ServerState, chat_run: ChatRun, run: ResponseRun, planned, final) -> Response:
    obj = run.response(chat_run.response(final))
    if run.body.store:
        state.responses.put(run.id, planned.conversation + [reply_message(run.output)], obj)
    return Response(dumps(obj), media_type="application/json")


async def _response_events(state: ServerState, stream, chat_run: ChatRun, run: ResponseRun, planned, start: float):
    """The Responses API's typed events for one streamed request (no `[DONE]`: the last event closes it)."""
    final = None
    unfinished = "abort"
    try:
        for e in run.start():
            yield e
        async for out in stream:
            final = out
            for c in chat_run.stream_chunks(out):
                for e in run.events(c):
                    yield e
        for e in run.finish(response_usage(chat_run.usage(final)), final.outputs[0].finish_reason):
            yield e
        if run.body.store:
            state.responses.put(run.id, planned.conversation + [reply_message(run.output)], run.final)
        _record(state, final, start)
        unfinished = None
    except ValueError as e:
        unfinished = "error"
        for e2 in run.fail(str(e), "invalid_request_error"):
            yield e2
    except Exception:
        unfinished = "error"
        log.exception("stream failed")
        for e in run.fail("the request failed inside the server (see the server log)", "server_error"):
            yield e
    finally:
        if unfinished is not None:
            _record_unfinished(state, final, unfinished)
        await stream.aclose()


def _failed(request_id: str) -> JSONResponse:
    return error(500, f"request {request_id} failed inside the engine (see the server log)")


def _overloaded(e: Exception) -> JSONResponse:
    return error(503, f"the server is at capacity: {e}; retry later", headers={"Retry-After": "1"})


def _record_unfinished(state: ServerState, final, reason: str, sequences: int = 1) -> None:
    """A request that ended without finishing: `reason` "abort" (its client left, or the server gave up on it)
    or "error". Each of its `sequences` (n per prompt) counts under `reason`, as finished ones count under
    theirs; with its last output `final`, so do the tokens it produced."""
    if final is not None:
        _count_tokens(state.metrics, final)
        sequences = len(final.outputs)
    state.metrics.finished.labels(reason).inc(sequences)


def _count_tokens(m, final) -> None:
    m.prompt_tokens.inc(len(final.prompt_token_ids))
    m.generation_tokens.inc(sum(len(c.token_ids) for c in final.outputs))


def _record(state: ServerState, final, start: float) -> None:
    m = state.metrics
    if final is not None:
        _count_tokens(m, final)
        for c in final.outputs:
            m.finished.labels(c.finish_reason or "unknown").inc()
    m.e2e.observe(time.perf_counter() - start)
