"""Screen a change to a training recipe in minutes, before a retrain of an hour: train the recipe with the
change for a few hundred steps, then score the held-out conversations by their loss per learnt token, split by
kind and by whether the token is copied from the context. The demo model's misses are copies (tool arguments,
a listing's names, an operand carried into a trace; docs/LOG.md), so the copied tokens' loss is the column to
watch; the training loss beside the shipped run's says whether the change trains faster at all.

    .venv/bin/python bench/screen_recipe.py --out /tmp/screen-rope [--steps 1000] [--threads 1]
        [--change partial_rotary_factor=0.5] [--change mix.facts=0.25] [--baseline /tmp/screen-plain]

`--change NAME=VALUE` sets a recipe field (a Python literal) or, as `mix.KIND=W`, one kind's weight in the
mix; repeatable. One thread by default, so that two screens run side by side on two cores; the batches are
the recipe's, in the recipe's order, so two screens (and the shipped run's `training_log.json`) see the same
data step for step unless the change alters the corpus. Rerunning with the same `--out` resumes training, or
only scores when it is done. `--baseline DIR` prints another screen's scores beside these. Prints the CPU
model first and, as its last line, one JSON object of the scores.

A token counts as copied when the bigram it ends occurs in the conversation before the learnt part, or the
token itself occurs there at most twice. 1,000 steps at one thread take ~20 minutes on the hosts of
docs/DEMO.md. Early loss is not the end result: a whole-head RoPE trained faster for 1,400 steps and scored
worse after 4,600 (docs/LOG.md 2026-12-04), so a screen rules changes out more surely than in. One screen
ranks changes by the tool chats' columns only: with another seed (`--change seed=1`) the plain recipe's
tool losses moved under 2%, the other kinds' by 25-45% (docs/LOG.md 2026-12-04 night).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

from qwen35.ops.batch import BatchBuilder  # noqa: E402
from qwen35.train.examples import IGNORE, Example, encode, learnt_spans  # noqa: E402
from qwen35.train.init import build_model  # noqa: E402
from qwen35.train.loop import BLOCK, STATE_FILE, make_corpus, train  # noqa: E402
from qwen35.train.recipe import Recipe, recipe  # noqa: E402
from qwen35.train.synth import heldout  # noqa: E402

SHIPPED_LOG = Path(__file__).parent.parent / "src/qwen35/demo_model/training_log.json"


def changed(r: Recipe, changes: list[str]) -> Recipe:
    mix = dict(r.mix)
    fields = {}
    for change in changes:
        name, sep, value = change.partition("=")
        if not sep:
            raise SystemExit(f"--change {change!r}: want NAME=VALUE")
        if name.startswith("mix."):
            mix[name[4:]] = float(value)
        elif name in Recipe.__dataclass_fields__ and name != "name":
            fields[name] = ast.literal_eval(value)
        else:
            raise SystemExit(f"--change {change!r}: no recipe field {name!r}")
    return r.replace(mix=tuple(mix.items()), **fields)


def copied(ex: Example) -> np.ndarray:
    """Per position i (whose label is token i+1): is that token copied from before the learnt part?"""
    ids, labels = ex.ids, ex.next_labels
    rows = np.flatnonzero(labels != IGNORE)
    mask = np.zeros(len(ids), dtype=bool)
    if rows.size == 0:
        return mask
    context = ids[:rows[0] + 1].tolist()
    bigrams = set(zip(context[:-1], context[1:]))
    values, counts = np.unique(context, return_counts=True)
    count = dict(zip(values.tolist(), counts.tolist()))
    for r in rows:
        y = int(labels[r])
        mask[r] = (int(ids[r]), y) in bigrams or 0 < count.get(y, 0) <= 2
    return mask


def heldout_forward(model, tok, sample) -> tuple[Example, torch.Tensor]:
    """One held-out chat, encoded with the run's vocabulary and its learnt spans, through `model` on its own:
    the example and its hidden states [tokens, hidden]."""
    text = sample.render()
    ex = encode(text, learnt_spans(text, sample.thinking), tok)
    blocks = -(-len(ex) // BLOCK)
    return ex, model(BatchBuilder(BLOCK).build([ex.ids], [0], [0], [range(blocks)]), model.new_cache(blocks, BLOCK, 1))


@torch.no_grad()
def score(r: Recipe, state_file: Path, samples: int) -> dict[str, float]:
    """Mean loss per learnt held-out token, by "kind/copy" and "kind/other"."""
    tok, _ = make_corpus(r, log=lambda *_: None)  # the run's vocabulary (learnt from its corpus, deterministic)
    model = build_model(r.text_config(tok.vocab_size), r.seed, r.gdn_gate, r.copy_conv)
    model.load_state_dict(torch.load(state_file, weights_only=False)["model"])
    model.eval()
    losses: dict[str, list[float]] = {}
    for sample in heldout(samples):
        ex, hidden = heldout_forward(model, tok, sample)
        rows = np.flatnonzero(ex.next_labels != IGNORE)
        logits = model.logits(hidden[torch.from_numpy(rows)]).float()
        nll = F.cross_entropy(logits, torch.from_numpy(ex.next_labels[rows]), reduction="none").numpy()
        mask = copied(ex)[rows]
        losses.setdefault(f"{sample.kind}/copy", []).extend(nll[mask].tolist())
        losses.setdefault(f"{sample.kind}/other", []).extend(nll[~mask].tolist())
    return {k: round(float(np.mean(v)), 3) for k, v in sorted(losses.items()) if v}


def training_means(history: list[dict], key: str, width: int = 200) -> list[float]:
    return [round(float(np.mean([h[key] for h in history[a:a + width]])), 3) for a in range(0, len(history), width)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--change", action="append", default=[], help="NAME=VALUE or mix.KIND=W; repeatable")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=300, help="held-out conversations to score")
    ap.add_argument("--out", required=True, help="the screen's training state and scores")
    ap.add_argument("--baseline", help="another screen's --out, printed beside this one")
    args = ap.parse_args()
    # a screen stops inside the first stage, so a recipe's polish (which would move that stage to OUT/base) is off
    r = changed(recipe(args.recipe), args.change).replace(threads=args.threads, polish=None)
    if not 0 < args.steps < r.steps:
        raise SystemExit(f"--steps {args.steps}: a screen stops before the recipe's {r.steps} steps end")
    out = Path(args.out)
    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}; recipe {r.name} {' '.join(args.change) or '(unchanged)'}, {args.steps} steps, "
          f"{args.threads} thread(s)", flush=True)
    scores_file = out / "scores.json"
    if not scores_file.exists():
        state = out / STATE_FILE
        done = torch.load(state, weights_only=False)["step"] if state.exists() else 0
        if done < args.steps:
            train(r, out, log=lambda *_: None, progress=io.StringIO(), stop_after=args.steps)
        history = torch.load(state, weights_only=False)["history"][:args.steps]
        scores = {"changes": args.change, "steps": args.steps, "heldout_loss": score(r, state, args.samples),
                  "train_loss": training_means(history, "loss"), "mtp_loss": training_means(history, "mtp_loss")}
        scores_file.write_text(json.dumps(scores) + "\n")
    scores = json.loads(scores_file.read_text())
    base = json.loads((Path(args.baseline) / "scores.json").read_text()) if args.baseline else None
    shipped = json.loads(SHIPPED_LOG.read_text())["history"] if r.name == "demo" else None
    print("training loss, 200-step means" + (" (shipped run)" if shipped else ""))
    ship_means = training_means(shipped, "loss") if shipped else []
    for i, loss in enumerate(scores["train_loss"]):
        beside = f"  ({ship_means[i]:.3f})" if i < len(ship_means) else ""
        print(f"  steps {i * 200:>5}-{(i + 1) * 200:<5} {loss:.3f}{beside}")
    print("held-out loss per learnt token" + (f" (baseline {' '.join(base['changes']) or 'unchanged'})" if base else ""))
    for key, value in scores["heldout_loss"].items():
        beside = f"  ({base['heldout_loss'][key]:.3f})" if base and key in base["heldout_loss"] else ""
        print(f"  {key:<18} {value:.3f}{beside}")
    print(json.dumps({"cpu": cpu_model(), **scores}))


if __name__ == "__main__":
    main()
