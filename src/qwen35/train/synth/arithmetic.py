"""Arithmetic questions (kind "arith") and the column trace every arithmetic answer reasons with.

Every answer is worked out column by column, one line per digit, ones first; a missing digit is 0. Every
column writes one digit; a sum's or a product's carry out of its last column gets a line of its own:

    347 + 589
    ones: 7+9=16, write 6, carry 1
    tens: 4+8=12, 12+1=13, write 3, carry 1
    hundreds: 3+5=8, 8+1=9, write 9, carry 0
    result: 936

    600 - 123                                          47 x 6
    ones: 0-3<0, 10-3=7, write 7, borrow 1             ones: 7x6=42, write 2, carry 4
    tens: 2+1=3, 0-3<0, 10-3=7, write 7, borrow 1      tens: 4x6=24, 4+4=8, 2+0=2, write 8, carry 2
    hundreds: 1+1=2, 6-2=4, write 4                    hundreds: carry 2, write 2
    result: 477                                        result: 282

Each step has two operands, written without spaces, so that its digits are adjacent tokens (the tokenizer
makes a space before a digit a token of its own: "7 + 9 =" put the first digit five tokens before the "=").
A model of this size learnt one-step sums of two digits well and sums of three (4x6+4, 0-2-1+10) badly
(docs/LOG.md, 2026-12-03); a product's carry is added digit by digit for the same reason (36+4 went wrong
where 6+4 and 3+1 do not).
With thinking on the trace is the reasoning; with thinking off it is shown in the reply, before the equation
(`Exchange.working`): a model of a few million parameters cannot add three-digit numbers in one step, and
even a one-digit problem ("7 x 5") is only a table fact the traces use, so it gets its one-line trace too.
The carry's own line makes the question whether a column is the last one the question what the next line
reads: the next digit of an operand, or nothing. When the last column wrote its whole value ("write 28"),
the model had to decide it at the column's "write", and held-out "89 x 4" came out "ones: 9x4=36, write 36",
the one-digit problem's line (docs/LOG.md, 2026-12-06 third session).
The reply ends with the equation, "347 + 589 = 936.". Add and subtract 0..999, multiply 2..99 by 1..9 (the
conversions multiply by 1: "1 foot = 12 inches", 12 x 1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .lang import obj, period, pick_lang, topic
from .sample import Exchange, Sample, one_turn
from .split import draw

PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")
OPS = {"+": 0.4, "-": 0.35, "x": 0.25}

SPELLINGS = {
    "en": {"+": ("+", "plus"), "-": ("-", "minus"), "x": ("x", "×", "*", "times")},
    "zh": {"+": ("+", "加"), "-": ("-", "减"), "x": ("×", "x", "*", "乘以")},
    "ko": {"+": ("+", "더하기"), "-": ("-", "빼기"), "x": ("×", "x", "*", "곱하기")},
}
QUESTIONS = {  # {op} is a spelling of the operator
    "en": ("What is {a} {op} {b}?", "What's {a} {op} {b}?", "Calculate {a} {op} {b}.", "Compute {a} {op} {b}.",
           "{a} {op} {b} = ?", "How much is {a} {op} {b}?", "Please work out {a} {op} {b}.",
           "Can you calculate {a} {op} {b}?", "{a} {op} {b}?", "Solve {a} {op} {b}."),
    "zh": ("{a} {op} {b} 等于多少？", "计算 {a} {op} {b}", "{a} {op} {b} = ?", "{a} {op} {b} 是多少？",
           "请算一下 {a} {op} {b}。", "{a}{op}{b}等于几？"),
    "ko": ("{a} {op} {b_topic} 얼마인가요?", "{a} {op} {b_obj} 계산해 주세요.", "{a} {op} {b} = ?",
           "{a} {op} {b}의 값은?", "{a} {op} {b_topic} 뭐예요?"),
}
WORDED = {  # questions that name the operation instead of spelling the operator
    "en": {"+": ("Add {a} and {b}.", "What is the sum of {a} and {b}?"),
           "-": ("Subtract {b} from {a}.", "Take {b} away from {a}."),
           "x": ("Multiply {a} by {b}.", "What is the product of {a} and {b}?", "What is {a} multiplied by {b}?")},
    "zh": {"+": ("{a} 和 {b} 的和是多少？",), "-": ("{a} 减去 {b} 等于多少？",), "x": ("{a} 乘 {b} 得多少？",)},
    "ko": {"+": ("{a}에 {b_obj} 더하면 얼마예요?",), "-": ("{a}에서 {b_obj} 빼면 얼마예요?",),
           "x": ("{a}에 {b_obj} 곱하면 얼마예요?",)},
}
WORDED_SHARE = 0.25


@dataclass(frozen=True)
class Problem:
    a: int
    op: str  # "+", "-" or "x"
    b: int

    @property
    def result(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "x": self.a * self.b}[self.op]

    @property
    def key(self) -> tuple:
        return ("arith", self.a, self.op, self.b)

    def reply(self, lang: str) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}{period(lang)}"

    @property
    def working(self) -> str:
        """What the reply shows before the equation with thinking off: the trace. Answered at once, held-out
        one-digit facts were wrong a quarter of the time (docs/LOG.md, 2026-12-03)."""
        return self.trace()

    def trace(self) -> str:
        columns = {"+": _add_columns, "-": _sub_columns, "x": _mul_columns}[self.op](self.a, self.b)
        return "\n".join([f"{self.a} {self.op} {self.b}", *columns, f"result: {self.result}"])


def _digits(n: int, width: int) -> list[int]:
    return [n // 10 ** i % 10 for i in range(width)]


def _column(i: int, step: str, value: int) -> str:
    return f"{PLACES[i]}: {step}, write {value % 10}, carry {value // 10}"


def _carry_out(width: int, carry: int) -> list[str]:
    """The line that writes what the last column carries, if anything."""
    return [f"{PLACES[width]}: carry {carry}, write {carry}"] if carry else []


def _add_columns(a: int, b: int) -> list[str]:
    width, carry, lines = max(len(str(a)), len(str(b))), 0, []
    for i, (x, y) in enumerate(zip(_digits(a, width), _digits(b, width))):
        total = x + y + carry
        step = f"{x}+{y}={x + y}" + (f", {x + y}+{carry}={total}" if i else "")
        lines.append(_column(i, step, total))
        carry = total // 10
    return lines + _carry_out(width, carry)


def _mul_columns(a: int, b: int) -> list[str]:
    """A later column adds the carry to its product's ones digit, then what that carries to the product's tens
    digit: "6x6=36, 6+4=10, 3+1=4", every step a one-digit sum."""
    width, carry, lines = len(str(a)), 0, []
    for i, x in enumerate(_digits(a, width)):
        product = x * b
        step, total = f"{x}x{b}={product}", product
        if i:
            ones = product % 10 + carry
            tens = product // 10 + ones // 10
            step += f", {product % 10}+{carry}={ones}, {product // 10}+{ones // 10}={tens}"
            total = 10 * tens + ones % 10
        lines.append(_column(i, step, total))
        carry = total // 10
    return lines + _carry_out(width, carry)


def _sub_columns(a: int, b: int) -> list[str]:
    """The borrow is added to the lower digit first; a column that borrows says so ("2-3<0") and subtracts
    from 10 + its digit. The difference of the column's own digits is written before it is decided whether
    to borrow, so that the decision reads two adjacent digits, as a sum's step does."""
    width, borrow, lines = len(str(a)), 0, []
    for i, (x, y) in enumerate(zip(_digits(a, width), _digits(b, width))):
        lower = y + borrow
        step = f"{y}+{borrow}={lower}, " if i else ""
        borrow = int(x < lower)  # never in the top column: a >= b
        top = x + 10 * borrow
        step += f"{x}-{lower}<0, " if borrow else ""
        step += f"{top}-{lower}={top - lower}"
        tail = f", borrow {borrow}" if i < width - 1 else ""
        lines.append(f"{PLACES[i]}: {step}, write {top - lower}{tail}")
    return lines


def operand(rng: random.Random, max_digits: int) -> int:
    """A number of 1..max_digits digits, each width equally likely."""
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def random_problem(rng: random.Random) -> Problem:
    op = rng.choices(list(OPS), list(OPS.values()))[0]
    if op == "x":
        return Problem(rng.randint(2, 99), op, rng.randint(1, 9))
    a, b = operand(rng, 3), operand(rng, 3)
    return Problem(max(a, b), op, min(a, b)) if op == "-" else Problem(a, op, b)


def draw_problem(rng: random.Random, split: str) -> Problem:
    return draw(rng, split, random_problem, lambda p: p.key)


def ask(rng: random.Random, problem: Problem, lang: str) -> str:
    """The problem as a user would type it."""
    if rng.random() < WORDED_SHARE:
        template = rng.choice(WORDED[lang][problem.op])
    else:
        template = rng.choice(QUESTIONS[lang])
    b = str(problem.b)
    return template.format(a=problem.a, b=b, op=rng.choice(SPELLINGS[lang][problem.op]), b_topic=topic(b),
                           b_obj=obj(b))


def exchange(rng: random.Random, split: str, lang: str) -> Exchange:
    problem = draw_problem(rng, split)
    return Exchange(ask(rng, problem, lang), problem.reply(lang), problem.trace(), str(problem.result),
                    problem.working, problem.key)


def make_sample(rng: random.Random, thinking: bool, split: str) -> Sample:
    lang = pick_lang(rng)
    return one_turn("arith", rng, exchange(rng, split, lang), thinking, lang)
