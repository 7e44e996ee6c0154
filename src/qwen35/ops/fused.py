"""Fused decode kernels (csrc/fused.cpp): the per-token small work of a layer in one C++ call.

A decode step of a small model otherwise spends a fifth of its time in ~2,000 tiny torch ops (gates, the
conv step, l2norm, the recurrent update, norms). The ops (`torch.ops.qwen35.*`):
- `gdn_decode(mixed, z, b, a, conv_w, conv_pool, ssm_pool, slots, neg_a, dt_bias, norm_w, eps) -> o`: a Gated
  DeltaNet decode step from the input projections to out_proj's input, state pools updated in place at `slots`
  (model/gated_deltanet.py; decode steps without snapshot slots);
- `rms_norm(x, scale, eps)`, `add_rms_norm(x, delta, scale, eps) -> (x + delta, norm)`: the zero-centred
  RMSNorm, `scale` = fp32 1 + w (model/norm.py, model/decoder.py; x: [N, D] or [N, H, D] with strided rows);
- `silu_mul(gate_up) -> silu(gate) * up` (model/mlp.py);
- `attn_prep(qkv, cos, sin, q_scale, k_scale, eps, k_cache, v_cache, slots, Hq, Hkv, D) -> (q, k)`: gated
  attention's q/k norms, partial rotary and K/V cache writes from the fused projection's output, the torch
  path's bits (model/attention.py: ~40 torch ops of a layer's decode step);
- `argmax_rows(x)`: each fp32 row's first index of its largest value (`argmax` below: greedy sampling,
  verification, drafts);
- `vision_rotary(qk, cos, sin)` and `bias_gelu_tanh_(h, b)`: the vision tower's rotary on q and k, and fc1's
  bias + tanh GELU in place (model/vision.py; csrc/vision.cpp).
The norms and silu_mul apply at every size (they measured faster for prefill rows too). Layers ask
`lib_for(x)` whether the fused kernels apply to their activations: CPU, bf16, no autograd, the native build
loaded, and `ENABLED` (`QWEN35_FUSED=0` turns them off, for A/B measurements). The torch path stays the
reference and the fallback (no build, CUDA, fp32 models).
"""

from __future__ import annotations

import os

import torch

from . import native

ENABLED = os.environ.get("QWEN35_FUSED", "1") != "0"


def lib_for(x: torch.Tensor):
    """`torch.ops.qwen35` when the fused decode kernels apply to activations `x`, else None."""
    if not ENABLED or x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.requires_grad:
        return None
    return native.ops()


def rows_ok(*xs: torch.Tensor) -> bool:
    """Every tensor has unit stride along its last dim, as the kernels read rows (a matmul may hand back a
    transposed layout)."""
    return all(x.stride(-1) == 1 or x.shape[-1] == 1 for x in xs)


def argmax(x: torch.Tensor) -> torch.Tensor:
    """`x.argmax(-1)` for logits x [B, V]: our kernel for contiguous fp32 rows on CPU (a 248k vocabulary: 0.03
    ms a row against torch's 0.25, which reduces a row without vectors), torch's elsewhere."""
    if (ENABLED and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and x.is_contiguous()
            and x.shape[1] > 0):
        lib = native.ops()
        if lib is not None:
            return lib.argmax_rows(x)
    return x.argmax(-1)
