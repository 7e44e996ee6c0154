"""Decode-step attention over the paged cache: our kernel (csrc/decode_attention.cpp, K/V read in place through
the block table) beside the general path it replaces for decode steps (gathered key tiles + PyTorch's CPU flash
kernel, `paged_attention_tiled`), on dense-0.8b's attention shapes (8 query heads, 2 K/V heads, head_dim 256).

    .venv/bin/python bench/bench_decode_attention.py [--threads 2] [--contexts 256,2048,8192] [--batches 1,8]

Blocks of 16 positions handed out in shuffled order, bf16 K/V. Prints the CPU model and measured bandwidth,
then per case microseconds a layer for each path, the K/V bytes a second each reads and the ratio; the last
line is one JSON object. Timings on a shared 2-core machine are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, per_call  # noqa: E402

from qwen35.ops.attention import paged_attention, paged_attention_tiled  # noqa: E402
from qwen35.ops.batch import ForwardBatch, SeqSpec  # noqa: E402

HQ, HKV, D, BS = 8, 2, 256, 16


def decode_case(ctx: int, batch: int, seed: int = 0):
    """q [B, HQ, D] and caches holding `ctx` cached keys + the new one per sequence, in shuffled blocks."""
    gen = torch.Generator().manual_seed(seed)
    need = -(-(ctx + 1) // BS)
    perm = torch.randperm(batch * need, generator=gen).tolist()
    k = torch.randn(batch * need * BS, HKV, D, generator=gen).bfloat16()
    v = torch.randn(batch * need * BS, HKV, D, generator=gen).bfloat16()
    seqs = [SeqSpec([1], ctx, i, perm[i * need:(i + 1) * need]) for i in range(batch)]
    fb = ForwardBatch.build(seqs, BS)
    return torch.randn(batch, HQ, D, generator=gen).bfloat16(), k, v, fb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--contexts", default="256,2048,8192")
    p.add_argument("--batches", default="1,8")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(describe(), flush=True)
    rows = []
    for ctx in map(int, args.contexts.split(",")):
        for batch in map(int, args.batches.split(",")):
            q, k, v, fb = decode_case(ctx, batch)
            scale = D ** -0.5
            tiles = per_call(lambda: paged_attention_tiled(q, k, v, fb, scale), calls=10, warmup=1)
            ours = per_call(lambda: paged_attention(q, None, None, k, v, fb, scale), calls=10, warmup=1)
            kv_bytes = 2 * batch * (ctx + 1) * HKV * D * 2
            row = {"context": ctx, "batch": batch, "tiles_us": tiles * 1e6, "kernel_us": ours * 1e6,
                   "tiles_gb_s": kv_bytes / tiles / 1e9, "kernel_gb_s": kv_bytes / ours / 1e9, "ratio": tiles / ours}
            rows.append(row)
            print(f"context {ctx:6d} batch {batch:2d}: tiles {row['tiles_us']:9.1f} us ({row['tiles_gb_s']:5.1f} GB/s)"
                  f"  kernel {row['kernel_us']:9.1f} us ({row['kernel_gb_s']:5.1f} GB/s)  {row['ratio']:.2f}x",
                  flush=True)
    print(json.dumps({"machine": describe(), "rows": rows}))


if __name__ == "__main__":
    main()
