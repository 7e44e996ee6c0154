"""Induction drills: `<a> x1..xL <b> x1..xL <c>` with random token ids, the loss on the repeat only.

A model can only finish such a sequence by finding the earlier copy of the token it is at and reading the one
after it (an induction head), the mechanism that copies a path, an address or a listing from the context
into a tool call or an answer. The demo model's 3:1 shape learns it from random ids within ~1,000 steps once
Gated DeltaNet's output gate starts open, and never with the drawn gate (`bench/copy_probe.py`, docs/LOG.md
2026-12-04). A recipe's `copy_steps` train on these before the chat data; `copy_probe` uses them to test a
shape. Deterministic given (seed, step), so a resumed run draws the same batches.
"""

from __future__ import annotations

import numpy as np

from .examples import Example, labelled

MARKERS = (1, 2, 3)  # the three separators; any fixed ids do


def copy_example(rng: np.random.Generator, length: int, first_id: int, ids: int) -> Example:
    """One drill: `length` ids drawn from [first_id, first_id + ids), shown once and then repeated."""
    seq = rng.integers(first_id, first_id + ids, length)
    a, b, c = MARKERS
    tokens = np.concatenate([[a], seq, [b], seq, [c]]).astype(np.int64)
    learnt = np.zeros(len(tokens), dtype=bool)
    learnt[length + 2:] = True  # the repeat and the end marker
    return labelled(tokens, learnt)


def copy_batch(seed: int, step: int, batch_tokens: int, length: int, first_id: int, ids: int) -> list[Example]:
    """The drills of one training step: as many as fit in `batch_tokens`."""
    rng = np.random.default_rng([seed, step])
    return [copy_example(rng, length, first_id, ids) for _ in range(max(1, batch_tokens // (2 * length + 3)))]
