"""The sampler is total (a valid token for every row, whatever the logits hold) and SamplingParams keeps
values that would break it out, with vLLM's bounds. References are per-row, as in test_sampler.py."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from qwen35.engine.sampler import PenaltyState, Sampler, _warp
from qwen35.engine.sampling_params import SamplingParams as SP

from .test_sampler import history, ref_probs

V = 97
NAN, INF = float("nan"), float("inf")

# one of each sampling path: greedy, plain, temperature, top_k, top_p (full sort), top_k + top_p, min_p
PARAMS = [SP(temperature=0), SP(), SP(temperature=0.3), SP(top_k=5), SP(top_p=0.7), SP(top_k=9, top_p=0.5),
          SP(min_p=0.2), SP(temperature=0.01, logprobs=3)]


def _sample(logits: torch.Tensor, params: list[SP], hists=None, seed: int = 0) -> torch.Tensor:
    hists = hists or [PenaltyState([]) for _ in params]
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(params))]
    return Sampler()(logits.clone(), params, hists, gens).token_ids


def test_tiny_top_p_keeps_the_top_token():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, V, generator=g) * 3
    params = [SP(top_p=5e-324), SP(top_p=5e-324, top_k=4), SP(top_p=1e-45)]
    x = logits.clone()
    _warp(x, params)  # used to gather at index -1: the keep mask was all false
    for i, p in enumerate(params):
        want = ref_probs(logits[i], p)
        assert torch.equal(torch.isfinite(x[i]), want > 0) and int(want.argmax()) == int(logits[i].argmax())
    for seed in range(5):
        assert _sample(logits, params, seed=seed).tolist() == logits.argmax(-1).tolist()


def test_tiny_temperature_is_raised_to_vllms_floor(caplog):
    with caplog.at_level(logging.WARNING, logger="qwen35.engine"):
        p = SP(temperature=1e-300)
    assert p.temperature == 0.01 and "0.01" in caplog.text and not p.greedy
    assert SP(temperature=0).temperature == 0 and SP(temperature=0.01).temperature == 0.01
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, V, generator=g) * 5
    x = logits.clone()
    _warp(x, [p, p])
    for i in range(2):
        # float32 logits / 0.01: a few ulps of the scaled logits
        torch.testing.assert_close(torch.softmax(x[i], -1), ref_probs(logits[i], p).float(), atol=1e-4, rtol=1e-3)


def test_tiny_repetition_penalty_does_not_overflow():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, V, generator=g) * 3
    hist = [3, 7, 11, 20, 40]
    p_greedy, p_sampled = SP(temperature=0, repetition_penalty=5e-324), SP(repetition_penalty=5e-324)
    hists = [history(hist, []) for _ in range(4)]
    tokens = _sample(logits, [p_greedy, p_sampled, p_greedy, p_sampled], hists).tolist()
    for i, t in enumerate(tokens):  # a positive history logit divided by ~0 wins over everything
        winners = [h for h in hist if logits[i, h] > 0]
        assert (t in winners) if winners else 0 <= t < V


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_non_finite_logits_give_valid_tokens(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(len(PARAMS), V, generator=g) * 2
    nan_ids = torch.randperm(V, generator=g)[:V // 2]
    cases = {}
    x = base.clone()
    x[:, nan_ids] = NAN  # half the vocabulary is NaN: never chosen
    cases["some_nan"] = x
    cases["all_nan"] = torch.full_like(base, NAN)
    cases["all_neg_inf"] = torch.full_like(base, -INF)
    x = base.clone()
    x[:, 13] = INF  # one +inf logit: it must win
    cases["pos_inf"] = x
    x = base.clone()
    x[:, [4, 50]] = INF
    x[:, nan_ids] = NAN
    cases["mixed"] = x
    for name, logits in cases.items():
        tokens = _sample(logits, PARAMS, [PenaltyState([1, 2]) for _ in PARAMS], seed=seed).tolist()
        assert all(0 <= t < V for t in tokens), name
        for i, t in enumerate(tokens):
            row = logits[i]
            if name == "some_nan":
                assert not math.isnan(row[t]), name
                if PARAMS[i].greedy:
                    assert t == int(row.nan_to_num(nan=-INF).argmax())
            elif name in ("all_nan", "all_neg_inf"):
                assert t == 0, (name, i)  # no finite logit: the deterministic fallback
            elif name == "pos_inf":
                assert t == 13, (name, i)
            else:
                assert t in (4, 50), (name, i)


def test_masked_rows_fall_back_to_token_zero():
    """A row whose every token is banned (logit_bias, here) still returns a valid id, deterministically."""
    ban = {t: -100.0 for t in range(V)}
    logits = torch.full((2, V), -INF)
    logits[:, 5] = 0.0
    params = [SP(logit_bias=ban), SP(temperature=0, logit_bias=ban)]
    assert _sample(logits, params).tolist() == [5, 5]  # -100 on a finite logit stays finite
    assert _sample(torch.full((2, V), -INF), params).tolist() == [0, 0]


# ---- SamplingParams bounds ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    (dict(seed=2 ** 64), "seed"), (dict(seed=-2 ** 63 - 1), "seed"), (dict(seed=2 ** 63), "seed"),
    (dict(seed=2 ** 63 - 1, n=2), "seed"), (dict(seed=1.5), "seed"),
    (dict(temperature=INF), "temperature"), (dict(temperature=NAN), "temperature"),
    (dict(temperature=10 ** 400), "temperature"), (dict(top_p=NAN), "top_p"), (dict(top_p=INF), "top_p"),
    (dict(min_p=NAN), "min_p"), (dict(repetition_penalty=INF), "repetition_penalty"),
    (dict(repetition_penalty=NAN), "repetition_penalty"), (dict(repetition_penalty=10 ** 400), "repetition_penalty"),
    (dict(presence_penalty=-INF), "presence_penalty"), (dict(frequency_penalty=NAN), "frequency_penalty"),
    (dict(logit_bias={1: NAN}), "logit_bias"), (dict(logit_bias={1: INF}), "logit_bias"),
    (dict(max_tokens=2 ** 63), "max_tokens"), (dict(min_tokens=2 ** 63, max_tokens=None), "min_tokens"),
    (dict(prompt_logprobs=-1), "prompt_logprobs"), (dict(prompt_logprobs=21), "prompt_logprobs"),
    (dict(prompt_logprobs=True), "prompt_logprobs"),
])
def test_params_out_of_bounds_name_the_field(kwargs, field):
    with pytest.raises(ValueError) as e:
        SP(**kwargs)
    assert str(e.value).split(" ", 1)[0] == field, str(e.value)


def test_params_at_the_bounds_are_accepted():
    assert SP(seed=2 ** 63 - 1).seed == 2 ** 63 - 1 and SP(seed=-2 ** 63).seed == -2 ** 63
    assert SP(seed=2 ** 63 - 3, n=3).n == 3
    assert SP(max_tokens=2 ** 63 - 1, min_tokens=2 ** 63 - 1).min_tokens == 2 ** 63 - 1
    assert SP(repetition_penalty=5e-324, top_p=5e-324, temperature=1e300).temperature == 1e300
    assert SP(prompt_logprobs=0).prompt_logprobs == 0 and SP(prompt_logprobs=20).prompt_logprobs == 20
    for seed in (2 ** 63 - 1, -2 ** 63):  # what torch takes, so the engine can seed every accepted value
        torch.Generator().manual_seed(seed)


def test_huge_temperature_is_uniform_over_the_unmasked_tokens():
    logits = torch.randn(1, V)
    logits[0, :10] = -INF
    x = logits.clone()
    _warp(x, [SP(temperature=1e300)])  # 1e300 is inf in float32: -inf / inf would be NaN
    assert torch.isneginf(x[0, :10]).all() and torch.isfinite(x[0, 10:]).all()
