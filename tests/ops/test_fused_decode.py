"""Fused decode kernels (csrc/fused.cpp) against the torch path they replace, on every ISA this CPU runs; and
a model-level check that greedy decode gives the same tokens with and without them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qwen35.ops import fused, native
from qwen35.ops.conv1d import causal_conv1d_step
from qwen35.ops.gdn import l2norm, recurrent_gated_delta_rule

lib = native.ops()
pytestmark = pytest.mark.skipif(lib is None, reason="native kernels not built")

def gdn_decode_ref(mixed, z, b, a, conv_w, conv_pool, ssm_pool, slots, neg_a, dt_bias, norm_w, eps):
    """The torch path of GatedDeltaNet.forward for one decode step (gather/scatter state at `slots`)."""
    B = mixed.shape[0]
    Hv, dk, dv = ssm_pool.shape[1:]
    Hk = (mixed.shape[1] - Hv * dv) // (2 * dk)
    beta = torch.sigmoid(b.float())
    g = neg_a * F.softplus(a.float() + dt_bias)
    conv_state, state = conv_pool[slots], ssm_pool[slots]
    y = causal_conv1d_step(mixed, conv_w, conv_state)
    q, k, v = y.split((Hk * dk, Hk * dk, Hv * dv), -1)
    q = l2norm(q.view(B, 1, Hk, dk)) * dk ** -0.5
    k = l2norm(k.view(B, 1, Hk, dk))
    q, k = q.repeat_interleave(Hv // Hk, 2), k.repeat_interleave(Hv // Hk, 2)
    o = recurrent_gated_delta_rule(q, k, v.view(B, 1, Hv, dv), g.unsqueeze(1), beta.unsqueeze(1), state)[:, 0]
    conv_pool.index_copy_(0, slots, conv_state)
    ssm_pool.index_copy_(0, slots, state)
    o32 = o.float()
    out = o32 * torch.rsqrt(o32.pow(2).mean(-1, keepdim=True) + eps) * norm_w
    return (out * F.silu(z.float().view(B, Hv, dv))).to(z.dtype).reshape(B, Hv * dv)


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("B,slots", [(1, [2]), (3, [4, 0, 2]), (3, [1, 2, 3])])
@pytest.mark.parametrize("hk,hv,dk,dv", [(2, 4, 16, 16), (2, 2, 32, 48), (1, 3, 128, 128), (2, 2, 24, 20)])
def test_gdn_decode_matches_torch(isa, dtype, B, slots, hk, hv, dk, dv):
    gen = torch.Generator().manual_seed(B * 100 + hv * 10 + dk + dv)
    P, K, eps = 5, 4, 1e-6
    C = 2 * hk * dk + hv * dv
    conv_w = (torch.randn(C, 1, K, generator=gen) * 0.5).to(dtype).float()
    neg_a = -torch.empty(hv).uniform_(1, 16, generator=gen)
    dt_bias = torch.randn(hv, generator=gen) * 0.5
    dt_bias[0] = 30.0  # softplus' linear branch: a + dt_bias > 20
    norm_w = 1 + torch.randn(dv, generator=gen) * 0.2
    conv0 = torch.randn(P, C, K - 1, generator=gen).to(dtype)
    ssm0 = torch.randn(P, hv, dk, dv, generator=gen) * 0.3
    conv_ref, ssm_ref, conv_nat, ssm_nat = conv0.clone(), ssm0.clone(), conv0.clone(), ssm0.clone()
    idx = torch.tensor(slots)
    for step in range(4):  # state carries over
        width = C + hv * dv + 2 * hv
        proj = (torch.randn(B, width, generator=gen) * 2).to(dtype)  # strided splits, like the fused in_proj
        mixed, z, b, a = proj.split((C, hv * dv, hv, hv), -1)
        if step == 2:
            a = a.clone().fill_(-40.0)  # decay below exp(-60) for strong heads: exactly 0
        args = (conv_w, neg_a, dt_bias, norm_w, eps)
        want = gdn_decode_ref(mixed, z, b, a, args[0], conv_ref, ssm_ref, idx, *args[1:])
        got = lib.gdn_decode(mixed, z, b, a, args[0], conv_nat, ssm_nat, idx, *args[1:])
        assert got.dtype == dtype and got.shape == (B, hv * dv)
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
        assert _rel(got, want) < tol, f"step {step}: output"
        assert _rel(ssm_nat, ssm_ref) < 1e-5, f"step {step}: recurrent state"
        assert torch.equal(conv_nat, conv_ref), f"step {step}: conv state"
    untouched = [s for s in range(P) if s not in slots]
    assert torch.equal(ssm_nat[untouched], ssm0[untouched]) and torch.equal(conv_nat[untouched], conv0[untouched])


def test_gdn_decode_rejects_bad_shapes():
    C, hv, dv = 2 * 16 + 32, 2, 16
    mixed, z = torch.zeros(1, C).bfloat16(), torch.zeros(1, hv * dv).bfloat16()
    b = a = torch.zeros(1, hv).bfloat16()
    conv_pool, ssm_pool = torch.zeros(2, C, 3).bfloat16(), torch.zeros(2, hv, 16, dv)
    f = torch.zeros(hv)
    args = (torch.zeros(C, 1, 4), conv_pool, ssm_pool)
    with pytest.raises(RuntimeError, match="slot"):
        lib.gdn_decode(mixed, z, b, a, *args, torch.tensor([2]), f, f, torch.ones(dv), 1e-6)
    with pytest.raises(RuntimeError, match="z must"):
        lib.gdn_decode(mixed, z[:, :8], b, a, *args, torch.tensor([0]), f, f, torch.ones(dv), 1e-6)
    with pytest.raises(RuntimeError, match="conv_pool"):
        lib.gdn_decode(mixed, z, b, a, args[0], conv_pool.float(), ssm_pool, torch.tensor([0]), f, f,
                       torch.ones(dv), 1e-6)


def _rms_ref(x, scale, eps):
    return F.rms_norm(x.float(), (x.shape[-1],), scale, eps).to(x.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("N", [1, 3, 40])
def test_norms_and_silu_mul_match_torch(isa, dtype, N):
    gen = torch.Generator().manual_seed(N)
    D, eps = 1024, 1e-6
    scale = 1 + torch.randn(D, generator=gen) * 0.3
    x = (torch.randn(N, D, generator=gen) * 3).to(dtype)
    delta = (torch.randn(N, 2 * D, generator=gen)).to(dtype)[:, :D]  # a strided row slice
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert _rel(lib.rms_norm(x, scale, eps), _rms_ref(x, scale, eps)) < tol
    s, h = lib.add_rms_norm(x, delta, scale, eps)
    assert torch.equal(s, x + delta)  # the residual stream is rounded exactly like torch's add
    assert _rel(h, _rms_ref(x + delta, scale, eps)) < tol
    # attention's q/k norm: [N, heads, d], q being the first half of each head's (q | gate) columns
    qg = (torch.randn(N, 4, 2 * 64, generator=gen)).to(dtype)
    q = qg[..., :64]
    qs = 1 + torch.randn(64, generator=gen) * 0.3
    got = lib.rms_norm(q, qs, eps)
    assert got.shape == q.shape and got.is_contiguous() and _rel(got, _rms_ref(q, qs, eps)) < tol
    gu = (torch.randn(N, 2 * 389, generator=gen) * 4).to(dtype)  # 389: a tail past the vector lanes
    gu[0, :6] = torch.tensor([-1e4, -100.0, -87.0, 88.0, 100.0, 1e4])  # exp's over- and underflow ends
    gate, up = gu.chunk(2, -1)
    want = F.silu(gate) * up
    got = lib.silu_mul(gu)
    assert got.shape == want.shape and _rel(got, want) < (1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_lib_for_applies_only_to_cpu_bf16_inference(monkeypatch):
    assert fused.lib_for(torch.zeros(1, 4, dtype=torch.bfloat16)) is lib
    assert fused.lib_for(torch.zeros(1, 4)) is None
    assert fused.lib_for(torch.zeros(1, 4, dtype=torch.bfloat16, requires_grad=True)) is None
    monkeypatch.setattr(fused, "ENABLED", False)
    assert fused.lib_for(torch.zeros(1, 4, dtype=torch.bfloat16)) is None


def test_greedy_decode_same_tokens_with_and_without_fused(tiny_ckpt, monkeypatch):
    """A bf16 tiny model through the engine: sequences of different lengths (so later steps run on
    non-contiguous state slots) give the same greedy tokens with the fused kernels as with the torch path."""
    from qwen35.engine import LLM, SamplingParams

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 20000, (n,), generator=gen).tolist() for n in (5, 40, 17)]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (20, 6, 14)]
    calls = []
    real = fused.lib_for

    def spy(x):
        out = real(x)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(fused, "lib_for", spy)
    runs = {}
    for enabled in (False, True):
        monkeypatch.setattr(fused, "ENABLED", enabled)
        llm = LLM(str(tiny_ckpt), dtype="bf16", max_model_len=256, max_num_seqs=4, kv_cache_memory=32 << 20)
        runs[enabled] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        assert any(calls) == enabled
        calls.clear()
    assert runs[True] == runs[False]


def test_norm_module_falls_back_for_column_major_rows():
    """A matmul may return a transposed layout (last-dim stride != 1): the module takes the torch path."""
    from qwen35.model.norm import RMSNorm

    norm = RMSNorm(32, 1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(32, 5).bfloat16().T  # [5, 32], stride (1, 5)
    want = F.rms_norm(x.float(), (32,), norm.scale(), 1e-6).to(x.dtype)
    assert torch.equal(norm(x), want)
    s, h = norm.add_forward(x, x)
    assert torch.equal(s, x + x) and torch.equal(h, norm(x + x))


def test_argmax_rows_matches_torch(isa):
    """First index of the largest value, NaN counting as largest, ties to the first, -inf rows to 0, tails past
    the vector lanes; bf16-rounded logits (many ties) too."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 1003, generator=g) * 3
    x[1, 700], x[1, 20] = float("nan"), float("nan")
    x[2] = float("-inf")
    x[3, 7], x[3, 900] = float("inf"), float("inf")
    x[4, 1001] = 50.0  # in the tail
    x[5, 1002] = float("nan")  # NaN in the tail only
    for rows in (x, (x * 4).bfloat16().float(), torch.randn(2, 5, generator=g)):
        assert torch.equal(lib.argmax_rows(rows), rows.argmax(-1))
    assert torch.equal(fused.argmax(x[:, ::2]), x[:, ::2].argmax(-1))  # strided rows: torch's
    with pytest.raises(RuntimeError, match="argmax_rows"):
        lib.argmax_rows(x.bfloat16())


def test_attention_prep_kernel_gives_the_torch_path_bits(tiny_ckpt, monkeypatch):
    """`attn_prep` (q/k norms, partial rotary, cache writes in one call) against the torch ops it replaces:
    the same logits bit for bit (the decode steps read the K/V it cached), over a packed prefill of sequences of
    different lengths and batched decode steps."""
    from qwen35.loading.checkpoint import load_model
    from qwen35.model.attention import GatedAttention
    from tests.model.helpers import prefill_then_decode

    model, _ = load_model(tiny_ckpt, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 20000, (n,), generator=gen).tolist() for n in (7, 33, 1)]
    cont = [torch.randint(0, 20000, (5,), generator=gen).tolist() for _ in prompts]
    calls = []
    real = GatedAttention._prep_kernel

    class Spy:
        def attn_prep(self, *a):
            calls.append(a[0].shape[0])
            return lib.attn_prep(*a)

    runs = {}
    for enabled in (False, True):  # only attn_prep changes: the other fused kernels run both times
        monkeypatch.setattr(GatedAttention, "_prep_kernel",
                            lambda self, *a: Spy() if enabled and real(self, *a) is not None else None)
        runs[enabled] = prefill_then_decode(model, prompts, cont)
        assert bool(calls) == enabled
    assert all(torch.equal(a, b) for a, b in zip(runs[True], runs[False]))
    assert calls[0] == sum(map(len, prompts)) and set(calls[1:]) == {len(prompts)}  # prefill rows, then decode


def test_attention_prep_rejects_bad_inputs():
    qkv = torch.zeros(2, (2 * 4 + 2 * 2) * 8, dtype=torch.bfloat16)
    cs = torch.zeros(2, 4, dtype=torch.bfloat16)
    sc = torch.ones(8)
    kc = torch.zeros(16, 2, 8, dtype=torch.bfloat16)
    ok = (qkv, cs, cs, sc, sc, 1e-6, kc, kc.clone(), torch.tensor([0, 5]), 4, 2, 8)
    lib.attn_prep(*ok)
    with pytest.raises(RuntimeError, match="slot 16 outside"):
        lib.attn_prep(*ok[:8], torch.tensor([0, 16]), *ok[9:])
    with pytest.raises(RuntimeError, match="qkv must be"):
        lib.attn_prep(qkv[:, :-8], *ok[1:])
    with pytest.raises(RuntimeError, match="bf16"):
        lib.attn_prep(qkv.float(), *ok[1:])
