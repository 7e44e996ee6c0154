"""`y = x W^T` without bias, choosing the fastest kernel for the weight's layout and the input's rows.

On CPU, `prepack` moves a bf16/fp32 weight to oneDNN's blocked layout once (at load): it streams about 1.5x
faster than `F.linear` for decode-sized inputs and is no slower for prefill. An unpacked CPU weight still takes
`torch.mv` for a single row, as fast as the packed one (so the tied lm_head can stay plain). Everything
else, including CUDA, is `F.linear`, which is also the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prepack(weight: torch.Tensor) -> torch.Tensor | None:
    """weight: [out, in] -> its oneDNN-packed copy, or None where packing does not apply (not CPU, other dtypes)."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float32):
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)


def linear(x: torch.Tensor, weight: torch.Tensor | None, packed: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., in]; weight: [out, in] (may be None when `packed`, from `prepack`, is given). Returns [..., out]."""
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    if x.dim() == 2 and x.shape[0] == 1 and weight.device.type == "cpu":
        return torch.mv(weight, x[0]).unsqueeze(0)
    return F.linear(x, weight)


def linear_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference: fp32 matmul, cast back to x's dtype."""
    return (x.float() @ weight.float().T).to(x.dtype)
