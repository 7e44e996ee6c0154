"""The sample mix: which kinds of conversation a data set holds, and the training and held-out sets."""

from __future__ import annotations

import random

from . import arithmetic, convert, echo, facts, followup, no_tool, siblings, smalltalk, tools
from .sample import Sample
from .split import HELDOUT, TRAIN

DEFAULT_MIX = {"arith": 0.30, "convert": 0.10, "followup": 0.10, "tool": 0.25, "no_tool": 0.12, "smalltalk": 0.08}
MAKERS = {"arith": arithmetic.make_sample, "convert": convert.make_sample, "followup": followup.make_sample,
          "tool": tools.make_sample, "no_tool": no_tool.make_sample, "smalltalk": smalltalk.make_sample,
          "echo": echo.make_sample, "facts": facts.make_sample}  # drills: not in DEFAULT_MIX, never held out
THINKING_SHARE = 0.7
TRAINING_SEED, HELDOUT_SEED = 0, 1_000_003


def generate(n: int, seed: int, mix: dict[str, float] | None = None, split: str = TRAIN,
             tool_siblings: int = 1) -> list[Sample]:
    """`n` samples, the same for the same arguments. `mix` weighs the kinds (default DEFAULT_MIX); `split`
    says whose tasks to draw: TRAIN's or the held-out ones'. With `tool_siblings` > 1 (training only), each
    draw of kind "tool" gives 1..tool_siblings conversations under one tool header (siblings.py)."""
    mix = DEFAULT_MIX if mix is None else mix
    rng = random.Random(seed)
    kinds = rng.choices(list(mix), list(mix.values()), k=n)
    samples: list[Sample] = []
    for kind in kinds:
        if kind == "tool" and tool_siblings > 1:
            samples += siblings.make_siblings(rng, lambda: rng.random() < THINKING_SHARE, split, tool_siblings)
        else:
            samples.append(MAKERS[kind](rng, rng.random() < THINKING_SHARE, split))
    return samples[:n]


def training(n: int) -> list[Sample]:
    return generate(n, TRAINING_SEED)


def heldout(n: int, draw: int = 0) -> list[Sample]:
    """Samples whose questions training never asks (see `split`). Each `draw` is another set of them (draw 0 is
    the one the docs report), so that a choice between trained models can be made on one draw and reported on
    another."""
    return generate(n, HELDOUT_SEED + draw, split=HELDOUT)
