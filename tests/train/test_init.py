"""How a recipe draws its model (train/init.py): Gated DeltaNet's gate started open, its conv started as a copy
path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwen35.config import ConfigError
from qwen35.ops.conv1d import causal_conv1d_train
from qwen35.ops.gdn import l2norm
from qwen35.train.init import build_model
from qwen35.train.loop import train
from qwen35.train.recipe import recipe


def test_open_gate_starts_gated_deltanet_passing_what_it_reads():
    """With `gdn_gate`, the first Gated DeltaNet's output gate z starts near the level for every token (drawn
    like the other projections it is noise around 0 at a small width), and the embeddings' shared direction
    shifts all logits of a hidden state alike, so the tied head's softmax is unchanged."""
    cfg = recipe("smoke").text_config(300)
    plain, opened = build_model(cfg, seed=3), build_model(cfg, seed=3, gdn_gate=2.0)

    def gate_input(model):  # z of the first Gated DeltaNet for every token id
        layer = model.model.layers[0]
        with torch.no_grad():
            return layer.linear_attn.in_proj_z(layer.input_layernorm(model.model.embed_tokens(torch.arange(300))))

    assert gate_input(plain).mean().abs() < 0.3
    z = gate_input(opened)
    assert 1.5 < z.mean() < 2.5 and (z > 0.5).float().mean() > 0.95
    h = torch.randn(4, cfg.hidden_size)
    logits = lambda m: torch.log_softmax(h @ m.model.embed_tokens.weight.T, -1)  # noqa: E731
    assert (logits(opened) - logits(plain)).abs().max() < 1e-4


def test_copy_conv_keys_each_token_by_the_tokens_before_it():
    """With `copy_conv`, every Gated DeltaNet's key at position t is its query at t-1 (l2-normalised: cosine 1 for
    the same tokens), so the delta rule stores each token under the token (or two) before it, and a query at a
    repeat reads what followed the earlier occurrence; values are the current token's. Keyed by two tokens, a
    repeat of one token after another predecessor no longer matches. Without it, keys and queries are
    unrelated."""
    cfg = recipe("smoke").text_config(300)
    ids = torch.tensor([5, 17, 99, 5, 17, 42, 8, 99, 123])  # 99 at 2 (after 17) and 7 (after 8)
    for copy_conv in (1, 2, 0):
        model = build_model(cfg, seed=3, gdn_gate=2.0, copy_conv=copy_conv)
        for layer in model.model.layers:
            if not hasattr(layer, "linear_attn"):
                continue
            gdn = layer.linear_attn
            with torch.no_grad():
                h = layer.input_layernorm(model.model.embed_tokens(ids))
                mixed = gdn.in_proj_qkv(h).unsqueeze(0)
                state = torch.zeros(1, mixed.shape[-1], gdn.conv1d.weight.shape[-1] - 1)
                out, _ = causal_conv1d_train(mixed, torch.tensor([len(ids)]), gdn.conv1d.weight, state)
            q, k, v = (l2norm(x.view(len(ids), gdn.hk, -1)) for x in out[0].split(gdn.split, -1))
            cos = (q[:-1] * k[1:]).sum(-1)  # query at t-1 against key at t
            if copy_conv:
                assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
                one_token = (q[7] * k[3]).sum(-1)  # the query at the second 99 against the key after the first
                assert (one_token > 0.9999).all() if copy_conv == 1 else (one_token < 0.99).all()
                assert torch.allclose(v, l2norm(F.silu(gdn.in_proj_qkv(h)).split(gdn.split, -1)[2]
                                                .view(len(ids), gdn.hv, -1)), atol=1e-5)
            else:
                assert cos.abs().mean() < 0.5


def test_copy_conv_other_than_one_or_two_tokens_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="copy_conv"):
        train(recipe("smoke").replace(copy_conv=3), tmp_path / "out")
    assert not (tmp_path / "out").exists()
