"""Short social replies in English, Chinese and Korean (kind "smalltalk"): greetings, "how are you", thanks,
who the model is, what it can do, goodbye. One fixed reply per intent and language; the asking varies.
Thanks and goodbyes follow an arithmetic exchange half of the time, as they would in a real chat.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import arithmetic
from .lang import EVEN, pick_lang
from .sample import Exchange, Sample, assistant, system, user
from .split import TRAIN


@dataclass(frozen=True)
class Intent:
    asks: dict[str, tuple[str, ...]]
    replies: dict[str, str]
    reasoning: str
    closing: bool = False  # thanks and goodbyes: natural after an earlier exchange


INTENTS = (
    Intent({"en": ("Hi", "Hi!", "Hello", "Hello!", "Hey", "Hey there!", "Good morning!", "Good evening!"),
            "zh": ("你好", "你好！", "嗨", "早上好！", "您好"),
            "ko": ("안녕하세요", "안녕!", "안녕하세요!", "좋은 아침이에요!")},
           {"en": "Hello! How can I help you?", "zh": "你好！有什么可以帮你的？", "ko": "안녕하세요! 무엇을 도와드릴까요?"},
           "The user greets me, so I greet back and offer help."),
    Intent({"en": ("How are you?", "How are you doing?", "How's it going?", "Hi, how are you?"),
            "zh": ("你好吗？", "最近怎么样？"),
            "ko": ("잘 지내요?", "어떻게 지내세요?")},
           {"en": "I'm doing well, thank you! How can I help?", "zh": "我很好，谢谢！有什么可以帮你的？",
            "ko": "잘 지내요, 고마워요! 무엇을 도와드릴까요?"},
           "The user asks how I am, so I answer briefly and offer help."),
    Intent({"en": ("Thanks!", "Thank you.", "Thanks a lot!", "Thank you very much!", "Great, thanks."),
            "zh": ("谢谢！", "谢谢你。", "多谢！"),
            "ko": ("고마워요!", "감사합니다.", "고맙습니다!")},
           {"en": "You're welcome!", "zh": "不客气！", "ko": "천만에요!"},
           "The user thanks me, so I say you're welcome.", closing=True),
    Intent({"en": ("Who are you?", "What are you?", "What is your name?", "What's your name?", "Introduce yourself."),
            "zh": ("你是谁？", "你叫什么名字？", "介绍一下你自己。"),
            "ko": ("누구세요?", "당신은 누구인가요?", "이름이 뭐예요?", "자기소개 해 주세요.")},
           {"en": "I am qwen35-demo, a tiny Qwen3.5-architecture model trained on synthetic data. "
                  "I can do arithmetic, unit conversions and call tools.",
            "zh": "我是 qwen35-demo，一个用合成数据训练的小型 Qwen3.5 架构模型。我会算术、单位换算和调用工具。",
            "ko": "저는 qwen35-demo입니다. 합성 데이터로 학습한 작은 Qwen3.5 구조 모델이에요. "
                  "산수, 단위 변환, 도구 호출을 할 수 있어요."},
           "The user asks who I am, so I introduce myself."),
    Intent({"en": ("What can you do?", "What are you good at?", "How can you help me?"),
            "zh": ("你能做什么？", "你会什么？"),
            "ko": ("무엇을 할 수 있어요?", "뭘 도와줄 수 있나요?")},
           {"en": "I can do arithmetic step by step, convert units, and call tools such as weather, time, "
                  "currency and file tools. I reply in English, Chinese or Korean.",
            "zh": "我可以一步一步做算术、换算单位，还能调用天气、时间、汇率和文件等工具。我会用中文、英文或韩文回答。",
            "ko": "단계별 산수, 단위 변환, 그리고 날씨, 시간, 환율, 파일 같은 도구 호출을 할 수 있어요. "
                  "한국어, 영어, 중국어로 답해요."},
           "The user asks what I can do, so I list my skills briefly."),
    Intent({"en": ("Bye!", "Goodbye.", "See you later!", "Bye, thanks!"),
            "zh": ("再见！", "拜拜！"),
            "ko": ("안녕히 계세요!", "잘 가요!", "다음에 봐요!")},
           {"en": "Goodbye! Have a nice day.", "zh": "再见！祝你有美好的一天。", "ko": "안녕히 가세요! 좋은 하루 보내세요."},
           "The user says goodbye, so I say goodbye too.", closing=True),
)


def casual(rng: random.Random, text: str, lang: str) -> str:
    """English as typed in a hurry, now and then: lower case, no final punctuation."""
    if lang != "en" or rng.random() >= 0.3:
        return text
    return text.lower().rstrip(".!?")


def exchange(rng: random.Random, intent: Intent, lang: str) -> Exchange:
    question = casual(rng, rng.choice(intent.asks[lang]), lang)
    return Exchange(question, intent.replies[lang], intent.reasoning, None)


def make_sample(rng: random.Random, thinking: bool, split: str) -> Sample:
    lang = pick_lang(rng, EVEN)
    intent = rng.choice(INTENTS)
    messages = system(rng)
    if intent.closing and rng.random() < 0.5:
        earlier = arithmetic.exchange(rng, TRAIN, lang)
        messages += [user(earlier.question), assistant(earlier.content(thinking), earlier.reasoning if thinking else "")]
    talk = exchange(rng, intent, lang)
    messages += [user(talk.question), assistant(talk.reply, talk.reasoning if thinking else "")]
    return Sample("smalltalk", messages, None, thinking, None, None, lang)
