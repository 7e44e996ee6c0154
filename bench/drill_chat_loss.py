"""A trained checkpoint's loss on the two things a demo-recipe chat step trains at once, apart: induction drills
(random ids shown once and repeated, loss on the repeat; train/induction.py) and chats of the recipe's mix.

    .venv/bin/python bench/drill_chat_loss.py MODEL_DIR [MODEL_DIR ...] [--chats 160] [--seed 12345]

The training log's loss mixes the two (a chat step carries `chat_drill_tokens` of drills), so a run whose
copy head is weak shows a high loss even where its chats are learnt: the AVX2 retrains of 2026-12-07 ended at 4x
the shipped run's logged loss, of which drills 2.4 against 0.42 and chats 0.045 against 0.018 (docs/LOG.md).
The chats are generated with `--seed` (not the training data's seed; tasks may still repeat training ones) and
scored without gradient through the training forward (`loop.batch_loss`), 8 at a time; the drills are 4 steps of
1,024 tokens drawn as training draws them, from steps no run reaches. Prints the CPU model, then per model the
main and MTP losses of each; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

from qwen35.model.qwen35 import Qwen35ForCausalLM  # noqa: E402
from qwen35.ops.batch import BatchBuilder  # noqa: E402
from qwen35.tokenizer import Tokenizer  # noqa: E402
from qwen35.train import loop  # noqa: E402
from qwen35.train.export import read_trained  # noqa: E402
from qwen35.train.recipe import recipe  # noqa: E402
from qwen35.train.synth import generate  # noqa: E402
from qwen35.train.vocab import merged_ids  # noqa: E402

DRILL_STEPS = range(90_000, 90_004)  # past any recipe's steps: drills no run trained on


def losses(model_dir: str, samples: list, r) -> dict[str, list[float]]:
    tok = Tokenizer.from_pretrained(model_dir)
    units = loop._units(r, samples, [s.render() for s in samples], tok, lambda *a: None, 0.0)
    model = read_trained(Qwen35ForCausalLM(r.text_config(tok.vocab_size), mtp=True), model_dir).eval()
    ids = merged_ids(tok)
    builders = (BatchBuilder(loop.BLOCK), BatchBuilder(loop.BLOCK))
    with torch.no_grad():
        drills = [loop.batch_loss(model, loop._drills(r, s, 1024, ids), builders, r.mtp_weight)[1:]
                  for s in DRILL_STEPS]
        chats = [loop.batch_loss(model, units[i:i + 8], builders, r.mtp_weight)[1:] for i in range(0, len(units), 8)]
    return {"drills": np.mean(drills, 0).round(4).tolist(), "chats": np.mean(chats, 0).round(4).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--chats", type=int, default=160)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"cpu: {cpu_model()}", flush=True)
    r = recipe(args.recipe)
    samples = generate(args.chats, args.seed, mix=dict(r.mix), tool_siblings=r.tool_siblings)
    results = {}
    for d in args.models:
        results[d] = got = losses(d, samples, r)
        print(f"{d}: drills {got['drills'][0]:.3f} (MTP {got['drills'][1]:.3f}), chats {got['chats'][0]:.3f} "
              f"(MTP {got['chats'][1]:.3f})", flush=True)
    print(json.dumps({"bench": "drill_chat_loss", "cpu": cpu_model(), "recipe": args.recipe, "losses": results}))


if __name__ == "__main__":
    main()
