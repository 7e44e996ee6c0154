"""What the engine hands back per request, in vLLM's shapes (`RequestOutput`, `CompletionOutput`).

A request that failed inside the engine (an exception while processing it, or a forward pass that failed for
its whole step) finishes with `finish_reason="error"` on its completions and a short `RequestOutput.error`;
the details go to the engine's log. `AsyncLLM.generate` raises `RequestFailed` for such an output.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConstraintFailed(ValueError):
    """A request's structured-output constraint failed mid-generation (llguidance's limits): the request's
    fault, not the engine's. Raised while processing the output; the request ends with its error."""


class RequestFailed(RuntimeError):
    """The engine failed while processing this request (not the caller's fault: answer 500).

    `str(e)` is the short `RequestOutput.error`; `e.output` the final output, when there is one."""

    def __init__(self, message: str, output: RequestOutput | None = None) -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class Logprob:
    """One entry of the offline API's logprobs, as vLLM's: `rank` 1 for the most likely token (None for a
    chosen token outside the requested top ones, whose rank is not computed), `decoded_token` its text."""
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def ranked(entry: dict[int, float], top: int, decode) -> dict[int, Logprob]:
    """An engine entry (the chosen token first, then the `top` most likely) as vLLM's `{id: Logprob}`: each of the
    top ones ranks among them (1: the most likely); the chosen token, when not one of them, has no rank.
    `decode(id)`: the token's text."""
    first = next(iter(entry))
    chosen_outside = len(entry) > top
    return {t: Logprob(v, None if t == first and chosen_outside else 1 + sum(x > v for x in entry.values()),
                       decode(t)) for t, v in entry.items()}


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, float]] | None = None  # per generated token: {token id: logprob}
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None  # the stop token id or stop string that matched
    delta_text: str = ""  # text added by the latest step (for streaming)
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    # with SamplingParams.prompt_logprobs = k: one entry per prompt token, None for the first, then
    # {token id: logprob of that token, plus the k most likely ids} from the logits at the previous position
    # (raw log_softmax, as vLLM). Set from the first output on (once the whole prompt is computed); the
    # same list object in every output of the request: read it, do not modify it.
    prompt_logprobs: list[dict[int, float] | None] | None = None
    error: str | None = None  # set (and finished) when the engine failed this request; see the module docstring
    error_is_request: bool = False  # the request itself could not be served (its grammar failed): a 400
