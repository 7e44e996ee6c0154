"""Loading the MTP head (docs/MODEL.md §8): `load_model(mtp=True)` and `has_mtp` on checkpoints with and without
`mtp.*` tensors, a missing MTP tensor, the fused-expert MoE layout (Qwen3.6), block-FP8 checkpoints whose MTP
head is unquantised (ours, the official releases) or quantised, the default `mtp=False`, the names and shapes
the writer (`qwen35 init`) emits, and the fused/prepacked path against the plain one.

Draft outputs are compared through `tests.model.helpers.draft_chain` (prefill rows, then chained steps), on
copies whose MTP weights are redrawn with O(1) activations (`amplify_mtp`); the maths itself is checked
against an independent reference in tests/model/test_mtp.py.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen35.config import preset
from qwen35.loading import names
from qwen35.loading.checkpoint import CheckpointError, has_mtp, load_model
from qwen35.loading.fp8 import quantize_block_fp8, quantize_checkpoint_fp8
from qwen35.model.linear import FP8Linear, Linear
from qwen35.ops.linear import packing_applies
from tests.model.helpers import amplify_mtp, draft_chain

from .util import INDEX, all_headers, copy_ckpt, edit_config, random_prompts, weight_map

TOL = 1e-4  # fp32, same weights, different matmul paths
FP8_BLOCK = (128, 128)


def _rel(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    got, ref = torch.cat(got).float(), torch.cat(ref).float()
    return ((got - ref).norm() / ref.norm()).item()


def _maxdiff(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max((g.float() - r.float()).abs().max().item() for g, r in zip(got, ref))


def _drafts(model, seed: int = 0, hidden=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(main hidden, the head's outputs) over two packed prompts: prefill rows, then three chained steps."""
    vocab = model.cfg.vocab_size
    prompts = random_prompts(vocab, lengths=(40, 13), seed=seed)
    chain = random_prompts(vocab, lengths=(3, 3), seed=seed + 100)
    return draft_chain(model, prompts, chain, hidden=hidden)


def _rewrite(path, edit) -> None:
    """Apply `edit(tensors)` to every shard (mutating the dict), drop emptied shards, rewrite the index."""
    index = json.loads((path / INDEX).read_text())
    new_map: dict[str, str] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors = load_file(str(path / shard))
        edit(tensors)
        if tensors:
            save_file(tensors, str(path / shard), metadata={"format": "pt"})
            new_map.update({k: shard for k in tensors})
        else:
            (path / shard).unlink()
    index["weight_map"] = dict(sorted(new_map.items()))
    (path / INDEX).write_text(json.dumps(index, indent=2))


def _strip_mtp(tensors: dict) -> None:
    for key in [k for k in tensors if k.startswith("mtp.")]:
        del tensors[key]


def _single_file(path) -> None:
    """Turn a sharded checkpoint into one model.safetensors without an index."""
    tensors = {}
    for shard in sorted(set(weight_map(path).values())):
        tensors.update(load_file(str(path / shard)))
        (path / shard).unlink()
    (path / INDEX).unlink()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module", params=["dense", "moe"])
def loud(request, tmp_path_factory):
    """(kind, a copy of the checkpoint with O(1) MTP weights)."""
    path = tmp_path_factory.mktemp(f"loud_{request.param}") / "ckpt"
    shutil.copytree(request.getfixturevalue(f"{request.param}_ckpt"), path)
    amplify_mtp(path, seed=11)
    return request.param, path


@pytest.fixture(scope="module")
def loud_ref(loud):
    """(main hidden, draft outputs) of the unquantised checkpoint in fp32, loaded as served: what every variant is
    compared with."""
    model, _ = load_model(loud[1], dtype=torch.float32, mtp=True)
    return _drafts(model)


# -- with and without an MTP head --------------------------------------------------------------------

def test_has_mtp(dense_copy):
    assert has_mtp(dense_copy)
    _rewrite(dense_copy, _strip_mtp)
    assert not has_mtp(dense_copy)


def test_has_mtp_single_file(dense_copy):
    _single_file(dense_copy)
    assert has_mtp(dense_copy)
    tensors = load_file(str(dense_copy / "model.safetensors"))
    _strip_mtp(tensors)
    save_file(tensors, str(dense_copy / "model.safetensors"), metadata={"format": "pt"})
    assert not has_mtp(dense_copy)


def test_has_mtp_needs_mtp_layers_in_the_config(dense_copy):
    edit_config(dense_copy, lambda c: c["text_config"].update(mtp_num_hidden_layers=0))
    assert not has_mtp(dense_copy)
    with pytest.raises(CheckpointError, match="has no MTP head"):
        load_model(dense_copy, mtp=True)
    model, _ = load_model(dense_copy)  # the tensors are skipped as usual
    assert model.mtp is None


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_mtp_true_without_mtp_tensors(which, request, tmp_path):
    path = copy_ckpt(request.getfixturevalue(f"{which}_ckpt"), tmp_path / "ckpt")
    _rewrite(path, _strip_mtp)
    with pytest.raises(CheckpointError) as err:
        load_model(path, mtp=True)
    msg = str(err.value)
    assert str(path) in msg and "has no MTP head" in msg and "mtp.*" in msg, msg
    model, _ = load_model(path)  # without the head it is an ordinary checkpoint
    assert model.mtp is None


@pytest.mark.parametrize("which,missing", [
    ("dense", "mtp.fc.weight"),
    ("dense", "mtp.pre_fc_norm_hidden.weight"),
    ("dense", "mtp.layers.0.self_attn.k_norm.weight"),
    ("dense", "mtp.layers.0.mlp.down_proj.weight"),
    ("dense", "mtp.norm.weight"),
    ("moe", "mtp.layers.0.mlp.shared_expert_gate.weight"),
    ("moe", "mtp.layers.0.mlp.gate.weight"),
    ("moe", "mtp.layers.0.mlp.experts.5.up_proj.weight"),
])
def test_missing_mtp_tensor_is_named(which, missing, request, tmp_path):
    path = copy_ckpt(request.getfixturevalue(f"{which}_ckpt"), tmp_path / "ckpt")
    _rewrite(path, lambda t: t.pop(missing, None))
    assert has_mtp(path)
    with pytest.raises(CheckpointError, match="lacks") as err:
        load_model(path, mtp=True)
    assert missing in str(err.value), str(err.value)
    load_model(path)  # the head is not asked for: its tensors are skipped, complete or not


def test_missing_all_mtp_experts_is_named(moe_copy):
    _rewrite(moe_copy, lambda t: [t.pop(k) for k in list(t) if k.startswith("mtp.layers.0.mlp.experts.")])
    with pytest.raises(CheckpointError, match="mtp.layers.0.mlp.experts.gate_up_proj"):
        load_model(moe_copy, mtp=True)


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_default_skips_the_head_and_reports_it(which, request, caplog):
    path = request.getfixturevalue(f"{which}_ckpt")
    n_mtp = sum(k.startswith("mtp.") for k in weight_map(path))
    caplog.set_level(logging.INFO, logger="qwen35.loading")
    model, _ = load_model(path)
    assert model.mtp is None and "mtp.0" not in model.cache_specs()
    assert not any(k.startswith("mtp.") for k in model.state_dict())
    assert any(f"skipped {n_mtp} MTP head tensor" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="without its MTP head"):
        model.draft(torch.zeros(1, dtype=torch.long), torch.zeros(1, model.cfg.hidden_size), None, None)
    with_head, _ = load_model(path, mtp=True)
    assert "mtp.0" in with_head.cache_specs()
    assert with_head.mtp.layers[0].self_attn.cache_id == "mtp.0"


# -- layouts ---------------------------------------------------------------------------------------------

def _fuse_mtp_experts(tensors: dict, num_experts: int) -> None:
    """Per-expert mtp.layers.0.mlp.experts.{e}.* -> fused gate_up_proj [E, 2I, H] (gate rows first) and
    down_proj [E, H, I], the main layers' layout (Qwen3.6 ships its MTP experts so)."""
    p = "mtp.layers.0.mlp.experts."
    if p + "0.gate_proj.weight" not in tensors:
        return
    gate_up = [torch.cat([tensors.pop(f"{p}{e}.gate_proj.weight"), tensors.pop(f"{p}{e}.up_proj.weight")])
               for e in range(num_experts)]
    tensors[p + "gate_up_proj"] = torch.stack(gate_up)
    tensors[p + "down_proj"] = torch.stack([tensors.pop(f"{p}{e}.down_proj.weight") for e in range(num_experts)])


@pytest.mark.parametrize("loud", ["moe"], indirect=True)
def test_moe_mtp_with_fused_experts(loud, loud_ref, tmp_path):
    src = loud[1]
    path = copy_ckpt(src, tmp_path / "fused")
    E = preset("tiny-moe").text.num_experts
    _rewrite(path, lambda t: _fuse_mtp_experts(t, E))
    keys = weight_map(path)
    assert "mtp.layers.0.mlp.experts.gate_up_proj" in keys and "mtp.layers.0.mlp.experts.0.up_proj.weight" not in keys
    fused, _ = load_model(path, dtype=torch.float32, mtp=True)
    per_expert, _ = load_model(src, dtype=torch.float32, mtp=True)
    for name in ("gate_up_proj", "down_proj"):
        a = getattr(fused.mtp.layers[0].mlp.experts, name)
        assert torch.equal(a, getattr(per_expert.mtp.layers[0].mlp.experts, name))
    assert _maxdiff(_drafts(fused)[1], loud_ref[1]) == 0.0


# -- block FP8 -------------------------------------------------------------------------------------------

def _mtp_linears(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.mtp.named_modules() if isinstance(m, (Linear, FP8Linear))}


@pytest.fixture(scope="module")
def loud_fp8(loud, tmp_path_factory):
    """Our quantiser's copy: the text layers in block FP8, the MTP head copied unchanged (as released)."""
    return quantize_checkpoint_fp8(loud[1], tmp_path_factory.mktemp(f"fp8_{loud[0]}"))


# the head's big projections (the main layers' `names.QUANTISED` rule, plus fc and the routed experts);
# the router and shared_expert_gate stay unquantised, as in the main layers
def _quantise_mtp(tensors: dict) -> None:
    for key in [k for k in tensors if k.startswith("mtp.")]:
        n = names.parse(key)
        local = n.local.removesuffix(".weight")
        if n.expert is not None or local in names.QUANTISED or key == "mtp.fc.weight":
            tensors[key], tensors[key + names.SCALE] = quantize_block_fp8(tensors[key], FP8_BLOCK)


# Measured (seeds 0-2; relative L2 error of the draft outputs against the fp32 unquantised checkpoint's):
#                               dense         MoE
#   bf16 checkpoint, as is      0.011-0.012   0.025-0.055
#   FP8 text layers, own hidden 0.068-0.087   0.134-0.251  (the main model's FP8 error reaches the head through
#                                                           its hidden; MoE routing flips amplify it)
#   ... fed the fp32 hidden     0 (fp32), 0.007-0.008 (bf16)  0 (fp32), 0.008 (bf16)
#   FP8 head too, own hidden    0.098-0.110   0.147-0.286
#   ... fed the fp32 hidden     0.065-0.069   0.096-0.119
FP8_OWN_HIDDEN = {"dense": 0.12, "moe": 0.35}
QUANTISED_HEAD = {"dense": 0.1, "moe": 0.16}
QUANTISED_OWN_HIDDEN = {"dense": 0.15, "moe": 0.4}


def _quantised_head_copy(src, dst):
    """A copy of FP8 checkpoint `src` whose MTP linears are block FP8 too, its config saying so."""
    path = copy_ckpt(src, dst)
    _rewrite(path, _quantise_mtp)
    converted = {k.removesuffix(".weight" + names.SCALE) for k in weight_map(path) if k.endswith(names.SCALE)}
    edit_config(path, lambda c: c["quantization_config"].update(modules_to_not_convert=[
        m for m in c["quantization_config"]["modules_to_not_convert"] if m not in converted]))
    return path


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fp8_checkpoint_keeps_the_head_unquantised(loud, loud_fp8, loud_ref, dtype):
    kind, hidden, ref = loud[0], *loud_ref
    model, _ = load_model(loud_fp8, dtype=dtype, mtp=True)
    assert not any(isinstance(m, FP8Linear) for m in _mtp_linears(model).values())
    assert any(isinstance(m, FP8Linear) for m in model.model.modules())
    same = _drafts(model, hidden=hidden)[1]  # the head alone: the bf16 checkpoint's, unchanged
    if dtype == torch.float32:
        assert _maxdiff(same, ref) < TOL
    else:
        assert _rel(same, ref) < 0.02
    assert _rel(_drafts(model)[1], ref) < FP8_OWN_HIDDEN[kind]


def test_fp8_checkpoint_with_a_quantised_head(loud, loud_fp8, loud_ref, tmp_path):
    (kind, _), (hidden, ref) = loud, loud_ref
    path = _quantised_head_copy(loud_fp8, tmp_path / "ckpt")
    headers = all_headers(path)
    assert headers["mtp.fc.weight"][0] == "F8_E4M3" and headers["mtp.fc.weight_scale_inv"] == ("F32", (1, 1))
    assert headers["mtp.layers.0.self_attn.q_proj.weight"][0] == "F8_E4M3"
    assert headers["mtp.norm.weight"][0] == "BF16"
    if kind == "moe":
        assert headers["mtp.layers.0.mlp.experts.3.down_proj.weight"][0] == "F8_E4M3"
        assert headers["mtp.layers.0.mlp.gate.weight"][0] == "BF16"
    for dtype in (torch.bfloat16, torch.float32):
        model, _ = load_model(path, dtype=dtype, mtp=True)
        linears = _mtp_linears(model)
        assert isinstance(linears["fc"], FP8Linear) and isinstance(linears["layers.0.self_attn.q_proj"], FP8Linear)
        assert isinstance(linears["layers.0.self_attn.o_proj"], FP8Linear)
        if kind == "moe":
            assert isinstance(linears["layers.0.mlp.gate"], Linear)
            assert isinstance(linears["layers.0.mlp.shared_expert_gate"], Linear)
        assert _rel(_drafts(model, hidden=hidden)[1], ref) < QUANTISED_HEAD[kind]
        assert _rel(_drafts(model)[1], ref) < QUANTISED_OWN_HIDDEN[kind]


def test_quantised_head_weight_without_its_scale(loud_fp8, tmp_path):
    path = _quantised_head_copy(loud_fp8, tmp_path / "ckpt")
    _rewrite(path, lambda t: t.pop("mtp.fc.weight" + names.SCALE, None))
    with pytest.raises(CheckpointError, match="mtp.fc.weight"):
        load_model(path, mtp=True)


# -- the writer (`qwen35 init`) ----------------------------------------------------------------------------

def _official_mtp(cfg) -> dict[str, tuple[int, ...]]:
    """The MTP tensors of an official checkpoint (vLLM's Qwen3_5MultiTokenPredictor), written out by hand."""
    t = cfg.text
    H, d, nq, nkv = t.hidden_size, t.head_dim, t.num_attention_heads, t.num_key_value_heads
    L = "mtp.layers.0."
    out = {"mtp.fc.weight": (H, 2 * H), "mtp.pre_fc_norm_embedding.weight": (H,),
           "mtp.pre_fc_norm_hidden.weight": (H,), "mtp.norm.weight": (H,),
           L + "input_layernorm.weight": (H,), L + "post_attention_layernorm.weight": (H,),
           L + "self_attn.q_proj.weight": (2 * nq * d, H), L + "self_attn.k_proj.weight": (nkv * d, H),
           L + "self_attn.v_proj.weight": (nkv * d, H), L + "self_attn.o_proj.weight": (H, nq * d),
           L + "self_attn.q_norm.weight": (d,), L + "self_attn.k_norm.weight": (d,)}
    if not t.is_moe:
        I = t.intermediate_size
        out.update({L + "mlp.gate_proj.weight": (I, H), L + "mlp.up_proj.weight": (I, H),
                    L + "mlp.down_proj.weight": (H, I)})
        return out
    E, I, S = t.num_experts, t.moe_intermediate_size, t.shared_expert_intermediate_size
    out.update({L + "mlp.gate.weight": (E, H), L + "mlp.shared_expert_gate.weight": (1, H),
                L + "mlp.shared_expert.gate_proj.weight": (S, H), L + "mlp.shared_expert.up_proj.weight": (S, H),
                L + "mlp.shared_expert.down_proj.weight": (H, S)})
    for e in range(E):
        out.update({f"{L}mlp.experts.{e}.gate_proj.weight": (I, H), f"{L}mlp.experts.{e}.up_proj.weight": (I, H),
                    f"{L}mlp.experts.{e}.down_proj.weight": (H, I)})
    return out


@pytest.mark.parametrize("name", ["tiny", "tiny-moe", "dense-27b", "moe-35b-a3b", "moe-397b-a17b"])
def test_mtp_names_and_shapes(name):
    cfg = preset(name)
    assert dict(names.mtp_tensors(cfg.text)) == _official_mtp(cfg)
    if name == "moe-397b-a17b":  # the shapes quoted from the released checkpoint
        mtp = dict(names.mtp_tensors(cfg.text))
        assert mtp["mtp.fc.weight"] == (4096, 8192) and mtp["mtp.layers.0.self_attn.q_proj.weight"] == (16384, 4096)
        assert mtp["mtp.layers.0.mlp.experts.511.down_proj.weight"] == (4096, 1024)


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_writer_emits_the_official_mtp_tensors(which, request):
    """What `qwen35 init` writes (it calls write_random_checkpoint): exactly these mtp.* names and shapes, in the
    checkpoint dtype, the attention shaped like a main full-attention layer's."""
    path = request.getfixturevalue(f"{which}_ckpt")
    headers = all_headers(path)
    written = {k: shape for k, (dtype, shape) in headers.items() if k.startswith("mtp.")}
    assert written == _official_mtp(preset("tiny" if which == "dense" else "tiny-moe"))
    assert {headers[k][0] for k in written} == {"BF16"}
    main = "model.language_model.layers.3."  # the full-attention layer of the tiny presets
    for local in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                  "self_attn.o_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight"):
        assert written["mtp.layers.0." + local] == headers[main + local][1]


# -- fused and prepacked, as served, against the modules as loaded ----------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(torch.float32, TOL), (torch.bfloat16, 0.05)])
def test_fused_prepacked_head_matches_plain(loud, dtype, tol):
    """fp32: summation order only (measured max |diff| 2.8e-6 to 4.8e-6 on h' of RMS ~1). bf16: measured 0 here;
    the bound leaves room for a CPU whose packed bf16 kernels sum in another order."""
    fast, _ = load_model(loud[1], dtype=dtype, mtp=True)
    plain, _ = load_model(loud[1], dtype=dtype, mtp=True, fuse=False, prepack=False)
    attn, plain_attn = fast.mtp.layers[0].self_attn, plain.mtp.layers[0].self_attn
    assert attn.qkv_proj is not None and plain_attn.qkv_proj is None
    if packing_applies(torch.zeros(1, dtype=dtype)):  # bf16 packs only where oneDNN has a bf16 path
        assert any(m.packed is not None for m in _mtp_linears(fast).values() if isinstance(m, Linear))
    assert all(m.packed is None for m in _mtp_linears(plain).values() if isinstance(m, Linear))
    assert _maxdiff(_drafts(fast)[1], _drafts(plain)[1]) < tol
