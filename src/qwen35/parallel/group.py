"""`Group`: the ranks of one engine and the few collectives the model and the runner need.

    all_reduce      the block outputs of row-parallel layers (partial sums -> the sum), the vocab-parallel
                    embedding
    gather_to_first the lm_head's vocabulary slices -> full logits on rank 0 (the only rank that samples)
    argmax          the most likely token across vocabulary slices, on every rank (MTP drafting chains on it)
    broadcast       rank 0's step commands (plain Python objects) to the other ranks

`Group.single()` is the one-rank group: every collective is the identity and costs nothing, so the model
code has one path. When every rank runs on this machine's CPU, `all_reduce` goes through shared memory
(`SharedMemory`, csrc/shm_allreduce.cpp: microseconds instead of gloo's 0.6-0.9 ms of loopback TCP), for
tensors up to a slot's size; `QWEN35_SHM_ALLREDUCE=0` keeps gloo. Each collective is timed (`seconds`, `calls`): bench/bench_parallel.py reports the time
per step spent in them. On CUDA the collectives are asynchronous to the host and the timings mean little.
"""

from __future__ import annotations

import datetime
import os
import pickle
import platform
import time
from dataclasses import dataclass
from pathlib import Path

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
    shm: "SharedMemory | None" = None  # all ranks on this machine's CPU: all-reduce through shared memory

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
        """Sum `x` over the ranks; returns the sum (`x` itself, or a contiguous copy of it: a matmul may hand
        back a transposed layout, by a kernel choice timed on each rank, so layouts can differ between ranks
        while shapes and dtypes never do, and the path below must be the same on all)."""
        if self.size > 1:
            x = x.contiguous()
            if self.shm is not None and self.shm.fits(x):
                self._timed(self.shm.all_reduce, x)
            else:
                self._timed(dist.all_reduce, x, group=self.pg)
        return x

    def gather_to_first(self, x: torch.Tensor) -> torch.Tensor | None:
        """Rank 0: the ranks' `x` [..., n] side by side [..., size * n]; other ranks: None."""
        if self.size == 1:
            return x
        x = x.contiguous()
        if self.shm is not None and self.shm.fits(x):
            return self._timed(self.shm.gather_to_first, x)
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

    BROADCAST_HEAD = 64 << 10  # a step's pickle fits: one collective; a longer one sends its rest in a second

    def _broadcast(self, obj):
        src, pg, head = self._global(0), self.cpu_pg or self.pg, self.BROADCAST_HEAD
        buf = torch.zeros(head, dtype=torch.uint8)
        if self.rank == 0:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            first = min(len(data), head - 8)
            buf[:8] = torch.tensor([len(data)], dtype=torch.int64).view(torch.uint8)
            buf[8:8 + first] = torch.frombuffer(bytearray(data[:first]), dtype=torch.uint8)
            dist.broadcast(buf, src, group=pg)
            if len(data) > first:
                dist.broadcast(torch.frombuffer(bytearray(data[first:]), dtype=torch.uint8), src, group=pg)
            return obj
        dist.broadcast(buf, src, group=pg)
        n = int(buf[:8].view(torch.int64))
        data = buf[8:8 + min(n, head - 8)].numpy().tobytes()
        if n > head - 8:
            rest = torch.empty(n - (head - 8), dtype=torch.uint8)
            dist.broadcast(rest, src, group=pg)
            data += rest.numpy().tobytes()
        return pickle.loads(data)

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
        self.size, self.pg, self.cpu_pg, self.shm = 1, None, None, None

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


class SharedMemory:
    """The all-reduce of ranks that share this machine's memory: a /dev/shm region every rank maps (rank 0
    creates it, names it to the others, and unlinks it once all have it mapped, so nothing is left behind),
    summed by our C++ op. Slots of `slot_bytes` hold a prefill chunk's hidden states (2048 x 4096 bf16)."""

    SLOT_BYTES = 16 << 20

    def __init__(self, group: Group, lib, slot_bytes: int = SLOT_BYTES) -> None:
        self.lib, self.rank, self.world, self.slot_bytes = lib, group.rank, group.size, slot_bytes
        nbytes = 64 * self.world + 2 * self.world * slot_bytes
        path = group.broadcast(f"/dev/shm/qwen35-tp-{os.getpid()}-{time.monotonic_ns()}" if group.rank == 0
                               else None)
        if group.rank == 0:
            with open(path, "wb") as f:
                f.truncate(nbytes)
        group.broadcast(None)  # the file exists
        self.region = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
        group.broadcast(None)  # everyone has it mapped
        if group.rank == 0:
            Path(path).unlink()
        self.seq = 0

    def fits(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.is_contiguous() and x.dtype in (torch.float32, torch.bfloat16,
                                                                              torch.float16)
                and x.numel() * x.element_size() <= self.slot_bytes)

    def all_reduce(self, x: torch.Tensor) -> None:
        self.seq += 1
        self.lib.shm_all_reduce(x, self.region, self.rank, self.world, self.seq, self.slot_bytes)

    def gather_to_first(self, x: torch.Tensor) -> torch.Tensor | None:
        """Rank 0: every rank's `x` side by side on the last dimension (read before this rank's next call,
        which is what keeps the slots from being overwritten); others: None."""
        self.seq += 1
        self.lib.shm_exchange(x, self.region, self.rank, self.world, self.seq, self.slot_bytes)
        if self.rank != 0:
            return None
        nbytes, start = x.numel() * x.element_size(), 64 * self.world + (self.seq & 1) * self.world * self.slot_bytes
        parts = [self.region[start + r * self.slot_bytes:start + r * self.slot_bytes + nbytes].view(x.dtype)
                 .view(x.shape) for r in range(self.world)]
        return torch.cat(parts, -1)


def use_shared_memory(group: Group) -> None:
    """Give `group` (all of whose ranks are on this machine, on CPU) the shared-memory all-reduce, where our
    C++ ops are built, the platform has lock-free 64-bit atomics (x86-64, aarch64) and /dev/shm exists; the
    same decision on every rank (it takes collectives to set up)."""
    from ..ops import native

    ok = (os.environ.get("QWEN35_SHM_ALLREDUCE", "1") != "0" and platform.machine() in ("x86_64", "aarch64")
          and Path("/dev/shm").is_dir() and native.ops() is not None)
    if group.size > 1 and group.min_int(int(ok)):
        group.shm = SharedMemory(group, native.ops())
