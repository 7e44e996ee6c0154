"""A rank started by the first rank of its node (launch.py): read the engine config from stdin, build the
engine's share on this rank, follow rank 0's steps until it says stop. Exits when stdin closes (the
process that started it is gone) and, with a message, when anything fails."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading


def _exit_with_parent() -> None:
    sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
    os._exit(0)


def main() -> None:
    from .. import runtime

    runtime.configure_env()  # before torch loads
    cfg = pickle.load(sys.stdin.buffer)
    rank = cfg.parallel.rank
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    logging.basicConfig(level=logging.WARNING, format=f"rank {rank}: %(levelname)s %(name)s: %(message)s")
    from ..engine.llm_engine import LLMEngine

    try:
        engine = LLMEngine(cfg)
        engine.follow()
    except BaseException as e:  # noqa: BLE001 - one line, then the watching rank reports the exit
        print(f"qwen35 rank {rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
