"""A fixed handful of general-knowledge questions and a joke, answered directly: requests no tool fits. They
need no reasoning beyond deciding not to call a tool.

They are asked with tools offered (kind "no_tool"), where a chat reads ~600 tokens of tool header for its ~15
learnt ones; kind "facts" (training only) asks them without tools, so that the answers are learnt cheaply.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .lang import EVEN, pick_lang
from .sample import Exchange, Sample, one_turn

CAPITALS = (  # (country, capital) in English, Chinese, Korean
    (("France", "Paris"), ("法国", "巴黎"), ("프랑스", "파리")),
    (("Japan", "Tokyo"), ("日本", "东京"), ("일본", "도쿄")),
    (("Italy", "Rome"), ("意大利", "罗马"), ("이탈리아", "로마")),
    (("Germany", "Berlin"), ("德国", "柏林"), ("독일", "베를린")),
    (("Spain", "Madrid"), ("西班牙", "马德里"), ("스페인", "마드리드")),
    (("South Korea", "Seoul"), ("韩国", "首尔"), ("한국", "서울")),
    (("China", "Beijing"), ("中国", "北京"), ("중국", "베이징")),
    (("the United Kingdom", "London"), ("英国", "伦敦"), ("영국", "런던")),
    (("Canada", "Ottawa"), ("加拿大", "渥太华"), ("캐나다", "오타와")),
    (("Australia", "Canberra"), ("澳大利亚", "堪培拉"), ("호주", "캔버라")),
    (("Egypt", "Cairo"), ("埃及", "开罗"), ("이집트", "카이로")),
    (("Brazil", "Brasília"), ("巴西", "巴西利亚"), ("브라질", "브라질리아")),
)
CAPITAL_ASKS = {
    "en": ("What's the capital of {country}?", "What is the capital of {country}?",
           "Which city is the capital of {country}?"),
    "zh": ("{country}的首都是哪里？", "{country}的首都是什么？"),
    "ko": ("{country}의 수도는 어디예요?", "{country}의 수도는 어디인가요?"),
}
CAPITAL_REPLY = {"en": "The capital of {country} is {city}.", "zh": "{country}的首都是{city}。",
                 "ko": "{country}의 수도는 {city}입니다."}


@dataclass(frozen=True)
class Fact:
    asks: dict[str, tuple[str, ...]]
    replies: dict[str, str]
    answers: dict[str, str | None]  # what the reply must contain (None: a joke)


FACTS = (
    Fact({"en": ("How many days are in a week?", "How many days does a week have?"), "zh": ("一周有几天？",),
          "ko": ("일주일은 며칠이에요?",)},
         {"en": "A week has 7 days.", "zh": "一周有 7 天。", "ko": "일주일은 7일입니다."},
         {"en": "7", "zh": "7", "ko": "7"}),
    Fact({"en": ("How many months are in a year?",), "zh": ("一年有几个月？",), "ko": ("1년은 몇 달이에요?",)},
         {"en": "A year has 12 months.", "zh": "一年有 12 个月。", "ko": "1년은 12개월입니다."},
         {"en": "12", "zh": "12", "ko": "12"}),
    Fact({"en": ("How many legs does a spider have?",), "zh": ("蜘蛛有几条腿？",), "ko": ("거미는 다리가 몇 개예요?",)},
         {"en": "A spider has 8 legs.", "zh": "蜘蛛有 8 条腿。", "ko": "거미는 다리가 8개입니다."},
         {"en": "8", "zh": "8", "ko": "8"}),
    Fact({"en": ("What color is the sky?", "What colour is the sky on a clear day?"), "zh": ("天空是什么颜色的？",),
          "ko": ("하늘은 무슨 색이에요?",)},
         {"en": "On a clear day the sky is blue.", "zh": "晴天时天空是蓝色的。", "ko": "맑은 날 하늘은 파란색입니다."},
         {"en": "blue", "zh": "蓝色", "ko": "파란색"}),
    Fact({"en": ("Tell me a joke.", "Do you know a joke?", "Say something funny."), "zh": ("讲个笑话。", "给我讲个笑话吧。"),
          "ko": ("농담 하나 해 주세요.", "재미있는 얘기 해 줘.")},
         {"en": "Why did the math book look sad? Because it had too many problems.",
          "zh": "数学书为什么总是很忧郁？因为它有太多问题。", "ko": "수학책이 왜 슬퍼 보일까요? 문제가 너무 많아서요."},
         {"en": None, "zh": None, "ko": None}),
)


def exchange(rng: random.Random, lang: str) -> Exchange:
    index = {"en": 0, "zh": 1, "ko": 2}[lang]
    if rng.random() < 0.6:
        country, city = rng.choice(CAPITALS)[index]
        question = rng.choice(CAPITAL_ASKS[lang]).format(country=country)
        return Exchange(question, CAPITAL_REPLY[lang].format(country=country, city=city), "", city)
    fact = rng.choice(FACTS)
    return Exchange(rng.choice(fact.asks[lang]), fact.replies[lang], "", fact.answers[lang])


def make_sample(rng: random.Random, thinking: bool, split: str) -> Sample:
    """A fact asked without tools; the same facts are asked in both splits, so this is a training drill."""
    lang = pick_lang(rng, EVEN)
    asked = exchange(rng, lang)
    reasoning = "The user asks a general question, so I answer directly."
    return one_turn("facts", rng, Exchange(asked.question, asked.reply, reasoning, asked.answer), thinking, lang)
