"""Text completions (`/v1/completions`): prompts -> engine -> choices, whole or streamed.

`prepare_completion` does the CPU-bound part off the event loop (tokenising, grammar compilation) and
refuses what this server does not do rather than ignoring it: `suffix` (Qwen3.5 has no fill-in-the-middle
format) and `best_of` > 1. `echo` puts the prompt (text, or the decoded ids) in front of each choice;
with `logprobs` it also returns the prompt tokens' logprobs, as vLLM does. `echo` with `max_tokens: 0`
returns the prompt alone, the request a scorer (lm-evaluation-harness's loglikelihood) sends: the engine
samples one token, as it must to finish a prefill, and the reply leaves it out.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .chat import build_guided, prompt_logprobs_json, structured_spec, token_text, top_of, usage
from .limits import MAX_SEQUENCES, RequestError, encode_bounded, truncated
from .params import sampling_params
from .protocol import CompletionRequest


NO_LOGPROBS: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


@dataclass
class CompletionPlan:
    prompts: list[str | list[int]]
    id_lists: list[list[int]]
    params: list[Any]  # SamplingParams, one per prompt
    echo_texts: list[str]  # what echo puts before each prompt's choices ("" without echo)
    echo_only: bool = False  # echo with max_tokens 0: the prompt alone, the one sampled token left out


def prepare_completion(body: CompletionRequest, server) -> CompletionPlan:
    if body.suffix:
        raise RequestError("suffix is not supported: Qwen3.5 has no fill-in-the-middle format", "suffix")
    if body.best_of is not None and body.best_of != 1:
        raise RequestError("best_of is not supported (use n)", "best_of")
    if body.logprobs is not None and body.logprobs > server.max_logprobs:
        raise RequestError(f"logprobs must be at most {server.max_logprobs} (--max-logprobs)", "logprobs")
    if (body.prompt_logprobs or 0) > server.max_logprobs:
        raise RequestError(f"prompt_logprobs must be at most {server.max_logprobs} (--max-logprobs)",
                           "prompt_logprobs")
    prompts = body.prompt
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts:
        raise RequestError("prompt must not be empty", "prompt")
    if len(prompts) * body.n > MAX_SEQUENCES:
        raise RequestError(f"prompts x n is {len(prompts) * body.n}; at most {MAX_SEQUENCES} sequences a request",
                           "n")
    if len(prompts) > 1 and body.stream:
        raise RequestError("streaming supports one prompt per request", "prompt")
    echo_only = body.max_tokens == 0
    if echo_only and not body.echo:
        raise RequestError("max_tokens must be at least 1 (0 only with echo, which then returns the prompt "
                           "alone)", "max_tokens")
    tok, limit = server.tokenizer, server.max_model_len
    vocab = server.vocab_size
    id_lists = []
    for p in prompts:
        if isinstance(p, str):
            ids = encode_bounded(tok, p, limit, truncate=body.truncate_prompt_tokens)
        else:
            ids = truncated(list(p), body.truncate_prompt_tokens, limit)
            if len(ids) >= limit:
                raise RequestError(f"the prompt is {len(ids)} tokens; this model's context is {limit} tokens "
                                   "(max_model_len), which leaves no room for an answer", "prompt")
            if any(not 0 <= t < vocab for t in ids):
                raise RequestError(f"prompt token ids must be in [0, {vocab})", "prompt")
        if not ids:
            raise RequestError("prompt must not be empty", "prompt")
        id_lists.append(ids)
    found = structured_spec(body)
    guided = build_guided(found[0], found[1], None, None) if found else None
    # the engine computes the most the echo (its logprobs) and prompt_logprobs ask; each shows its own count
    asked = [k for k in (body.logprobs if body.echo else None, body.prompt_logprobs) if k is not None]
    try:
        params = [sampling_params(body, max_tokens=1 if echo_only else min(body.max_tokens or 16, limit - len(ids)),
                                  thinking=None,
                                  defaults=server.generation_defaults, use_presets=False, logprobs=body.logprobs,
                                  guided=guided, prompt_logprobs=max(asked) if asked else None,
                                  vocab_size=vocab)
                  for ids in id_lists]
    except ValueError as e:
        raise RequestError(str(e), str(e).split(" ", 1)[0]) from None
    cut = body.truncate_prompt_tokens is not None  # then the echo is what is left of the prompt
    echo = [(p if isinstance(p, str) and not cut else tok.decode(ids)) if body.echo else ""
            for p, ids in zip(prompts, id_lists)]
    return CompletionPlan(prompts, id_lists, params, echo, echo_only)


@dataclass
class CompletionRun:
    """Turns engine outputs into OpenAI text-completion responses or chunks."""

    plan: CompletionPlan
    body: CompletionRequest
    model: str
    tokenizer: Any
    token_ids_as_tokens: bool = False  # logprobs name tokens 'token_id:N' (--return-tokens-as-token-ids)
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    # streaming: the text offset of each choice's next token (as the whole response counts them: token texts,
    # after the prompt's with echo), by choice index; a choice not in it has not sent its first chunk, which
    # carries the echo (and, with logprobs, the prompt's)
    offset: dict[int, int] = field(default_factory=dict)

    def response(self, finals: list[Any]) -> dict[str, Any]:
        choices, total, cached = [], {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, 0
        n = self.body.n
        for k, final in enumerate(finals):
            for c in final.outputs:
                if self.plan.echo_only:
                    choices.append(self._extras(final, None, self._prompt_alone(final, k * n + c.index,
                                                                                 self.plan.echo_texts[k])))
                    continue
                lp = self._logprobs(c.token_ids, c.logprobs)
                if self.body.echo and lp is not None:
                    lp = self._with_prompt(final, lp)
                choices.append(self._extras(final, c, {"index": k * n + c.index,
                                                       "text": self.plan.echo_texts[k] + c.text,
                                                       "finish_reason": _reason(c), "logprobs": lp}))
            one = self.usage(final)
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                total[key] += one[key]
            cached += (one.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        if cached:  # as the chat endpoint (and vLLM) report it: when some prompt tokens came from the cache
            total["prompt_tokens_details"] = {"cached_tokens": cached}
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": total}

    def _extras(self, final, c, choice: dict[str, Any]) -> dict[str, Any]:
        """vLLM's extra choice fields: `prompt_logprobs`, and with return_token_ids the prompt's and the choice's
        token ids (`c` None: an echo-only choice, which generated none)."""
        if self.body.prompt_logprobs is not None:
            choice["prompt_logprobs"] = prompt_logprobs_json(final.prompt_logprobs, self.body.prompt_logprobs,
                                                             self.tokenizer)
        if self.body.return_token_ids:
            choice["prompt_token_ids"] = list(final.prompt_token_ids)
            choice["token_ids"] = list(c.token_ids) if c is not None else []
        return choice

    def _prompt_alone(self, final, index: int, text: str) -> dict[str, Any]:
        """An echo-only choice (max_tokens 0): the prompt, with its logprobs when asked; the sampled token left out."""
        lp = self._with_prompt(final, NO_LOGPROBS) if self.body.logprobs is not None else None
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": "length"}

    def usage(self, final) -> dict[str, Any]:
        if not self.plan.echo_only:
            return usage(final)
        prompt = len(final.prompt_token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt}

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def stream_chunks(self, out) -> list[dict[str, Any]]:
        chunks = []
        for c in out.outputs:
            if self.plan.echo_only:  # one chunk, when the prefill is done: the prompt, its logprobs
                if c.finished:
                    chunks.append(self.chunk([self._extras(out, None, self._prompt_alone(out, c.index,
                                                                                       self.plan.echo_texts[0]))]))
                continue
            first = c.index not in self.offset
            echo = self.plan.echo_texts[0] if first else ""
            # a step whose token made no text yet (half a character) still sends its logprobs and ids
            tokens_wanted = c.delta_token_ids and (self.body.logprobs is not None or self.body.return_token_ids)
            if not c.delta_text and not c.finished and not echo and not tokens_wanted:
                continue
            offsets = self.body.logprobs is not None  # only logprobs show text offsets
            if first:
                self.offset[c.index] = self._text_len(out.prompt_token_ids) if self.body.echo and offsets else 0
            start = self.offset[c.index]
            lp = (self._logprobs(c.delta_token_ids, c.logprobs[-len(c.delta_token_ids):], start)
                  if c.logprobs and c.delta_token_ids else None)
            if first and self.body.echo and self.body.logprobs is not None:  # the prompt's go out first
                lp = self._with_prompt(out, lp or NO_LOGPROBS)
            text = echo + c.delta_text
            self.offset[c.index] = start + (self._text_len(c.delta_token_ids) if offsets else 0)
            choice = {"index": c.index, "text": text, "logprobs": lp,
                      "finish_reason": _reason(c) if c.finished else None}
            if self.body.return_token_ids:  # the prompt's ids with the first chunk, each chunk's own ids
                choice.update({"prompt_token_ids": list(out.prompt_token_ids)} if first else {},
                              token_ids=list(c.delta_token_ids))
            chunks.append(self.chunk([choice]))
        return chunks

    def _logprobs(self, token_ids: list[int], entries, start: int = 0) -> dict[str, Any] | None:
        """The OpenAI `logprobs` object of these tokens; `start`: the text offset of the first."""
        if self.body.logprobs is None or not entries:
            return None
        return {"tokens": [self._tok(t) for t in token_ids],
                "token_logprobs": [e[t] for t, e in zip(token_ids, entries)],
                "top_logprobs": [{self._tok(t): lp for t, lp in e.items()} for e in entries],
                "text_offset": self._offsets(token_ids, start)}

    def _with_prompt(self, final, lp: dict[str, Any]) -> dict[str, Any]:
        """Prompt tokens first (the first has no logprob: nothing precedes it), then the generated ones."""
        ids = final.prompt_token_ids
        entries = getattr(final, "prompt_logprobs", None) or [None] * len(ids)
        offsets = self._offsets(ids)
        end = offsets[-1] + len(token_text(self.tokenizer, ids[-1])) if ids else 0
        shift = end - (lp["text_offset"][0] if lp["text_offset"] else 0)  # the reply's offsets follow the prompt
        return {"tokens": [self._tok(t) for t in ids] + lp["tokens"],
                "token_logprobs": [e[t] if e else None for t, e in zip(ids, entries)] + lp["token_logprobs"],
                "top_logprobs": [{self._tok(t): v for t, v in top_of(e, self.body.logprobs or 0).items()} if e else None
                                 for t, e in zip(ids, entries)] + lp["top_logprobs"],
                "text_offset": offsets + [o + shift for o in lp["text_offset"]]}

    def _tok(self, tok_id: int) -> str:
        return token_text(self.tokenizer, tok_id, self.token_ids_as_tokens)

    def _text_len(self, token_ids: list[int]) -> int:
        return sum(len(token_text(self.tokenizer, t)) for t in token_ids)

    def _offsets(self, token_ids: list[int], pos: int = 0) -> list[int]:
        """Where each token's text starts (its text, not a 'token_id:N' label)."""
        out = []
        for t in token_ids:
            out.append(pos)
            pos += len(token_text(self.tokenizer, t))
        return out


def _reason(c) -> str | None:
    return "stop" if c.finish_reason == "abort" else c.finish_reason
