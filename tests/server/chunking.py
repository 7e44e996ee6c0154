"""Ways to cut a model output into streaming deltas, shared by the parser tests."""

from __future__ import annotations

import random


def chunkings(text: str, n_random: int = 20):
    """Every fixed chunk size, random cuts, and one chunking with empty deltas in between."""
    for size in range(1, len(text) + 1):
        yield [text[i:i + size] for i in range(0, len(text), size)]
    rng = random.Random(len(text))
    for _ in range(n_random if len(text) > 1 else 0):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(len(text) - 1, 12))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    yield [piece for ch in text for piece in (ch, "")]
