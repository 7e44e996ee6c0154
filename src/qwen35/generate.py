"""Single-sequence streaming generation: the path behind `qwen35 generate`.

One sequence, one cache slot, blocks allocated contiguously for `max_len` tokens, the engine's sampler.
No scheduler: this is the model's own speed, what bench/bench_model.py measures. The engine (continuous
batching) uses the same model API with many sequences.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .engine.sampler import PenaltyState, Sampler, min_tokens_stop_ids
from .engine.sampling_params import SamplingParams
from .model import ForwardBatch, ModelCache, Qwen35ForCausalLM, SeqSpec

BLOCK_SIZE = 16


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    timings: list[float] = field(default_factory=list)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tps(self) -> float:
        n = self.generated_tokens - 1  # the first token comes out of the prefill
        return n / self.decode_s if self.decode_s and n > 0 else 0.0


class Generator:
    def __init__(self, model: Qwen35ForCausalLM, max_len: int) -> None:
        if max_len <= 0:
            raise ValueError(f"max_len must be positive, got {max_len}")
        self.model = model
        self.max_len = max_len
        self.blocks = list(range(-(-max_len // BLOCK_SIZE)))
        self.cache: ModelCache = model.new_cache(len(self.blocks), BLOCK_SIZE, num_slots=1)
        self.sampler = Sampler()

    @torch.inference_mode()
    def stream(self, prompt: list[int], params: SamplingParams, stop_ids: frozenset[int] = frozenset(),
               stats: GenerationStats | None = None) -> Iterator[int]:
        """Yield up to `params.max_tokens` new token ids; stops after a token in `stop_ids` (which is yielded)."""
        if not prompt:
            raise ValueError("the prompt is empty")
        max_tokens = params.max_tokens or self.max_len - len(prompt)
        if len(prompt) + max_tokens > self.max_len:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds the "
                             f"context of {self.max_len} tokens")
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = len(prompt)
        gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        history = PenaltyState(prompt, min_tokens_stop_ids(params, stop_ids))
        self.cache.reset_slots([0])
        tokens, context = list(prompt), 0
        for step in range(max_tokens):
            t0 = time.perf_counter()
            batch = ForwardBatch.build([SeqSpec(tokens[context:], context, 0, self.blocks)], BLOCK_SIZE)
            hidden = self.model(batch, self.cache)
            logits = self.model.logits(hidden[batch.last_index])
            token = int(self.sampler(logits, [params], [history], [gen]).token_ids[0])
            history.append(token)
            now = time.perf_counter()
            if step == 0:
                stats.prefill_s = now - t0
            else:
                stats.decode_s += now - t0
                stats.timings.append(now - t0)
            context = len(tokens)
            tokens.append(token)
            stats.generated_tokens += 1
            yield token
            if token in stop_ids:
                return
