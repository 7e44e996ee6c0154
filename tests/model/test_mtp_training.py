"""The MTP head trains through the model's own code (bench/train_mtp.py): on a fresh cache, one sequence from
position 0, gradients reach every `mtp.*` parameter through `draft`; frozen norms keep their cached scale."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from qwen35.config import preset
from qwen35.model import ForwardBatch, SeqSpec
from qwen35.model.norm import RMSNorm
from qwen35.model.qwen35 import Qwen35ForCausalLM


def test_draft_gradients_reach_every_mtp_parameter_and_nothing_else():
    cfg = dataclasses.replace(preset("tiny").text, vocab_size=512)
    torch.manual_seed(0)
    model = Qwen35ForCausalLM(cfg, mtp=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    for p in model.model.parameters():  # the main stack, embedding and (tied) lm_head stay frozen
        p.requires_grad_(False)
    tokens = torch.randint(0, 512, (20,))
    with torch.no_grad():
        h = model(ForwardBatch.build([SeqSpec(tokens.tolist(), 0, 0, [0, 1])], 16), model.new_cache(2, 16, 1))
    batch = ForwardBatch.build([SeqSpec(tokens[1:].tolist(), 0, 0, [0, 1])], 16)
    assert batch.fresh_single
    d1 = model.draft(tokens[1:], h[:-1], batch, model.new_cache(2, 16, 1))
    d2 = model.draft(tokens[2:], d1[:-1], ForwardBatch.build([SeqSpec(tokens[2:].tolist(), 0, 0, [0, 1])], 16),
                     model.new_cache(2, 16, 1), step=1)
    loss = F.cross_entropy(model.logits(d1[:-1]), tokens[2:]) + F.cross_entropy(model.logits(d2[:-1]), tokens[3:])
    loss.backward()
    no_grad = [n for n, p in model.mtp.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient for {no_grad}"
    assert all(p.grad is None for p in model.model.parameters())


def test_norm_scale_is_cached_only_for_frozen_weights():
    norm = RMSNorm(8, 1e-6)
    x = torch.randn(3, 8)
    norm.weight.requires_grad_(False)
    norm(x)
    assert norm._scale is not None and norm._scale[0] is norm.weight  # inference: 1 + w computed once
    norm.weight.requires_grad_(True)
    with torch.no_grad():
        norm.weight.add_(0.5)  # an optimiser's in-place step
    y = norm(x)
    torch.testing.assert_close(y, F.rms_norm(x, (8,), 1.0 + norm.weight.detach(), 1e-6))
    y.sum().backward()
    assert norm.weight.grad is not None
