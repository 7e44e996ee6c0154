"""MTP speculative decoding: single-sequence greedy decode with k = 0 (off), 1, 2, 3, same run, same prompt.

    .venv/bin/python bench/bench_spec.py [--model DIR] [--random DIR] [--ks 1,2,3] [--decode-tokens 96]

Two checkpoints:
- `--model`: one whose MTP head drafts well, by default the `dense-0.8b` random checkpoint with an MTP head
  trained on the model's own greedy outputs by bench/train_mtp.py (`<cache>/bench-dense-0.8b-mtp`). It
  measures the speed-up where drafts are right.
- `--random`: the same shape with its random MTP head (acceptance near zero). It measures what speculation
  costs when nothing is accepted (the adaptive pause should keep that small).

Prints the CPU model and measured bandwidth, then per checkpoint and k: decode tok/s, the ratio to k = 0,
the acceptance rate (kept / drafted), the mean tokens per step and the per-position acceptance; the last line
is one JSON object. The prompt is random token ids from a seed the training script does not use. Timings on a
shared 2-core machine are noisy: compare the ratios of one run.
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


def default_paths() -> tuple[Path, Path]:
    from qwen35.default_model import cache_root

    return cache_root() / "bench-dense-0.8b-mtp", cache_root() / "bench-dense-0.8b"


def decode(path: Path, k: int, prompt: list[int], n: int, threads: int, dtype: str) -> dict:
    """One warm-up request, then one timed greedy request of n tokens; decode = every step after the first."""
    from qwen35.engine import EngineConfig, LLMEngine, SamplingParams

    spec = {"method": "mtp", "num_speculative_tokens": k} if k else None
    engine = LLMEngine(EngineConfig(model=str(path), dtype=dtype, max_model_len=len(prompt) + n + 8, max_num_seqs=1,
                                    enable_prefix_caching=False, threads=threads, speculative_config=spec))

    def run(ids: list[int], max_tokens: int) -> tuple[list[float], list[int], int]:
        engine.add_request(f"bench-{len(ids)}-{max_tokens}", ids,
                           SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        steps, out = [], []
        while engine.has_unfinished():
            t0 = time.perf_counter()
            for o in engine.step():
                out = o.outputs[0].token_ids
            steps.append(time.perf_counter() - t0)
        return steps, out, len(steps)

    run(prompt[:32], 8)  # warm-up
    before = engine.spec_stats.as_counters()
    steps, tokens, n_steps = run(prompt, n + 1)
    after = engine.spec_stats.as_counters()
    stats = {key: after[key] - before.get(key, 0) for key in after}
    del engine
    drafted = stats.get("spec_num_draft_tokens", 0)
    kept = stats.get("spec_num_accepted_tokens", 0)
    rounds = stats.get("spec_num_drafts", 0)
    return {"k": k, "decode_tps": n / sum(steps[1:]), "steps": n_steps, "tokens": tokens,
            "acceptance": kept / drafted if drafted else None,
            "tokens_per_step": n / max(n_steps - 1, 1),
            "per_position": [stats.get(f"spec_accepted_pos_{i}", 0) / rounds if rounds else None for i in range(k)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trained, random_ = default_paths()
    p.add_argument("--model", default=str(trained))
    p.add_argument("--random", default=str(random_))
    p.add_argument("--ks", default="1,2,3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--decode-tokens", type=int, default=96)
    p.add_argument("--prompt-seed", type=int, default=12345)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu, bandwidth = cpu_model(), memory_bandwidth()
    print(f"cpu: {cpu}, {args.threads} threads; memory read bandwidth {bandwidth:.1f} GB/s (fp32 sum)")
    results: dict = {"cpu": cpu, "bandwidth_gbs": round(bandwidth, 2), "threads": args.threads, "dtype": args.dtype}
    ks = [int(k) for k in args.ks.split(",")]
    for label, path in (("trained MTP", Path(args.model)), ("random MTP", Path(args.random))):
        if not (path / "config.json").exists():
            print(f"{label}: {path} does not exist (run bench/train_mtp.py / bench/bench_model.py first); skipped")
            continue
        from qwen35.config import ModelConfig

        vocab = ModelConfig.from_file(path).text.vocab_size
        prompt = torch.randint(0, vocab, (args.prompt_len,), generator=torch.Generator().manual_seed(args.prompt_seed))
        rows = [decode(path, 0, prompt.tolist(), args.decode_tokens, args.threads, args.dtype)]
        base = rows[0]
        print(f"{label} ({path.name}): k=0  decode {base['decode_tps']:6.2f} tok/s")
        for k in ks:
            r = decode(path, k, prompt.tolist(), args.decode_tokens, args.threads, args.dtype)
            # fp32: identical; bf16: a k+1-row verify rounds differently from a 1-row decode step, so a near
            # tie can flip and the two greedy texts part ways (as in any bf16 engine); report where
            r["same_tokens"] = next((i for i, (a, b) in enumerate(zip(r["tokens"], base["tokens"])) if a != b),
                                    len(base["tokens"]))
            r["ratio"] = r["decode_tps"] / base["decode_tps"]
            pos = ", ".join(f"{x:.2f}" for x in r["per_position"] if x is not None)
            acc = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "-"
            print(f"{label} ({path.name}): k={k}  decode {r['decode_tps']:6.2f} tok/s  x{r['ratio']:.2f}  "
                  f"acceptance {acc}  tokens/step {r['tokens_per_step']:.2f}  per position [{pos}]  "
                  f"same as k=0 for {r['same_tokens']}/{len(base['tokens'])} tokens   "
                  f"({cpu}, {bandwidth:.1f} GB/s)")
            rows.append(r)
        for r in rows:
            r.pop("tokens")
        results[label] = rows
    print(json.dumps(results))


if __name__ == "__main__":
    main()
