"""The chunked gated delta rule (prefill) against the per-chunk form it replaced, on dense-0.8b's GDN shape.

    .venv/bin/python bench/bench_gdn.py [--threads 2] [--lens 256,1044,2048] [--heads 16] [--dim 128]
                                        [--chunk 64] [--repeats 5]

Times `chunked_gated_delta_rule` (S-independent terms batched over the chunks of a span, only the
recurrence in the loop) and `per_chunk_reference` (the previous implementation: every term computed chunk by
chunk, ~20 small ops per chunk) on the same fp32 inputs, B = 1, and prints best-of-`--repeats` milliseconds,
the ratio and the largest output difference. Prints the CPU model and bandwidth first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model, memory_bandwidth, timed  # noqa: E402

from qwen35.ops.gdn import _decay, chunked_gated_delta_rule, l2norm  # noqa: E402


def per_chunk_reference(q, k, v, g, beta, state, chunk: int = 64):
    """The chunked form before the batching (kept verbatim for comparison): one chunk at a time."""
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    out = torch.empty(B, T, H, dv, dtype=q.dtype, device=q.device)
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    S = state
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        n = end - start
        qc, kc, vc = (x[:, start:end].transpose(1, 2) for x in (q, k, v))  # [B, H, n, d]
        bc = beta[:, start:end].transpose(1, 2).unsqueeze(-1)  # [B, H, n, 1]
        G = g[:, start:end].transpose(1, 2).cumsum(-1)  # [B, H, n]
        decay = _decay((G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(upper[:n, :n], float("-inf")))
        k_beta = kc * bc
        kt = kc.transpose(-1, -2)
        A = (k_beta @ kt) * decay
        G_exp = _decay(G).unsqueeze(-1)
        rhs = torch.cat([vc * bc, k_beta * G_exp], -1)
        sol = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
        v_new = sol[..., :dv] - sol[..., dv:] @ S
        o = (qc * G_exp) @ S + ((qc @ kt) * decay) @ v_new
        out[:, start:end] = o.transpose(1, 2)
        G_last = G[..., -1:]
        S = S * _decay(G_last).unsqueeze(-1) + (kc * _decay(G_last - G).unsqueeze(-1)).transpose(-1, -2) @ v_new
    state.copy_(S)
    return out


def inputs(T: int, H: int, d: int, seed: int = 0):
    """Model-like inputs: l2-normalised q/k (q scaled by d^-1/2), decays e^-0.05..e^-2 per token."""
    gen = torch.Generator().manual_seed(seed)
    q = l2norm(torch.randn(1, T, H, d, generator=gen)) * d ** -0.5
    k = l2norm(torch.randn(1, T, H, d, generator=gen))
    v = torch.randn(1, T, H, d, generator=gen)
    g = -(0.05 + 1.95 * torch.rand(1, T, H, generator=gen))
    beta = torch.rand(1, T, H, generator=gen)
    s0 = torch.randn(1, H, d, d, generator=gen) * 0.1
    return q, k, v, g, beta, s0



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lens", default="256,1044,2048")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the engine's compute threads run (runtime.py)
    print(f"cpu: {cpu_model()}, {args.threads} threads, read bandwidth {memory_bandwidth():.1f} GB/s")
    rows = []
    for T in (int(x) for x in args.lens.split(",")):
        q, k, v, g, beta, s0 = inputs(T, args.heads, args.dim)
        s_old, s_new = s0.clone(), s0.clone()
        o_old = per_chunk_reference(q, k, v, g, beta, s_old, args.chunk)
        o_new = chunked_gated_delta_rule(q, k, v, g, beta, s_new, args.chunk)
        diff = max((o_old - o_new).abs().max().item(), (s_old - s_new).abs().max().item())
        t_old = timed(lambda: per_chunk_reference(q, k, v, g, beta, s0.clone(), args.chunk), args.repeats)
        t_new = timed(lambda: chunked_gated_delta_rule(q, k, v, g, beta, s0.clone(), args.chunk), args.repeats)
        rows.append({"T": T, "old_ms": round(t_old * 1e3, 2), "new_ms": round(t_new * 1e3, 2),
                     "speedup": round(t_old / t_new, 2), "max_abs_diff": diff})
        print(f"T={T:5d}  per-chunk {t_old * 1e3:8.2f} ms  batched {t_new * 1e3:8.2f} ms  "
              f"x{t_old / t_new:.2f}  max |diff| {diff:.1e}")
    print(json.dumps({"cpu": cpu_model(), "threads": args.threads, "heads": args.heads, "dim": args.dim,
                      "chunk": args.chunk, "rows": rows}))


if __name__ == "__main__":
    main()
