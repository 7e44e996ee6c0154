"""Rank `argv[1]` of `argv[2]` on this machine: every collective of `Group` through shared memory and through
gloo, checked against the expected values; prints OK. Run by test_collectives.py, one process per rank."""

from __future__ import annotations

import sys

import torch

from qwen35.parallel.group import init, use_shared_memory

rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
group = init(rank, world, "127.0.0.1", port)
use_shared_memory(group)
assert group.shm is not None, "the shared-memory all-reduce did not come up"


def value(r: int, shape, dtype):
    g = torch.Generator().manual_seed(r)
    return (torch.randn(shape, generator=g) * (r + 1)).to(dtype)


for via_shm in (True, False):
    shm, group.shm = group.shm, (group.shm if via_shm else None)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        big = [(2048, 2049)] if via_shm and dtype == torch.float32 else []  # over a 16 MiB slot: through gloo
        for shape in [(1, 7), (3, 4096), *big]:
            x = value(rank, shape, dtype)
            group.all_reduce(x)
            want = sum(value(r, shape, dtype).float() for r in range(world))
            tol = 0 if dtype == torch.float32 and world == 2 else 2e-2 * want.abs().max().item()
            assert (x.float() - want).abs().max().item() <= tol + 1e-5, (via_shm, dtype, shape)
        y = group.gather_to_first(value(rank, (3, 5), dtype))
        if rank == 0:
            assert torch.equal(y, torch.cat([value(r, (3, 5), dtype) for r in range(world)], -1))
        else:
            assert y is None
        # a rank whose matmul handed back a transposed layout takes the same path as the others
        x = value(rank, (6, 5), torch.float32)
        x = x.t().contiguous().t() if rank == 1 else x
        assert torch.allclose(group.all_reduce(x), sum(value(r, (6, 5), torch.float32) for r in range(world)))
    group.shm = shm
    big = list(range(30000)) if rank == 0 else None  # over the broadcast's first 64 KiB: a second collective
    assert group.broadcast(big) == list(range(30000))
    ids = group.argmax(torch.tensor([float(rank), -float(rank)]), torch.tensor([10 + rank, 20 + rank]))
    assert ids.tolist() == [10 + world - 1, 20]
group.destroy()  # a live gloo group at interpreter exit aborts the process
print("OK")
