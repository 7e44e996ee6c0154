"""The training paths of the ops (autograd through them) compute what the inference paths compute, and their
gradients are right: the chunked delta rule against finite differences, the whole model against its own
inference forward."""

from __future__ import annotations

import pytest
import torch

from qwen35.ops import native
from qwen35.ops.conv1d import causal_conv1d, causal_conv1d_train
from qwen35.ops.gdn import (chunked_gated_delta_rule, chunked_gated_delta_rule_train, l2norm,
                            recurrent_gated_delta_rule)
from qwen35.ops.batch import BatchBuilder
from qwen35.train.init import build_model
from qwen35.train.loop import BLOCK, batch_loss, deterministic, make_corpus
from qwen35.train.recipe import recipe


def _gdn_inputs(B=2, T=150, H=3, dk=16, dv=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = l2norm(torch.randn(B, T, H, dk, generator=gen)) * dk ** -0.5
    k = l2norm(torch.randn(B, T, H, dk, generator=gen))
    v = torch.randn(B, T, H, dv, generator=gen)
    g = -torch.rand(B, T, H, generator=gen) * 2
    beta = torch.rand(B, T, H, generator=gen)
    s0 = torch.randn(B, H, dk, dv, generator=gen)
    return [x.to(dtype) for x in (q, k, v, g, beta, s0)]


def test_differentiable_delta_rule_matches_the_recurrence():
    q, k, v, g, beta, s0 = _gdn_inputs()
    want_state = s0.clone()
    want = recurrent_gated_delta_rule(q, k, v, g, beta, want_state)
    state = s0.clone()
    got = chunked_gated_delta_rule(q.requires_grad_(), k, v, g, beta, state)
    assert got.requires_grad
    assert (got - want).abs().max() < 1e-5
    assert (state - want_state).abs().max() < 1e-5
    assert not state.requires_grad  # the carried state is stored detached


def test_differentiable_delta_rule_gradients():
    q, k, v, g, beta, s0 = _gdn_inputs(B=1, T=20, H=1, dk=4, dv=3, dtype=torch.float64)  # 3 chunks of 8
    args = [x.clone().requires_grad_() for x in (q, k, v, g, beta)]
    assert torch.autograd.gradcheck(lambda *a: chunked_gated_delta_rule(*a, s0.clone(), chunk=8), args,
                                    eps=1e-6, atol=1e-5)


def test_differentiable_conv_matches_inference():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 300, 24, generator=gen)
    w = torch.randn(24, 1, 4, generator=gen)
    lens = torch.tensor([300, 170])
    s1, s2 = torch.randn(2, 24, 3, generator=gen), None
    s2 = s1.clone()
    want = causal_conv1d(x, lens, w, s1)
    got = causal_conv1d(x, lens, w.clone().requires_grad_(), s2)
    assert got.requires_grad
    for b, n in enumerate(lens.tolist()):
        assert (got[b, :n] - want[b, :n]).abs().max() < 1e-6
    assert torch.equal(s1, s2)


def test_training_forward_equals_the_inference_forward():
    """A ragged batch through the training path (autograd on, padded causal SDPA) gives the hidden states the
    engine's path gives each sequence alone."""
    r = recipe("smoke")
    model = build_model(r.text_config(300), seed=3)
    seqs = [list(range(5, 205)), list(range(40, 110)), list(range(7, 9))]
    builder = BatchBuilder(64)
    tables, first = [], 0
    for s in seqs:
        n = -(-len(s) // 64)
        tables.append(range(first, first + n))
        first += n
    batch = builder.build(seqs, [0] * 3, [0, 1, 2], tables)
    got = model(batch, model.new_cache(first, 64, 3))
    assert got.requires_grad
    got.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("mtp."))
    with torch.no_grad():
        for b, s in enumerate(seqs):
            alone = BatchBuilder(64).build([s], [0], [0], [range(-(-len(s) // 64))])
            want = model(alone, model.new_cache(-(-len(s) // 64), 64, 1))
            rows = got[int(batch.query_start_loc[b]):int(batch.query_start_loc[b + 1])]
            assert (rows - want).abs().max() < 1e-4, b


LIB = native.ops()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)  # equal bits: -0.0 and +0.0 differ


@pytest.mark.skipif(LIB is None, reason="native kernels not built")
@pytest.mark.parametrize("B,T,C", [(2, 9, 5), (3, 1, 8), (4, 2, 6), (16, 96, 480), (2, 300, 24)])
@pytest.mark.parametrize("state_used", [False, True])
def test_native_training_conv_is_the_torch_path_bit_for_bit(monkeypatch, B, T, C, state_used):
    """The native taps (csrc/conv_train.cpp) give the output, the new state and every gradient autograd gives
    through the written-out taps, to the bit (signed zeros included), whether or not the new state carries a
    gradient (a shared header's does): a training run is the same with or without the build."""
    gen = torch.Generator().manual_seed(B * 1000 + T)
    x, w = torch.randn(B, T, C, generator=gen), torch.randn(C, 1, 4, generator=gen)
    state = torch.randn(B, C, 3, generator=gen)
    x[0, -1, : C // 2] = -0.0
    lens = torch.randint(1, T + 1, (B,), generator=gen)
    grads = torch.randn(B, T, C, generator=gen), torch.randn(B, C, 3, generator=gen) if state_used else None

    def run(lib):
        monkeypatch.setattr(native, "ops", lambda: lib)
        args = [t.clone().requires_grad_() for t in (x, w, state)]
        y, new_state = causal_conv1d_train(args[0], lens, args[1], args[2])
        outs = (y, new_state) if state_used else (y,)
        torch.autograd.backward(outs, grads[:len(outs)])
        return [y, new_state, *(a.grad for a in args)]

    with deterministic():
        want, got = run(None), run(LIB)
    for name, g, t in zip(("y", "state", "grad x", "grad w", "grad state"), got, want):
        assert torch.equal(_bits(g), _bits(t)), name


@pytest.mark.skipif(LIB is None, reason="native kernels not built")
@pytest.mark.parametrize("B,T,H,d,chunk", [(1, 16, 2, 8, 16), (3, 17, 2, 8, 16), (2, 100, 3, 6, 16),
                                           (2, 185, 4, 40, 16), (2, 700, 2, 8, 32), (4, 5, 1, 4, 8)])
@pytest.mark.parametrize("final_used,state_grad", [(False, False), (True, False), (True, True), (False, True)])
def test_native_training_delta_rule_is_the_torch_path_bit_for_bit(monkeypatch, B, T, H, d, chunk, final_used,
                                                                   state_grad):
    """The loop over chunks in one native call each way (csrc/gdn_train.cpp) gives the output, the final state
    and every gradient autograd gives through the written-out loop, to the bit (signed zeros included, as in
    the padded last chunk), whether or not the final state carries a gradient (a shared header's does) and
    the starting state needs one (a conversation continuing from its header)."""
    q, k, v, g, beta, s0 = _gdn_inputs(B=B, T=T, H=H, dk=d, dv=d, seed=T)
    gen = torch.Generator().manual_seed(B * 1000 + T)
    grads = torch.randn(B, T, H, d, generator=gen), torch.randn(B, H, d, d, generator=gen)

    def run(lib):
        monkeypatch.setattr(native, "ops", lambda: lib)
        args = [t.clone().requires_grad_() for t in (q, k, v, g, beta)]
        state = s0.clone().requires_grad_(state_grad)
        o, final = chunked_gated_delta_rule_train(*args, state.clone() if state_grad else state, chunk)
        outs = (o, final) if final_used else (o,)
        torch.autograd.backward(outs, grads[:len(outs)])
        return [o, final, *(a.grad for a in args)] + ([state.grad] if state_grad else [])

    with deterministic():
        want, got = run(None), run(LIB)
    for name, a, b in zip(("o", "final", "grad q", "grad k", "grad v", "grad g", "grad beta", "grad state"),
                          got, want):
        assert torch.equal(_bits(a), _bits(b)), name


def _shared_header_step(units_with_header: int, whole: int, setups) -> list[tuple]:
    """One step of the smoke recipe's model over `units_with_header` shared-header units (the most
    conversations first) and `whole` whole conversations, once after each of `setups` (callables given the
    model): the loss and every gradient of each run, with the parameter names."""
    r = recipe("smoke").replace(share_heads=True)
    tok, units = make_corpus(r, log=lambda *_: None)
    chosen = sorted((u for u in units if u.head is not None), key=lambda u: -len(u.tails))[:units_with_header]
    chosen += [u for u in units if u.head is None][:whole]
    model = build_model(r.text_config(tok.vocab_size), 0, gdn_gate=2.0)
    runs = []
    for setup in setups:
        setup(model)
        model.zero_grad(set_to_none=True)
        with deterministic():
            loss = batch_loss(model, chosen, (BatchBuilder(BLOCK), BatchBuilder(BLOCK)), r.mtp_weight)[0]
            loss.backward()
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    return runs


def _assert_same_bits(runs: list[tuple]) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = runs
    assert torch.equal(loss_a, loss_b)
    for name in grads_a:
        assert torch.equal(_bits(grads_a[name]), _bits(grads_b[name])), name


@pytest.mark.skipif(LIB is None, reason="native kernels not built")
def test_a_training_step_is_the_same_with_or_without_the_native_kernels(monkeypatch):
    """With the native kernels (conv taps, the delta rule's loop) or without: a whole step over a shared header
    (its states' gradients reach the header's convs and delta rules before the header's own outputs' do) and
    whole conversations, loss and every gradient equal to the bit."""
    _assert_same_bits(_shared_header_step(1, 2, [lambda m, lib=lib: monkeypatch.setattr(native, "ops", lambda: lib)
                                                 for lib in (None, LIB)]))


def test_the_mtp_layer_records_a_shared_headers_keys_without_its_output(monkeypatch):
    """Training's pass over shared headers runs only the MTP layer's K/V (`record_draft_keys`), not its
    attention and MLP, whose output nothing reads: loss and every gradient equal to the bit to the whole
    draft step's (autograd then sums the same terms in the same order)."""
    def whole_draft(model):  # the full draft step, its output dropped
        monkeypatch.setattr(model, "record_draft_keys", lambda *a: model.draft(*a))

    runs = _shared_header_step(2, 1, [whole_draft, lambda model: monkeypatch.undo()])
    _assert_same_bits(runs)
    assert any(n.startswith("mtp.") and g.abs().sum() > 0 for n, g in runs[1][1].items())
