"""Peak memory of a long prefill: a 32k-token prompt through the engine, against weights + cache plan + 1 GiB.

    .venv/bin/python bench/bench_prefill_memory.py [--model DIR] [--prompt-len 32768] [--threads 2]
                                                   [--max-num-batched-tokens 2048] [--prefix-caching]

Attention reads the paged cache tile by tile, so a prefill chunk's working memory does not grow with the
context. The process's peak RSS (VmHWM, which includes loading) must stay below the weights' bytes + the
cache plan's bytes + 1 GiB. Prints the CPU model, the numbers, PASS/FAIL, and one JSON line at the end;
exits 1 on FAIL. A 32k prefill of dense-0.8b takes a few minutes on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

GIB = 1 << 30
sys.path.insert(0, str(Path(__file__).parent))
from machine import cache_root, cpu_model  # noqa: E402


def peak_rss() -> int:
    """Peak resident bytes of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def checkpoint(model: str | None) -> Path:
    if model:
        return Path(model)
    from qwen35.config import preset
    from qwen35.loading.writer import write_random_checkpoint

    path = cache_root() / "bench-dense-0.8b"  # the checkpoint bench_model.py makes too
    if not (path / "config.json").exists():
        print(f"writing a random dense-0.8b checkpoint to {path} ...", file=sys.stderr)
        write_random_checkpoint(preset("dense-0.8b"), path, seed=0, tokenizer=True)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--prompt-len", type=int, default=32768)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--prefix-caching", action="store_true", help="also save prefix checkpoints (cuts chunks)")
    args = p.parse_args()

    import torch

    from qwen35 import LLM, SamplingParams

    path = checkpoint(args.model)
    print(f"cpu: {cpu_model()} ({torch.get_num_threads()} torch threads before --threads {args.threads})")
    llm = LLM(str(path), dtype="bfloat16", max_model_len=args.prompt_len + 16, max_num_seqs=1,
              max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=args.prefix_caching,
              threads=args.threads)
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    cache = llm.engine.plan.total_bytes
    bound = weights + cache + GIB
    after_load = peak_rss()
    prompt = torch.randint(0, 200_000, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    t0 = time.perf_counter()
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=1))
    seconds = time.perf_counter() - t0
    peak = peak_rss()
    ok = peak < bound and len(out[0].outputs[0].token_ids) == 1
    print(f"prefill {args.prompt_len} tokens in {seconds:.1f} s ({args.prompt_len / seconds:.0f} tok/s), "
          f"chunks of {args.max_num_batched_tokens}")
    print(f"weights {weights / GIB:.2f} GiB + cache plan {cache / GIB:.2f} GiB + 1 GiB = bound {bound / GIB:.2f} GiB")
    print(f"peak RSS {peak / GIB:.2f} GiB (after load {after_load / GIB:.2f} GiB): {'PASS' if ok else 'FAIL'}")
    print(json.dumps({"cpu": cpu_model(), "prompt_len": args.prompt_len, "seconds": round(seconds, 1),
                      "weights_bytes": weights, "cache_bytes": cache, "bound_bytes": bound,
                      "peak_rss_bytes": peak, "after_load_rss_bytes": after_load, "pass": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
