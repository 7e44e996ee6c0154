"""A request's life in the engine: tokens, progress counters and the cache it holds. Torch-free."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .sampling_params import SamplingParams

if TYPE_CHECKING:
    from ..multimodal.layout import PromptMedia


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float = 0.0
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V and GDN state are in the cache
    num_cached: int = 0  # of those, tokens restored from the prefix cache
    status: Status = Status.WAITING
    slot: int | None = None  # GDN state slot
    blocks: list[int] = field(default_factory=list)  # KV block table
    checkpoints: list[int] = field(default_factory=list)  # prompt positions where GDN state is saved
    finish_reason: str | None = None
    max_len: int = 0  # prompt + max_tokens, fixed at admission
    draft_ids: list[int] = field(default_factory=list)  # speculative tokens to verify after the last token
    media: PromptMedia | None = None  # images / video in the prompt: their rows, positions and cache key
    _key: list[int] | None = field(default=None, repr=False)  # prompt's prefix-cache key when it has media
    prefix_keys: dict[int, bytes] = field(default_factory=dict, repr=False)  # PrefixCache.lookup's memo
    siblings: list[Request] = field(default_factory=list, repr=False)  # the other sub-requests of an n > 1 one

    @property
    def prefix_ids(self) -> list[int]:
        """The tokens as the prefix cache keys them: `all_ids`, with each media item's placeholders replaced
        by its content digest (two images of one size never share an entry)."""
        if self.media is None:
            return self.all_ids
        if self._key is None:
            self._key = self.media.key_ids(self.prompt_ids)
        return self._key + self.output_ids

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def tokens(self, start: int, n: int) -> list[int]:
        """Tokens [start, start + n) of prompt + output, without concatenating the two lists."""
        p, end = len(self.prompt_ids), start + n
        if end <= p:
            return self.prompt_ids[start:end]
        if start >= p:
            return self.output_ids[start - p:end - p]
        return self.prompt_ids[start:] + self.output_ids[:end - p]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.status == Status.FINISHED
