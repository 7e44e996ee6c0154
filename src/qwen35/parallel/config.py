"""`ParallelConfig`: how many ranks one engine spans and where they meet. Torch-free (it travels inside
`EngineConfig` to an engine process and to every rank).

Ranks are numbered node by node: node n holds ranks [n * per_node, (n + 1) * per_node). Rank 0 runs the
scheduler, the sampler and (under `qwen35 serve`) the HTTP server; every other rank follows its steps.
Started by hand (`--nnodes/--node-rank/--master-addr/--master-port`), the first rank of each node starts
the node's other ranks itself; under `torchrun` every rank is its own process and the rendezvous comes from
the environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    enable_expert_parallel: bool = False  # routed experts split by expert across the ranks (else by width)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: a free port, chosen by rank 0 (one node only)
    rank: int = 0  # this process's rank
    launched: bool = False  # every rank was started from outside (torchrun): start no processes here
    backend: str | None = None  # "gloo" | "nccl"; None: nccl for CUDA devices, else gloo

    def __post_init__(self) -> None:
        tp, nn = self.tensor_parallel_size, self.nnodes
        if not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tensor_parallel_size must be a positive integer, got {tp!r}")
        if not isinstance(nn, int) or nn < 1 or tp % nn:
            raise ValueError(f"nnodes={nn!r} must be a positive divisor of tensor_parallel_size={tp} (each node "
                             "runs the same number of ranks)")
        if not 0 <= self.node_rank < nn:
            raise ValueError(f"node_rank={self.node_rank} must be in [0, nnodes={nn})")
        if not 0 <= self.rank < tp:
            raise ValueError(f"rank={self.rank} must be in [0, tensor_parallel_size={tp})")
        if nn > 1 and not self.master_port and not self.launched:
            raise ValueError("with nnodes > 1 every node needs the same --master-addr and --master-port")
        if self.backend not in (None, "gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {self.backend!r}")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size

    @property
    def per_node(self) -> int:
        return self.tensor_parallel_size // self.nnodes

    @property
    def local_rank(self) -> int:
        return self.rank % self.per_node

    def first_rank_of_node(self) -> "ParallelConfig":
        """This node's first rank (the one a hand-started `qwen35 serve` process takes)."""
        return replace(self, rank=self.node_rank * self.per_node)

    @classmethod
    def from_env(cls, tensor_parallel_size: int, enable_expert_parallel: bool = False,
                 env: dict[str, str] | None = None) -> "ParallelConfig | None":
        """The torchrun rendezvous, when this process was started by torchrun (None otherwise)."""
        env = os.environ if env is None else env
        if not all(v in env for v in TORCHRUN_VARS):
            return None
        world = int(env["WORLD_SIZE"])
        if world != tensor_parallel_size:
            raise ValueError(f"torchrun started {world} processes (WORLD_SIZE) but --tensor-parallel-size is "
                             f"{tensor_parallel_size}: they must be equal")
        per_node = int(env.get("LOCAL_WORLD_SIZE", world))
        rank = int(env["RANK"])
        return cls(tensor_parallel_size, enable_expert_parallel, nnodes=max(world // per_node, 1),
                   node_rank=rank // per_node, master_addr=env["MASTER_ADDR"], master_port=int(env["MASTER_PORT"]),
                   rank=rank, launched=True)
