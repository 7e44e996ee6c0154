"""GPTQ / AWQ 4-bit checkpoints (loading/gptq.py): we write their packed tensors ourselves from known int4
values (the packers below follow AutoGPTQ's and AutoAWQ's layouts word by word, independent of the loader's
vectorised unpacking), load them, and compare the dequantised weights exactly."""

from __future__ import annotations

import pytest
import torch

from qwen35.config import ConfigError
from qwen35.loading import names
from qwen35.loading.checkpoint import CheckpointError, load_model
from qwen35.model.linear import Linear, QuantLinear
from qwen35.model.moe import QuantExperts
from qwen35.ops import quant
from tests.model.helpers import all_logits

from .util import all_headers, copy_ckpt, edit_config, edit_shard, random_prompts

G = 32  # the tiny presets' K is 64 (hidden) or 32..128: a group that divides them all
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _int32(t: torch.Tensor) -> torch.Tensor:
    """int64 holding unsigned 32-bit words -> int32 with the same bits."""
    return torch.where(t >= 2**31, t - 2**32, t).to(torch.int32)


def pack_gptq(u: torch.Tensor, z: torch.Tensor, s: torch.Tensor, v1: bool = True) -> dict[str, torch.Tensor]:
    """u [N, K] in 0..15, z [N, K/G] zeros, s [N, K/G] fp16 -> GPTQ qweight [K/8, N], qzeros [K/G, N/8] (v1:
    zero - 1), scales [K/G, N], g_idx [K]."""
    N, K = u.shape
    qweight = torch.zeros(K // 8, N, dtype=torch.int64)
    for i in range(K // 8):
        for j in range(8):
            qweight[i] |= u[:, 8 * i + j].long() << (4 * j)
    zs = (z.long() - (1 if v1 else 0)).T  # [K/G, N]
    qzeros = torch.zeros(K // G, N // 8, dtype=torch.int64)
    for c in range(N // 8):
        for j in range(8):
            qzeros[:, c] |= zs[:, 8 * c + j] << (4 * j)
    return {"qweight": _int32(qweight), "qzeros": _int32(qzeros), "scales": s.T.contiguous(),
            "g_idx": (torch.arange(K) // G).to(torch.int32)}


def pack_awq(u: torch.Tensor, z: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """AutoAWQ GEMM: qweight [K, N/8] and qzeros [K/G, N/8], nibble j of column c = output 8c + AWQ_ORDER[j]."""
    uT, zT = u.T.long(), z.T.long()
    N = u.shape[0]
    qweight = torch.zeros(uT.shape[0], N // 8, dtype=torch.int64)
    qzeros = torch.zeros(zT.shape[0], N // 8, dtype=torch.int64)
    for c in range(N // 8):
        for j in range(8):
            qweight[:, c] |= uT[:, 8 * c + AWQ_ORDER[j]] << (4 * j)
            qzeros[:, c] |= zT[:, 8 * c + AWQ_ORDER[j]] << (4 * j)
    return {"qweight": _int32(qweight), "qzeros": _int32(qzeros), "scales": s.T.contiguous()}


def known_int4(N: int, K: int, gen: torch.Generator, sym: bool) -> tuple[torch.Tensor, ...]:
    u = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    z = torch.full((N, K // G), 8, dtype=torch.uint8) if sym else \
        torch.randint(1, 16, (N, K // G), generator=gen, dtype=torch.uint8)  # v1 cannot store a zero of 0
    s = (torch.rand(N, K // G, generator=gen) * 0.02 + 0.005).half()
    w = (u.float() - z.float().repeat_interleave(G, 1)) * s.float().repeat_interleave(G, 1)
    return u, z, s, w


def convert(path, method: str, sym: bool, experts: bool = False, v1: bool = True, seed: int = 0):
    """Rewrite checkpoint `path` in place: every names.QUANTISED projection of the text layers (and, with
    `experts`, the routed experts, split per expert) becomes `method` tensors. Returns {checkpoint stem: W}."""
    gen = torch.Generator().manual_seed(seed)
    truth: dict[str, torch.Tensor] = {}
    for key, (_, shape) in sorted(all_headers(path).items()):
        n = names.parse(key)
        if n is None or n.component != "text" or n.layer is None:
            continue
        local = n.local.removesuffix(".weight")
        if n.local.endswith(".weight") and local in names.QUANTISED:
            parts = {local: shape}
        elif experts and n.local in names.FUSED_EXPERTS:
            E = shape[0]
            if n.local == names.FUSED_EXPERTS[0]:
                inter = shape[1] // 2
                parts = {f"mlp.experts.{e}.{p}": (inter, shape[2]) for e in range(E) for p in ("gate_proj", "up_proj")}
            else:
                parts = {f"mlp.experts.{e}.down_proj": shape[1:] for e in range(E)}
        else:
            continue
        stem0 = f"{n.prefix}layers.{n.layer}."
        new: dict[str, torch.Tensor] = {}
        for local_name, (N, K) in parts.items():
            u, z, s, w = known_int4(N, K, gen, sym)
            packed = pack_gptq(u, z, s, v1) if method == "gptq" else pack_awq(u, z, s)
            truth[stem0 + local_name] = w
            new.update({f"{stem0}{local_name}.{p}": t for p, t in packed.items()})

        def edit(tensors, key=key, new=new):
            del tensors[key]
            tensors.update(new)
        edit_shard(path, key, edit)
    qc = {"quant_method": method, "bits": 4, "group_size": G}
    qc.update({"sym": sym, "desc_act": False, "checkpoint_format": "gptq" if v1 else "gptq_v2"} if method == "gptq"
              else {"zero_point": not sym, "version": "gemm"})
    edit_config(path, lambda c: c.update(quantization_config=qc))
    return truth


def _module(model, stem: str):
    n = names.parse(stem + ".weight")
    return model.get_submodule(f"model.layers.{n.layer}.{n.local.removesuffix('.weight')}")


@pytest.mark.parametrize("method,sym", [("gptq", True), ("gptq", False), ("awq", False)])
def test_dense_weights_exact(dense_ckpt, tmp_path, method, sym):
    path = copy_ckpt(dense_ckpt, tmp_path / "q")
    truth = convert(path, method, sym)
    model, cfg = load_model(path, progress=False)
    assert cfg.quant.method == method
    for stem, w in truth.items():
        m = _module(model, stem)
        assert isinstance(m, QuantLinear) and m.fmt == "int4" and m.group == G, stem
        assert (m.zeros is None) == sym, stem  # symmetric: every zero is 8, the kernels' default
        assert torch.equal(m.dequantized(torch.float32), w), stem
    # the projections left plain in the checkpoint (in_proj_a/b, norms, ...) load as before
    assert type(model.model.layers[0].linear_attn.in_proj_a) is Linear


def test_gptq_v2_zeros_are_stored_as_is(dense_ckpt, tmp_path):
    path = copy_ckpt(dense_ckpt, tmp_path / "q")
    truth = convert(path, "gptq", sym=False, v1=False)
    model, _ = load_model(path, progress=False)
    stem, w = next(iter(truth.items()))
    assert torch.equal(_module(model, stem).dequantized(torch.float32), w)


def test_logits_match_a_bf16_checkpoint_of_the_same_weights(dense_ckpt, tmp_path):
    """The GPTQ model computes what a bf16 checkpoint holding its dequantised weights computes."""
    q_path = copy_ckpt(dense_ckpt, tmp_path / "q")
    truth = convert(q_path, "gptq", sym=False)
    ref_path = copy_ckpt(dense_ckpt, tmp_path / "ref")
    for stem, w in truth.items():
        edit_shard(ref_path, stem + ".weight", lambda t, k=stem + ".weight", w=w: t.update({k: w.bfloat16()}))
    prompts = random_prompts(20000, (30, 9), seed=2)
    with torch.no_grad():
        got = torch.cat(all_logits(load_model(q_path, progress=False)[0], prompts)).float().log_softmax(-1)
        want = torch.cat(all_logits(load_model(ref_path, progress=False)[0], prompts)).float().log_softmax(-1)
    # bf16 rounding of W and activations, and the AVX512 kernels' int8 inputs per 32 (quant.q8_activations):
    # 0.02 mean / 0.54 max there, 0.008 / 0.12 on AVX2, where this random model's near-flat log-softmax
    # (all about -12.4) amplifies every rounding; a wrongly converted weight moves them by more than 1
    assert (got - want).abs().mean() < 0.04


def test_moe_per_expert_tensors(moe_ckpt, tmp_path):
    path = copy_ckpt(moe_ckpt, tmp_path / "q")
    truth = convert(path, "gptq", sym=False, experts=True)
    model, cfg = load_model(path, progress=False)
    E, inter = cfg.text.num_experts, cfg.text.moe_intermediate_size
    for i, layer in enumerate(model.model.layers):
        ex = layer.mlp.experts
        assert isinstance(ex, QuantExperts)
        gate_up = quant.dequantize("int4", *ex.stack("gate_up"))
        q_down, s_down, _ = ex.stack("down")
        assert s_down is None  # K = moe_intermediate_size = 32: not our int4 layout, loaded dequantised
        for e in range(E):
            stem = f"model.language_model.layers.{i}.mlp.experts.{e}."
            assert torch.equal(gate_up[e, :inter], truth[stem + "gate_proj"])
            assert torch.equal(gate_up[e, inter:], truth[stem + "up_proj"])
            assert torch.equal(q_down[e].float(), truth[stem + "down_proj"].bfloat16().float())
    with torch.no_grad():  # and it runs
        assert torch.isfinite(torch.cat(all_logits(model, random_prompts(20000, (12,), seed=3)))).all()


def test_act_order_is_refused_naming_the_tensor(dense_ckpt, tmp_path):
    path = copy_ckpt(dense_ckpt, tmp_path / "q")
    truth = convert(path, "gptq", sym=True)
    stem = sorted(truth)[0]
    key = stem + ".g_idx"
    edit_shard(path, key, lambda t: t.update({key: t[key].flip(0).contiguous()}))
    with pytest.raises(CheckpointError, match=f"{stem}.g_idx.*act-order"):
        load_model(path, progress=False)


def test_missing_part_and_mismatched_flag(dense_ckpt, tmp_path):
    path = copy_ckpt(dense_ckpt, tmp_path / "q")
    truth = convert(path, "awq", sym=False)
    with pytest.raises(ValueError, match="gptq checkpoint"):
        load_model(path, quantization="gptq", progress=False)
    load_model(path, quantization="awq", progress=False)  # the right name is accepted
    stem = sorted(truth)[0]
    edit_shard(path, stem + ".qzeros", lambda t: t.pop(stem + ".qzeros"))
    with pytest.raises(CheckpointError, match=f"{stem}.qzeros"):
        load_model(path, progress=False)


@pytest.mark.parametrize("qc,field", [
    ({"quant_method": "bitsandbytes"}, "quant_method"),
    ({"quant_method": "gptq", "bits": 8, "group_size": 128}, "bits"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 0}, "group_size"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "version"),
])
def test_bad_quantization_config(dense_ckpt, tmp_path, qc, field):
    path = copy_ckpt(dense_ckpt, tmp_path / "q")
    edit_config(path, lambda c: c.update(quantization_config=qc))
    with pytest.raises(ConfigError, match=field):
        load_model(path, progress=False)


def test_int8_on_top_of_gptq_quantises_the_rest(dense_ckpt, tmp_path):
    path = copy_ckpt(dense_ckpt, tmp_path / "q")
    truth = convert(path, "gptq", sym=True)
    model, _ = load_model(path, quantization="int8", progress=False)
    stem = sorted(truth)[0]
    assert _module(model, stem).fmt == "int4"  # the checkpoint's own stays
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.fmt == "int8"
