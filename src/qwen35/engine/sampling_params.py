"""`SamplingParams`: what a request asks of the sampler and the stop logic. Names follow vLLM's.

Validation rejects what the engine cannot run (the error text starts with the field name: the server
reports it as the offending parameter). Bounds follow vLLM:

* temperature, top_p, min_p, the penalties and logit_bias values must be finite; a temperature in
  (0, 0.01) is raised to 0.01 with a warning, as vLLM does (smaller ones overflow the logits);
* seed must fit a signed 64-bit integer, [-2**63, 2**63 - 1] (vLLM's OpenAI protocol bound, what
  `torch.Generator.manual_seed` takes); with n > 1 sub-request i uses seed + i, so seed + n - 1 must fit too;
* max_tokens and min_tokens must fit a signed 64-bit integer as well (the engine caps max_tokens to the
  context anyway);
* logprobs and prompt_logprobs: 0..20 (vLLM's default max_logprobs);
* allowed_token_ids: a non-empty list of token ids (every other id gets -inf); bad_words: non-empty strings,
  tokenised by the engine (`update_from_tokenizer`, vLLM's rule: each word alone and after a space), whose last
  token gets -inf wherever the output already ends with the tokens before it;
* truncate_prompt_tokens: keep the prompt's last k tokens (k >= 1; -1: all but one token of the context).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .structured import GuidedDecoding

log = logging.getLogger("qwen35.engine")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MIN_TEMPERATURE = 0.01  # vLLM's _MAX_TEMP: smaller positive temperatures are raised to it
MAX_LOGPROBS = 20


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
    prompt_logprobs: int | None = None  # same per prompt token (RequestOutput.prompt_logprobs); None: off
    skip_special_tokens: bool = True
    detokenize: bool = True  # False: token ids only, no text (stop strings then cannot be matched)
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None  # added to the logits before sampling (OpenAI's -100..100)
    allowed_token_ids: list[int] | None = None  # sample only among these ids
    bad_words: list[str] | None = None  # never generate these words (their token ids: `bad_words_token_ids`)
    truncate_prompt_tokens: int | None = None  # keep the last k prompt tokens (-1: all that leave room)
    # vLLM's cache_salt (a request field there; it travels with the params here): prefix-cache entries are
    # shared only between requests with the same salt, so one tenant cannot time another's cached prompts
    cache_salt: str | None = None
    guided: GuidedDecoding | None = None  # structured output (JSON schema, grammar, ...): see engine/structured.py
    # vLLM's names for `guided`: StructuredOutputsParams (and the older GuidedDecodingParams), or a dict of their
    # fields: json (a schema, or its JSON text), json_object, regex, choice, grammar
    structured_outputs: Any = None
    guided_decoding: Any = None
    bad_words_token_ids: list[list[int]] | None = None  # set from bad_words by `update_from_tokenizer`

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        for name in ("stop", "stop_token_ids", "allowed_token_ids", "bad_words"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (list, tuple)):
                raise ValueError(f"{name} must be a list, got {type(value).__name__}")
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        for name in ("allowed_token_ids", "bad_words"):
            if getattr(self, name) is not None:
                setattr(self, name, list(getattr(self, name)))
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            (_is_int(self.n) and self.n >= 1, "n", "must be an integer >= 1"),
            (_is_finite(self.temperature) and self.temperature >= 0, "temperature",
             "must be a finite number >= 0"),
            (_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (_is_int(self.top_k) and self.top_k >= 0, "top_k", "must be -1, 0 (off) or a positive integer"),
            (_is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (_is_finite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
             "must be a finite number > 0"),
            (_is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2, "presence_penalty",
             "must be in [-2, 2]"),
            (_is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2, "frequency_penalty",
             "must be in [-2, 2]"),
            (self.seed is None or (_is_int(self.seed) and INT64_MIN <= self.seed <= INT64_MAX), "seed",
             "must be an integer in [-2**63, 2**63 - 1]"),
            (self.max_tokens is None or (_is_int(self.max_tokens) and 1 <= self.max_tokens <= INT64_MAX),
             "max_tokens", "must be an integer in [1, 2**63 - 1]"),
            (_is_int(self.min_tokens) and 0 <= self.min_tokens <= INT64_MAX, "min_tokens",
             "must be an integer in [0, 2**63 - 1]"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
             "must not exceed max_tokens"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
            (self.detokenize or not self.stop, "stop", "strings need detokenize=True (there is no text to match)"),
            (all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
             "must be non-negative integers"),
            (self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS), "logprobs",
             f"must be an integer in [0, {MAX_LOGPROBS}]"),
            (self.prompt_logprobs is None or (_is_int(self.prompt_logprobs)
                                              and 0 <= self.prompt_logprobs <= MAX_LOGPROBS), "prompt_logprobs",
             f"must be an integer in [0, {MAX_LOGPROBS}]"),
            (self.logit_bias is None or (isinstance(self.logit_bias, dict) and all(
                _is_int(k) and k >= 0 and _is_num(v) and -100 <= v <= 100 for k, v in self.logit_bias.items())),
             "logit_bias", "must map token ids to numbers in [-100, 100]"),
            (self.allowed_token_ids is None or (self.allowed_token_ids and all(
                _is_int(t) and t >= 0 for t in self.allowed_token_ids)), "allowed_token_ids",
             "must be a non-empty list of non-negative token ids"),
            (self.bad_words is None or all(isinstance(w, str) and w.strip() for w in self.bad_words), "bad_words",
             "must be non-blank strings"),
            (self.cache_salt is None or (isinstance(self.cache_salt, str) and self.cache_salt), "cache_salt",
             "must be a non-empty string"),
            (self.truncate_prompt_tokens is None or (_is_int(self.truncate_prompt_tokens) and (
                self.truncate_prompt_tokens >= 1 or self.truncate_prompt_tokens == -1)), "truncate_prompt_tokens",
             "must be -1 (the context length) or an integer >= 1"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"{name} {rule}, got {getattr(self, name)!r}")
        if self.seed is not None and self.seed + self.n - 1 > INT64_MAX:  # sub-request i is seeded seed + i
            raise ValueError(f"seed must be at most 2**63 - n = {INT64_MAX - self.n + 1} with n={self.n} "
                             f"(sub-request i uses seed + i), got {self.seed}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # as vLLM: 1/temperature would overflow the logits
            log.warning("temperature %s is below %s, which makes logits overflow; using %s",
                        self.temperature, MIN_TEMPERATURE, MIN_TEMPERATURE)
            self.temperature = MIN_TEMPERATURE
        given = [name for name in ("guided", "structured_outputs", "guided_decoding")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"{given[0]} and {given[1]} both set the structured output; give one")
        if given and given[0] != "guided":
            self.guided = _from_vllm(given[0], getattr(self, given[0]))
            self.structured_outputs = self.guided_decoding = None
        if self.guided is not None:  # imported here: the scheduler imports this module without torch
            from .structured import GuidedDecoding

            if isinstance(self.guided, dict):
                self.guided = GuidedDecoding(**self.guided)
            if not isinstance(self.guided, GuidedDecoding):  # its grammar was compiled and checked when built
                raise ValueError(f"guided must be a GuidedDecoding, got {type(self.guided).__name__}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def clone(self) -> SamplingParams:
        """A copy whose lists and dicts are its own (vLLM's method); the compiled grammar is shared (immutable)."""
        def copy(x):
            return None if x is None else type(x)(x)

        return dataclasses.replace(self, stop=list(self.stop), stop_token_ids=list(self.stop_token_ids),
                                   logit_bias=copy(self.logit_bias), allowed_token_ids=copy(self.allowed_token_ids),
                                   bad_words=copy(self.bad_words))

    def update_from_tokenizer(self, tokenizer: Any) -> None:
        """`bad_words_token_ids` from `bad_words` (vLLM's rule): each word's ids as written, with its leading space
        dropped, and again after one space where that gives another first token in as many tokens (the word
        inside text)."""
        if not self.bad_words:
            self.bad_words_token_ids = None
            return
        out: list[list[int]] = []
        for word in self.bad_words:
            alone = tokenizer.encode(word.lstrip())
            out.append(alone)
            spaced = tokenizer.encode(" " + word.lstrip())
            if spaced and spaced[0] != alone[0] and len(spaced) == len(alone):
                out.append(spaced)
        self.bad_words_token_ids = out

    def check_vocab(self, vocab_size: int) -> None:
        """ValueError naming the field when a token id here is outside a `vocab_size`-token vocabulary."""
        words = [t for ids in self.bad_words_token_ids or () for t in ids]
        for name, ids in (("logit_bias", self.logit_bias or ()), ("stop_token_ids", self.stop_token_ids),
                          ("allowed_token_ids", self.allowed_token_ids or ()), ("bad_words", words)):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise ValueError(f"{name} has token id {bad[0]}, outside the model's vocabulary [0, {vocab_size})")


def truncate_prompt(ids: list[int], keep: int, limit: int, media: bool = False) -> list[int]:
    """vLLM's truncate_prompt_tokens: the last `keep` of `ids` (-1: `limit - 1`, which leaves one token of a
    `limit`-token context for the answer). ValueError for a `keep` past the context, as vLLM, and for any cut of
    a prompt with images or video (`media`). The engine (`LLMEngine._truncated`) and the server
    (`server/limits.truncated`) both cut prompts with it."""
    keep = limit - 1 if keep == -1 else keep
    if keep > limit:
        raise ValueError(f"truncate_prompt_tokens {keep} is more than the context of {limit} tokens (max_model_len)")
    if len(ids) <= keep:
        return ids
    if media:
        raise ValueError("truncate_prompt_tokens would cut a prompt that has images or video")
    return ids[-keep:]


def _from_vllm(name: str, value: Any) -> dict[str, Any]:
    """`guided`'s fields from vLLM's StructuredOutputsParams / GuidedDecodingParams (an object or a dict)."""
    fields = value if isinstance(value, dict) else {k: getattr(value, k) for k in VLLM_GUIDED if hasattr(value, k)}
    unknown = sorted(k for k, v in fields.items() if k not in VLLM_GUIDED and v not in (None, False))
    if unknown:
        raise ValueError(f"{name}: {unknown[0]!r} is not supported (supported: {', '.join(VLLM_GUIDED)})")
    out = {VLLM_GUIDED[k]: v for k, v in fields.items() if k in VLLM_GUIDED and v not in (None, False)}
    if isinstance(out.get("json_schema"), str):
        try:
            out["json_schema"] = json.loads(out["json_schema"])
        except json.JSONDecodeError as e:
            raise ValueError(f"{name}: json is not valid JSON: {e}") from None
    return out


VLLM_GUIDED = {"json": "json_schema", "json_object": "json_object", "regex": "regex", "choice": "choice",
               "grammar": "grammar"}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite(x) -> bool:
    """A real number that is finite as a float (an int too large for a float is not)."""
    try:
        return _is_num(x) and math.isfinite(x)
    except OverflowError:
        return False


def _is_num(x) -> bool:
    """A real number that is not NaN (range checks then exclude the infinities where needed)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
