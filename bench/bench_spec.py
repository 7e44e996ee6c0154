"""MTP speculative decoding: single-sequence greedy decode with k = 0 (off), 1, 2, 3, same run, same prompt.

    .venv/bin/python bench/bench_spec.py [--ks 1,2,3] [--oracle 0.8] [--draft-vocab-size 32768] [--dtype bfloat16]

Cases (each against k = 0 on the same checkpoint, in the same run):
- "random MTP": the random `dense-0.8b` checkpoint with its random MTP head: acceptance near zero, so this
  measures what speculation costs when nothing is accepted (the adaptive pause should keep that small).
- "oracle": the same checkpoint and the same MTP forward passes, but each draft is replaced by the true next
  greedy token with probability `--oracle`, else by a wrong one (`Oracle`: the truth comes from a plain
  engine, whose time is left out). A random model's next token is a hash of its context, so no trained head
  predicts it (bench/train_mtp.py: held-out acceptance 0 on dense-0.8b); the verification step costs the
  same whichever tokens it checks, so this measures the speed-up at a chosen acceptance. Outputs are
  compared with k = 0: identical in fp32; in bf16 a (k+1)-row verify rounds differently from a 1-row step
  and a near tie can flip (the oracle then follows the new text).
- "trained MTP": `--trained` (default `<cache>/bench-tiny-mtp`, written by `bench/train_mtp.py --preset tiny`),
  real drafts of a trained head, where it exists, over the whole vocabulary: shows the real path end to end
  (acceptance 0.94-0.97; the tiny model's step is mostly Python overhead, so its ratio is not a bandwidth
  figure).

Prints the CPU model and measured bandwidth, then per case and k: decode tok/s, the ratio to k = 0, the
acceptance rate (kept / drafted), tokens per step and the per-position acceptance; the last line is one JSON
object. Timings on a shared 2-core machine are noisy: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cache_root, cpu_model, memory_bandwidth  # noqa: E402


def default_paths() -> tuple[Path, Path]:

    return cache_root() / "bench-tiny-mtp", cache_root() / "bench-dense-0.8b"


def decode(path: Path, k: int, prompt: list[int], n: int, threads: int, dtype: str, draft_vocab: int | None,
           oracle: float | None = None) -> dict:
    """One warm-up request, then one timed greedy request of n tokens; decode = every step after the first.
    oracle: drafts become the true greedy tokens with this probability each (see `Oracle`)."""
    from qwen35.engine import EngineConfig, LLMEngine, SamplingParams

    spec = {"method": "mtp", "num_speculative_tokens": k, "draft_vocab_size": draft_vocab} if k else None
    engine = LLMEngine(EngineConfig(model=str(path), dtype=dtype, max_model_len=len(prompt) + n + 8, max_num_seqs=1,
                                    enable_prefix_caching=False, threads=threads, speculative_config=spec))
    judge = Oracle(engine, oracle, path, dtype, threads, prompt) if oracle is not None and k else None

    def run(ids: list[int], max_tokens: int) -> tuple[list[float], list[int], int]:
        engine.add_request(f"{'timed' if ids is prompt else 'warm'}-{len(ids)}-{max_tokens}", ids,
                           SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        steps, out = [], []
        while engine.has_unfinished():
            t0, skip = time.perf_counter(), judge.excluded if judge else 0.0
            for o in engine.step():
                out = o.outputs[0].token_ids
            steps.append(time.perf_counter() - t0 - ((judge.excluded - skip) if judge else 0.0))
        return steps, out, len(steps)

    run(prompt[:32], 8)  # warm-up
    before = engine.spec_stats.as_counters()
    steps, tokens, n_steps = run(prompt, n + 1)
    after = engine.spec_stats.as_counters()
    stats = {key: after[key] - before.get(key, 0) for key in after}
    drafted = stats.get("spec_num_draft_tokens", 0)
    kept = stats.get("spec_num_accepted_tokens", 0)
    rounds = stats.get("spec_num_drafts", 0)
    return {"k": k, "decode_tps": n / sum(steps[1:]), "steps": n_steps, "tokens": tokens,
            "oracle_resyncs": judge.resyncs if judge else None,
            "acceptance": kept / drafted if drafted else None,
            "tokens_per_step": n / max(n_steps - 1, 1),
            "per_position": [stats.get(f"spec_accepted_pos_{i}", 0) / rounds if rounds else None for i in range(k)]}


class Oracle:
    """Replaces the head's drafts (after it has run) by the true greedy continuation, each token right with
    probability p. The truth comes from a plain engine (k = 0) on the same checkpoint, extended
    `AHEAD` tokens at a time from the sequence as the speculating engine has written it; when that
    sequence leaves the truth (in bf16 a (k+1)-row verification rounds differently from a 1-row step, and a
    near tie can flip), the truth is regenerated from there. Time spent in the plain engine is recorded in
    `excluded` and left out of the measurement."""

    AHEAD = 8

    def __init__(self, engine, p: float, path: Path, dtype: str, threads: int, prompt: list[int]) -> None:
        from qwen35.engine import EngineConfig, LLMEngine

        self.p, self.prompt, self.rng = p, prompt, random.Random(0)
        self.ref = LLMEngine(EngineConfig(model=str(path), dtype=dtype, max_model_len=engine.max_model_len,
                                          max_num_seqs=1, threads=threads))
        self.truth: list[int] = []
        self.excluded = 0.0
        self.resyncs = 0
        self.vocab = engine.model_cfg.text.vocab_size
        self.engine = engine
        propose = engine.runner.drafter.propose

        def patched(budgets):
            drafts = propose(budgets)
            for req in engine.scheduler.running:
                if id(req) in drafts and req.request_id.startswith("timed"):
                    drafts[id(req)] = self.drafts(req.output_ids, len(drafts[id(req)]))
            return drafts

        engine.runner.drafter.propose = patched

    def drafts(self, out: list[int], k: int) -> list[int]:
        n = len(out)
        if self.truth[:n] != out or len(self.truth) < n + k:
            self.resyncs += self.truth[:n] != out
            self._extend(out, k)
        return [t if self.rng.random() < self.p else (t + 1) % self.vocab for t in self.truth[n:n + k]]

    def _extend(self, out: list[int], k: int) -> None:
        from qwen35.engine import SamplingParams

        t0 = time.perf_counter()
        self.ref.add_request(f"ref-{len(out)}-{t0}", self.prompt + out,
                             SamplingParams(temperature=0, max_tokens=k + self.AHEAD, ignore_eos=True))
        more: list[int] = []
        while self.ref.has_unfinished():
            for o in self.ref.step():
                more = o.outputs[0].token_ids
        self.truth = list(out) + more
        self.excluded += time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trained, random_ = default_paths()
    p.add_argument("--model", default=str(random_), help="checkpoint for the random-MTP and oracle cases")
    p.add_argument("--trained", default=str(trained), help="checkpoint with a trained MTP head")
    p.add_argument("--ks", default="1,2,3")
    p.add_argument("--oracle", type=float, default=0.9, help="probability that an oracle draft is right")
    p.add_argument("--draft-vocab-size", type=int, default=32768, help="0: the whole vocabulary")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--decode-tokens", type=int, default=96)
    p.add_argument("--prompt-seed", type=int, default=12345)
    p.add_argument("--cases", default="random,oracle,trained")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu, bandwidth = cpu_model(), memory_bandwidth()
    print(f"cpu: {cpu}, {args.threads} threads; memory read bandwidth {bandwidth:.1f} GB/s (fp32 sum); "
          f"{args.dtype}, draft vocabulary {args.draft_vocab_size or 'all'}")
    results: dict = {"cpu": cpu, "bandwidth_gbs": round(bandwidth, 2), "threads": args.threads, "dtype": args.dtype,
                     "draft_vocab_size": args.draft_vocab_size or None, "oracle": args.oracle}
    ks = [int(k) for k in args.ks.split(",")]
    cases = {"random": ("random MTP", Path(args.model), False), "oracle": (f"oracle p={args.oracle}", Path(args.model), True),
             "trained": ("trained MTP", Path(args.trained), False)}
    base_cache: dict = {}
    for name in args.cases.split(","):
        label, path, use_oracle = cases[name]
        if not (path / "config.json").exists():
            print(f"{label}: {path} does not exist (bench/train_mtp.py / bench/bench_model.py write it); skipped")
            continue
        from qwen35.config import ModelConfig

        vocab = ModelConfig.from_file(path).text.vocab_size
        prompt = torch.randint(0, vocab, (args.prompt_len,),
                               generator=torch.Generator().manual_seed(args.prompt_seed)).tolist()
        if path not in base_cache:  # k = 0 once per checkpoint
            base_cache[path] = decode(path, 0, prompt, args.decode_tokens, args.threads, args.dtype, None)
        base = base_cache[path]
        rows = [dict(base)]
        print(f"{label} ({path.name}): k=0  decode {base['decode_tps']:6.2f} tok/s")
        oracle = args.oracle if use_oracle else None
        for k in ks:
            # the trained tiny head drafts the one token its model repeats, an arbitrary id: whole vocabulary
            vocab_cap = None if name == "trained" else args.draft_vocab_size or None
            r = decode(path, k, prompt, args.decode_tokens, args.threads, args.dtype, vocab_cap, oracle)
            # fp32: identical; bf16: a k+1-row verify rounds differently from a 1-row decode step, so a near
            # tie can flip and the two greedy texts part ways (as in any bf16 engine); report where
            r["same_tokens"] = next((i for i, (a, b) in enumerate(zip(r["tokens"], base["tokens"])) if a != b),
                                    len(base["tokens"]))
            r["ratio"] = r["decode_tps"] / base["decode_tps"]
            pos = ", ".join(f"{x:.2f}" for x in r["per_position"] if x is not None)
            acc = f"{r['acceptance']:.2f}" if r["acceptance"] is not None else "-"
            print(f"{label} ({path.name}): k={k}  decode {r['decode_tps']:6.2f} tok/s  x{r['ratio']:.2f}  "
                  f"acceptance {acc}  tokens/step {r['tokens_per_step']:.2f}  per position [{pos}]  "
                  f"same as k=0 for {r['same_tokens']}/{len(base['tokens'])} tokens   ({cpu}, {bandwidth:.1f} GB/s)")
            if r["oracle_resyncs"]:
                print(f"    (the oracle followed {r['oracle_resyncs']} bf16 near-tie flip(s))")
            rows.append(r)
        for r in rows:
            r.pop("tokens", None)
        results[label] = rows
    print(json.dumps(results))


if __name__ == "__main__":
    main()
