"""Rejection sampling keeps the target distribution exactly (engine/verify.py), on a 6-token vocabulary (whole
rows) and on a 200-token one (the rows' top_k candidates, `sampler._candidates`).

With drafts d_1, d_2, the first emitted token must follow p_0 (the processed target distribution after the
last token), the second, given the first was d_1, must follow p_1, and so on. Each check draws 24,000
sequences; the total-variation distance to the target stays under 0.03, while the classic mistakes
(keeping every draft, or resampling from p instead of p without the rejected draft) are off by > 0.1.
"""

from __future__ import annotations

import pytest
import torch

from qwen35.engine.sampler import PenaltyState, Sampler, _warp
from qwen35.engine.sampling_params import SamplingParams
from qwen35.engine.verify import row_histories, verify

V, N = 6, 24_000
TV_BOUND = 0.03


def _target(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    x = logits.clone()[None]
    _warp(x, [params])
    return torch.softmax(x, -1)[0]


def _tv(counts: torch.Tensor, p: torch.Tensor) -> float:
    return 0.5 * (counts / counts.sum() - p).abs().sum().item()


def _run(row_logits: torch.Tensor, drafts: list[int], params: SamplingParams, seed: int = 0):
    """N sequences with the same rows and drafts; returns tokens [N, k+1] and kept [N]."""
    k = len(drafts)
    logits = row_logits.repeat(N, 1)
    hist = PenaltyState([1, 2])
    out, kept = verify(logits, [params] * (N * (k + 1)), [hist] * (N * (k + 1)), [None] * N, [drafts] * N,
                       torch.Generator().manual_seed(seed))
    return out.token_ids.view(N, k + 1), torch.tensor(kept)


@pytest.mark.parametrize("vocab", [V, 200], ids=["whole_rows", "candidates"])
def test_rejection_sampling_matches_the_target_at_every_position(vocab):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, vocab, generator=gen) * 1.5
    params = SamplingParams(temperature=0.9, top_k=5, seed=None)
    p = [_target(r, params) for r in rows]
    drafts = [int(p[0].argsort()[-2]), int(p[1].argmax())]  # a so-so first draft, a good second one
    tokens, kept = _run(rows, drafts, params)
    first = torch.where(kept > 0, drafts[0], tokens[torch.arange(N), 0])
    assert _tv(torch.bincount(first, minlength=vocab).float(), p[0]) < TV_BOUND
    after_d1 = kept >= 1
    second = torch.where(kept[after_d1] > 1, drafts[1], tokens[after_d1, 1])
    assert after_d1.sum() > 3000
    assert _tv(torch.bincount(second, minlength=vocab).float(), p[1]) < TV_BOUND
    third = tokens[kept == 2, 2]
    assert _tv(torch.bincount(third, minlength=vocab).float(), p[2]) < TV_BOUND
    # the distance a wrong rule would give is far above the bound: the test can fail
    a = p[0][drafts[0]]
    resample_from_p = a * torch.nn.functional.one_hot(torch.tensor(drafts[0]), vocab) + (1 - a) * p[0]
    keep_all = torch.nn.functional.one_hot(torch.tensor(drafts[0]), vocab).float()
    assert 0.5 * (resample_from_p - p[0]).abs().sum() > 0.1 and 0.5 * (keep_all - p[0]).abs().sum() > 0.1


def test_greedy_rows_keep_matching_drafts_only():
    rows = torch.tensor([[0.0, 3.0, 1.0, 0, 0, 0], [5.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 9.0]])
    greedy = SamplingParams(temperature=0)
    for drafts, want_kept, want_next in (([1, 0], 2, 5), ([1, 3], 1, 0), ([2, 0], 0, 1)):
        out, kept = verify(rows.clone(), [greedy] * 3, [PenaltyState([1])] * 3, [None], [drafts])
        assert kept == [want_kept] and out.token_ids[want_kept].item() == want_next


def test_penalties_see_the_drafts_before_each_row():
    """Row i's repetition penalty counts d_1..d_i as output: the verification of a repeated draft uses the
    same numbers as non-speculative sampling would after emitting it."""
    params = SamplingParams(temperature=0, presence_penalty=2.0)
    hist = PenaltyState([5])
    rows = torch.tensor([[0, 1.5, 1.0, 0, 0, 0], [0, 1.5, 1.0, 0, 0, 0]])
    out, kept = verify(rows.clone(), [params] * 2, row_histories(hist, params, [1]), [None], [[1]])
    # row 0: token 1 wins (no output yet); row 1: token 1 was just emitted, -2 makes token 2 win
    assert kept == [1] and out.token_ids[1].item() == 2
    plain = Sampler()(rows[1:].clone(), [params], [row_histories(hist, params, [1])[1]], [None])
    assert plain.token_ids.item() == 2


@pytest.mark.parametrize("vocab,top_k", [(V, 0), (200, 20)], ids=["whole_rows", "candidates"])
def test_seeded_rows_are_reproducible_and_independent_of_the_batch(vocab, top_k):
    rows = torch.randn(3, vocab, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.0, top_k=top_k, seed=5)
    hist = PenaltyState([0])

    def one(batch_rows, gens, drafts):
        out, kept = verify(batch_rows.clone(), [params] * batch_rows.shape[0], [hist] * batch_rows.shape[0],
                           gens, drafts)
        return out.token_ids.tolist(), kept

    alone = one(rows, [torch.Generator().manual_seed(5)], [[2, 3]])
    other = torch.randn(2, vocab)
    mixed = one(torch.cat([other, rows]), [None, torch.Generator().manual_seed(5)], [[1], [2, 3]])
    assert mixed[1][1] == alone[1][0] and mixed[0][2:] == alone[0]


def test_bad_words_see_the_drafts_before_each_row():
    """A two-token bad word "1 2": the row after draft 1 must ban 2, as plain sampling would after emitting 1."""
    params = SamplingParams(temperature=0, bad_words=["x"])
    params.bad_words_token_ids = [[1, 2]]
    hist = PenaltyState([5])
    rows = torch.tensor([[0, 1.5, 1.0, 0, 0, 0], [0, 1.0, 1.5, 0, 0, 0]])
    out, kept = verify(rows.clone(), [params] * 2, row_histories(hist, params, [1]), [None], [[1]])
    assert kept == [1] and out.token_ids[1].item() == 1  # 2 is banned after 1; 1 is next best
