"""A trained checkpoint's arithmetic by operation: random problems of the training generator asked through
`LLM.chat` (greedy, thinking off and on), answers right per operator, for one checkpoint or several side by
side on the same problems.

    .venv/bin/python bench/arithmetic_ops.py [MODEL_DIR ...] [--problems 900] [--seed 12345]

The held-out eval asks a few hundred arithmetic questions, spread over tasks by the held-out split, so a
change aimed at one operation (a trace step, docs/LOG.md 2026-12-06 evening) moves it by a handful; this
asks many more of each operation, in English, drawn as training draws them (`random_problem`: nine in ten
are training tasks, so it measures what a model learnt, not how it generalises). A reply is right when it
ends with the equation and the result ("347 + 589 = 936."). MODEL_DIR defaults to the shipped demo model.
Prints the CPU model first and, as its last line, one JSON object of the scores.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

from qwen35.engine.llm import LLM  # noqa: E402
from qwen35.engine.sampling_params import SamplingParams  # noqa: E402
from qwen35.train.synth.arithmetic import OPS, Problem, ask, random_problem  # noqa: E402

SHIPPED = Path(__file__).parent.parent / "src/qwen35/demo_model"


def problems(n: int, seed: int) -> tuple[list[Problem], list[str]]:
    rng = random.Random(seed)
    drawn = [random_problem(rng) for _ in range(n)]
    return drawn, [ask(rng, p, "en") for p in drawn]


def scores(model: str, drawn: list[Problem], questions: list[str], max_tokens: int) -> dict:
    """{"think"|"no_think": {op: [right, asked]}}."""
    llm = LLM(model)
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    chats = [[{"role": "user", "content": q}] for q in questions]
    out = {}
    for thinking in (False, True):
        replies = llm.chat(chats, params, chat_template_kwargs={"enable_thinking": thinking})
        by_op = {op: [0, 0] for op in OPS}
        for problem, reply in zip(drawn, replies):
            right = reply.outputs[0].text.rstrip().endswith(f"= {problem.result}.")
            by_op[problem.op][0] += right
            by_op[problem.op][1] += 1
        out["think" if thinking else "no_think"] = by_op
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=[str(SHIPPED)])
    ap.add_argument("--problems", type=int, default=900)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--max-tokens", type=int, default=200, help="per reply, the trace included")
    args = ap.parse_args()
    print(f"cpu: {cpu_model()}")
    drawn, questions = problems(args.problems, args.seed)
    result = {}
    for model in args.models:
        result[model] = scores(model, drawn, questions, args.max_tokens)
        for mode, by_op in result[model].items():
            cells = "  ".join(f"{op} {right}/{asked}" for op, (right, asked) in by_op.items())
            print(f"{model}  {mode:8s}  {cells}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
