"""Decode-shaped matmuls against the machine's read bandwidth: our C++ kernels beside torch's.

    .venv/bin/python bench/bench_kernels.py [--threads 2] [--rows 1,2,4,8,16,32] [--gbytes 1.0] [--rounds 5]

For each weight shape of dense-0.8b (and the lm_head) it cycles through copies of the weight totalling
`--gbytes` (far beyond the caches, so every call streams from memory as in a decode step) and prints the
weight bytes read per second for: ours (bf16, and for one row bf16 in order, int8, int4), `torch.mv` (one
row), `F.linear` on the plain weight, and oneDNN's packed layout (where it can pack bf16). Each round times
every candidate once, in turn, and a candidate's figure is its median over `--rounds`: a host whose memory
speed drifts within a minute (the AMD EPYCs of docs/LOG.md) then drifts for all of them alike. The fraction
of the measured bandwidth is what issue 10 asks for (>= 0.85 for bf16). Prints the CPU model and bandwidth
first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model, memory_bandwidth  # noqa: E402

SHAPES = {"gdn_in_proj": (8224, 1024), "mlp_gate_up": (7168, 1024), "mlp_down": (1024, 3584),
          "out_proj": (1024, 2048), "lm_head": (248320, 1024)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default="1,2,4,8,16,32")
    p.add_argument("--gbytes", type=float, default=1.0, help="bf16 weight bytes cycled per measurement")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--rounds", type=int, default=5, help="timings per candidate (the median is kept)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from qwen35.ops import native, quant
    from qwen35.ops.linear import prepack

    bw = memory_bandwidth()
    machine = {"cpu": cpu_model(), "threads": args.threads, "bandwidth_gb_s": round(bw, 1)}
    print(json.dumps(machine), flush=True)
    lib = native.ops()
    if lib is None:
        sys.exit("native kernels unavailable: build them with `python -m qwen35.ops.native`")
    quant.choose_int4_isa()  # as the loader does: the int4 path this CPU reads fastest
    print(f"kernels: {native.isa()}, int4 {lib.int4_isa()}", flush=True)
    results = {}
    for name in args.shapes.split(","):
        N, K = SHAPES[name]
        copies = max(1, int(args.gbytes * 1e9 // (2 * N * K)))
        ws = [torch.randn(N, K).bfloat16() for _ in range(copies)]
        q8 = [quant.quantize_int8(w) for w in ws]
        q4 = [quant.quantize_int4(w) for w in ws]
        packed = [prepack(w) for w in ws]
        bytes_bf16, bytes_q8 = 2 * N * K * copies, (N * K + 4 * N) * copies
        bytes_q4 = (N * K // 2 + 2 * N * K // 32) * copies
        for rows in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(rows, K).bfloat16()
            cands = {
                "ours_bf16": (lambda: [lib.gemm_bf16(x, w) for w in ws], bytes_bf16),
                "ours_int8": (lambda: [lib.gemm_int8(x, q, s) for q, s in q8], bytes_q8),
                "ours_int4": (lambda: [lib.gemm_int4(x, q, s, None, 32) for q, s in q4], bytes_q4),
                "linear_bf16": (lambda: [F.linear(x, w) for w in ws], bytes_bf16),
            }
            if packed[0] is not None:  # oneDNN packs bf16 only where it has a bf16 path (not AVX2-only CPUs)
                cands["onednn_bf16"] = (lambda: [torch.ops.mkldnn._linear_pointwise(x, pk, None, "none", [], "")
                                                 for pk in packed], bytes_bf16)
            if rows == 1:
                cands["ours_bf16_in_order"] = (lambda: [lib.gemm_bf16(x, w, True) for w in ws], bytes_bf16)
                cands["mv_bf16"] = (lambda: [torch.mv(w, x[0]) for w in ws], bytes_bf16)
            seconds = {cand: [] for cand in cands}
            for fn, _ in cands.values():
                fn()  # warm-up (kernel choices, allocator)
            for _ in range(args.rounds):
                for cand, (fn, _) in cands.items():
                    t0 = time.perf_counter()
                    fn()
                    seconds[cand].append(time.perf_counter() - t0)
            row = {}
            for cand, (_, nbytes) in cands.items():
                gbs = nbytes / statistics.median(seconds[cand]) / 1e9
                row[cand] = {"gb_s": round(gbs, 1), "of_bandwidth": round(gbs / bw, 2)}
            results[f"{name} {N}x{K} rows={rows}"] = row
            print(f"{name:12s} {N}x{K} rows={rows:2d}  " +
                  "  ".join(f"{c}={v['gb_s']:5.1f}GB/s ({v['of_bandwidth']:.2f})" for c, v in row.items()),
                  flush=True)
        del ws, q8, q4, packed
    print(json.dumps({"machine": machine, "isa": native.isa(), "results": results}))


if __name__ == "__main__":
    main()
