"""`Group`: the ranks of one engine and the few collectives the model and the runner need.

    all_reduce      the block outputs of row-parallel layers (partial sums -> the sum), the vocab-parallel
                    embedding
    gather_to_first the lm_head's vocabulary slices -> full logits on rank 0 (the only rank that samples)
    argmax          the most likely token across vocabulary slices, on every rank (MTP drafting chains on it)
    broadcast       rank 0's step commands (plain Python objects) to the other ranks

`Group.single()` is the one-rank group: every collective is the identity and costs nothing, so the model
code has one path. Each collective is timed (`seconds`, `calls`): bench/bench_parallel.py reports the time
per step spent in them. On CUDA the collectives are asynchronous to the host and the timings mean little.
"""

from __future__ import annotations

import datetime
import pickle
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(eq=False)
class Group:
    rank: int = 0
    size: int = 1
    pg: object = None  # the torch.distributed process group (None: the default one)
    cpu_pg: object = None  # a gloo group for host objects when `pg` is NCCL (None: `pg` itself)
    seconds: float = 0.0  # time spent in collectives
    calls: int = 0

    @classmethod
    def single(cls) -> "Group":
        return cls()

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def _timed(self, fn, *args, **kw):
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place; returns it."""
        if self.size > 1:
            self._timed(dist.all_reduce, x, group=self.pg)
        return x

    def gather_to_first(self, x: torch.Tensor) -> torch.Tensor | None:
        """Rank 0: the ranks' `x` [..., n] side by side [..., size * n]; other ranks: None."""
        if self.size == 1:
            return x
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        self._timed(dist.gather, x, parts, dst=self._global(0), group=self.pg)
        return torch.cat(parts, -1) if parts is not None else None

    def argmax(self, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """values, ids: [M] each rank's best value and its (global) token id -> [M] ids of the best over all
        ranks, the same on every rank (ties: the lowest rank, i.e. the lowest id, as torch.argmax)."""
        if self.size == 1:
            return ids
        both = torch.stack([values.float(), ids.float()])  # ids < 2**24: exact in fp32
        parts = [torch.empty_like(both) for _ in range(self.size)]
        self._timed(dist.all_gather, parts, both, group=self.pg)
        stacked = torch.stack(parts)  # [size, 2, M]
        best = stacked[:, 0].argmax(0)  # first maximum: the lowest rank
        return stacked[:, 1].gather(0, best[None]).squeeze(0).long()

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[size, *x.shape]: every rank's `x` (host tensors go through the gloo group; not timed)."""
        if self.size == 1:
            return x[None]
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.cpu_pg or self.pg)
        return torch.stack(parts)

    def broadcast(self, obj=None):
        """Rank 0 sends `obj`, every rank returns it (pickled: plain data and CPU tensors)."""
        if self.size == 1:
            return obj
        return self._timed(self._broadcast, obj)

    def _broadcast(self, obj):
        src, pg = self._global(0), self.cpu_pg or self.pg
        if self.rank == 0:
            data = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
            size = torch.tensor([data.numel()], dtype=torch.int64)
            dist.broadcast(size, src, group=pg)
            dist.broadcast(data, src, group=pg)
            return obj
        size = torch.empty(1, dtype=torch.int64)
        dist.broadcast(size, src, group=pg)
        data = torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(data, src, group=pg)
        return pickle.loads(data.numpy().tobytes())

    def min_int(self, value: int) -> int:
        """The smallest of the ranks' `value`s."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.cpu_pg or self.pg)
        return int(t)

    def _global(self, rank: int) -> int:
        return rank if self.pg is None else dist.get_global_rank(self.pg, rank)

    def destroy(self) -> None:
        """Leave the rendezvous (another engine in this process may then start its own)."""
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()
        self.size, self.pg, self.cpu_pg = 1, None, None

    def reset_timing(self) -> None:
        self.seconds, self.calls = 0.0, 0


NCCL_TIMEOUT = 600.0


def init(rank: int, size: int, addr: str, port: int, backend: str = "gloo",
         timeout: float = 365 * 86400.0) -> Group:
    """Join the rendezvous at addr:port as `rank` of `size` (torch.distributed's default group). `timeout`
    bounds every collective, including a follower's wait for rank 0's next step while the server is idle:
    hence a year. A rank that dies closes its connections, which fails the others' collectives at once."""
    if size == 1:
        return Group.single()
    # NCCL only ever waits inside a step (the idle wait is on the gloo group): minutes, so a lost peer ends it
    dist.init_process_group(backend, init_method=f"tcp://{_host(addr)}:{port}", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout if backend == "gloo" else NCCL_TIMEOUT))
    cpu = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout)) if backend == "nccl" else None
    return Group(rank, size, cpu_pg=cpu)


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
