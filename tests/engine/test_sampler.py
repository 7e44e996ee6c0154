"""Sampler: each stage vs a plain per-row reference, seeded reproducibility, logprobs, min_tokens."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from qwen35.engine.sampler import (PenaltyState, Sampler, _apply_penalties, _candidates, _draw, _temperature_, _warp,
                                   _weights, min_tokens_stop_ids)
from qwen35.engine.sampling_params import SamplingParams as SP

V = 97


# ---- per-row references (loops over tokens on purpose: obviously right, not fast) ----------

def ref_penalize(row: torch.Tensor, prompt: list[int], output: list[int], p: SP) -> torch.Tensor:
    out = row.clone()
    for t in set(prompt) | set(output):
        out[t] = out[t] / p.repetition_penalty if out[t] > 0 else out[t] * p.repetition_penalty
    for t, c in Counter(output).items():
        out[t] -= p.frequency_penalty * c + p.presence_penalty
    return out


def ref_probs(row: torch.Tensor, p: SP) -> torch.Tensor:
    """The distribution a sampled row is drawn from: temperature, top_k, top_p, min_p, renormalised."""
    probs = torch.softmax(row.double() / p.temperature, -1)
    keep = torch.ones(len(row), dtype=torch.bool)
    if p.top_k:
        kth = sorted(row.tolist(), reverse=True)[min(p.top_k, len(row)) - 1]
        keep &= row >= kth
    if p.top_p < 1:
        kept = probs * keep / (probs * keep).sum()
        mass, nucleus = 0.0, torch.zeros_like(keep)
        for t in sorted(range(len(row)), key=lambda t: -kept[t].item()):
            if mass >= p.top_p:
                break
            nucleus[t], mass = True, mass + kept[t].item()
        keep &= nucleus
    if p.min_p:
        kept = probs * keep
        keep &= kept >= p.min_p * kept.max()
    return probs * keep / (probs * keep).sum()


def history(prompt: list[int], output: list[int], **kw) -> PenaltyState:
    h = PenaltyState(prompt, **kw)
    for t in output:
        h.append(t)
    return h


# ---- penalties and filters against the references -------------------------------------------

def test_penalty_state_counts_incrementally():
    h = history([5, 3, 5, 9], [3, 7, 7, 7, 1])
    ids, counts = (t.tolist() for t in h.id_counts())
    assert dict(zip(ids, counts)) == {5: 0, 3: 1, 9: 0, 7: 3, 1: 1}
    assert (h.prompt_ids, h.output_ids) == ([5, 3, 5, 9], [3, 7, 7, 7, 1])
    with pytest.raises(ValueError, match="non-negative"):
        h.append(-1)


def test_penalties_match_reference():
    g = torch.Generator().manual_seed(0)
    params = [SP(repetition_penalty=1.3), SP(presence_penalty=0.7), SP(frequency_penalty=-0.4),
              SP(repetition_penalty=0.8, presence_penalty=-1.5, frequency_penalty=2.0), SP(), SP(presence_penalty=1.0)]
    hists = [history(torch.randint(0, V, (20,), generator=g).tolist(), torch.randint(0, V, (30,), generator=g).tolist())
             for _ in params[:-1]] + [PenaltyState([])]  # last row: no history at all
    logits = torch.randn(len(params), V, generator=g) * 3
    got = logits.clone()
    _apply_penalties(got, params, hists)
    for i, (p, h) in enumerate(zip(params, hists)):
        torch.testing.assert_close(got[i], ref_penalize(logits[i], h.prompt_ids, h.output_ids, p))


FILTERS = {
    "temp": SP(temperature=0.5),
    "top_k": SP(temperature=1.3, top_k=7),
    "top_p": SP(temperature=0.8, top_p=0.6),
    "top_k_top_p": SP(temperature=0.7, top_k=12, top_p=0.8),
    "min_p": SP(temperature=1.0, min_p=0.1),
    "all": SP(temperature=0.9, top_k=20, top_p=0.9, min_p=0.05),
    "top_k_all": SP(top_k=V + 5),
    "top_p_tiny": SP(top_p=1e-6),
    "plain": SP(),
}


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_filters_match_reference(batched):
    g = torch.Generator().manual_seed(1)
    params = list(FILTERS.values())
    logits = torch.randn(len(params), V, generator=g) * 3
    groups = [list(range(len(params)))] if batched else [[i] for i in range(len(params))]
    for rows in groups:  # alone, a top_p row with top_k takes the topk path; batched, the full sort
        x = logits[rows].clone()
        _warp(x, [params[i] for i in rows])
        for j, i in enumerate(rows):
            want = ref_probs(logits[i], params[i]).float()
            got = torch.softmax(x[j], -1)
            assert torch.equal(got > 0, want > 0), list(FILTERS)[i]
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_filter_paths_agree_exactly():
    """A row's cut is bitwise the same alone (topk path) and next to a top_p-only row (full sort)."""
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 5000, generator=g) * 4
    params = [SP(top_k=40, top_p=0.7), SP(top_k=300, top_p=0.95, min_p=0.01), SP(top_p=0.9)]
    batched = logits.clone()
    _warp(batched, params)
    for i in range(2):
        alone = logits[i:i + 1].clone()
        _warp(alone, [params[i]])
        assert torch.equal(alone[0], batched[i])


@pytest.mark.parametrize("vocab", [8, 200], ids=["whole_row", "candidates"])
def test_samples_follow_the_filtered_distribution(vocab):
    g = torch.Generator().manual_seed(2)
    row = torch.randn(vocab, generator=g) * 2
    p = SP(temperature=0.9, top_k=6, top_p=0.95)
    n = 4000
    gens = [torch.Generator().manual_seed(i) if i % 2 else None for i in range(n)]  # seeded and shared streams
    out = Sampler(generator=torch.Generator().manual_seed(3))(row.repeat(n, 1), [p] * n, [PenaltyState([])] * n, gens)
    freq = torch.bincount(out.token_ids, minlength=vocab).double() / n
    torch.testing.assert_close(freq, ref_probs(row, p), atol=0.03, rtol=0)


@pytest.mark.parametrize("with_top_p_alone", [False, True])
def test_candidates_pick_what_the_whole_row_picks(with_top_p_alone):
    """Rows that all have a top_k (or a top_p alone) draw from their top candidates; for every uniform the
    token is the one the whole row gives, with bf16-rounded logits (ties) too."""
    g = torch.Generator().manual_seed(9)
    logits = (torch.randn(5, 3000, generator=g) * 3).bfloat16().float()
    params = [SP(temperature=0.6, top_k=20, top_p=0.95), SP(top_k=5), SP(temperature=1.3, top_k=40, min_p=0.05),
              SP(top_k=1), SP(temperature=0.8, top_p=0.9) if with_top_p_alone else SP(top_k=700, top_p=0.5)]
    whole = logits.clone()
    _warp(whole, params)
    weights = _weights(whole)
    for u in torch.rand(300, 5, 1, generator=g):
        x = logits.clone()
        _temperature_(x, params)
        cand = _candidates(x, params)
        assert cand is not None and torch.equal(_draw(*cand, u), _draw(weights, None, u))


def test_a_nucleus_wider_than_the_candidates_takes_the_whole_row():
    x = torch.randn(2, 5000, generator=torch.Generator().manual_seed(4)) * 0.1  # nearly flat: 0.99 is ~4,900 tokens
    params = [SP(top_p=0.99), SP(top_k=20)]
    assert _candidates(x.clone(), params) is None
    assert _candidates(x.clone(), [SP(top_p=0.1), SP(top_k=20)]) is not None


def test_ties_past_the_candidates_take_the_whole_row():
    """top_k keeps every token tied with the k-th logit, however many: here 497 of them."""
    x = torch.zeros(1, 500)
    x[0, :3] = 1.0
    p = SP(temperature=1.0, top_k=10)
    assert _candidates(x.clone(), [p]) is None
    out = Sampler(generator=torch.Generator().manual_seed(0))(x.repeat(200, 1), [p] * 200, [PenaltyState([])] * 200,
                                                                [None] * 200)
    assert int(out.token_ids.max()) > 400


# ---- seeds, greedy, logprobs, min_tokens --------------------------------------------------------

def run_steps(params: list[SP], seeds: list[int | None], steps: int, shared_seed: int) -> list[list[int]]:
    """Sample `steps` steps with per-step logits shared by all rows; return each row's tokens."""
    logits_g = torch.Generator().manual_seed(42)
    sampler = Sampler(generator=torch.Generator().manual_seed(shared_seed))
    gens = [torch.Generator().manual_seed(s) if s is not None else None for s in seeds]
    hists = [PenaltyState([1, 2, 3]) for _ in params]
    for _ in range(steps):
        row = torch.randn(1000, generator=logits_g) * 2
        tokens = sampler(row.repeat(len(params), 1), params, hists, gens).token_ids.tolist()
        for h, t in zip(hists, tokens):
            h.append(t)
    return [h.output_ids for h in hists]


@pytest.mark.parametrize("p", [SP(temperature=0.8, seed=7, presence_penalty=0.5), SP(top_k=50, seed=7),
                               SP(temperature=1.2, top_p=0.9, seed=7)], ids=["temp", "top_k", "top_p"])
def test_seeded_request_is_independent_of_the_batch(p):
    alone = run_steps([p], [7], 30, shared_seed=0)[0]
    batch = [SP(temperature=1.0), SP(temperature=0, seed=3), p, SP(top_p=0.5, seed=8), SP(min_p=0.2), SP(top_k=3)]
    seeds = [None, 3, 7, 8, None, None]
    for shared_seed in (1, 2):
        assert run_steps(batch, seeds, 30, shared_seed)[2] == alone
    assert len(set(alone)) > 5  # it really samples


def test_greedy_is_argmax_of_penalized_logits_and_ignores_the_seed():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, V, generator=g)
    params = [SP(temperature=0, seed=1, repetition_penalty=2.0), SP(temperature=0), SP(temperature=1.0)]
    hists = [history([], [int(logits[0].argmax())]), PenaltyState([]), PenaltyState([])]
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    out = Sampler()(logits.clone(), params, hists, [gen, None, None])
    assert torch.equal(gen.get_state(), state)  # a greedy row draws no noise
    want0 = ref_penalize(logits[0], [], hists[0].output_ids, params[0]).argmax()
    assert out.token_ids[:2].tolist() == [int(want0), int(logits[1].argmax())]


@pytest.mark.parametrize("mode", ["raw", "penalized"])
def test_logprobs(mode):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, V, generator=g) * 2
    params = [SP(logprobs=3, presence_penalty=2.0), SP(), SP(logprobs=0, temperature=0), SP(logprobs=5, top_k=4)]
    hists = [history([], [int(logits[0].argmax())])] + [PenaltyState([]) for _ in range(3)]
    out = Sampler(logprobs_mode=mode)(logits.clone(), params, hists, [None] * 4)
    assert out.logprobs is not None and out.top_ids is not None and out.top_logprobs is not None
    assert out.top_ids.shape == (4, 5) and torch.isnan(out.logprobs[1])
    assert (out.top_ids[1] == -1).all() and torch.isnan(out.top_logprobs[1]).all()
    for i in (0, 2, 3):
        row = logits[i] if mode == "raw" else ref_penalize(logits[i], [], hists[i].output_ids, params[i])
        ref = torch.log_softmax(row, -1)
        tok = int(out.token_ids[i])
        torch.testing.assert_close(out.logprobs[i], ref[tok])
        n = params[i].logprobs
        top = out.top_logprobs[i, :n]
        assert torch.all(top[:-1] >= top[1:])  # sorted, best first
        torch.testing.assert_close(top, ref.topk(n).values)
        torch.testing.assert_close(ref[out.top_ids[i, :n]], top)


def test_no_logprobs_requested():
    out = Sampler()(torch.randn(2, V), [SP(), SP(temperature=0)], [PenaltyState([])] * 2, [None, None])
    assert out.logprobs is None and out.top_ids is None and out.token_ids.shape == (2,)


def test_min_tokens_masks_eos_and_stop_ids():
    eos, stop = 11, 12
    p = SP(temperature=0, min_tokens=3, stop_token_ids=[stop])
    h = PenaltyState([], min_tokens_ids=min_tokens_stop_ids(p, [eos]))
    assert h.min_tokens_ids == (eos, stop)
    assert min_tokens_stop_ids(SP(ignore_eos=True, stop_token_ids=[stop]), [eos]) == (stop,)
    sampler = Sampler()
    tokens = []
    for _ in range(4):
        logits = torch.zeros(1, V)
        logits[0, eos], logits[0, stop], logits[0, 5] = 10.0, 9.0, 1.0
        tokens.append(int(sampler(logits, [p], [h], [None]).token_ids[0]))
        h.append(tokens[-1])
    assert tokens == [5, 5, 5, eos]


def test_invalid_inputs():
    s, h = Sampler(), [PenaltyState([])]
    with pytest.raises(ValueError, match="float32"):
        s(torch.randn(1, V, dtype=torch.float64), [SP()], h, [None])
    with pytest.raises(ValueError, match="one params/history/generator per logits row"):
        s(torch.randn(2, V), [SP()], h, [None])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s(torch.randn(1, V), [SP(presence_penalty=1.0)], [history([V + 3], [])], [None])
    with pytest.raises(ValueError, match="logprobs_mode"):
        Sampler(logprobs_mode="processed")
    with pytest.raises(ValueError, match="non-negative"):
        PenaltyState([1, -2])


def test_logit_bias_forces_and_bans_tokens():
    from qwen35.engine.sampler import PenaltyState, Sampler
    from qwen35.engine.sampling_params import SamplingParams

    logits = torch.zeros(2, 50)
    params = [SamplingParams(temperature=0, logit_bias={7: 100.0}),
              SamplingParams(temperature=1.0, logit_bias={t: -100.0 for t in range(49)})]
    out = Sampler()(logits, params, [PenaltyState([1]), PenaltyState([1])], [None, torch.Generator().manual_seed(0)])
    assert out.token_ids.tolist() == [7, 49]
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={3: 500})


def test_allowed_token_ids_restrict_every_row_that_asks():
    logits = torch.arange(50, dtype=torch.float32).repeat(3, 1)  # 49 is every row's top token
    params = [SP(temperature=0, allowed_token_ids=[3, 8]), SP(temperature=0),
              SP(temperature=1.0, top_k=5, allowed_token_ids=[10, 2])]
    hist = [PenaltyState([1]) for _ in params]
    for seed in range(20):
        out = Sampler()(logits.clone(), params, hist, [None, None, torch.Generator().manual_seed(seed)])
        assert out.token_ids[:2].tolist() == [8, 49] and out.token_ids[2].item() in (2, 10)
    with pytest.raises(ValueError, match="allowed_token_ids"):
        SP(allowed_token_ids=[])
    with pytest.raises(ValueError, match="allowed_token_ids"):
        SP(allowed_token_ids=[1, -1])
    with pytest.raises(ValueError, match="allowed_token_ids has token id 50"):
        SP(allowed_token_ids=[50]).check_vocab(50)


class _Words:
    """A tokenizer of letters: 'a' is id 1, ..., ' ' is id 0; ' x' is one token (id 30 + x's id)."""

    def encode(self, text: str) -> list[int]:
        if text.startswith(" ") and len(text) > 1:
            return [30 + ord(text[1]) - 96, *self.encode(text[2:])]
        return [0 if c == " " else ord(c) - 96 for c in text]


def test_bad_words_ban_the_last_token_after_the_rest_of_the_word():
    p = SP(temperature=0, bad_words=["b", "cd"])
    p.update_from_tokenizer(_Words())
    # "b" alone and " b" (another first token, as many tokens); "cd" and " cd" likewise
    assert p.bad_words_token_ids == [[2], [32], [3, 4], [33, 4]]
    logits = torch.zeros(1, 40)
    logits[0, [2, 4, 32]] = torch.tensor([9.0, 8.0, 7.0])  # b > d > " b" > the rest
    hist = PenaltyState([1])
    assert Sampler()(logits.clone(), [p], [hist], [None]).token_ids.item() == 4  # b and " b" banned, d is fine
    hist.append(3)  # the output ends with "c": now "d" would finish "cd"
    assert Sampler()(logits.clone(), [p], [hist], [None]).token_ids.item() == 0
    with pytest.raises(ValueError, match="bad_words"):
        SP(bad_words=["  "])
