"""Copy drills (kind "echo", training only): "Repeat after me: /tmp/qa-3f1c/notes.txt" answered with the text.

Tool calls and their answers copy names from the request (a path, a city, a query), and the demo model learnt
to copy digits long before words: digits are one token each everywhere and are copied all through the
arithmetic, while a word's token depends on what comes before it (" Cairo" in a request, "Cairo" on its own
line in a call). A tool chat reads ~700 tokens for its few copied ones; a drill reads ~40 for ~15, drawn from
the same names the tool scenarios use, so the copying practice costs a few percent of the compute.
Half the drills repeat a random string instead (`scramble`): the demo model copied the names it had seen but
not a string it had not (docs/LOG.md, 2026-12-05), and only a string that cannot be recalled teaches reading
it from the context. Drills come in the three languages evenly. The held-out evaluation has no drills (they
are not in `DEFAULT_MIX`).
"""

from __future__ import annotations

import random

from . import api_calls, fs_calls
from .lang import EVEN, pick_lang, say
from .sample import Exchange, Sample, one_turn

ASKS = {
    "en": ("Repeat after me: {text}", "Say this back to me: {text}", "Please repeat exactly: {text}",
           "Copy this text: {text}", 'Repeat "{text}".', "Echo: {text}"),
    "zh": ("请重复：{text}", "跟我说一遍：{text}", '请原样复述"{text}"。'),
    "ko": ("따라 말해 주세요: {text}", "그대로 반복해 주세요: {text}", '"{text}" 그대로 말해 주세요.'),
}
RANDOM_SHARE = 0.5
_LOWER = "abcdefghijklmnopqrstuvwxyz"
ASCII = ("0123456789", _LOWER + "0123456789", _LOWER + _LOWER.upper() + "0123456789-_.")  # a string's alphabet
CHARS = {  # characters of the kind the chats' Chinese and Korean notes and questions use
    "zh": "你好世界明天开会买牛奶完成了今天天气很我们见谢大家报告文件目录读取写入时间股价翻译计算发送邮件搜索创建移动",
    "ko": "안녕하세요내일회의우유사기완료세상오늘날씨좋아파일목록읽쓰보고서시간주가번역계산메일검색만들옮겨",
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


def scramble(rng: random.Random, lang: str) -> str:
    """A random string: 3-12 ASCII digits, letters and marks, or 2-8 of the language's characters."""
    if lang != "en" and rng.random() < 0.5:
        return "".join(rng.choices(CHARS[lang], k=rng.randint(2, 8)))
    return "".join(rng.choices(rng.choice(ASCII), k=rng.randint(3, 12)))


def make_sample(rng: random.Random, thinking: bool, split: str) -> Sample:
    lang = pick_lang(rng, EVEN)
    text = scramble(rng, lang) if rng.random() < RANDOM_SHARE else phrase(rng, lang)
    reasoning = f'The user asks me to repeat "{text}", so I say it back exactly.'
    return one_turn("echo", rng, Exchange(say(rng, lang, ASKS, text=text), text, reasoning, text), thinking, lang)
