"""The demo recipe's training steps with our training kernels (the native conv taps, csrc/conv_train.cpp, the
delta rule's native loop over chunks, csrc/gdn_train.cpp, AdamW's native step, csrc/adamw.cpp, only the MTP
layer's keys on shared headers, and deterministic kernels without their NaN fill of new tensors) against torch's
path (autograd through the written-out taps and loop, torch's AdamW loop, the whole MTP step on headers, the fill
on, as `train` ran before 2026-12-05 late evening): drill steps and chat steps, each way from the same weights over
the same batches, alternating runs in one process. After each run the weights must be equal to the bit, or the
kernels would change what the recipe trains.

    .venv/bin/python bench/bench_train_kernels.py [--steps 16] [--rounds 3] [--samples 4000] [--threads 2]

Prints the CPU model and the measured memory read bandwidth, ms per step of each kind each way (the mean over
rounds), their ratio, whether the weights matched, and the recipe-weighted ratio (1,000 drill steps, 4,600 chat
steps); the last line is one JSON object. Timings on a shared 2-core machine are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model, memory_bandwidth  # noqa: E402

from qwen35.ops import native  # noqa: E402
from qwen35.ops.batch import BatchBuilder  # noqa: E402
from qwen35.train.examples import Unit, plan_batches  # noqa: E402
from qwen35.train.induction import copy_batch  # noqa: E402
from qwen35.train.init import build_model  # noqa: E402
from qwen35.train.loop import BLOCK, _optimizer, batch_loss, deterministic, make_corpus  # noqa: E402
from qwen35.train.recipe import recipe  # noqa: E402
from qwen35.train.vocab import merged_ids  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=16, help="steps of each kind per run")
    ap.add_argument("--rounds", type=int, default=3, help="runs each way, alternating")
    ap.add_argument("--samples", type=int, default=4000, help="conversations generated (the demo recipe's mix)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    lib = native.ops()
    if lib is None:
        sys.exit("the native kernels are not built (make install): nothing to compare")
    torch.set_num_threads(args.threads)
    r = recipe("demo").replace(train_samples=args.samples, vocab_samples=args.samples)
    tok, units = make_corpus(r, log=lambda *a: None)
    chat_batches = plan_batches([len(u) for u in units], r.batch_tokens, r.seed)
    ids = merged_ids(tok)
    kinds = {
        "drill": [[Unit.whole(e) for e in copy_batch(r.seed, i, r.copy_batch_tokens, r.copy_length, ids.start,
                                                      len(ids))] for i in range(args.steps)],
        "chat": [[units[j] for j in chat_batches[i]] for i in range(args.steps)]}
    model = build_model(r.text_config(tok.vocab_size), r.seed, r.gdn_gate, r.copy_conv)
    start = copy.deepcopy(model.state_dict())
    builders = (BatchBuilder(BLOCK), BatchBuilder(BLOCK))

    def run(batches: list, ours: bool) -> tuple[float, list[torch.Tensor]]:
        native.ops = (lambda: lib) if ours else (lambda: None)
        if ours:
            model.__dict__.pop("record_draft_keys", None)
        else:  # the whole draft step, its output dropped
            model.record_draft_keys = lambda *a: model.draft(*a)
        model.load_state_dict(start)
        opt = _optimizer(model, r)
        seconds = 0.0
        with deterministic():
            torch.utils.deterministic.fill_uninitialized_memory = not ours
            for chosen in batches:
                t0 = time.perf_counter()
                batch_loss(model, chosen, builders, r.mtp_weight)[0].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                seconds += time.perf_counter() - t0
        return seconds / len(batches) * 1000, [p.detach().clone() for p in model.parameters()]

    ms = {kind: {"torch": [], "ours": []} for kind in kinds}
    same = {}
    for kind, batches in kinds.items():
        run(batches[:2], True)  # warm-up
        for _ in range(args.rounds):
            weights = {}
            for way in ("torch", "ours"):
                t, weights[way] = run(batches, way == "ours")
                ms[kind][way].append(t)
            bits = [(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(weights["torch"], weights["ours"])]
            same[kind] = same.get(kind, True) and all(torch.equal(a, b) for a, b in bits)
    native.ops = lambda: lib
    bw = memory_bandwidth()
    print(f"{cpu_model()}, {args.threads} torch threads, read bandwidth {bw:.1f} GB/s; {args.steps} steps of each "
          f"kind per run, {args.rounds} runs each way, alternating")
    mean = {k: {w: sum(v) / len(v) for w, v in ways.items()} for k, ways in ms.items()}
    for kind, m in mean.items():
        print(f"{kind:5s} steps: torch path {m['torch']:6.0f} ms  ours {m['ours']:6.0f} ms  "
              f"{m['ours'] / m['torch']:.3f}x the time  weights bit-equal: {same[kind]}")
    weighted = (1000 * mean["drill"]["ours"] + 4600 * mean["chat"]["ours"]) / \
        (1000 * mean["drill"]["torch"] + 4600 * mean["chat"]["torch"])
    print(f"the demo recipe's 1,000 drill and 4,600 chat steps: {weighted:.3f}x the time")
    print(json.dumps({"cpu": cpu_model(), "bandwidth_gbs": round(bw, 1), "threads": args.threads,
                      "ms_per_step": {k: {w: round(v, 1) for w, v in m.items()} for k, m in mean.items()},
                      "bit_equal": same, "recipe_time_ratio": round(weighted, 3)}))


if __name__ == "__main__":
    main()
