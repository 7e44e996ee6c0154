"""The engine side of the client boundary (`client.py`): an `LLMEngine` that applies commands between steps
and emits every result as `(key, item)`. It knows nothing of threads, processes or asyncio: `AsyncLLM` drives
it from a thread, `process.py` from a child process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .client import EngineInfo, Signal
from .llm_engine import LLMEngine
from .outputs import RequestFailed

log = logging.getLogger("qwen35.engine")


def engine_info(engine: LLMEngine) -> EngineInfo:
    text = engine.model_cfg.text
    return EngineInfo(model=str(engine.cfg.model), max_model_len=engine.max_model_len, vocab_size=text.vocab_size,
                      max_num_seqs=engine.cfg.max_num_seqs, num_hidden_layers=text.num_hidden_layers,
                      hidden_size=text.hidden_size, is_moe=engine.model_cfg.is_moe, cache_plan=engine.plan.describe().replace(
                          "cache plan:", f"cache plan per rank ({engine.group.size} ranks):", engine.group.size > 1),
                      speculative=engine.speculation(), vision=engine.model.visual is not None,
                      vision_note=engine.vision_note(), parallel=engine.parallel_note(),
                      threads=engine.threads_note)


class EngineCore:
    def __init__(self, engine: LLMEngine, emit: Callable[[str, Any], None]) -> None:
        self.engine = engine
        self.emit = emit
        self.live: set[str] = set()  # requests added and not yet finished or aborted

    def has_work(self) -> bool:
        return self.engine.has_unfinished()

    def handle(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "add":
            _, rid, prompt, params, media = cmd
            try:
                self.engine.add_request(rid, prompt, params, media)
            except ValueError as e:
                self.emit(rid, e)
                return
            except Exception as e:  # not the request's fault: the add itself broke
                log.exception("adding request %s failed", rid)
                self.emit(rid, RequestFailed(f"adding the request failed ({type(e).__name__})"))
                return
            self.live.add(rid)
            self.emit(rid, Signal.ACCEPTED)
        elif kind == "abort":
            if self.engine.abort(cmd[1]):
                self.live.discard(cmd[1])
                self.emit(cmd[1], Signal.DONE)
        elif kind == "stats":
            usage = self.engine.cache_usage()
            usage["unfinished"] = int(self.engine.has_unfinished())
            self.emit(cmd[1], usage)
        elif kind == "reset_prefix_cache":
            self.engine.scheduler.prefix.clear()
            self.emit(cmd[1], True)
        else:
            raise ValueError(f"unknown engine command {kind!r}")

    def step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # the engine fails requests itself; this is the last resort for its own bugs
            log.exception("engine step failed")
            for rid in list(self.live):
                self.engine.abort(rid)
                self.emit(rid, RequestFailed(f"engine step failed ({type(e).__name__})"))
            self.live.clear()
            return
        for out in outputs:
            if out.finished:
                self.live.discard(out.request_id)
            self.emit(out.request_id, out)
