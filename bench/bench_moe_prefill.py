"""Routed experts over a batch of tokens (a prefill chunk): our MoE kernel (`csrc/moe.cpp`) against the path
it replaces at that size, side by side in one run. bf16 stacks: torch's grouped GEMM (`torch._grouped_mm`, one
per projection); int8/int4 stacks: the loop over the routed experts with one `quant.matmul` each. Both are
checked to agree with our kernel before they are timed.

    .venv/bin/python bench/bench_moe_prefill.py [--tokens 64,256,512,1024,2048] [--formats bf16,int8,int4]

Random weights, 64 experts of intermediate 512 at hidden 2048, top-8 (a small Qwen3.5 MoE's shape, scaled
down). Prints the CPU model and measured bandwidth, then per format and token count both times and the ratio
(theirs / ours: above 1, our kernel is faster). ops/moe.py picks by these ratios (`native_max_tokens`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, timed  # noqa: E402

from qwen35.ops import moe, native, quant  # noqa: E402

EXPERTS, INTER, HIDDEN, TOP_K = 64, 512, 2048, 8


def stacks(fmt: str, gen: torch.Generator):
    gate_up = (torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=gen) * 0.02).bfloat16()
    down = (torch.randn(EXPERTS, HIDDEN, INTER, generator=gen) * 0.02).bfloat16()
    if fmt == "bf16":
        return gate_up, down

    def quantised(stack):
        parts = [quant.quantize(fmt, w) for w in stack]
        return tuple(None if parts[0][i] is None else torch.stack([p[i] for p in parts]) for i in range(3))

    return quantised(gate_up), quantised(down)


def ours(fmt, x, gate_up, down, w, ids):
    if fmt == "bf16":
        return native.ops().moe_experts(x, ids, w, gate_up, None, None, down, None, None, 0)
    group = quant.int4_group(gate_up[0], gate_up[1]) if fmt == "int4" else 0
    return native.ops().moe_experts(x, ids, w, *gate_up, *down, group)


def theirs(fmt, x, gate_up, down, w, ids):
    """ops/moe.py's path for this many tokens where our kernel is not used."""
    saved = moe.native_max_tokens
    moe.native_max_tokens = lambda quantised: 0
    try:
        if fmt == "bf16":
            return moe.experts(x, gate_up, down, w, ids)
        return moe.experts_quant(x, fmt, gate_up, down, w, ids)
    finally:
        moe.native_max_tokens = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="64,256,512,1024,2048")
    ap.add_argument("--formats", default="bf16,int8,int4")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if native.ops() is None:
        sys.exit("our native kernels are not built")
    torch.set_num_threads(args.threads)
    print(describe(), flush=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for fmt in args.formats.split(","):
        gate_up, down = stacks(fmt, gen)
        other = "grouped GEMM" if fmt == "bf16" else "expert loop"
        for n in map(int, args.tokens.split(",")):
            x = torch.randn(n, HIDDEN, generator=gen).bfloat16()
            w, ids = moe.route(torch.randn(n, EXPERTS, generator=gen), TOP_K)
            a, b = ours(fmt, x, gate_up, down, w, ids).float(), theirs(fmt, x, gate_up, down, w, ids).float()
            rel = float((a - b).abs().max() / b.abs().max())
            if rel > 0.05:
                sys.exit(f"{fmt}, {n} tokens: our kernel and the {other} disagree (max relative error {rel:.3f})")
            t_ours = timed(lambda: ours(fmt, x, gate_up, down, w, ids))
            t_theirs = timed(lambda: theirs(fmt, x, gate_up, down, w, ids))
            print(f"{fmt:5s} {n:5d} tokens: ours {t_ours * 1e3:8.1f} ms  {other} {t_theirs * 1e3:8.1f} ms  "
                  f"ratio {t_theirs / t_ours:5.2f}x", flush=True)
            rows.append({"format": fmt, "tokens": n, "ours_ms": round(t_ours * 1e3, 2),
                         "theirs_ms": round(t_theirs * 1e3, 2), "ratio": round(t_theirs / t_ours, 3)})
    print(json.dumps({"cpu": describe(), "rows": rows}))


if __name__ == "__main__":
    main()
