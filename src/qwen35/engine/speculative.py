"""Speculative decoding bookkeeping: how many tokens each request drafts, and the acceptance counters.

`DraftPolicy` (one per request) switches drafting off while it does not pay: when fewer than
`acceptance_floor` of the drafts of the last few rounds were kept, the request pauses drafting for a while
(4 steps, doubling up to 64 while acceptance stays low) and then tries again. A paused request still runs
the MTP head over its new token (that keeps the head's K/V complete; it costs one layer, no lm_head), so
its drafts are good again as soon as it resumes. With nothing accepted, speculation then costs a few
percent instead of the k drafting passes of every step.

`SpecStats`: the counters behind `/metrics` (vLLM's spec_decode_* names).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW = 8  # verification rounds the acceptance is measured over
MIN_ROUNDS = 3  # rounds before the first judgement
FIRST_PAUSE, MAX_PAUSE = 4, 64  # steps without drafts after a bad window


class DraftPolicy:
    def __init__(self, k: int, acceptance_floor: float) -> None:
        self.k, self.floor = k, acceptance_floor
        self.rounds: deque[tuple[int, int]] = deque(maxlen=WINDOW)  # (drafted, kept)
        self.pause_left = 0
        self.next_pause = FIRST_PAUSE

    def budget(self) -> int:
        """Draft tokens for the next step (0 while paused). Call once per step."""
        if self.pause_left > 0:
            self.pause_left -= 1
            return 0
        return self.k

    def record(self, drafted: int, kept: int) -> None:
        if drafted == 0:
            return
        self.rounds.append((drafted, kept))
        if len(self.rounds) < MIN_ROUNDS:
            return
        total = sum(d for d, _ in self.rounds)
        if sum(a for _, a in self.rounds) < self.floor * total:
            self.pause_left, self.next_pause = self.next_pause, min(2 * self.next_pause, MAX_PAUSE)
            self.rounds.clear()
        elif len(self.rounds) == WINDOW:
            self.next_pause = FIRST_PAUSE


@dataclass
class SpecStats:
    k: int
    drafts: int = 0  # verification rounds with at least one draft
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)  # [k]: drafts kept at position i

    def __post_init__(self) -> None:
        self.accepted_per_pos = [0] * self.k

    def record(self, drafted: int, kept: int) -> None:
        if drafted == 0:
            return
        self.drafts += 1
        self.draft_tokens += drafted
        self.accepted_tokens += kept
        for i in range(kept):
            self.accepted_per_pos[i] += 1

    def as_counters(self) -> dict[str, int]:
        """Flat counters for `LLMEngine.cache_usage()`: spec_num_drafts, spec_num_draft_tokens,
        spec_num_accepted_tokens and spec_accepted_pos_{i} for i < k."""
        out = {"spec_num_drafts": self.drafts, "spec_num_draft_tokens": self.draft_tokens,
               "spec_num_accepted_tokens": self.accepted_tokens}
        out.update({f"spec_accepted_pos_{i}": n for i, n in enumerate(self.accepted_per_pos)})
        return out
