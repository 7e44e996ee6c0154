"""Decode time per token through `qwen35 serve` by torch thread count, for one model (default: the embedded
demo model).

    .venv/bin/python bench/bench_serve_threads.py [--model DIR] [--threads default,1,2] [--tokens 256] [--reps 5]

For each setting it starts `qwen35 serve` as a user would (its OpenMP wait policy, the engine in its own
process; `default` passes no `--threads`, so the engine's own choice applies: one thread for a model under
`runtime.SMALL_MODEL_PARAMS`), sends one chat at a time with `ignore_eos`, and takes the best of `--reps` for
`--tokens` and for 16 new tokens: their difference over the token difference is the time of one decode step,
HTTP, prompt and start-up costs cancelled. The settings run in the order given, then once more in reverse, and
each reports its better run (this host's timings drift by tens of percent). Prints the CPU model and measured
bandwidth, ms per token and the ratio to the first setting, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402

from qwen35.parallel.launch import free_port  # noqa: E402

QWEN35 = str(Path(sys.executable).parent / "qwen35")
MESSAGES = [{"role": "user", "content": "What is 23 + 19?"}]


def ms_per_token(model: str | None, threads: str, tokens: int, reps: int) -> float:
    port = free_port()
    cmd = [QWEN35, "serve", "--port", str(port), *([model] if model else []),
           *([] if threads == "default" else ["--threads", threads])]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 120
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"{' '.join(cmd)} exited with {server.returncode}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{' '.join(cmd)}: not ready after 120 s")
                time.sleep(0.1)

            def best(n: int) -> float:
                body = {"messages": MESSAGES, "max_tokens": n, "ignore_eos": True, "temperature": 0}
                client.post("/v1/chat/completions", json=body).raise_for_status()  # warm-up
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    client.post("/v1/chat/completions", json=body).raise_for_status()
                    times.append(time.perf_counter() - t0)
                return min(times)

            return (best(tokens) - best(16)) / (tokens - 16) * 1e3
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a checkpoint directory (default: the embedded demo model)")
    ap.add_argument("--threads", default="default,1,2", help="settings: default (no --threads) or a count")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    machine = describe()
    print(f"machine: {machine}", flush=True)
    settings = args.threads.split(",")
    runs: dict[str, list[float]] = {s: [] for s in settings}
    for s in settings + settings[::-1]:
        runs[s].append(ms_per_token(args.model, s, args.tokens, args.reps))
        print(f"  threads={s}: {runs[s][-1]:.2f} ms/token", flush=True)
    first = min(runs[settings[0]])
    for s in settings:
        print(f"threads={s:8s} {min(runs[s]):7.2f} ms/token  {min(runs[s]) / first:5.2f}x the first")
    print(json.dumps({"bench": "serve_threads", "machine": machine, "model": args.model or "embedded demo",
                      "ms_per_token": {s: min(v) for s, v in runs.items()}, "runs": runs}))


if __name__ == "__main__":
    main()
