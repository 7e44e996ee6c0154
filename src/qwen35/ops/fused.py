"""Fused decode kernels (csrc/fused.cpp): the per-token small work of a layer in one C++ call.

A decode step of a small model otherwise spends a fifth of its time in ~2,000 tiny torch ops (gates, the
conv step, l2norm, the recurrent update, norms). Layers ask `lib_for(x)` whether the fused kernels apply to
their activations: CPU, bf16, no autograd, the native build loaded, and `ENABLED` (`QWEN35_FUSED=0` turns them off, for
A/B measurements). The torch path stays the reference and the fallback (no build, CUDA, fp32 models).
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
