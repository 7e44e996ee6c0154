"""Can a trained checkpoint copy a string it has never seen? "Repeat after me: X" chats (thinking off, the
copy drills' format, synth/echo.py) with X a random string, scored teacher-forced: the share of the reply's
tokens the model predicts (argmax) and the share of replies it gets whole, by alphabet and length.

    .venv/bin/python bench/copy_unseen.py [MODEL_DIR] [--per-cell 30] [--seed 1000003]

A tool call copies a user's path, file content or address; names the training data repeats can be recalled
instead of read, so a tool-loop eval over them does not say whether a model reads its context. This does:
random digits, letters, Chinese and Korean characters (from the drills' pools, and "cjk": any common CJK
ideograph, most of them a few byte tokens each in the demo vocabulary), and "words": 1-3 of the vocabulary's
own merged tokens of letters, drawn uniformly, so mostly word pieces the chats seldom write ("Ġs ol ar Ġ pan
els" of "solar panels"): a model can copy a random string of common tokens and still not these. MODEL_DIR
defaults to the shipped demo model. Prints the CPU model first and, as its last line, one JSON object of the scores.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402
from screen_recipe import heldout_forward  # noqa: E402

from qwen35.loading.checkpoint import load_model  # noqa: E402
from qwen35.tokenizer.tokenizer import Tokenizer  # noqa: E402
from qwen35.train.examples import IGNORE  # noqa: E402
from qwen35.train.synth.echo import ASCII, CHARS  # noqa: E402
from qwen35.train.synth.sample import Exchange, one_turn  # noqa: E402
from qwen35.train.vocab import merged_ids  # noqa: E402

SHIPPED = Path(__file__).parent.parent / "src/qwen35/demo_model"
ALPHABETS = {"digits": ASCII[0], "lower": ASCII[1], "mixed": ASCII[2], "zh": CHARS["zh"], "ko": CHARS["ko"],
             "cjk": "".join(map(chr, range(0x4E00, 0x9FA6)))}
LENGTHS = (4, 8, 12)
WORD_LENGTHS = (1, 2, 3)


def word_pieces(tok: Tokenizer) -> list[str]:
    """The vocabulary's merged tokens that decode to letters (a leading space allowed)."""
    pieces = (tok.decode([i]) for i in merged_ids(tok))
    return [p for p in pieces if p.lstrip(" ").isascii() and p.lstrip(" ").isalpha()]


def copy_scores(model, tok, text: str, rng: random.Random) -> tuple[int, int]:
    """(tokens predicted right, tokens) of the reply to "Repeat after me: `text`", its <|im_end|> included."""
    sample = one_turn("echo", rng, Exchange(f"Repeat after me: {text}", text, "", text), False, "en")
    with torch.no_grad():
        ex, hidden = heldout_forward(model, tok, sample)
    rows = np.flatnonzero(ex.next_labels != IGNORE)
    predicted = model.logits(hidden[torch.from_numpy(rows)]).argmax(-1).numpy()
    return int((predicted == ex.next_labels[rows]).sum()), len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=str(SHIPPED))
    ap.add_argument("--per-cell", type=int, default=30, help="strings per alphabet and length")
    ap.add_argument("--seed", type=int, default=1_000_003)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.model, dtype=torch.float32, prepack=False, fuse=False)
    tok = Tokenizer.from_pretrained(args.model)
    rng = random.Random(args.seed)
    print(f"{cpu_model()}; {args.model}; {args.per_cell} strings per cell, teacher-forced, thinking off")
    print(f"{'alphabet':>8} {'length':>6}  {'tokens right':>12}  {'whole':>7}")
    scores = {}

    def cell(name: str, length: int, draw) -> None:
        right = total = whole = 0
        for _ in range(args.per_cell):
            ok, n = copy_scores(model, tok, draw(), rng)
            right, total, whole = right + ok, total + n, whole + (ok == n)
        scores[f"{name}/{length}"] = {"tokens": round(right / total, 3), "whole": round(whole / args.per_cell, 3)}
        print(f"{name:>8} {length:>6}  {right / total:>12.3f}  {whole:>3}/{args.per_cell}", flush=True)

    for name, alphabet in ALPHABETS.items():
        for length in LENGTHS:
            cell(name, length, lambda: "".join(rng.choices(alphabet, k=length)))  # noqa: B023 (called at once)
    pieces = word_pieces(tok)
    for length in WORD_LENGTHS:
        cell("words", length, lambda: "".join(rng.choices(pieces, k=length)).strip())  # noqa: B023
    print(json.dumps({"cpu": cpu_model(), "model": args.model, "scores": scores}))


if __name__ == "__main__":
    main()
