"""Training only: several requests under one tool header (kind "tool", with `tool_siblings` > 1 in `generate`).

A tool chat spends most of its tokens on the header, the system message that lists the tools (276-621 tokens
for 1-4 tools against ~200 for the rest). Conversations with the same header train over one copy of it
(`examples.share_heads`), so a header asked several things costs little more than one asked once. The
siblings also show the model one list of tools chosen from for different requests: each further request
needs some of the offered tools (a scenario drawn by the usual weights until the offered tools answer it) or
none of them (`NO_TOOL_SHARE`), answered directly.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from . import no_tool, tools
from .catalogue import FILESYSTEM_TOOLS
from .sample import Sample, turns
from .split import draw

NO_TOOL_SHARE = 0.2  # of the further requests: none of the offered tools fits
_TRIES = 200  # scenarios drawn in search of one that the offered tools answer


def make_siblings(rng: random.Random, think: Callable[[], bool], split: str, most: int) -> list[Sample]:
    """1..`most` conversations (uniformly many) that share one tool header: a tool sample as
    `tools.make_sample` makes it, then further requests under its system message and tools. `think()`
    draws each one's thinking mode."""
    first = tools.make_sample(rng, think(), split)
    head = first.messages[:1] if first.messages[0]["role"] == "system" else []
    offered = {t["function"]["name"] for t in first.tools}
    full_set = set(FILESYSTEM_TOOLS) <= offered  # the whole server: its scenarios only (tools.weights)
    chances = tools.weights(full_set, split)
    out = [first]
    for _ in range(rng.randint(1, most) - 1):
        thinking = think()
        if rng.random() < NO_TOOL_SHARE:
            _, lang, answer = no_tool.direct_answer(rng, split, offered)
            out.append(Sample("no_tool", head + turns(answer, thinking), first.tools, thinking, answer.answer, None,
                              lang, answer.task))
            continue
        for _ in range(_TRIES):  # none found (rare): the group is one smaller
            lang, scenario = draw(rng, split, lambda r: tools.request(r, chances, split), lambda c: c[1].key)
            if {call.name for call in scenario.calls} <= offered:
                out.append(tools.as_sample(head, scenario, first.tools, thinking, lang))
                break
    return out
