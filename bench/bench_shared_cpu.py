"""Single-sequence decode when the CPU is shared: idle vs N competing busy processes, old vs default policy.

    .venv/bin/python bench/bench_shared_cpu.py [--model DIR | --preset dense-0.8b] [--dtype bf16]
        [--hogs 0,1,2] [--threads 1,2] [--seconds 5] [--reps 2]

Each policy runs in its own subprocess, so the OpenMP environment takes effect when torch loads:
- `old`: libgomp's default wait policy (threads spin before sleeping; torch is imported before qwen35, so
  runtime.py's default never reaches libgomp), the behaviour before runtime.py;
- `default`: what `import qwen35` sets up (runtime.py), or the user's own OMP_* settings if given.
Inside a worker, for each number of competing processes (`while True: pass`, started for that phase only) and
each thread count, decode runs for `--seconds` (time-bounded, so a slow configuration costs no more time);
the phases are interleaved, and the workers alternate policies rep by rep; medians over reps are reported.
Prints the CPU model, memory bandwidth (large-tensor sum), tok/s per row and its ratio to the idle row,
then one JSON line.
"""

from __future__ import annotations

import os

USER_ENV = dict(os.environ)  # before qwen35 is imported here: children get the user's environment, not ours

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")
sys.path.insert(0, str(HERE))
from machine import cpu_model, memory_bandwidth, run_worker as run_worker_json  # noqa: E402

WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # as runtime.WAIT_VARS


REGION = """
import sys, time
if sys.argv[1] == "default":
    sys.path.insert(0, sys.argv[2])
    import qwen35  # noqa: F401 - runtime.py's environment, before torch loads libgomp
import torch
torch.set_num_threads(2)
x = torch.ones(1 << 17)  # above the parallel grain size: each add_ is one 2-thread OpenMP region
for _ in range(200): x.add_(1)
ts = []
for _ in range(7):
    t0 = time.perf_counter()
    for _ in range(2000): x.add_(1)
    ts.append((time.perf_counter() - t0) / 2000)
print(sorted(ts)[3] * 1e6)
"""


def region_cost_us(policy: str) -> float:
    """Time of one small 2-thread parallel region (fork, a 0.5 MB add, join) under a policy's environment."""
    out = subprocess.run([sys.executable, "-c", REGION, policy, SRC], env=policy_env(policy), capture_output=True,
                         text=True, check=True)
    return float(out.stdout)


def policy_env(policy: str) -> dict:
    """The user's environment; for `old`, without any wait-policy variable (libgomp's default, what offline
    use gets); for `default`, the policy `qwen35 serve` sets (runtime.configure_env)."""
    env = dict(USER_ENV)
    if policy == "old":
        for v in WAIT_VARS:
            env.pop(v, None)
    else:
        sys.path.insert(0, SRC)
        from qwen35 import runtime

        runtime.configure_env(env)
    return env


# ---- worker (one policy, one process) ------------------------------------------------------------------------

def worker(args) -> None:
    if args.policy == "old":
        import torch  # noqa: F401 - loads libgomp before qwen35 can set the wait policy
    sys.path.insert(0, SRC)
    from qwen35 import LLM, SamplingParams, runtime

    import torch

    llm = LLM(args.model, dtype=args.dtype, max_model_len=4096, max_num_seqs=1, kv_cache_memory=256 << 20,
              threads=2 if args.policy == "old" else None)
    info = runtime.runtime_info()
    default_threads = torch.get_num_threads()
    eng = llm.engine
    prompt = list(range(1000, 1032))
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    params = SamplingParams(temperature=0, max_tokens=100_000, ignore_eos=True)

    def decode(seconds: float) -> float:
        eng.add_request("bench", prompt, params)
        eng.step()  # prefill
        eng.step()
        n, t0 = 0, time.perf_counter()
        while (time.perf_counter() - t0 < seconds or n < 3) and eng.has_unfinished():  # a small model can
            eng.step()  # reach max_model_len within the phase: its steps after that would decode nothing
            n += 1
        dt = time.perf_counter() - t0
        eng.abort("bench")
        while eng.has_unfinished():
            eng.step()
        return n / dt

    rows = []
    for hogs in args.hogs:
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            time.sleep(0.5)
            for t in args.threads or [default_threads]:
                torch.set_num_threads(t)
                rows.append({"hogs": hogs, "threads": t, "tok_s": decode(args.seconds)})
        finally:
            for p in procs:
                p.kill()
                p.wait()
    print(json.dumps({"policy": args.policy, "default_threads": default_threads, "runtime": info, "rows": rows}))


# ---- driver --------------------------------------------------------------------------------------------------

def run_worker(args, policy: str) -> dict:
    env = policy_env(policy)
    cmd = [sys.executable, __file__, "--worker", policy, "--model", str(args.model), "--dtype", args.dtype,
           "--hogs", ",".join(map(str, args.hogs)), "--seconds", str(args.seconds)]
    if args.threads:
        cmd += ["--threads", ",".join(map(str, args.threads))]
    return run_worker_json(cmd, env, f"worker {policy}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model")
    p.add_argument("--preset", default="dense-0.8b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--hogs", default="0,1,2", help="numbers of competing busy processes, one phase each")
    p.add_argument("--threads", default="1,2", help="torch thread counts to try in each phase ('' = default)")
    p.add_argument("--seconds", type=float, default=5.0, help="decode time per phase")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--worker", choices=["old", "default"], help=argparse.SUPPRESS)
    args = p.parse_args()
    args.hogs = [int(h) for h in args.hogs.split(",")]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    if args.worker:
        args.policy = args.worker
        return worker(args)

    sys.path.insert(0, str(HERE))
    from bench_model import checkpoint

    args.model = checkpoint(args)
    cores = len(os.sched_getaffinity(0))
    print(f"CPU: {cpu_model()}, {cores} cores available; load average {os.getloadavg()[0]:.2f}")
    print(f"memory bandwidth (1 GiB fp32 sum): {memory_bandwidth():.1f} GB/s")
    regions = {pol: statistics.median(region_cost_us(pol) for _ in range(3)) for pol in ("old", "default")}
    print("one 2-thread parallel region (fork, small add, join): "
          + ", ".join(f"{pol} {us:.1f} us" for pol, us in regions.items()))
    results: dict[tuple, list[float]] = {}
    meta = {}
    for rep in range(args.reps):
        for policy in (["old", "default"] if rep % 2 == 0 else ["default", "old"]):
            r = run_worker(args, policy)
            meta[policy] = {"default_threads": r["default_threads"], **r["runtime"]}
            for row in r["rows"]:
                results.setdefault((policy, row["threads"], row["hogs"]), []).append(row["tok_s"])
            print(f"  rep {rep} {policy}: " + ", ".join(f"t{row['threads']}/h{row['hogs']} {row['tok_s']:.2f}"
                                                       for row in r["rows"]), flush=True)
    for policy, m in meta.items():
        wait = m["wait_policy"] if m["wait_policy_applied"] else "libgomp's default (ours came after torch loaded)"
        print(f"{policy}: threads by default {m['default_threads']}, wait policy {wait}, "
              f"denormals flushed: {m['denormals_flushed']}")
    print(f"{'policy':8} {'threads':>7} {'hogs':>4} {'tok/s':>7} {'vs idle':>7}")
    table = []
    for (policy, threads, hogs), vals in sorted(results.items()):
        med = statistics.median(vals)
        idle = statistics.median(results.get((policy, threads, 0), [float("nan")]))
        table.append({"policy": policy, "threads": threads, "hogs": hogs, "tok_s": round(med, 3),
                      "vs_idle": round(med / idle, 3), "runs": [round(v, 3) for v in vals]})
        print(f"{policy:8} {threads:7d} {hogs:4d} {med:7.2f} {med / idle:7.2f}")
    print(json.dumps({"bench": "shared_cpu", "cpu": cpu_model(), "cores": cores, "model": str(args.model),
                      "seconds": args.seconds, "reps": args.reps, "policies": meta,
                      "region_us": {k: round(v, 1) for k, v in regions.items()}, "rows": table}))


if __name__ == "__main__":
    main()
