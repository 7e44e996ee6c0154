"""Prefill-shaped bf16 projections: `ops.linear` beside plain `F.linear` on the bf16 weight.

    .venv/bin/python bench/bench_prefill_linear.py [--threads 2] [--rows 64,512]

On a CPU with oneDNN's bf16 path (AVX512BW/VL/DQ or AVX-NE-CONVERT) both run the same bf16 GEMM (ratio ~1).
On an AVX2-only CPU torch has no bf16 GEMM and its fallback is slow, so `ops.linear` widens the operands to
fp32 there; the ratio is that path's speed-up. Prints the CPU model and bandwidth first; the last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, timed  # noqa: E402

SHAPES = {"gdn_in_proj": (8480, 1024), "mlp_gate_up": (7168, 1024), "mlp_down": (1024, 3584)}  # dense-0.8b


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default="64,512")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from qwen35.ops.linear import linear, onednn_bf16

    print(describe())
    print(f"oneDNN bf16 path: {onednn_bf16()}")
    results = {}
    for name, (out, inp) in SHAPES.items():
        w = (torch.randn(out, inp) * 0.02).bfloat16()
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, inp).bfloat16()
            plain = timed(lambda: F.linear(x, w))
            ours = timed(lambda: linear(x, w))
            results[f"{name}/{rows}"] = {"f_linear_ms": plain * 1e3, "ops_linear_ms": ours * 1e3,
                                         "speedup": plain / ours}
            print(f"{name:12s} {rows:4d} rows: F.linear {plain * 1e3:7.1f} ms, ops.linear {ours * 1e3:7.1f} ms, "
                  f"{plain / ours:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
