"""Starting the ranks of one engine and watching them.

`start(cfg)` is called by every rank's `LLMEngine`. The first rank of a node started by hand (rank 0 under
`qwen35 serve -tp N`, or `--node-rank n` on another machine) starts the node's other ranks as processes
(`python -m qwen35.parallel.worker`, the engine config on their stdin), then every rank joins the
torch.distributed rendezvous (gloo on CPU, NCCL on CUDA). Under torchrun every rank is already running and
only joins.

`Ranks` watches the processes this one started: when one exits before `close`, `on_failure` gets a message
naming it. Its default, `exit_process`, logs the message and ends this process at once (exit status 1): the
other ranks would wait for the dead one forever, and a server whose engine cannot step must not keep
accepting requests. A started rank notices its parent going away by its stdin closing, and exits too.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from .config import ParallelConfig
from .group import Group, init, use_shared_memory

if TYPE_CHECKING:
    from ..engine.config import EngineConfig

log = logging.getLogger("qwen35.parallel")


def exit_process(message: str) -> None:
    """The default reaction to a lost rank: say so and end this process."""
    log.critical("%s; exiting", message)
    print(f"qwen35: {message}; exiting", file=sys.stderr, flush=True)
    for h in logging.getLogger().handlers:
        h.flush()
    os._exit(1)


class Ranks:
    """The rank processes this one started, watched by a thread."""

    def __init__(self, procs: dict[int, subprocess.Popen], on_failure: Callable[[str], None]) -> None:
        self.procs = procs
        self.on_failure = on_failure
        self.closing = False
        self._thread = threading.Thread(target=self._watch, name="qwen35-ranks", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self.closing:
            for rank, proc in self.procs.items():
                code = proc.poll()
                if code is not None and not self.closing:
                    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                    self.on_failure(f"tensor-parallel rank {rank} (pid {proc.pid}) {how}")
                    return
            time.sleep(0.2)

    def close(self, timeout: float = 10.0) -> None:
        """The ranks were told to stop: wait for them, then kill what is left."""
        self.closing = True
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
            if proc.stdin:
                proc.stdin.close()


def free_port(addr: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def start(cfg: "EngineConfig", on_failure: Callable[[str], None] = exit_process) -> tuple[Group, Ranks | None]:
    """Start this node's other ranks if this process is the first one started by hand, then join the group."""
    p: ParallelConfig = cfg.parallel
    if p.world_size == 1:
        return Group.single(), None
    ranks = None
    if not p.launched:
        if not p.master_port:
            p = replace(p, master_port=free_port(p.master_addr))
        procs = {}
        for r in range(p.rank + 1, p.rank + p.per_node):
            procs[r] = _spawn(cfg, replace(p, rank=r, launched=True))
        ranks = Ranks(procs, on_failure)
    backend = p.backend or ("nccl" if cfg.device.startswith("cuda") else "gloo")
    if backend == "nccl":
        import torch

        torch.cuda.set_device(p.local_rank)
    try:
        group = init(p.rank, p.world_size, p.master_addr, p.master_port, backend)
        if backend == "gloo" and p.nnodes == 1:  # every rank on this machine: all-reduce in shared memory
            use_shared_memory(group)
    except BaseException:
        if ranks is not None:
            ranks.closing = True
            for proc in ranks.procs.values():
                proc.kill()
        raise
    return group, ranks


def _spawn(cfg: "EngineConfig", p: ParallelConfig) -> subprocess.Popen:
    child = replace(cfg, distributed=p)
    proc = subprocess.Popen([sys.executable, "-m", "qwen35.parallel.worker"], stdin=subprocess.PIPE,
                            start_new_session=True)  # a terminal's Ctrl-C goes to rank 0, which stops the rest
    proc.stdin.write(pickle.dumps(child))
    proc.stdin.flush()  # kept open: the rank exits when it closes (this process is gone)
    return proc
