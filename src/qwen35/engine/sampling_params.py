"""`SamplingParams`: what a request asks of the sampler and the stop logic. Names follow vLLM's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .guided import GuidedDecoding


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the context limit
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs per generated token (0: only the chosen token's)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None  # added to the logits before sampling (OpenAI's -100..100)
    guided: GuidedDecoding | None = None  # structured output (JSON schema, grammar, ...): see engine/guided.py

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            (_is_int(self.n) and self.n >= 1, "n", "must be an integer >= 1"),
            (_is_num(self.temperature) and self.temperature >= 0, "temperature", "must be >= 0"),
            (_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (_is_int(self.top_k) and self.top_k >= 0, "top_k", "must be -1, 0 (off) or a positive integer"),
            (_is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (_is_num(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
            (_is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2, "presence_penalty",
             "must be in [-2, 2]"),
            (_is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2, "frequency_penalty",
             "must be in [-2, 2]"),
            (self.seed is None or _is_int(self.seed), "seed", "must be an integer"),
            (self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1), "max_tokens",
             "must be an integer >= 1"),
            (_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens", "must be an integer >= 0"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
             "must not exceed max_tokens"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
            (all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
             "must be non-negative integers"),
            (self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= 20), "logprobs",
             "must be an integer in [0, 20]"),
            (self.logit_bias is None or (isinstance(self.logit_bias, dict) and all(
                _is_int(k) and k >= 0 and _is_num(v) and -100 <= v <= 100 for k, v in self.logit_bias.items())),
             "logit_bias", "must map token ids to numbers in [-100, 100]"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"{name} {rule}, got {getattr(self, name)!r}")
        if self.guided is not None:  # imported here: the scheduler imports this module without torch
            from .guided import GuidedDecoding

            if isinstance(self.guided, dict):
                self.guided = GuidedDecoding(**self.guided)
            if not isinstance(self.guided, GuidedDecoding):  # its grammar was compiled and checked when built
                raise ValueError(f"guided must be a GuidedDecoding, got {type(self.guided).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # not NaN
