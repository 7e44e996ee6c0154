"""torch's AdamW with its step in one native call per parameter group (`csrc/adamw.cpp`), to the same bits.

Training's optimiser step over the demo model's ~120 tensors cost ~10 ms a step as torch's single-tensor loop
(~10 dispatched ops per tensor); the native call makes one pass over memory. The state (`step`, `exp_avg`,
`exp_avg_sq`) is torch's, so checkpoints load either way and a resumed run continues bit for bit. Anything
the native step does not cover (no build, amsgrad, maximize, a tensor lr, non-fp32 or non-CPU tensors,
non-contiguous gradients) runs torch's own step.
"""

from __future__ import annotations

import torch

from ..ops import native


class AdamW(torch.optim.AdamW):
    """`torch.optim.AdamW(params, ..., foreach=False)` whose `step` gives the same bits in one native call."""

    def __init__(self, params, **kwargs):
        super().__init__(params, foreach=False, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        lib = native.ops()
        if lib is None or not all(self._native_group(g) for g in self.param_groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, [], steps)
            if not params:
                continue
            torch._foreach_add_(steps, 1)
            counts = torch.stack(steps).tolist()
            for count in sorted(set(counts)):  # one call per distinct step count: normally a single one
                chosen = [i for i, c in enumerate(counts) if c == count]
                lib.adamw_step([params[i] for i in chosen], [grads[i] for i in chosen],
                               [exp_avgs[i] for i in chosen], [exp_avg_sqs[i] for i in chosen],
                               *_scalars(group, count))
        return loss

    @staticmethod
    def _native_group(group) -> bool:
        if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"] \
                or group["fused"] or not group["decoupled_weight_decay"] or torch.is_tensor(group["lr"]) \
                or any(torch.is_tensor(b) for b in group["betas"]):
            return False
        return all(p.grad is None or (not p.grad.is_sparse and p.dtype == p.grad.dtype == torch.float32
                                      and p.device.type == "cpu" and p.is_contiguous() and p.grad.is_contiguous())
                   for p in group["params"])


def _scalars(group, step: float) -> tuple[float, ...]:
    """(decay, w1, beta2, c2, bc2_sqrt, eps, neg_step) as torch's `_single_tensor_adam` computes them."""
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    decay = 1 - lr * wd if wd != 0 else 1.0
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    return decay, 1 - beta1, beta2, 1 - beta2, bias_correction2 ** 0.5, eps, -(lr / bias_correction1)
