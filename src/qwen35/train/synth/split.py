"""Training and held-out splits that never share a question.

Every sample maker draws its task (an arithmetic problem, a conversion, a tool call's arguments) and keys it
by what makes it that task, leaving out the surface phrasing. A stable hash of the key puts one task in ten
in the held-out split only, so an eval on held-out samples asks questions training never showed.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from typing import TypeVar

TRAIN, HELDOUT = "train", "heldout"
_TRIES = 10_000

T = TypeVar("T")


def is_heldout(key: tuple) -> bool:
    return zlib.crc32(repr(key).encode()) % 10 == 0


def draw(rng: random.Random, split: str, make: Callable[[random.Random], T], key: Callable[[T], tuple]) -> T:
    """`make(rng)` until its task belongs to `split`."""
    for _ in range(_TRIES):
        item = make(rng)
        if is_heldout(key(item)) == (split == HELDOUT):
            return item
    raise RuntimeError(f"no {split} task found in {_TRIES} draws")
