"""AsyncLLM: the engine on a thread of this process, behind the asyncio client (`client.py`).

One background thread owns the `LLMEngine` (through an `EngineCore`) and runs steps while there is work;
every command (add, abort, stats) is queued to that thread and applied between steps, so the engine itself
needs no locks. Each request's outputs flow to an `asyncio.Queue` on the caller's loop. Leaving the
`async for` early (a client that disconnects) aborts the request, which frees its cache.

Errors: a bad request raises `ValueError` from `generate` before anything is queued (nothing is left behind).
A request the engine fails while running (see llm_engine.py) raises `RequestFailed` from `generate`: the
caller should answer with a server error, without the internal details, which are in the engine's log.

`EngineProcess` (process.py) is the same client with the engine in a process of its own.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from .client import EngineClient
from .config import EngineConfig
from .core import EngineCore, engine_info
from .llm_engine import LLMEngine


class AsyncLLM(EngineClient):
    def __init__(self, cfg: EngineConfig | None = None, engine: LLMEngine | None = None) -> None:
        self.engine = engine if engine is not None else LLMEngine(cfg)
        # llguidance's tokenizer takes ~2 s and holds the GIL: build it now, not on the engine thread while
        # other requests are being served (the first structured-output request would stall them all)
        _ = self.engine.guided.lltokenizer
        self._inbox: queue.Queue = queue.Queue()
        super().__init__(engine_info(self.engine), self.engine.tokenizer, self._inbox.put)
        self._core = EngineCore(self.engine, self.deliver)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="qwen35-engine", daemon=True)
        self._thread.start()

    def call(self, fn, *args: Any) -> Any:
        """Run `fn(engine, *args)` on the engine thread and wait for it (tests and debugging, in-process only)."""
        done, box = threading.Event(), []
        self._inbox.put(("call", fn, args, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def shutdown(self) -> None:
        self._stop = True
        self._inbox.put(("stop",))
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        try:
            self._run()
        finally:
            self.engine.close()  # tensor parallel: the other ranks stop too

    def _run(self) -> None:
        while not self._stop:
            try:  # block for a command only while there is nothing to step
                cmd = self._inbox.get_nowait() if self._core.has_work() else self._inbox.get()
            except queue.Empty:
                cmd = None
            while cmd is not None:
                self._apply(cmd)
                try:
                    cmd = self._inbox.get_nowait()
                except queue.Empty:
                    cmd = None
            if self._core.has_work() and not self._stop:
                self._core.step()

    def _apply(self, cmd: tuple) -> None:
        if cmd[0] == "stop":
            self._stop = True
        elif cmd[0] == "call":
            _, fn, args, box, done = cmd
            try:
                box.append(fn(self.engine, *args))
            except Exception as e:
                box.append(e)
            done.set()
        else:
            self._core.handle(cmd)
