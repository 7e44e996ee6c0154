"""Training over shared tool headers (`share_heads`, model/shared_prefix.py): conversations that open with the
same header run it once per batch, and the loss and every gradient equal those of running each conversation
whole; the corpus groups conversations by header, never across a loss or a different next token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen35.ops.batch import BatchBuilder
from qwen35.train.examples import Unit, header_len, labelled, share_heads
from qwen35.train.init import build_model
from qwen35.train.loop import BLOCK, batch_loss, deterministic, make_corpus, train
from qwen35.train.recipe import recipe

SMOKE = recipe("smoke")
IM_START = 7


def _example(ids, learnt_from: int):
    ids = np.asarray(ids, dtype=np.int64)
    learnt = np.arange(len(ids)) >= learnt_from
    return labelled(ids, learnt)


@pytest.fixture(scope="module")
def conversations():
    """Five conversations: two open with header 0, two with header 1 (of different lengths), one has none."""
    rng = np.random.default_rng(0)
    headers = [np.r_[IM_START, rng.integers(10, 300, 40)], np.r_[IM_START, rng.integers(10, 300, 70)]]
    examples, heads = [], []
    for h, n in [(0, 30), (0, 55), (1, 20), (None, 45), (1, 90)]:
        if h is None:
            examples.append(_example(rng.integers(10, 300, n), 5))
            heads.append(0)
        else:
            rest = np.r_[IM_START, rng.integers(10, 300, n)]
            examples.append(_example(np.r_[headers[h], rest], len(headers[h]) + 5))
            heads.append(len(headers[h]))
    return examples, heads


def _loss_and_grads(model, units):
    model.zero_grad()
    loss, main, mtp = batch_loss(model, units, (BatchBuilder(BLOCK), BatchBuilder(BLOCK)), 0.3)
    loss.backward()
    return (main, mtp), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_shared_header_gives_the_loss_and_gradients_of_whole_conversations(conversations):
    examples, heads = conversations
    torch.manual_seed(0)
    model = build_model(SMOKE.text_config(300), 0, gdn_gate=2.0)
    units = share_heads(examples, heads, 10_000)
    assert [(u.head is not None, len(u.tails)) for u in units] == [(True, 2), (True, 2), (False, 1)]
    whole, g_whole = _loss_and_grads(model, [Unit.whole(e) for e in examples])
    shared, g_shared = _loss_and_grads(model, units)
    assert shared == pytest.approx(whole, rel=1e-5)
    assert g_whole.keys() == g_shared.keys()
    for name, g in g_whole.items():  # every parameter, the MTP head's and the headers' paths included
        torch.testing.assert_close(g_shared[name], g, rtol=1e-4, atol=1e-4 * float(g.abs().max()), msg=name)


def test_groups_are_cut_at_the_token_budget_and_keep_the_order(conversations):
    examples, heads = conversations
    units = share_heads(examples, heads, 41 + 56 + 10)  # a header and one rest fit, never two
    assert [(0 if u.head is None else len(u.head), [len(t) for t in u.tails]) for u in units] == \
        [(41, [31]), (41, [56]), (71, [21]), (71, [91]), (0, [45])]
    head = np.r_[IM_START, np.arange(10, 59)]  # 50 tokens, more than most_tokens: a unit may hold twice that
    long = [_example(np.r_[head, IM_START, np.arange(100, 119)], 55) for _ in range(3)]
    assert [[len(t) for t in u.tails] for u in share_heads(long, [50] * 3, 60)] == [[20, 20], [20]]
    alone = share_heads(examples, [0] * len(examples), 10_000)
    assert [u.tails[0] for u in alone] == examples and all(u.head is None for u in alone)


def test_a_header_that_carries_a_loss_is_refused(conversations):
    examples, heads = conversations
    with pytest.raises(ValueError, match="no loss"):
        share_heads(examples, [h + 10 if h else 0 for h in heads], 10_000)


def test_header_len_is_the_first_message():
    assert header_len(np.array([IM_START, 5, 6, IM_START, 9, IM_START]), IM_START) == 3
    with pytest.raises(ValueError, match="open with a message"):
        header_len(np.array([5, IM_START, 6]), IM_START)


def test_the_corpus_shares_tool_headers_and_training_runs_over_them(tmp_path):
    r = SMOKE.replace(share_heads=True)
    _, whole = make_corpus(SMOKE, log=lambda *_: None)
    _, units = make_corpus(r, log=lambda *_: None)
    assert all(u.head is None for u in whole)
    shared = [u for u in units if u.head is not None]
    assert any(len(u.tails) > 1 for u in shared)
    assert sum(len(u.tails) for u in units) == len(whole)
    assert sum(len(u) for u in units) < sum(len(u) for u in whole)
    assert all(len(u) <= r.batch_tokens or len(u.tails) == 1 for u in units)
    train(r, tmp_path, log=lambda *_: None, progress=open("/dev/null", "w"), stop_after=r.checkpoint_every)
    history = torch.load(tmp_path / "train_state.pt", weights_only=False)["history"]
    assert len(history) == r.checkpoint_every and all(np.isfinite(h["loss"]) for h in history)


def test_training_over_shared_heads_is_deterministic_on_two_threads():
    """The tails of a unit gather its header's keys and states once each, so their backward sums into repeated
    rows; with two threads and tensors this large torch would do that with racing atomic adds (docs/LOG.md,
    2026-12-05, later session) and the demo's runs would differ in the last bits from step 1,006 on."""
    r = SMOKE.replace(share_heads=True)
    tok, units = make_corpus(r, log=lambda *_: None)
    unit = max((u for u in units if u.head is not None), key=lambda u: len(u.tails) * len(u.head))
    chosen = [unit] + [u for u in units if u.head is None][:2]
    assert len(unit.tails) * len(unit.head) > 1000
    model = build_model(recipe("demo").text_config(tok.vocab_size), 0)  # the demo's width: large enough tensors
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with deterministic():
            runs = []
            for _ in range(3):
                model.zero_grad(set_to_none=True)
                batch_loss(model, chosen, (BatchBuilder(BLOCK), BatchBuilder(BLOCK)), r.mtp_weight)[0].backward()
                runs.append([p.grad.clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))
