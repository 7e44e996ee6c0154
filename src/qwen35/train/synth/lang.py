"""Languages of the synthetic chats: which one a sample uses, and the little grammar the templates need."""

from __future__ import annotations

import random

MOSTLY_ENGLISH = {"en": 0.8, "zh": 0.1, "ko": 0.1}
EVEN = {"en": 0.5, "zh": 0.25, "ko": 0.25}
_BATCHIM_DIGITS = set("013678")  # 영, 일, 삼, 육, 칠, 팔 end in a consonant; so do 십, 백, 천, 만


def pick_lang(rng: random.Random, weights: dict[str, float] = MOSTLY_ENGLISH) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def say(rng: random.Random, lang: str, templates: dict[str, tuple[str, ...]], **values) -> str:
    """One of `templates[lang]`, filled in."""
    return rng.choice(templates[lang]).format(**values)


def period(lang: str) -> str:
    """What closes a short reply that ends in a number or a name: "." / "。" / "입니다."."""
    return {"en": ".", "zh": "。", "ko": "입니다."}[lang]


def _ends_in_consonant(word: str) -> bool:
    last = word[-1]
    if last.isdigit():  # read in Sino-Korean: a trailing zero is read as 십/백/천/만
        return last in _BATCHIM_DIGITS
    if "가" <= last <= "힣":
        return (ord(last) - ord("가")) % 28 != 0
    return False


def topic(word: str) -> str:
    """`word` with the Korean topic particle 은/는 that fits it."""
    return word + ("은" if _ends_in_consonant(word) else "는")


def obj(word: str) -> str:
    """`word` with the Korean object particle 을/를 that fits it."""
    return word + ("을" if _ends_in_consonant(word) else "를")
