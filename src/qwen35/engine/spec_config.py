"""`SpeculativeConfig`: MTP speculative decoding settings, parsed from vLLM's and SGLang's forms. Torch-free.

vLLM: `--speculative-config '{"method": "mtp", "num_speculative_tokens": 2}'` (also `LLM(speculative_config=
{...})`); `qwen3_next_mtp` and `qwen3_5_mtp` are older names of `mtp`. SGLang: `--speculative-algorithm NEXTN
--speculative-num-steps 3 --speculative-eagle-topk 1 --speculative-num-draft-tokens 4` (EAGLE is the same
machinery, and NEXTN means "the checkpoint's own MTP head" there). Qwen3.5 drafts with the MTP head that the
checkpoint ships, so the draft model is always the target's own checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHODS = ("mtp", "qwen3_next_mtp", "qwen3_5_mtp", "qwen3_5_moe_mtp")  # all mean the checkpoint's MTP head
SGLANG_ALGORITHMS = ("NEXTN", "EAGLE", "MTP")
MAX_SPECULATIVE_TOKENS = 8  # more only wastes work: acceptance falls geometrically with depth
KNOWN_KEYS = {"method", "num_speculative_tokens", "model", "draft_tensor_parallel_size", "max_model_len",
              "disable_by_batch_size", "acceptance_floor", "draft_vocab_size"}
DRAFT_VOCAB_FILE = "draft_vocab.json"  # in the checkpoint: token ids, most frequent first (optional)


@dataclass(frozen=True)
class SpeculativeConfig:
    num_speculative_tokens: int = 2  # k: draft tokens per step, verified in one forward of k + 1 tokens
    method: str = "mtp"
    # adaptive switch-off: a request whose last drafts were mostly rejected pauses drafting (see speculative.py)
    acceptance_floor: float = 0.3  # accepted / drafted below this over the recent window: pause
    disable_by_batch_size: int | None = None  # vLLM's: no drafts while this many requests or more run
    # draft over the N most frequent tokens only (EAGLE-3's draft vocabulary): the draft lm_head reads N rows
    # instead of the whole vocabulary. Frequency order is the checkpoint's draft_vocab.json if it has one, else
    # token id order (BPE merges are numbered by frequency). None: the whole vocabulary.
    draft_vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative method must be one of {list(METHODS)} (the checkpoint's MTP head), "
                             f"got {self.method!r}")
        k = self.num_speculative_tokens
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(f"num_speculative_tokens must be an integer in [1, {MAX_SPECULATIVE_TOKENS}], got {k!r}")
        if not 0 <= self.acceptance_floor < 1:
            raise ValueError(f"acceptance_floor must be in [0, 1), got {self.acceptance_floor!r}")
        n = self.draft_vocab_size
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"draft_vocab_size must be a positive integer, got {n!r}")
        if self.disable_by_batch_size is not None and self.disable_by_batch_size < 1:
            raise ValueError(f"disable_by_batch_size must be >= 1, got {self.disable_by_batch_size!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], target_model: str | None = None) -> "SpeculativeConfig":
        """vLLM's `speculative_config` JSON. A `model` other than the target is refused: the draft is the
        target checkpoint's own MTP head."""
        if not isinstance(d, dict):
            raise ValueError(f"speculative_config must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - KNOWN_KEYS)
        if unknown:
            raise ValueError(f"speculative_config: unsupported key(s) {unknown}; supported: {sorted(KNOWN_KEYS)}")
        model = d.get("model")
        if model is not None and target_model is not None and str(model) != str(target_model):
            raise ValueError(f"speculative_config.model {model!r}: only the target checkpoint's own MTP head can "
                             "draft (leave 'model' out)")
        if d.get("draft_tensor_parallel_size", 1) != 1:
            raise ValueError("speculative_config.draft_tensor_parallel_size must be 1")
        if "num_speculative_tokens" not in d:
            raise ValueError("speculative_config needs num_speculative_tokens")
        kwargs = {k: d[k] for k in ("method", "num_speculative_tokens", "acceptance_floor",
                                    "disable_by_batch_size", "draft_vocab_size") if k in d}
        kwargs.setdefault("method", "mtp")
        return cls(**kwargs)

    @classmethod
    def from_sglang(cls, algorithm: str, num_steps: int | None = None, eagle_topk: int | None = None,
                    num_draft_tokens: int | None = None) -> "SpeculativeConfig":
        """SGLang's flags: k = num_steps (num_draft_tokens = num_steps + 1 for a chain); topk must be 1."""
        if str(algorithm).upper() not in SGLANG_ALGORITHMS:
            raise ValueError(f"--speculative-algorithm must be one of {list(SGLANG_ALGORITHMS)} (the checkpoint's "
                             f"MTP head), got {algorithm!r}")
        if eagle_topk not in (None, 1):
            raise ValueError(f"--speculative-eagle-topk {eagle_topk}: only chain drafting (topk 1) is supported")
        if num_steps is None:
            num_steps = num_draft_tokens - 1 if num_draft_tokens is not None else 3
        if num_draft_tokens is not None and num_draft_tokens != num_steps + 1:
            raise ValueError(f"--speculative-num-draft-tokens {num_draft_tokens} must be --speculative-num-steps + 1 "
                             f"({num_steps + 1}) with topk 1")
        return cls(num_speculative_tokens=num_steps)

    @property
    def k(self) -> int:
        return self.num_speculative_tokens
