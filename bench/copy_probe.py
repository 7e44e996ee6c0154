"""Can a recipe's shape learn to copy? The induction test: batches of `<s> x1..xL <sep> x1..xL <end>` with
random ids, loss on the repeat only (the drills of `train/induction.py`), trained from the recipe's
initialisation with its optimiser, learning rate and warm-up. A model that copies drives the loss towards 0;
one that cannot stays near log(ids), the cost of guessing. The demo model's tool loop failed on copying names
(docs/LOG.md, 2026-12-04): this tells in minutes, before a retrain of an hour, whether a change of shape or
initialisation lets the model copy at all.

    .venv/bin/python bench/copy_probe.py [--recipe demo] [--steps 1000] [--length 30] [--ids 2000] [--seed 1]
        [--variant recipe --variant all-attention --variant rotary=1.0 --variant theta=1e4]

Variants: `recipe` (the recipe's shape), `all-attention` (every layer gated attention), `rotary=F` (RoPE's
`partial_rotary_factor`), `theta=T` (RoPE's base), `lr=X` (the peak learning rate), `gdn_gate=Z` or
`gdn_gate=none` (Gated DeltaNet's output gate at initialisation, `train.init.open_gate`), `copy_conv=0|1|2`
(Gated DeltaNet's conv started as a copy path keyed by 1 or 2 tokens, `train.init.copy_conv_init`). Prints
the CPU model, the loss every 50 steps per variant, and as its last line one JSON object of the final losses.
One seed a run (`--seed`); the step at which copying starts moved by 100-200 steps between two seeds
(docs/LOG.md 2026-12-04 late), so compare variants that differ by more, or over seeds. `--ids 10` (digits)
tells a memory that finds its place where tokens repeat from one that does not (docs/LOG.md, 2026-12-08).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

from qwen35.config import TextConfig  # noqa: E402
from qwen35.ops.batch import BatchBuilder  # noqa: E402
from qwen35.train.examples import Unit  # noqa: E402
from qwen35.train.induction import copy_batch  # noqa: E402
from qwen35.train.init import build_model  # noqa: E402
from qwen35.train.loop import BLOCK, _optimizer, batch_loss  # noqa: E402
from qwen35.train.recipe import Recipe, recipe  # noqa: E402

FIRST_ID = 100  # random ids start here (the probe has no tokenizer: any range of embedding rows does)


def variant_setup(r: Recipe, variant: str, vocab: int) -> tuple[Recipe, TextConfig]:
    """The recipe (its optimiser settings) and the model shape of a variant."""
    cfg = r.text_config(vocab)
    if variant == "recipe":
        return r, cfg
    if variant == "all-attention":
        return r, dataclasses.replace(cfg, layer_types=("full_attention",) * cfg.num_hidden_layers)
    key, _, value = variant.partition("=")
    if key == "rotary":
        return r, dataclasses.replace(cfg, rope=dataclasses.replace(cfg.rope, partial_rotary_factor=float(value)))
    if key == "theta":
        return r, dataclasses.replace(cfg, rope=dataclasses.replace(cfg.rope, theta=float(value)))
    if key == "lr":
        return r.replace(lr=float(value)), cfg
    if key == "gdn_gate":
        return r.replace(gdn_gate=None if value == "none" else float(value)), cfg
    if key == "copy_conv" and value in ("0", "1", "2"):
        return r.replace(copy_conv=int(value)), cfg
    raise SystemExit(f"unknown variant {variant!r}: recipe, all-attention, rotary=F, theta=T, lr=X, gdn_gate=Z, "
                     "gdn_gate=none or copy_conv=0|1|2")


def probe(r: Recipe, cfg: TextConfig, steps: int, length: int, ids: int) -> list[float]:
    torch.manual_seed(r.seed)
    model = build_model(cfg, r.seed, r.gdn_gate, r.copy_conv)
    opt = _optimizer(model, r)
    builders = (BatchBuilder(BLOCK), BatchBuilder(BLOCK))
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = r.lr * min(1.0, (step + 1) / r.warmup_steps)
        drills = [Unit.whole(e) for e in copy_batch(r.seed, step, r.copy_batch_tokens, length, FIRST_ID, ids)]
        loss, main, _ = batch_loss(model, drills, builders, r.mtp_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(main)
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--length", type=int, default=30, help="random ids to copy")
    ap.add_argument("--ids", type=int, default=2000, help="how many distinct ids they are drawn from")
    ap.add_argument("--variant", action="append", help="repeatable; default: recipe, copy_conv=1 and copy_conv=2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, help="the initialisation's and the data's seed (default: the recipe's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r = recipe(args.recipe)
    if args.seed is not None:
        r = r.replace(seed=args.seed)
    vocab = max(r.vocab_size, FIRST_ID + args.ids)
    print(f"{cpu_model()}; recipe {r.name}, seed {r.seed}, {args.steps} steps, copy {args.length} of {args.ids} "
          f"ids (guessing costs {math.log(args.ids):.2f} nats)")
    final = {}
    for variant in args.variant or ["recipe", "copy_conv=1", "copy_conv=2"]:
        vr, cfg = variant_setup(r, variant, vocab)
        t0 = time.perf_counter()
        losses = probe(vr, cfg, args.steps, args.length, args.ids)
        curve = "  ".join(f"{i}: {np.mean(losses[max(0, i - 10):i + 1]):.2f}" for i in range(0, args.steps, 50))
        print(f"{variant:>14}  {curve}  end: {np.mean(losses[-10:]):.2f}  ({time.perf_counter() - t0:.0f} s)")
        final[variant] = round(float(np.mean(losses[-10:])), 3)
    print(json.dumps({"cpu": cpu_model(), "recipe": r.name, "seed": r.seed, "steps": args.steps,
                      "final_loss": final}))


if __name__ == "__main__":
    main()
