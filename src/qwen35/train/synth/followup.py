"""Two-turn arithmetic (kind "followup"): a question, its answer, then "Now add 25 to that.".

The second problem starts from the first one's result and is traced in the same column format (with thinking
off, in the reply, as for one question). The first answer's reasoning stays in the history, where the chat
template drops it. The held-out split holds out the second problem, the one the last turn has to solve.
"""

from __future__ import annotations

import random

from .arithmetic import OPS, Problem, ask, draw_problem
from .lang import obj, pick_lang
from .sample import Sample, assistant, system, user, with_working
from .split import TRAIN, draw

FOLLOWUPS = {
    "en": {"+": ("Now add {c} to that.", "Add {c} to the result.", "And if you add {c}?", "Plus {c}?",
                 "What if I add {c} to it?"),
           "-": ("Subtract {c} from that.", "Now take away {c}.", "Minus {c}?", "And if you subtract {c}?"),
           "x": ("Multiply that by {c}.", "Now multiply the result by {c}.", "Times {c}?",
                 "What is that times {c}?")},
    "zh": {"+": ("再加 {c}。", "结果再加上 {c} 呢？"), "-": ("再减去 {c}。", "结果减 {c} 呢？"),
           "x": ("再乘以 {c}。", "把结果乘以 {c} 呢？")},
    "ko": {"+": ("거기에 {c} 더하면요?", "그 결과에 {c_obj} 더해 주세요."),
           "-": ("거기서 {c} 빼면요?", "그 결과에서 {c_obj} 빼 주세요."),
           "x": ("거기에 {c} 곱하면요?", "그 결과에 {c_obj} 곱해 주세요.")},
}


def random_followup(rng: random.Random, previous: int) -> Problem:
    """An operation on `previous` with a small operand: add/subtract 1..99, multiply by 2..9."""
    ops = dict(OPS)
    if previous == 0:
        del ops["-"]
    op = rng.choices(list(ops), list(ops.values()))[0]
    if op == "x":
        return Problem(previous, op, rng.randint(2, 9))
    return Problem(previous, op, rng.randint(1, min(99, previous) if op == "-" else 99))


def turn(problem: Problem, lang: str, thinking: bool) -> dict:
    """The assistant's answer: the trace as its reasoning, or with thinking off before the reply."""
    if thinking:
        return assistant(problem.reply(lang), problem.trace())
    return assistant(with_working(problem.reply(lang), problem.working))


def make_sample(rng: random.Random, thinking: bool, split: str) -> Sample:
    first = draw_problem(rng, TRAIN)
    second = draw(rng, split, lambda r: random_followup(r, first.result), lambda p: p.key)
    lang = pick_lang(rng)
    c = str(second.b)
    followup = rng.choice(FOLLOWUPS[lang][second.op]).format(c=c, c_obj=obj(c))
    messages = system(rng) + [
        user(ask(rng, first, lang)), turn(first, lang, thinking), user(followup), turn(second, lang, thinking),
    ]
    return Sample("followup", messages, None, thinking, str(second.result), None, lang, second.key)
