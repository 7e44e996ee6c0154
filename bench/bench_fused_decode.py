"""The fused decode kernels (`csrc/fused.cpp`) for one token on dense-0.8b's shapes, on every instruction set
this CPU runs (forced, as the tests do), beside the torch ops they replace.

    .venv/bin/python bench/bench_fused_decode.py [--threads 2] [--rows 1]

- `gdn_decode`: the whole GDN step (conv, SiLU, l2norm, gates, delta rule over a [16, 128, 128] fp32 state,
  gated RMSNorm), against the torch path of `GatedDeltaNet.forward` (conv step, l2norm, recurrent rule, norm);
- `silu_mul`: silu(gate) * up over the MLP's 3,584 columns, against `F.silu(gate) * up`;
- `rms_norm` over 1,024 values, against `x * rsqrt(mean(x^2) + eps) * w` in fp32;
- `argmax_rows` over a 248,320-token vocabulary of fp32 logits (greedy sampling), against `argmax(-1)`.

Prints the CPU model and measured bandwidth, then microseconds per call, best of several rounds; the last line
is one JSON object. Timings on a shared 2-core machine are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe, per_call  # noqa: E402

from qwen35.ops import native  # noqa: E402
from qwen35.ops.conv1d import causal_conv1d_step  # noqa: E402
from qwen35.ops.gdn import l2norm, recurrent_gated_delta_rule  # noqa: E402

ISAS = ["scalar", "avx2", "avx512_bf16"]
HK = HV = 16
DK = DV = 128
K, EPS = 4, 1e-6


def per_call_us(fn, calls: int = 200, rounds: int = 5) -> float:
    return per_call(fn, calls, rounds) * 1e6


def gdn_torch(mixed, z, b, a, conv_w, conv_state, state, neg_a, dt_bias, norm_w):
    """GatedDeltaNet.forward's torch decode step (state gathered and scattered by the caller there)."""
    B = mixed.shape[0]
    beta, g = torch.sigmoid(b.float()), neg_a * F.softplus(a.float() + dt_bias)
    y = causal_conv1d_step(mixed, conv_w, conv_state)
    q, k, v = y.split((HK * DK, HK * DK, HV * DV), -1)
    q = l2norm(q.view(B, 1, HK, DK)) * DK ** -0.5
    k = l2norm(k.view(B, 1, HK, DK))
    o = recurrent_gated_delta_rule(q, k, v.view(B, 1, HV, DV), g.unsqueeze(1), beta.unsqueeze(1), state)[:, 0]
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + EPS) * norm_w
    return (o * F.silu(z.float().view(B, HV, DV))).to(z.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1, help="sequences in the decode step")
    args = ap.parse_args()
    lib = native.ops()
    if lib is None:
        sys.exit("our native kernels are not built")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(describe(), flush=True)
    gen = torch.Generator().manual_seed(0)
    B, C = args.rows, 2 * HK * DK + HV * DV
    proj = torch.randn(B, C + HV * DV + 2 * HV, generator=gen).bfloat16()
    mixed, z, b, a = proj.split([C, HV * DV, HV, HV], -1)
    conv_w = torch.randn(C, K, generator=gen) * 0.3
    conv_pool = torch.randn(B, C, K - 1, generator=gen).bfloat16()
    ssm_pool = torch.randn(B, HV, DK, DV, generator=gen) * 0.1
    slots = torch.arange(B)
    neg_a, dt_bias, norm_w = -torch.rand(HV, generator=gen) * 4, torch.randn(HV, generator=gen), torch.ones(DV)
    gate_up = torch.randn(B, 2 * 3584, generator=gen).bfloat16()
    x, scale = torch.randn(B, 1024, generator=gen).bfloat16(), torch.ones(1024)
    logits = torch.randn(B, 248_320, generator=gen) * 3

    ours = {
        "gdn_decode": lambda: lib.gdn_decode(mixed, z, b, a, conv_w, conv_pool, ssm_pool, slots, neg_a, dt_bias,
                                             norm_w, EPS),
        "silu_mul": lambda: lib.silu_mul(gate_up),
        "rms_norm": lambda: lib.rms_norm(x, scale, EPS),
        "argmax": lambda: lib.argmax_rows(logits),
    }
    conv_state, state = conv_pool.clone(), ssm_pool.clone()
    gate, up = gate_up.chunk(2, -1)
    theirs = {
        "gdn_decode": lambda: gdn_torch(mixed, z, b, a, conv_w.view(C, 1, K), conv_state, state, neg_a, dt_bias,
                                        norm_w),
        "silu_mul": lambda: F.silu(gate) * up,
        "rms_norm": lambda: (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS) * scale
                             ).to(x.dtype),
        "argmax": lambda: logits.argmax(-1),
    }
    isas = ISAS[:ISAS.index(native.isa()) + 1]
    result = {"cpu": describe(), "rows": B, "us": {}}
    for name in ours:
        row = {"torch": per_call_us(theirs[name])}
        for isa in isas:
            native.force_isa(isa)
            row[isa] = per_call_us(ours[name])
        native.force_isa(None)
        result["us"][name] = {k: round(v, 1) for k, v in row.items()}
        best = row[isas[-1]]
        print(f"{name:10s} " + "  ".join(f"{k} {v:7.1f} us" for k, v in row.items())
              + f"  torch / ours ({isas[-1]}) {row['torch'] / best:.1f}x", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
