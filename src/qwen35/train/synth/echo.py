"""Copy drills (kind "echo", training only): "Repeat after me: /tmp/qa-3f1c/notes.txt" answered with the text.

Tool calls and their answers copy names from the request (a path, a city, a query), and the demo model learnt
to copy digits long before words: digits are one token each everywhere and are copied all through the
arithmetic, while a word's token depends on what comes before it (" Cairo" in a request, "Cairo" on its own
line in a call). A tool chat reads ~700 tokens for its few copied ones; a drill reads ~40 for ~15, drawn from
the same names the tool scenarios use, so the copying practice costs a few percent of the compute.

A quarter of the drills are listing read-backs instead: a folder listing pasted in the request, answered as a
list_directory reply ("… contains: draft.md, backup (folder)."). Every demo model up to 2026-12-03 answered
listings from memory ("archive (folder), notes.txt") instead of reading the tool result; a read-back teaches
the reading for ~60 tokens instead of a tool chat's ~700.
The held-out evaluation has no drills (they are not in `DEFAULT_MIX`).
"""

from __future__ import annotations

import random

from . import api_calls, fs_calls
from .lang import pick_lang, say
from .sample import Exchange, Sample, one_turn

ASKS = {
    "en": ("Repeat after me: {text}", "Say this back to me: {text}", "Please repeat exactly: {text}",
           "Copy this text: {text}", 'Repeat "{text}".', "Echo: {text}"),
    "zh": ("请重复：{text}", "跟我说一遍：{text}", '请原样复述"{text}"。'),
    "ko": ("따라 말해 주세요: {text}", "그대로 반복해 주세요: {text}", '"{text}" 그대로 말해 주세요.'),
}


def phrase(rng: random.Random, lang: str) -> str:
    """A name of the kind a tool call copies: a path, a folder, a city, a query, an address, a note."""
    kind = rng.randrange(8)
    if kind < 2:
        return fs_calls.file_path(rng)
    if kind == 2:
        return fs_calls.folder(rng)
    if kind == 3:
        return rng.choice(api_calls.CITIES)
    if kind == 4:
        return rng.choice(api_calls.QUERIES[lang])
    if kind == 5:
        return f"{rng.choice(api_calls.NAMES)}@{rng.choice(api_calls.DOMAINS)}"
    if kind == 6:
        return " ".join(rng.sample(api_calls.CITIES + api_calls.SYMBOLS, rng.randint(2, 3)))
    return fs_calls.text(rng, lang)


LISTING_ASKS = {
    "en": ("Here is the listing of {path}:\n{listing}\nWhat does it contain?",
           "{path} lists as:\n{listing}\nTell me what is in it."),
    "zh": ("这是 {path} 的目录列表：\n{listing}\n里面有什么？",),
    "ko": ("{path} 목록입니다:\n{listing}\n안에 뭐가 있어요?",),
}
LISTING_SHARE = 0.25


def listing(rng: random.Random, lang: str) -> Exchange:
    """A listing read back in list_directory's reply form, entries in the listing's (random) order."""
    path, names = fs_calls.folder(rng), fs_calls.entries(rng, ordered=False)
    reasoning = f"The user pasted a listing of {path} whose first entry is {names[0]}, so I read it back."
    return Exchange(say(rng, lang, LISTING_ASKS, path=path, listing=fs_calls.listing_text(names)),
                    fs_calls.listing_reply(lang, path, names), reasoning, names[0])


def make_sample(rng: random.Random, thinking: bool, split: str) -> Sample:
    lang = pick_lang(rng)
    if rng.random() < LISTING_SHARE:
        return one_turn("echo", rng, listing(rng, lang), thinking, lang)
    text = phrase(rng, lang)
    reasoning = f'The user asks me to repeat "{text}", so I say it back exactly.'
    return one_turn("echo", rng, Exchange(say(rng, lang, ASKS, text=text), text, reasoning, text), thinking, lang)
