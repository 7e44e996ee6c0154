"""One `qwen35 train` step (forward, backward, clipping, AdamW) on the demo recipe's batches: the training
chunk of the gated delta rule (`ops.gdn.train_chunk`) against chunks of 64 (the inference path's, which
training used before), the same batches alternately in one run.

    .venv/bin/python bench/bench_train_step.py [--steps 40] [--samples 4000] [--threads 2]

Prints the CPU model and the measured memory read bandwidth, ms per step and tokens/s of each variant and
their ratio; the last line is one JSON object. Timings on a shared 2-core machine are noisy: compare the
ratio, not absolute numbers.
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

from qwen35.ops import gdn  # noqa: E402
from qwen35.ops.batch import BatchBuilder  # noqa: E402
from qwen35.train.examples import plan_batches  # noqa: E402
from qwen35.train.loop import BLOCK, _optimizer, batch_loss, build_model, make_corpus  # noqa: E402
from qwen35.train.recipe import recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    ap.add_argument("--samples", type=int, default=4000, help="conversations generated (the demo recipe's mix)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    r = recipe("demo").replace(train_samples=args.samples, vocab_samples=args.samples)
    tok, examples = make_corpus(r, log=lambda *a: None)
    batches = plan_batches([len(e) for e in examples], r.batch_tokens, r.seed)
    model = build_model(r.text_config(tok.vocab_size), r.seed, r.gdn_gate)
    opt = _optimizer(model, r)
    builder = BatchBuilder(BLOCK)
    variants = {"train_chunk": gdn.train_chunk, "chunk 64": lambda T: 64}

    def step(i: int) -> int:
        chosen = [examples[j] for j in batches[i % len(batches)]]
        loss, _, _ = batch_loss(model, chosen, builder, r.mtp_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return sum(len(e) for e in chosen)

    seconds = dict.fromkeys(variants, 0.0)
    tokens = 0
    for i in range(-2, args.steps):  # two warm-up batches
        for name, rule in variants.items():
            gdn.train_chunk = rule
            t0 = time.perf_counter()
            n = step(i)
            if i >= 0:
                seconds[name] += time.perf_counter() - t0
        tokens += n if i >= 0 else 0
    gdn.train_chunk = variants["train_chunk"]
    bw = memory_bandwidth()
    print(f"{cpu_model()}, {args.threads} torch threads, read bandwidth {bw:.1f} GB/s; {args.steps} steps of "
          f"<= {r.batch_tokens} tokens per variant")
    for name, s in seconds.items():
        print(f"{name:12s} {s / args.steps * 1000:7.0f} ms/step  {tokens / s:8,.0f} tokens/s")
    ratio = seconds["chunk 64"] / seconds["train_chunk"]
    print(f"speed-up of train_chunk over chunk 64: {ratio:.2f}x")
    print(json.dumps({"cpu": cpu_model(), "bandwidth_gbs": round(bw, 1), "threads": args.threads,
                      "ms_per_step": {k: round(v / args.steps * 1000, 1) for k, v in seconds.items()},
                      "speedup": round(ratio, 3)}))


if __name__ == "__main__":
    main()
