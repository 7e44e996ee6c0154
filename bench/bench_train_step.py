"""`qwen35 train` steps (forward, backward, clipping, AdamW) on the demo recipe's data, three ways: whole
conversations in steps of 2,048 tokens (the demo recipe before 2026-12-05); steps of 1,536 tokens where
conversations that share a tool header run it once (`share_heads`, model/shared_prefix.py; the recipe of
2026-12-05); and the demo recipe's steps, which also draw tool chats in groups under one header
(`tool_siblings`, synth/siblings.py). Each way walks its own batches of its own corpus, alternating step by
step in one run.

    .venv/bin/python bench/bench_train_step.py [--steps 40] [--samples 4000] [--threads 2]

Prints the CPU model and the measured memory read bandwidth; for each way ms per step (timed), conversations
and learnt tokens per step (means over all its batches: a few dozen timed batches would sample the kinds of
conversation unevenly), learnt tokens/s and its ratio to whole conversations; the last line is one JSON
object. Timings on a shared 2-core machine are noisy: compare the ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model, memory_bandwidth  # noqa: E402

from qwen35.ops.batch import BatchBuilder  # noqa: E402
from qwen35.train.examples import IGNORE, plan_batches  # noqa: E402
from qwen35.train.init import build_model  # noqa: E402
from qwen35.train.loop import BLOCK, _optimizer, batch_loss, deterministic, make_corpus  # noqa: E402
from qwen35.train.recipe import recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per way")
    ap.add_argument("--samples", type=int, default=4000, help="conversations generated (the demo recipe's mix)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = recipe("demo").replace(train_samples=args.samples, vocab_samples=args.samples)
    ways = {}
    for name, r in (("whole", base.replace(share_heads=False, batch_tokens=2048, tool_siblings=1)),
                    ("shared heads", base.replace(tool_siblings=1)),
                    ("siblings", base)):
        tok, units = make_corpus(r, log=lambda *a: None)
        ways[name] = (units, plan_batches([len(u) for u in units], r.batch_tokens, r.seed), r.batch_tokens)
    model = build_model(base.text_config(tok.vocab_size), base.seed, base.gdn_gate, base.copy_conv)
    opt = _optimizer(model, base)
    builders = (BatchBuilder(BLOCK), BatchBuilder(BLOCK))

    def step(units: list) -> None:
        loss, _, _ = batch_loss(model, units, builders, base.mtp_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), base.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seconds = dict.fromkeys(ways, 0.0)
    with deterministic():  # as `train` runs
        for i in range(-2, args.steps):  # two warm-up batches
            for name, (units, batches, _) in ways.items():
                t0 = time.perf_counter()
                step([units[j] for j in batches[i % len(batches)]])
                if i >= 0:
                    seconds[name] += time.perf_counter() - t0
    bw = memory_bandwidth()
    print(f"{cpu_model()}, {args.threads} torch threads, read bandwidth {bw:.1f} GB/s; {args.steps} timed steps per "
          f"way; conversations and learnt tokens per step are means over all of a way's batches")
    ms = {name: s / args.steps * 1000 for name, s in seconds.items()}
    rate = {}
    for name, (units, batches, most) in ways.items():
        tails = [t for u in units for t in u.tails]
        chats = len(tails) / len(batches)
        learnt = sum(int((t.next_labels != IGNORE).sum()) for t in tails) / len(batches)
        rate[name] = learnt / ms[name] * 1000
        print(f"{name:13s} <= {most} tokens {ms[name]:6.0f} ms/step  {chats:5.1f} conversations/step  "
              f"{learnt:5.0f} learnt tokens/step  {rate[name]:6,.0f} learnt tokens/s  "
              f"{rate[name] / rate['whole']:.2f}x")
    print(json.dumps({"cpu": cpu_model(), "bandwidth_gbs": round(bw, 1), "threads": args.threads,
                      "ms_per_step": {k: round(v, 1) for k, v in ms.items()},
                      "learnt_tokens_per_s": {k: round(v) for k, v in rate.items()},
                      "over_whole": {k: round(v / rate["whole"], 3) for k, v in rate.items()}}))

if __name__ == "__main__":
    main()
