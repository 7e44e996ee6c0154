"""Unit conversions with whole-number results (kind "convert").

Decimal factors (km->m, m->cm, cm->mm, kg->g, L->mL) convert 1..99 in both directions, shifting zeros:

    1 km = 1000 m                1 km = 1000 m
    7 x 1000 = 7000              7000 / 1000 = 7
    result: 7000                 result: 7

Time and imperial factors (hours->minutes, minutes->seconds, days->hours, feet->inches) convert 1..9 forward,
reasoning with the arithmetic module's multiplication trace of factor x quantity:

    1 hour = 60 minutes
    60 x 7
    ones: 0x7=0, write 0, carry 0
    tens: 6x7=42, 2+0=2, 4+0=4, write 2, carry 4
    hundreds: carry 4, write 4
    result: 420

The reply is the equation: "7 km = 7000 m.", "7 hours = 420 minutes.", "7 小时 = 420 分钟。"; with thinking
off the trace comes first in the reply, as for arithmetic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .arithmetic import Problem
from .lang import obj, period, pick_lang, topic
from .sample import Exchange, Sample, one_turn
from .split import draw


@dataclass(frozen=True)
class Unit:
    symbol: tuple[str, str]  # after 1, after other numbers: ("km", "km"), ("hour", "hours")
    word: tuple[str, str]  # spelled out in English questions: ("kilometer", "kilometers")
    zh: str
    ko: str
    metric: bool  # replies in every language use the symbol

    def english(self, n: int, spelled: bool = False) -> str:
        return (self.word if spelled else self.symbol)[n != 1]

    def shown(self, n: int, lang: str) -> str:
        """`n` with the unit as a reply writes it."""
        if lang == "en" or self.metric:
            return f"{n} {self.english(n)}"
        return f"{n} {self.zh}" if lang == "zh" else f"{n}{self.ko}"


KM = Unit(("km", "km"), ("kilometer", "kilometers"), "公里", "킬로미터", True)
M = Unit(("m", "m"), ("meter", "meters"), "米", "미터", True)
CM = Unit(("cm", "cm"), ("centimeter", "centimeters"), "厘米", "센티미터", True)
MM = Unit(("mm", "mm"), ("millimeter", "millimeters"), "毫米", "밀리미터", True)
KG = Unit(("kg", "kg"), ("kilogram", "kilograms"), "千克", "킬로그램", True)
G = Unit(("g", "g"), ("gram", "grams"), "克", "그램", True)
L = Unit(("L", "L"), ("liter", "liters"), "升", "리터", True)
ML = Unit(("mL", "mL"), ("milliliter", "milliliters"), "毫升", "밀리리터", True)
DAY = Unit(("day", "days"), ("day", "days"), "天", "일", False)
HOUR = Unit(("hour", "hours"), ("hour", "hours"), "小时", "시간", False)
MINUTE = Unit(("minute", "minutes"), ("minute", "minutes"), "分钟", "분", False)
SECOND = Unit(("second", "seconds"), ("second", "seconds"), "秒", "초", False)
FOOT = Unit(("foot", "feet"), ("foot", "feet"), "英尺", "피트", False)
INCH = Unit(("inch", "inches"), ("inch", "inches"), "英寸", "인치", False)

DECIMAL = ((KM, M, 1000), (M, CM, 100), (CM, MM, 10), (KG, G, 1000), (L, ML, 1000))
TIMES = ((HOUR, MINUTE, 60), (MINUTE, SECOND, 60), (DAY, HOUR, 24), (FOOT, INCH, 12))

QUESTIONS = {  # from {q} {x} to {y}
    "en": ("How many {y} are in {q} {x}?", "Convert {q} {x} to {y}.", "What is {q} {x} in {y}?",
           "{q} {x} is how many {y}?", "How many {y} is {q} {x}?", "Express {q} {x} in {y}."),
    "zh": ("{q} {x} 等于多少{y}？", "{q}{x}是多少{y}？", "把 {q} {x} 换算成{y}。", "{q} {x} 有多少{y}？"),
    "ko": ("{q}{x_topic} 몇 {y}인가요?", "{q}{x_obj} {y} 단위로 바꿔 주세요.", "{q}{x_topic} 몇 {y}일까요?"),
}


@dataclass(frozen=True)
class Conversion:
    source: Unit
    target: Unit
    quantity: int
    factor: int
    inverse: bool  # from the smaller unit to the larger one

    @property
    def result(self) -> int:
        return self.quantity // self.factor if self.inverse else self.quantity * self.factor

    @property
    def key(self) -> tuple:
        return ("convert", self.source.symbol[1], self.target.symbol[1], self.quantity)

    def trace(self) -> str:
        big, small = (self.target, self.source) if self.inverse else (self.source, self.target)
        header = f"1 {big.english(1)} = {self.factor} {small.english(self.factor)}"
        if self.factor not in (10, 100, 1000):
            return f"{header}\n{Problem(self.factor, 'x', self.quantity).trace()}"
        step = f"{self.quantity} / {self.factor}" if self.inverse else f"{self.quantity} x {self.factor}"
        return f"{header}\n{step} = {self.result}\nresult: {self.result}"

    def reply(self, lang: str) -> str:
        return f"{self.source.shown(self.quantity, lang)} = {self.target.shown(self.result, lang)}{period(lang)}"


def random_conversion(rng: random.Random) -> Conversion:
    if rng.random() < 0.4:
        big, small, factor = rng.choice(TIMES)
        return Conversion(big, small, rng.randint(1, 9), factor, False)
    big, small, factor = rng.choice(DECIMAL)
    n = rng.randint(1, 99)
    if rng.random() < 0.3:
        return Conversion(small, big, n * factor, factor, True)
    return Conversion(big, small, n, factor, False)


def ask(rng: random.Random, conv: Conversion, lang: str) -> str:
    template = rng.choice(QUESTIONS[lang])
    source, target = conv.source, conv.target
    if lang == "en":
        spelled = rng.random() < 0.5
        return template.format(q=conv.quantity, x=source.english(conv.quantity, spelled), y=target.word[1])
    if lang == "zh":
        return template.format(q=conv.quantity, x=source.zh, y=target.zh)
    return template.format(q=conv.quantity, x_topic=topic(source.ko), x_obj=obj(source.ko), y=target.ko)


def exchange(rng: random.Random, split: str, lang: str) -> Exchange:
    conv = draw(rng, split, random_conversion, lambda c: c.key)
    trace = conv.trace()
    return Exchange(ask(rng, conv, lang), conv.reply(lang), trace, str(conv.result), working=trace, task=conv.key)


def make_sample(rng: random.Random, thinking: bool, split: str) -> Sample:
    lang = pick_lang(rng)
    return one_turn("convert", rng, exchange(rng, split, lang), thinking, lang)
