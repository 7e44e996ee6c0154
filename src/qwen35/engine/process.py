"""EngineProcess: the engine core in a child process of its own (vLLM V1's split), behind the same asyncio
client as `AsyncLLM`. This side is torch-free.

Why: in one process the HTTP server, tokenisation, the output parsers and the engine share one GIL, so every
millisecond of Python the server runs is a millisecond the engine's step waits. With the engine in its own
process the server's Python runs beside the model instead of between its steps.

How: the child (spawned, so it starts clean) builds the `LLMEngine`, sends back `EngineInfo` (or the error
that stopped it), then loops: apply every command waiting on the pipe, step while there is work, send each
result as `(key, item)`. Here, one writer thread sends commands (a request with an image carries megabytes
of pixels, and a pipe write waits for the child to read it, which it does between steps: the event loop must
never wait on that) and one reader thread receives results and hands them to the client. If the child
dies, every open request fails with `RequestFailed` and `healthy` turns false; if this process goes away,
the child sees the pipe close and exits.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
import threading

from ..tokenizer import Tokenizer
from .client import EngineClient
from .config import EngineConfig
from .outputs import RequestFailed

log = logging.getLogger("qwen35.engine")
_START = "#start"


class EngineStartError(RuntimeError):
    """The engine process could not build the engine (bad checkpoint, not enough memory, ...)."""


class EngineProcess(EngineClient):
    def __init__(self, cfg: EngineConfig) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(cfg, child), name="qwen35-engine", daemon=True)
        self._proc.start()
        child.close()
        try:
            key, info = self._conn.recv()  # waits while the child loads the model
        except EOFError:
            self._proc.join(10)
            raise EngineStartError(f"the engine process exited while starting (exit code {self._proc.exitcode})") \
                from None
        if isinstance(info, BaseException):
            self._proc.join(10)
            raise EngineStartError(str(info))
        self._outbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        super().__init__(info, Tokenizer.from_pretrained(cfg.tokenizer or cfg.model), self._outbox.put)
        self._writer = threading.Thread(target=self._write, name="qwen35-engine-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="qwen35-engine-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        """Send commands in order; after `shutdown`, or once the pipe is closed, stop."""
        while True:
            cmd = self._outbox.get()
            try:
                self._conn.send(cmd)
            except (OSError, ValueError):  # the pipe is closed: the child is gone
                self.fail_all(RequestFailed("the engine process is not running"))
                return
            if cmd[0] == "shutdown":
                return

    def _read(self) -> None:
        while True:
            try:
                key, item = self._conn.recv()
            except (EOFError, OSError):
                break
            self.deliver(key, item)
        if self.healthy:
            self._proc.join(5)  # the pipe closes before the process is reaped: wait for its exit status
            code = self._proc.exitcode
            how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 and -code in
                   signal.valid_signals() else f"exit code {code}")
            log.error("the engine process exited (%s)", how)
        self.fail_all(RequestFailed("the engine process exited"))

    def shutdown(self) -> None:
        alive, self.healthy = self.healthy, False  # the reader does not report an exit it expects
        if alive and self._proc.is_alive():
            self._outbox.put(("shutdown",))
            self._writer.join(10)
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
        self._conn.close()


def _child_main(cfg: EngineConfig, conn) -> None:
    from .core import EngineCore, engine_info  # torch is imported here, in the child only
    from .llm_engine import LLMEngine

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        engine = LLMEngine(cfg)
        _ = engine.guided.lltokenizer  # built before serving, not under the first guided request
    except BaseException as e:  # noqa: BLE001 - everything that stops the start goes back as one line
        conn.send((_START, RuntimeError(f"{type(e).__name__}: {e}")))
        return
    conn.send((_START, engine_info(engine)))
    core = EngineCore(engine, lambda key, item: conn.send((key, item)))
    try:
        _serve(core, conn)
    finally:
        engine.close()  # tensor parallel: the other ranks stop too


def _serve(core, conn) -> None:
    try:
        while True:
            if conn.poll(0 if core.has_work() else None):  # block for a command only while idle
                while True:  # apply every command waiting, then step
                    cmd = conn.recv()
                    if cmd[0] == "shutdown":
                        return
                    core.handle(cmd)
                    if not conn.poll(0):
                        break
            if core.has_work():
                core.step()
    except (EOFError, OSError, BrokenPipeError):  # the server went away
        return
