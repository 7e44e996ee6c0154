"""Layers declare their caches by cache id; the cache and the memory plan's byte costs come from those specs."""

from __future__ import annotations

import pytest
import torch

from qwen35.config import preset
from qwen35.model.cache import ModelCache, kv_bytes_per_token, state_bytes_per_slot
from qwen35.model.cache_spec import AttentionSpec, GDNStateSpec, cache_specs

CFG = preset("tiny").text  # 3 GDN layers, then 1 attention layer


def test_specs_follow_layer_types_and_mtp_comes_after_the_stack():
    specs = cache_specs(CFG, torch.bfloat16)
    assert list(specs) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert specs["layers.3"] == AttentionSpec(CFG.num_key_value_heads, CFG.head_dim, torch.bfloat16)
    gdn = specs["layers.0"]
    assert gdn == GDNStateSpec(CFG.linear_conv_dim, CFG.linear_conv_kernel_dim - 1, CFG.linear_num_value_heads,
                               CFG.linear_key_head_dim, CFG.linear_value_head_dim, torch.bfloat16)
    assert gdn.ssm_dtype == torch.float32
    with_mtp = cache_specs(CFG, torch.bfloat16, mtp_layers=1)
    assert list(with_mtp)[-1] == "mtp.0" and with_mtp["mtp.0"] == specs["layers.3"]
    with pytest.raises(ValueError, match="MTP layers"):
        cache_specs(CFG, torch.bfloat16, mtp_layers=2)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe", "dense-0.8b", "moe-397b-a17b"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_byte_costs_match_the_layer_shapes(name, dtype):
    cfg = preset(name).text
    item = dtype.itemsize
    kv = 2 * cfg.num_key_value_heads * cfg.head_dim * item
    assert kv_bytes_per_token(cfg, dtype) == len(cfg.attention_layers) * kv
    conv = cfg.linear_conv_dim * (cfg.linear_conv_kernel_dim - 1) * item
    ssm = cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
    assert state_bytes_per_slot(cfg, dtype) == len(cfg.linear_layers) * (conv + ssm)


def test_cache_is_built_from_specs_and_indexed_by_id_or_layer():
    specs = cache_specs(CFG, torch.float32, mtp_layers=1)
    cache = ModelCache(specs, num_blocks=3, block_size=4, num_slots=2)
    k, v = cache.kv(3)
    assert k.shape == (12, CFG.num_key_value_heads, CFG.head_dim) and cache.kv("layers.3")[0] is k
    assert cache.kv("mtp.0")[0].shape == k.shape and cache.kv("mtp.0")[0] is not k
    conv, ssm = cache.state(1)
    assert conv.shape == (2, CFG.linear_conv_dim, CFG.linear_conv_kernel_dim - 1) and conv.dtype == torch.float32
    assert ssm.shape == (2, CFG.linear_num_value_heads, CFG.linear_key_head_dim, CFG.linear_value_head_dim)
    assert len(cache.k) == 2 and len(cache.conv) == 3
    with pytest.raises(KeyError, match="no GDN state"):
        cache.state(3)
    with pytest.raises(KeyError, match="no attention"):
        cache.kv("layers.0")
    old = ModelCache(CFG, 3, 4, 2, torch.bfloat16)  # the config form
    assert old.kv(3)[0].dtype == torch.bfloat16 and old.state(0)[1].dtype == torch.float32


def test_restore_snapshots_copies_many_slots_at_once():
    cache = ModelCache(cache_specs(CFG, torch.float32), num_blocks=1, block_size=4, num_slots=5)
    for conv, ssm in zip(cache.conv, cache.ssm):
        conv.copy_(torch.arange(5.0).view(5, 1, 1).expand_as(conv))
        ssm.copy_(torch.arange(5.0).view(5, 1, 1, 1).expand_as(ssm))
    cache.restore_snapshots([3, 4], [0, 1])
    for conv, ssm in zip(cache.conv, cache.ssm):
        assert conv[:, 0, 0].tolist() == [3, 4, 2, 3, 4] and ssm[:, 0, 0, 0].tolist() == [3, 4, 2, 3, 4]
