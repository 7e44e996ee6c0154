"""Tool use (kind "tool"): a request that one of the offered tools answers.

The assistant reasons in one short sentence, calls the tool with the arguments copied from the request (content
""), reads the result and replies from it; chains call again after a result. The needed tools come with 0-3
distractors in random order; 5% of samples offer instead the whole filesystem set in server order (plus
code_interpreter), which is what Qwen-Agent sends with the MCP filesystem server.
"""

from __future__ import annotations

import functools
import random

from . import api_calls, fs_calls
from .catalogue import API_TOOLS, FILESYSTEM_TOOLS, TOOLS
from .lang import MOSTLY_ENGLISH, pick_lang
from .sample import USE_TOOLS, Sample, system
from .scenario import Scenario
from .split import TRAIN, draw

API_SCENARIOS = {api_calls.weather: 0.09, api_calls.local_time: 0.06, api_calls.currency: 0.07, api_calls.stock: 0.05,
                 api_calls.search: 0.05, api_calls.email: 0.05, api_calls.timer: 0.05, api_calls.translate: 0.05,
                 api_calls.code: 0.04}
FS_SCENARIOS = {fs_calls.write: 0.12, fs_calls.read: 0.10, fs_calls.write_then_read: 0.08, fs_calls.listing: 0.05,
                fs_calls.mkdir: 0.03, fs_calls.info: 0.03, fs_calls.move: 0.03, fs_calls.find: 0.02,
                fs_calls.allowed: 0.01, fs_calls.compute_write_read: 0.02}
SCENARIOS = {**API_SCENARIOS, **FS_SCENARIOS}
# Training only (the held-out set keeps the weights above): the scenarios whose reply copies a name the model
# cannot guess from the request alone (a listing's first entry, a move's destination, an address, the allowed
# folder) failed in every demo model at their natural weight (docs/LOG.md, 2026-12-03), and so did translate
# (a foreign phrase to copy into a Chinese or Korean reply: 0-1 of 3 in five models; docs/LOG.md, 2026-12-05),
# so training sees them more often; and code_interpreter alone, whose models went on to write the result to a
# file as `compute_write_read` does (4-5 of 19 held-out chats in some runs; docs/LOG.md, 2026-12-06).
TRAINING_BOOST = {fs_calls.listing: 3.0, fs_calls.move: 3.0, api_calls.email: 2.5, fs_calls.allowed: 3.0,
                  api_calls.translate: 3.0, api_calls.code: 2.0}
# Training only: a share of a scenario's weight goes to a stand-in whose result cannot be predicted from the
# request, so that only reading the result pays: listings and search hits unsorted (sorted, a model lists
# likely names in alphabetical order instead of reading them), translations that are not the phrase's.
TRAINING_STAND_INS = {fs_calls.listing: (functools.partial(fs_calls.listing, ordered=False), 0.75),
                      fs_calls.find: (functools.partial(fs_calls.find, ordered=False), 0.75),
                      api_calls.translate: (functools.partial(api_calls.translate, faithful=False), 0.5)}
# Training only: more Chinese and Korean requests than the held-out set's MOSTLY_ENGLISH (a model trained on
# that failed 7 of 16 held-out Chinese and Korean requests against 3 of 56 English ones; docs/LOG.md 2026-12-05).
TRAINING_LANGS = {"en": 0.6, "zh": 0.2, "ko": 0.2}
FULL_SET_SHARE = 0.05
FEWER = (0.35, 0.35, 0.2, 0.1)  # chance of 0, 1, 2, 3 extra tools: every tool offered costs ~50-120 tokens
CODE = "code_interpreter"


def some(rng: random.Random, names: list[str], most: int) -> list[str]:
    """0..`most` of `names`, fewer more likely."""
    count = rng.choices(range(most + 1), FEWER[:most + 1])[0]
    return rng.sample(names, count)


def weights(full_set: bool, split: str) -> dict:
    """The scenarios to draw from and their weights (the full filesystem set only goes with filesystem ones)."""
    natural = FS_SCENARIOS if full_set else SCENARIOS
    if split != TRAIN:
        return natural
    chances = {}
    for make, weight in natural.items():
        weight *= TRAINING_BOOST.get(make, 1.0)
        stand_in, share = TRAINING_STAND_INS.get(make, (None, 0.0))
        chances[make] = weight * (1 - share)
        if stand_in is not None:
            chances[stand_in] = weight * share
    return chances


def request(rng: random.Random, chances: dict, split: str) -> tuple[str, Scenario]:
    """A language and a scenario drawn by `chances`."""
    make = rng.choices(list(chances), list(chances.values()))[0]
    lang = pick_lang(rng, TRAINING_LANGS if split == TRAIN else MOSTLY_ENGLISH)
    return lang, make(rng, lang)


def offered(rng: random.Random, needed: list[str], full_set: bool) -> list[dict]:
    """The `tools` list: the needed tools among distractors, or the whole filesystem server."""
    if full_set:
        with_code = CODE in needed or rng.random() < 0.5
        return list(FILESYSTEM_TOOLS.values()) + ([API_TOOLS[CODE]] if with_code else [])
    on_filesystem = sum(name in FILESYSTEM_TOOLS for name in needed)
    if on_filesystem:  # 1-3 filesystem tools, 0-2 others
        names = needed + some(rng, [n for n in FILESYSTEM_TOOLS if n not in needed], 3 - on_filesystem)
        names += some(rng, [n for n in API_TOOLS if n not in needed], 2)
    else:
        names = needed + some(rng, [n for n in TOOLS if n not in needed], 3)
    rng.shuffle(names)
    return [TOOLS[name] for name in names]


def as_sample(head: list[dict], scenario: Scenario, tools: list[dict], thinking: bool, lang: str) -> Sample:
    """The conversation of `scenario` after the messages `head` (a system message or none), offering `tools`."""
    first = scenario.calls[0]
    return Sample("tool", head + scenario.messages(thinking), tools, thinking, scenario.answer,
                  {"name": first.name, "arguments": dict(first.arguments)}, lang, scenario.key)


def make_sample(rng: random.Random, thinking: bool, split: str) -> Sample:
    full_set = rng.random() < FULL_SET_SHARE
    chances = weights(full_set, split)
    lang, scenario = draw(rng, split, lambda r: request(r, chances, split), lambda chosen: chosen[1].key)
    tools = offered(rng, list(dict.fromkeys(call.name for call in scenario.calls)), full_set)
    return as_sample(system(rng, (USE_TOOLS,)), scenario, tools, thinking, lang)
