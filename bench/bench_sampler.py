"""The sampler on a Qwen3.5-sized vocabulary (248,320): each sampling preset the server applies, greedy,
temperature alone and top_p alone, for 1 and 8 rows; through the top candidates where the rows allow it
(`_candidates`, what the sampler does) beside the same rows through the whole vocabulary; then the
same for speculative verification (engine/verify.py) of 2 drafts per sequence.

    .venv/bin/python bench/bench_sampler.py [--rows 1,8] [--threads 2]

Prints the CPU model and measured bandwidth, then milliseconds per sampler call (best of 20) and the ratio;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, timed  # noqa: E402

from qwen35.engine import sampler as sampler_mod  # noqa: E402
from qwen35.engine import verify as verify_mod  # noqa: E402
from qwen35.engine.sampler import PenaltyState, Sampler  # noqa: E402
from qwen35.engine.sampling_params import SamplingParams  # noqa: E402
from qwen35.server.params import NON_THINKING_PRESET, THINKING_PRESET  # noqa: E402

VOCAB = 248_320
CASES = {
    "greedy": SamplingParams(temperature=0),
    "thinking preset": SamplingParams(**THINKING_PRESET),
    "non-thinking preset": SamplingParams(**NON_THINKING_PRESET),
    "non-thinking, presence 1.5": SamplingParams(**NON_THINKING_PRESET, presence_penalty=1.5),
    "temperature only": SamplingParams(temperature=0.7),
    "top_p 0.95 alone (vLLM's example)": SamplingParams(temperature=0.8, top_p=0.95),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(describe(), flush=True)
    sampler = Sampler(generator=torch.Generator().manual_seed(0))
    # peaked like a trained model's: N(0, 4^2) logits give the top token ~0.7 and a 0.95 nucleus of ~80 tokens at
    # temperature 0.8 (a random model's are nearly flat, and their nucleus would run past the candidates)
    logits = torch.randn(max(map(int, args.rows.split(","))), VOCAB, generator=torch.Generator().manual_seed(1)) * 4
    result = []

    def both(label: str, rows: int, module, call) -> None:
        """Time `call` as it is, then with `module`'s candidates turned off (the whole-vocabulary path)."""
        candidates = module._candidates
        ours = timed(call, repeats=20)
        module._candidates = lambda *a: None
        try:
            whole = timed(call, repeats=20)
        finally:
            module._candidates = candidates
        print(f"{label:46s} ours {ours * 1e3:6.2f} ms   whole vocabulary {whole * 1e3:6.2f} ms   "
              f"ratio {whole / ours:4.1f}x", flush=True)
        result.append({"rows": rows, "case": label, "ours_ms": round(ours * 1e3, 3), "whole_ms": round(whole * 1e3, 3)})

    for rows in map(int, args.rows.split(",")):
        for name, p in CASES.items():
            hist = [PenaltyState(list(range(200)))] * rows
            both(f"{rows} row(s), {name}", rows, sampler_mod,
                 lambda: sampler(logits[:rows].clone(), [p] * rows, hist, [None] * rows))
    # speculative verification: each sequence's 3 rows (2 drafts) under the thinking preset
    p = CASES["thinking preset"]
    for seqs in map(int, args.rows.split(",")):
        rows = logits[:1].repeat(3 * seqs, 1)
        drafts = [[int(rows[0].argmax())] * 2] * seqs
        hist = [PenaltyState(list(range(200)))] * (3 * seqs)
        both(f"{seqs} seq(s), verify 2 drafts, thinking preset", 3 * seqs, verify_mod,
             lambda: verify_mod.verify(rows.clone(), [p] * (3 * seqs), hist, [None] * seqs, drafts))
    print(json.dumps({"cpu": describe(), "results": result}))


if __name__ == "__main__":
    main()
