"""Each rank loads exactly its slice of every tensor (parallel/sharding.py through the loader's partial
reads), for dense, width-split MoE, expert-parallel MoE and block-FP8 checkpoints. In process: loading
needs no collective, so a rank's share loads without its peers."""

from __future__ import annotations

import re

import pytest
import torch

from qwen35.config import ConfigError, ModelConfig
from qwen35.loading import checkpoint
from qwen35.loading.checkpoint import CheckpointError, load_model
from qwen35.loading.fp8 import quantize_checkpoint_fp8
from qwen35.model.linear import FP8Linear, dequantize_fp8
from qwen35.parallel.group import Group
from qwen35.parallel.sharding import Shard

_PREFIX = re.compile(r"^(model\.|mtp\.)?(layers\.\d+\.)?")


def _expected(full: torch.Tensor, shard: Shard, name: str) -> torch.Tensor:
    """`full` cut as the rank's share of tensor `name` (one of our parameter or buffer names)."""
    local = "lm_head.weight" if name == "lm_head.weight" else _PREFIX.sub("", name)
    part = shard.slice(local, tuple(full.shape))
    if part is None:
        return full
    pieces = [full.narrow(part.dim, a, b - a) for a, b in part.ranges]
    out = torch.cat(pieces, part.dim)
    pad = part.size - out.shape[part.dim]
    if pad:
        shape = list(out.shape)
        shape[part.dim] = pad
        out = torch.cat([out, out.new_zeros(shape)], part.dim)
    return out


def _tensors(model) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _check_ranks(ckpt, expert_parallel: bool = False, **load) -> None:
    cfg = ModelConfig.from_file(ckpt)
    full = _tensors(load_model(ckpt, mtp=True, prepack=False, fuse=False, progress=False, **load)[0])
    for rank in (0, 1):
        shard = Shard(cfg.text, Group(rank, 2), expert_parallel)
        model, _ = load_model(ckpt, mtp=True, prepack=False, fuse=False, progress=False, shard=shard, **load)
        mine = _tensors(model)
        assert set(mine) == set(full)
        for name, t in mine.items():
            if "inv_freq" in name or name.endswith("_scale_inv"):  # FP8 scales: checked by the shape below
                continue
            assert torch.equal(t, _expected(full[name], shard, name)), name
        held = sum(t.numel() * t.element_size() for t in mine.values())
        whole = sum(t.numel() * t.element_size() for t in full.values())
        assert 0.49 < held / whole < 0.56


@pytest.mark.parametrize("ckpt, ep", [("tiny_ckpt", False), ("tiny_moe_ckpt", False), ("tiny_moe_ckpt", True)])
def test_each_rank_loads_its_slice(ckpt, ep, request):
    _check_ranks(request.getfixturevalue(ckpt), expert_parallel=ep, dtype=torch.float32)


def test_large_pieces_are_read_on_their_own(tiny_moe_ckpt, monkeypatch):
    monkeypatch.setattr(checkpoint._Sliced, "PIECE", 1)  # every split takes the piece-by-piece reads
    _check_ranks(tiny_moe_ckpt, dtype=torch.float32)


def test_block_fp8_is_split_on_its_blocks(tiny_moe_ckpt, tmp_path):
    fp8 = quantize_checkpoint_fp8(tiny_moe_ckpt, tmp_path / "fp8", block=(16, 16))
    _check_ranks(fp8)
    cfg = ModelConfig.from_file(fp8)
    full = dict(load_model(fp8, prepack=False, fuse=False, progress=False)[0].named_modules())
    shard = Shard(cfg.text, Group(1, 2))
    model, _ = load_model(fp8, prepack=False, fuse=False, progress=False, shard=shard)
    fp8_layers = [(n, m) for n, m in model.named_modules() if isinstance(m, FP8Linear)]
    assert len(fp8_layers) > 10
    for name, m in fp8_layers:  # the rank's weight and scales give the slice of the whole weight
        whole = full[name]
        want = _expected(dequantize_fp8(whole.weight, whole.weight_scale_inv, whole.block, torch.float32), shard,
                         name + ".weight")
        assert torch.equal(dequantize_fp8(m.weight, m.weight_scale_inv, m.block, torch.float32), want), name


def test_fp8_blocks_across_the_split_are_refused(tiny_ckpt, tmp_path):
    fp8 = quantize_checkpoint_fp8(tiny_ckpt, tmp_path / "fp8", block=(128, 128))  # k_proj: 64 rows, 32 per rank
    cfg = ModelConfig.from_file(fp8)
    with pytest.raises(CheckpointError, match="FP8 blocks of 128"):
        load_model(fp8, progress=False, shard=Shard(cfg.text, Group(0, 2)))


def test_shapes_that_do_not_split(tiny_ckpt):
    text = ModelConfig.from_file(tiny_ckpt).text
    with pytest.raises(ConfigError, match="num_attention_heads=4 is not divisible by tensor_parallel_size=3"):
        Shard(text, Group(0, 3))


def test_fp8_splits_off_the_blocks_are_refused_before_loading():
    from dataclasses import replace

    from qwen35.config import QuantConfig, preset
    from qwen35.loading.checkpoint import check_fp8_split

    cfg = replace(preset("moe-35b-a3b"), quant=QuantConfig())
    check_fp8_split(cfg, Shard(cfg.text, Group(3, 4)))  # every split on 128-row blocks
    with pytest.raises(ConfigError, match="shared_expert.gate_proj.weight: the tensor-parallel split"):
        check_fp8_split(cfg, Shard(cfg.text, Group(0, 8)))  # the 512-row shared expert: 64 rows per rank


def test_router_of_a_split_model_is_the_same_on_every_rank(tiny_moe_ckpt):
    from qwen35.model.moe import Router

    cfg = ModelConfig.from_file(tiny_moe_ckpt)
    model, _ = load_model(tiny_moe_ckpt, progress=False, shard=Shard(cfg.text, Group(1, 2)))
    gate = model.model.layers[0].mlp.gate
    assert type(gate) is Router and gate.weight is not None  # never prepacked, never a timed kernel choice
