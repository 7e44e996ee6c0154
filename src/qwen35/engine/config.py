"""`EngineConfig`: what an engine is built from. Torch-free, so a client can send it to an engine process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import check_quantization
from ..parallel.config import ParallelConfig
from .spec_config import SpeculativeConfig

DTYPE_NAMES = ("bfloat16", "bf16", "float32", "fp32", "auto")
ENCODER_CACHE_BYTES = 256 << 20  # default budget of vision-tower outputs kept by content digest


@dataclass
class EngineConfig:
    model: str
    tokenizer: str | None = None  # a directory whose tokenizer.json and chat template replace the checkpoint's
    dtype: str = "bfloat16"
    max_model_len: int | None = None  # default: min(model context, 8192)
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    kv_cache_memory: int | None = None  # bytes for K/V blocks + GDN state slots (default: a share of free RAM)
    block_size: int = 16
    enable_prefix_caching: bool = True
    prefix_cache_fraction: float = 0.3
    threads: int | None = None
    seed: int | None = None  # torch's global RNG at start: the noise of requests without their own seed (vLLM's)
    device: str = "cpu"  # "cuda" works through the same code paths (not exercised by this repo's CI)
    hf_config: dict | None = None  # config.json contents to use instead of the checkpoint's (--hf-overrides)
    # MTP speculative decoding: a SpeculativeConfig or vLLM's JSON dict ({"method": "mtp", ...}); None: off
    speculative_config: SpeculativeConfig | dict[str, Any] | None = None
    # weight-only quantisation at load: "int8" | "int4" (or "gptq" | "awq": a check that the checkpoint is one);
    # None: as the checkpoint is (bf16, FP8, GPTQ/AWQ)
    quantization: str | None = None
    # images and video: skip the vision tower (text only, no tower memory); most items of each kind per prompt
    # (vLLM's --limit-mm-per-prompt; absent kinds: no limit); bytes of tower outputs kept by content digest;
    # tower patches one step may encode (an item larger than this still runs, alone)
    language_model_only: bool = False
    limit_mm_per_prompt: dict[str, int] | None = None
    encoder_cache_memory: int = ENCODER_CACHE_BYTES
    max_num_encoder_patches: int = 16384
    # tensor parallelism over this many ranks (docs/PARALLEL.md); routed experts split by expert instead of
    # by width; where the ranks meet (several machines, torchrun) when not all on this one
    tensor_parallel_size: int = 1
    enable_expert_parallel: bool = False
    distributed: ParallelConfig | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES)}, got {self.dtype!r}")
        self.quantization = check_quantization(self.quantization)
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_model_len", "kv_cache_memory",
                     "threads", "encoder_cache_memory", "max_num_encoder_patches"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory", "threads"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not isinstance(self.prefix_cache_fraction, (int, float)) or not 0 <= self.prefix_cache_fraction < 1:
            raise ValueError(f"prefix_cache_fraction must be in [0, 1), got {self.prefix_cache_fraction!r}")
        for kind, n in (self.limit_mm_per_prompt or {}).items():
            if kind not in ("image", "video") or not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"limit_mm_per_prompt takes 'image' / 'video' counts >= 0, got {kind!r}: {n!r}")
        for name in ("encoder_cache_memory", "max_num_encoder_patches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.distributed is not None and self.distributed.tensor_parallel_size != self.tensor_parallel_size:
            if self.tensor_parallel_size != 1:
                raise ValueError(f"tensor_parallel_size={self.tensor_parallel_size} differs from the distributed "
                                 f"setup's {self.distributed.tensor_parallel_size}")
            self.tensor_parallel_size = self.distributed.tensor_parallel_size
        ParallelConfig(self.tensor_parallel_size)  # checks the size
        if isinstance(self.speculative_config, dict):
            self.speculative_config = SpeculativeConfig.from_dict(self.speculative_config, self.model)
        elif self.speculative_config is not None and not isinstance(self.speculative_config, SpeculativeConfig):
            raise ValueError("speculative_config must be a dict or a SpeculativeConfig, "
                             f"got {type(self.speculative_config).__name__}")

    @property
    def parallel(self) -> ParallelConfig:
        """This rank's parallel setup (one rank unless tensor_parallel_size > 1)."""
        if self.distributed is not None:
            return self.distributed
        return ParallelConfig(self.tensor_parallel_size, self.enable_expert_parallel)
