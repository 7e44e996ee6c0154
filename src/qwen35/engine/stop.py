"""`StopChecker`: one request's output text, streamed as deltas, and when (and why) it stops.

Fed each sampled token id, it detokenizes incrementally (`IncrementalDetokenizer`) and returns
`Delta(text, finish_reason)`. Rules, as in vLLM:

* EOS (the engine's `eos_token_ids`, unless `ignore_eos`) and `stop_token_ids` finish with
  "stop"; the stopping token stays in `token_ids` but its text is left out (kept with
  `include_stop_str_in_output`). `stop_reason` is the matched stop token id, or None for EOS.
* A stop string finishes with "stop" as soon as it is complete, even across token boundaries or
  inside one token; the text ends right before it (right after it with
  `include_stop_str_in_output`), and `stop_reason` is the string. When several could match, the
  first to complete in the text wins (then the one starting first), which does not depend on
  how the text is split into tokens. A stop string also overrides "length" on the last token.
* "length" once `max_tokens` tokens are generated.
* Nothing stops before `min_tokens` tokens, and a stop string completed before then is ignored.

Streaming never shows text that a stop string could still remove: the longest suffix that is a
proper prefix of a stop string is held back until disambiguated, and released at the finish.

Cost per token is O(new text + sum of stop-string lengths): matches are only searched in the
last (longest stop - 1) characters of earlier text plus the new text, and the full text is kept
as a list of streamed pieces, joined on demand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from qwen35.engine.sampling_params import SamplingParams
from qwen35.tokenizer.detokenizer import IncrementalDetokenizer
from qwen35.tokenizer.tokenizer import Tokenizer


class Delta(NamedTuple):
    text: str  # new text to stream (possibly "")
    finish_reason: str | None  # "stop", "length" or None while running


class StopChecker:
    """Per-request output processor: `feed(token_id) -> Delta`; see the module docstring."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams, eos_token_ids: Iterable[int] = (),
                 *, max_tokens: int | None = None) -> None:
        """max_tokens overrides params.max_tokens, e.g. with what still fits in the context."""
        self.params = params
        self.max_tokens = params.max_tokens if max_tokens is None else max_tokens
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        self._detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=params.skip_special_tokens) \
            if params.detokenize else _NoText()
        self._eos_ids = frozenset(() if params.ignore_eos else eos_token_ids)
        self._stop_ids = frozenset(params.stop_token_ids)
        self._stops = tuple(params.stop)
        self._window = max((len(s) for s in self._stops), default=1) - 1  # earlier chars a new match can use
        self._hold_back = bool(self._stops) and not params.include_stop_str_in_output

        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None  # the stop token id or stop string that matched
        self._streamed: list[str] = []  # text already returned in deltas
        self._pending = ""  # decoded text held back (a possible stop-string start)
        self._tail = ""  # last `_window` chars of the decoded text

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """All output text so far, including held-back text; the final output once finished."""
        if len(self._streamed) > 1:
            self._streamed[:] = ["".join(self._streamed)]
        return (self._streamed[0] if self._streamed else "") + self._pending

    def feed(self, token_id: int) -> Delta:
        """Add one generated token; return the text to stream and the finish reason, if any."""
        if self.finished:
            raise ValueError(f"request already finished ({self.finish_reason}); cannot feed token {token_id}")
        self.token_ids.append(token_id)
        can_stop = len(self.token_ids) >= self.params.min_tokens
        if can_stop and (token_id in self._eos_ids or token_id in self._stop_ids):
            self.stop_reason = None if token_id in self._eos_ids else token_id
            new = self._detok.feed(token_id) if self.params.include_stop_str_in_output else ""
            return self._finish("stop", self._pending + new + self._detok.flush())

        at_length = self.max_tokens is not None and len(self.token_ids) >= self.max_tokens
        new = self._detok.feed(token_id)
        if at_length:
            new += self._detok.flush()
        if not new:
            return self._finish("length", self._pending) if at_length else Delta("", None)
        unsent = self._pending + new
        if can_stop and self._stops:
            cut = self._match(new, unsent)
            if cut is not None:
                return self._finish("stop", unsent[:cut])
        self._tail = (self._tail + new)[-self._window:] if self._window else ""
        if at_length:
            return self._finish("length", unsent)
        hold = self._held_suffix(unsent) if self._hold_back else 0
        self._pending = unsent[len(unsent) - hold:]
        return self._emit(unsent[:len(unsent) - hold], None)

    def force_finish(self, reason: str = "length") -> Delta:
        """Finish now (the engine ran out of context, or aborted): release held-back text."""
        if self.finished:
            raise ValueError(f"request already finished ({self.finish_reason})")
        return self._finish(reason, self._pending + self._detok.flush())

    # ---- internals ----------------------------------------------------------------------

    def _match(self, new: str, unsent: str) -> int | None:
        """Set stop_reason and return where `unsent` ends, if a stop string completes in `new`."""
        win = self._tail + new  # every new match lies in here and ends inside `new`
        best = None  # (end, start, stop) in win coordinates
        for stop in self._stops:
            start = win.find(stop, max(0, len(self._tail) - len(stop) + 1))
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        if best is None:
            return None
        end, start, self.stop_reason = best
        cut = end if self.params.include_stop_str_in_output else start
        return cut - (len(win) - len(unsent))  # unsent is a suffix of win (held text is within the tail)

    def _held_suffix(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:n]):
                    hold = n
                    break
        return hold

    def _emit(self, text: str, finish_reason: str | None) -> Delta:
        if text:
            self._streamed.append(text)
        return Delta(text, finish_reason)

    def _finish(self, reason: str, text: str) -> Delta:
        self.finish_reason = reason
        self._pending = ""
        return self._emit(text, reason)


class _NoText:
    """The detokenizer of a request with `detokenize=False`: token ids only, no text."""

    def feed(self, token_id: int) -> str:
        return ""

    def flush(self) -> str:
        return ""
