"""How a recipe draws the model it trains: the weights as `qwen35 init` draws them, then two optional changes
to Gated DeltaNet that let a model this small learn from the first steps (docs/DEMO.md, Training)."""

from __future__ import annotations

import torch

from ..config import TextConfig
from ..loading.writer import init_kind, random_tensor
from ..model.gated_deltanet import GatedDeltaNet
from ..model.qwen35 import Qwen35ForCausalLM


def build_model(config: TextConfig, seed: int, gdn_gate: float | None = None,
                copy_conv: int = 0) -> Qwen35ForCausalLM:
    """An fp32 model of this shape (a recipe's `text_config`), initialised as `qwen35 init` draws weights,
    trainable; with `gdn_gate`, Gated DeltaNet's output gate then starts open at that level (`open_gate`); with
    `copy_conv` 1 or 2, its conv starts as a copy path keyed by that many tokens (`copy_conv_init`)."""
    model = Qwen35ForCausalLM(config, mtp=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(random_tensor(tuple(p.shape), init_kind(name, tuple(p.shape)), gen))
        if gdn_gate is not None:
            open_gate(model, gdn_gate, gen)
        if copy_conv:
            copy_conv_init(model, copy_conv)
    return model.train()


def open_gate(model: Qwen35ForCausalLM, level: float, gen: torch.Generator) -> None:
    """Start every Gated DeltaNet's output gate open, z ~ `level` for every token (docs/LOG.md, 2026-12-04 late).

    The gate's projection has no bias, so drawn like the others (std 0.02) at a width of 160 it gives z with a
    std of 0.25: silu(z) ~ z / 2 multiplies what the layer read out by noise around 0, and nothing reaches the
    residual stream until the gate is learnt (the real model's width of 4096 makes z 16x larger, so its gate
    starts half open). Here every embedding row gets one shared direction u as long as its own random part, a
    shift of all logits alike under tied embeddings that the softmax ignores, and each gate projection reads
    u into every channel."""
    emb = model.model.embed_tokens.weight
    u = torch.randn(emb.shape[1], generator=gen)
    u /= u.norm()
    size = emb.norm(dim=1).mean()
    emb += size * u
    along = size / emb.pow(2).mean(1).sqrt().mean()  # u's coordinate after the layers' RMSNorm
    for m in model.modules():
        if isinstance(m, GatedDeltaNet):
            m.in_proj_z.weight += (level / along) * u


SECOND_TAP = 0.5  # with keys of two tokens: the weight of the one further back


def copy_conv_init(model: Qwen35ForCausalLM, tokens: int = 1) -> None:
    """Start every Gated DeltaNet as an associative memory of "which token followed this one" (`tokens` 1) or
    "which token followed these two" (`tokens` 2).

    Its causal conv (kernel 4) starts as a pure shift: the key channels take the previous token's projection
    (tap K-2 = 1), the query and value channels the current one's (tap K-1 = 1), the other taps 0; and the key
    rows of `in_proj_qkv` start equal to the query rows. The delta rule then writes value x_t under key x_{t-1}
    at every step, and the query at a later x_t (l2-normalised, so a repeat matches with cosine 1) reads back
    what followed its earlier occurrence: the induction that copying a name or a path from the context needs,
    there from step 0 instead of found by gradient descent after a plateau whose length rounding decides (the
    drawn conv: loss at guessing for 450 steps on one CPU, 1,000 and more on two others). Training moves all of
    it from there. Not in the demo recipe: its drills' loss fell under 0.1 by step ~400 on every seed tried, but
    the model kept leaning on a memory keyed by one token, which loses its place where tokens repeat (digits,
    a path's "/tmp_"): it copied long strings worse and scored below the shipped demo (docs/LOG.md, 2026-12-08).
    With `tokens` 2 the query also takes the previous token (tap K-2 = `SECOND_TAP`) and the key the one before
    that (tap K-3): a key then matches where the last two tokens do, which one token of ten digits cannot."""
    if tokens not in (1, 2):
        raise ValueError(f"copy_conv keys a token by 1 or 2 tokens before it, got {tokens}")
    for m in model.modules():
        if isinstance(m, GatedDeltaNet):
            kd = m.split[0]
            w = m.conv1d.weight  # [channels: q | k | v, 1, K]
            w.zero_()
            w[:, 0, -1] = 1.0
            w[kd:2 * kd, 0, -1] = 0.0
            w[kd:2 * kd, 0, -2] = 1.0
            if tokens == 2:
                w[:kd, 0, -2] = SECOND_TAP
                w[kd:2 * kd, 0, -3] = SECOND_TAP
            qkv = m.in_proj_qkv.weight
            qkv[kd:2 * kd] = qkv[:kd]
