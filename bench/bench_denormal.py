"""Decode speed on a checkpoint with transformers' own random init (strong GDN decays) vs one from `qwen35 init`.

    .venv/bin/python bench/bench_denormal.py [--preset dense-0.8b] [--hf-dir DIR] [--seconds 8] [--reps 2]

Transformers initialises A_log = log(U(0.01, 16)) and dt_bias = 1, so a GDN head can decay its state by up to
e^-20 per token; state and intermediates that sink below 1.2e-38 become denormal floats, which CPUs compute
much more slowly unless flush-to-zero/denormals-are-zero is on (runtime.py turns it on for every compute
thread; `QWEN35_FLUSH_DENORMAL=0` turns that off, which the `ftz=off` rows use).

Each (checkpoint, FTZ) configuration decodes in its own subprocess for `--seconds`, configurations interleaved,
repeated `--reps` times; medians are reported. Also printed: the cost of denormals on this CPU (a 2-thread
multiply with and without FTZ), whether FTZ was active in each worker, and the share of denormal values in the
GDN state (fp32) and conv state after decoding. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")


def hf_checkpoint(ours: Path, out: Path) -> Path:
    """The same shape as `ours`, initialised by transformers (`Qwen3_5ForCausalLM(config)`), saved in bf16."""
    if (out / "config.json").exists():
        return out
    import torch
    import transformers

    text = json.loads((ours / "config.json").read_text())["text_config"]
    print(f"writing a transformers-initialised checkpoint to {out} ...", file=sys.stderr)
    torch.manual_seed(0)
    model = transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(**text))
    model.to(torch.bfloat16).save_pretrained(out)
    return out


def denormal_penalty() -> float:
    """Time of a 2-thread multiply of denormal inputs without FTZ over the same with FTZ (fresh processes)."""
    code = """
import sys, time, torch
torch.set_num_threads(2)
if sys.argv[1] == "on":
    torch.set_flush_denormal(True)  # before the first parallel region: the OpenMP workers inherit it
x = torch.full((1 << 22,), 0x000AE398, dtype=torch.int32).view(torch.float32)
y = torch.empty_like(x)
ts = []
for _ in range(15):
    t0 = time.perf_counter(); torch.mul(x, 0.9, out=y); ts.append(time.perf_counter() - t0)
print(sorted(ts)[7])
"""
    t = {m: float(subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}).stdout) for m in ("off", "on")}
    return t["off"] / t["on"]


def worker(args) -> None:
    sys.path.insert(0, SRC)
    from qwen35 import LLM, SamplingParams, runtime

    import torch

    llm = LLM(args.model, max_model_len=1024, max_num_seqs=1, kv_cache_memory=256 << 20)
    eng = llm.engine
    prompt = list(range(1000, 1064))
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    eng.add_request("bench", prompt, SamplingParams(temperature=0, max_tokens=100_000, ignore_eos=True))
    eng.step()  # prefill
    eng.step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds or n < 3:
        eng.step()
        n += 1
    dt = time.perf_counter() - t0

    def denormal_share(tensors, bits, exp_mask, frac_mask) -> float:
        count = total = 0
        for x in tensors:
            b = x.view(bits)
            count += int((((b & exp_mask) == 0) & ((b & frac_mask) != 0)).sum())
            total += x.numel()
        return count / max(total, 1)

    cache = eng.runner.cache
    ssm = denormal_share(cache.ssm, torch.int32, 0x7F800000, 0x007FFFFF)
    conv = denormal_share(cache.conv, torch.int16, 0x7F80, 0x007F) if cache.conv[0].dtype == torch.bfloat16 else 0.0
    nonzero = [x.abs()[x != 0] for x in cache.ssm]
    ssm_min = min((float(x.min()) for x in nonzero if x.numel()), default=0.0)  # how close to 1.2e-38 it gets
    print(json.dumps({"tok_s": n / dt, "tokens": n, "ftz": runtime.runtime_info()["denormals_flushed"],
                      "ssm_denormal": ssm, "conv_denormal": conv, "ssm_min_abs": ssm_min}))


def run_worker(args, model: Path, ftz: bool) -> dict:
    env = {**os.environ, "QWEN35_FLUSH_DENORMAL": "1" if ftz else "0"}
    cmd = [sys.executable, __file__, "--worker", "--model", str(model), "--seconds", str(args.seconds)]
    from machine import run_worker as run_worker_json

    return run_worker_json(cmd, env, "worker")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a qwen35-init checkpoint (default: written for --preset)")
    p.add_argument("--preset", default="dense-0.8b")
    p.add_argument("--hf-dir", help="where the transformers-initialised checkpoint is (or is written)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(HERE))
    from bench_model import checkpoint
    from machine import describe

    from machine import cache_root

    ours = checkpoint(args)
    hf = hf_checkpoint(ours, Path(args.hf_dir) if args.hf_dir else cache_root() / f"bench-hf-{args.preset}")
    print(f"machine: {describe()}")
    print(f"denormal multiply on this CPU, 2 threads: {denormal_penalty():.1f}x slower without FTZ")
    configs = [("hf", True), ("ours", True), ("hf", False), ("ours", False)]
    runs: dict[tuple, list[dict]] = {}
    for rep in range(args.reps):
        for name, ftz in configs if rep % 2 == 0 else configs[::-1]:
            r = run_worker(args, hf if name == "hf" else ours, ftz)
            runs.setdefault((name, ftz), []).append(r)
            print(f"  rep {rep} {name:4} ftz={'on' if ftz else 'off'}: {r['tok_s']:.2f} tok/s, FTZ active "
                  f"{r['ftz']}, denormal share: GDN state {r['ssm_denormal']:.2e}, conv {r['conv_denormal']:.2e}; "
                  f"smallest nonzero |state| {r['ssm_min_abs']:.1e}",
                  flush=True)
    med = {k: statistics.median(r["tok_s"] for r in v) for k, v in runs.items()}
    rows = [{"checkpoint": k[0], "ftz": k[1], "tok_s": round(v, 3),
             "ssm_denormal": max(r["ssm_denormal"] for r in runs[k]),
             "ssm_min_abs": min(r["ssm_min_abs"] for r in runs[k]),
             "ftz_active": all(r["ftz"] for r in runs[k])} for k, v in med.items()]
    for row in rows:
        print(f"{row['checkpoint']:4} ftz={'on ' if row['ftz'] else 'off'} {row['tok_s']:7.2f} tok/s "
              f"(FTZ active: {row['ftz_active']}, max denormal share of GDN state {row['ssm_denormal']:.2e}, "
              f"smallest nonzero |state| {row['ssm_min_abs']:.1e})")
    ratio_on = med[("hf", True)] / med[("ours", True)]
    ratio_off = med[("hf", False)] / med[("ours", False)]
    print(f"transformers init / qwen35 init: {ratio_on:.2f} with FTZ, {ratio_off:.2f} without")
    print(json.dumps({"bench": "denormal", "preset": args.preset, "hf_over_ours_ftz": round(ratio_on, 3),
                      "hf_over_ours_no_ftz": round(ratio_off, 3), "rows": rows}))


if __name__ == "__main__":
    main()
