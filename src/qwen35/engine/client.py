"""The client side of the engine boundary: what the server talks to. Torch-free.

The server and the engine exchange plain, picklable values only:
- commands, client -> engine: `("add", request_id, prompt, SamplingParams, media)` (media: processed
  `MediaItem`s or None), `("abort", request_id)`,
  `("stats", key)`, `("reset_prefix_cache", key)`;
- results, engine -> client, as `(key, item)`: for a request, `ACCEPTED`, then `RequestOutput`s, or a
  `ValueError` (refused: nothing was queued), a `RequestFailed`, or `DONE` (aborted); for a stats or reset
  key, the answer.

So the engine core (`core.py`) can run on a thread of this process (`AsyncLLM`) or in a process of its own
(`EngineProcess`), and the server never sees which, nor any engine internals: it reads `EngineInfo` once
and `stats()` when asked.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .outputs import RequestFailed, RequestOutput
from .sampling_params import SamplingParams


class Signal(enum.Enum):
    ACCEPTED = "accepted"  # the request is queued
    DONE = "done"  # the request was aborted


@dataclass(frozen=True)
class EngineInfo:
    """What a client needs to know about the engine behind it, read once at start."""

    model: str  # the checkpoint directory
    max_model_len: int
    vocab_size: int
    max_num_seqs: int
    num_hidden_layers: int
    hidden_size: int
    is_moe: bool
    cache_plan: str  # the memory plan, as logged at start-up
    speculative: str = "off"  # MTP speculative decoding: "MTP, k=2", "off", or why it is off
    vision: bool = False  # the vision tower is loaded: requests may carry images and video
    vision_note: str = "the checkpoint has no vision tower"  # what the banner says about media input
    parallel: str = "one rank"  # how the model is split across ranks (tensor / expert parallel)
    threads: str = ""  # the engine's torch threads and why, for the banner ("2 torch threads")


class EngineClient:
    """Streams of outputs per request over a transport that carries commands to an engine core and brings its
    results back through `deliver` (called from the transport's thread).

    `num_unfinished`: requests between the start and the end of their `generate` (waiting, running, or still
    being added), counted here, so reading it needs no round trip. `healthy`: the engine can serve.
    """

    def __init__(self, info: EngineInfo, tokenizer, send: Callable[[tuple], None]) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self._send = send
        self._lock = threading.Lock()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._waiters: dict[str, tuple[threading.Event, list]] = {}
        self._ids = itertools.count()
        self._unfinished = 0
        self.healthy = True

    @property
    def num_unfinished(self) -> int:
        return self._unfinished

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None, media: list | None = None) -> AsyncIterator[RequestOutput]:
        """Yield incremental outputs until the request finishes. Raises ValueError for a bad request
        (nothing is queued), RequestFailed when the engine fails it. Leaving early aborts the request.
        `media`: the prompt's processed images / videos (`MediaItem`s), in placeholder order."""
        rid = request_id or f"req-{next(self._ids)}"
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if rid in self._streams:
                raise ValueError(f"request id {rid!r} is already in use")
            self._streams[rid] = (asyncio.get_running_loop(), q)
            self._unfinished += 1
        finished = False
        try:
            if not self.healthy:
                raise RequestFailed("the engine is not running")
            self._send(("add", rid, prompt, params or SamplingParams(), media or None))
            while True:
                item = await q.get()
                if item is Signal.ACCEPTED:
                    continue
                if item is Signal.DONE:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.error is not None:
                    finished = True
                    if item.error_is_request:  # the request's own fault: the server answers 400
                        raise ValueError(item.error)
                    raise RequestFailed(item.error, item)
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            with self._lock:
                self._streams.pop(rid, None)
                self._unfinished -= 1
            if not finished:  # left early (or cancelled while being added): the abort follows the add
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        if self.healthy:
            self._send(("abort", request_id))

    def stats(self, timeout: float = 30.0) -> dict[str, int]:
        """Cache usage and queue counts (`LLMEngine.cache_usage()` plus `unfinished`); blocks for the answer."""
        return self._ask("stats", timeout)

    def reset_prefix_cache(self, timeout: float = 30.0) -> None:
        """Drop every prefix-cache entry (vLLM's `/reset_prefix_cache`); blocks until done."""
        self._ask("reset_prefix_cache", timeout)

    def _ask(self, kind: str, timeout: float) -> Any:
        key = f"#{kind}-{next(self._ids)}"
        done, box = threading.Event(), []
        with self._lock:
            self._waiters[key] = (done, box)
        try:
            if not self.healthy:
                raise RequestFailed("the engine is not running")
            self._send((kind, key))
            if not done.wait(timeout):
                raise TimeoutError(f"the engine did not answer {kind!r} within {timeout:g} s")
        finally:
            with self._lock:
                self._waiters.pop(key, None)
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    # -- transport side --------------------------------------------------------------------------------------
    def deliver(self, key: str, item: Any) -> None:
        """Hand one result to whoever waits for `key` (any thread)."""
        with self._lock:
            waiter = self._waiters.get(key)
            target = self._streams.get(key) if waiter is None else None
        if waiter is not None:
            waiter[1].append(item)
            waiter[0].set()
        elif target is not None:
            try:
                target[0].call_soon_threadsafe(target[1].put_nowait, item)
            except RuntimeError:  # the caller's loop is closed: nobody will read this request
                self.abort(key)

    def fail_all(self, error: BaseException) -> None:
        """The engine is gone: every stream and waiter gets `error`, and later calls fail at once."""
        self.healthy = False
        with self._lock:
            keys = list(self._streams) + list(self._waiters)
        for key in keys:
            self.deliver(key, error)

    def shutdown(self) -> None:
        raise NotImplementedError
