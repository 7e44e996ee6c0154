"""AsyncLLM: the engine behind an asyncio front, for the server.

One background thread owns the `LLMEngine` and runs steps while there is work; every mutation (add, abort)
is queued to that thread and applied between steps, so the engine itself needs no locks. Each request's
outputs flow to an `asyncio.Queue` on the caller's loop. Leaving the `async for` early (a client that
disconnects) aborts the request, which frees its cache.

Errors: a bad request raises `ValueError` from `generate` before anything is queued (nothing is left behind).
A request the engine fails while running (see llm_engine.py) raises `RequestFailed` from `generate`: the
caller should answer with a server error, without the internal details, which are in the engine's log.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from .llm_engine import EngineConfig, LLMEngine
from .outputs import RequestFailed, RequestOutput
from .sampling_params import SamplingParams

log = logging.getLogger("qwen35.engine")
_DONE = object()


class AsyncLLM:
    """The engine on its own thread; `generate` streams one request's outputs.

    `AsyncLLM.num_unfinished` (property): requests waiting or running, i.e. `generate` calls between their
    start and their end (finished, failed, refused or left early). Counted on the callers' side under a
    lock, so reading it is cheap, thread-safe and needs no round trip to the engine thread; it already
    includes requests still queued for the engine thread (what a cap on waiting requests must see).
    """

    def __init__(self, cfg: EngineConfig | None = None, engine: LLMEngine | None = None) -> None:
        self.engine = engine if engine is not None else LLMEngine(cfg)
        # llguidance's tokenizer takes ~2 s and holds the GIL: build it now, not on the engine thread while
        # other requests are being served (the first structured-output request would stall them all)
        _ = self.engine.guided.lltokenizer
        self._unfinished = 0
        self._count_lock = threading.Lock()
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="qwen35-engine", daemon=True)
        self._thread.start()

    # -- caller side --------------------------------------------------------------------------------
    @property
    def num_unfinished(self) -> int:
        """Requests waiting or running (see the class docstring)."""
        return self._unfinished

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self._unfinished += delta

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield incremental outputs until the request finishes.

        Raises ValueError for a bad request (nothing is queued), RequestFailed when the engine fails it."""
        rid = request_id or f"req-{next(self._ids)}"
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        self._count(1)
        finished = False
        try:
            accepted = loop.create_future()
            self._commands.put(("add", rid, prompt, params or SamplingParams(), loop, q, accepted))
            self._wake.set()
            try:
                await accepted  # raises the engine's ValueError (prompt too long, bad ids ...)
            except ValueError:
                finished = True  # refused: nothing was queued
                raise
            while True:
                item = await q.get()
                if item is _DONE:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.error is not None:
                    finished = True
                    raise RequestFailed(item.error, item)
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:  # left early (or cancelled while being added): the abort is queued after the add
                self.abort(rid)
            self._count(-1)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wake.set()

    def call(self, fn, *args: Any) -> Any:
        """Run `fn(engine, *args)` on the engine thread and wait for it (stats, cache usage)."""
        done = threading.Event()
        box: list = []
        self._commands.put(("call", fn, args, box, done))
        self._wake.set()
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def shutdown(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=10)

    # -- engine thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop:
            self._drain_commands()
            if not self.engine.has_unfinished():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:  # the engine fails requests itself; this is the last resort for its own bugs
                log.exception("engine step failed")
                for rid in list(self._streams):
                    self.engine.abort(rid)
                    self._send(rid, RequestFailed(f"engine step failed ({type(e).__name__})"))
                continue
            for out in outputs:
                self._send(out.request_id, out)

    def _drain_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            kind = cmd[0]
            if kind == "add":
                _, rid, prompt, params, loop, q, accepted = cmd
                try:
                    self.engine.add_request(rid, prompt, params)
                except Exception as e:
                    _call(loop, _resolve, accepted, e)
                    continue
                self._streams[rid] = (loop, q)
                if not _call(loop, _resolve, accepted, None):  # the caller is gone
                    self._streams.pop(rid, None)
                    self.engine.abort(rid)
            elif kind == "abort":
                if self.engine.abort(cmd[1]):
                    self._send(cmd[1], _DONE)
            elif kind == "call":
                _, fn, args, box, done = cmd
                try:
                    box.append(fn(self.engine, *args))
                except Exception as e:
                    box.append(e)
                done.set()

    def _send(self, rid: str, item: Any) -> None:
        target = self._streams.get(rid)
        if target is None:
            return
        loop, q = target
        finished = item is _DONE or isinstance(item, BaseException) or getattr(item, "finished", False)
        if finished:
            del self._streams[rid]
        _call(loop, q.put_nowait, item)


def _call(loop: asyncio.AbstractEventLoop, fn, *args) -> bool:
    """Schedule `fn` on the caller's loop; False when that loop is closed (the caller is gone)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
        return True
    except RuntimeError:
        return False


def _resolve(fut: asyncio.Future, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
