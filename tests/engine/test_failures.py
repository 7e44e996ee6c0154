"""A request never breaks the engine for others: all-or-nothing add, per-request failures, failed steps."""

from __future__ import annotations

import asyncio

import pytest

from qwen35.engine import AsyncLLM, LLMEngine, RequestFailed, SamplingParams

from .test_engine import _prompts, make_llm

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_ckpt):
    return make_llm(tiny_ckpt, max_num_batched_tokens=64)


def _assert_idle(eng: LLMEngine) -> None:
    assert not eng.has_unfinished() and not eng.parents and not eng.seqs
    eng.scheduler.prefix.clear()
    usage = eng.cache_usage()
    assert usage["blocks_free"] == usage["blocks_total"] and usage["slots_free"] == usage["slots_total"]
    assert all(r == 0 for r in eng.scheduler.blocks.refs)


def _run(eng: LLMEngine) -> dict:
    done = {}
    while eng.has_unfinished():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
    return done


def _bad_seed(seed: int, n: int) -> SamplingParams:
    """Params that got past validation (mutated afterwards): the engine must still refuse them cleanly."""
    p = SamplingParams(n=n, seed=0, max_tokens=4)
    p.seed = seed
    return p


@pytest.mark.parametrize("seed, n", [(2 ** 64, 1), (-2 ** 63 - 1, 1), (2 ** 63 - 1, 2), (2 ** 64, 3)])
def test_add_is_all_or_nothing(llm, seed, n):
    eng = llm.engine
    with pytest.raises(ValueError, match="^seed"):
        SamplingParams(n=n, seed=seed)
    with pytest.raises(ValueError, match="^seed"):
        eng.add_request("bad", [1, 2, 3], _bad_seed(seed, n))
    assert not eng.has_unfinished() and not eng.scheduler.waiting and not eng.parents and not eng.seqs
    # the engine keeps serving, and the refused id is free again
    eng.add_request("bad", [1, 2, 3], GREEDY)
    out = _run(eng)["bad"]
    assert out.error is None and len(out.outputs[0].token_ids) == 12
    _assert_idle(eng)


def test_an_interrupted_generate_leaves_nothing_running(llm, monkeypatch):
    """Ctrl-C inside `LLM.generate` aborts its requests: the next call does not first run them for nobody."""
    eng, calls = llm.engine, [0]
    step = eng.step

    def interrupted():
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return step()

    monkeypatch.setattr(eng, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(["Hello"] * 4, SamplingParams(max_tokens=500, ignore_eos=True))
    assert not eng.has_unfinished()
    _assert_idle(eng)


def test_a_failing_request_ends_alone(llm):
    eng = llm.engine
    prompts = _prompts([9, 30, 5], seed=7)
    alone = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]
    for i, p in enumerate(prompts):
        eng.add_request(f"r{i}", p, GREEDY)
    eng.add_request("multi", prompts[0], SamplingParams(n=2, seed=1, max_tokens=12, ignore_eos=True))
    eng.step()  # everything is admitted and sampled once

    def boom(token):
        raise KeyError("detokenizer bug")

    eng.seqs["r1"].stop.feed = boom  # pinned to r1
    eng.seqs["multi#1"].stop.feed = boom  # one sub-request: the whole request fails
    done = _run(eng)
    bad = done["r1"]
    assert bad.finished and bad.error and "KeyError" in bad.error and "detokenizer bug" not in bad.error
    assert bad.outputs[0].finish_reason == "error"
    assert done["multi"].error and [c.finish_reason for c in done["multi"].outputs] == ["error", "error"]
    for i in (0, 2):  # the others went on, unchanged
        good = done[f"r{i}"]
        assert good.error is None and good.outputs[0].finish_reason == "length"
        assert good.outputs[0].token_ids == alone[i]
    _assert_idle(eng)


def test_logprobs_zero_alone_in_the_batch(llm):
    """logprobs=0 (chat `logprobs: true` without top_logprobs): the sampler returns no top_* tensors."""
    out = llm.generate([[4, 5, 6]], SamplingParams(temperature=0, max_tokens=3, logprobs=0, ignore_eos=True))[0]
    c = out.outputs[0]
    assert out.error is None and [list(e) for e in c.logprobs] == [[t] for t in c.token_ids]


def test_a_failed_forward_fails_its_step_and_the_engine_recovers(llm, monkeypatch):
    eng = llm.engine
    # warm the prefix cache, so that the failing step also holds shared blocks through a hit
    first = _prompts([40], seed=9)[0]
    shared = first + llm.generate([first], GREEDY)[0].outputs[0].token_ids  # the next "chat turn" extends it
    assert eng.cache_usage()["prefix_entries"] > 0
    forward, calls = eng.runner.forward, []

    def failing(seqs):
        calls.append(len(seqs))
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return forward(seqs)

    monkeypatch.setattr(eng.runner, "forward", failing)
    eng.add_request("a", [7, 8, 9], GREEDY)
    eng.step()  # a is decoding
    eng.add_request("hit", shared + [1, 2], GREEDY)
    done = _run(eng)
    assert calls[1] == 2  # both were in the failed step
    for rid in ("a", "hit"):
        assert done[rid].error == "forward pass failed (RuntimeError)"
        assert done[rid].outputs[0].finish_reason == "error"
    assert eng.scheduler.prefix.hits > 0
    out = llm.generate([shared + [1, 2]], GREEDY)[0]  # the prefix cache is still good
    assert out.error is None and out.num_cached_tokens > 0
    want = make_llm(llm.engine.cfg.model, enable_prefix_caching=False).generate([shared + [1, 2]], GREEDY)[0]
    assert out.outputs[0].token_ids == want.outputs[0].token_ids
    _assert_idle(eng)


def test_a_failed_sampler_call_fails_its_step(llm, monkeypatch):
    eng = llm.engine
    sampler, calls = eng.sampler, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("kernel failed")
        return sampler(*args)

    monkeypatch.setattr(eng, "sampler", failing)
    outs = llm.generate([[1, 2], [3, 4, 5]], GREEDY)
    assert all(o.error == "sampling failed (RuntimeError)" for o in outs)
    assert llm.generate([[1, 2]], GREEDY)[0].error is None
    _assert_idle(eng)


def test_async_request_failed_and_num_unfinished(tiny_ckpt, monkeypatch):
    engine = AsyncLLM(engine=make_llm(tiny_ckpt).engine)
    eng = engine.engine
    forward, calls = eng.runner.forward, []

    def failing(seqs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return forward(seqs)

    monkeypatch.setattr(eng.runner, "forward", failing)
    seen = []

    async def collect(prompt, params=GREEDY):
        outs = []
        async for out in engine.generate(prompt, params):
            seen.append(engine.num_unfinished)
            outs.append(out)
        return outs

    async def main():
        first = await asyncio.gather(collect([1, 2, 3]), collect([4, 5]), return_exceptions=True)
        with pytest.raises(ValueError, match="seed"):
            await collect([1, 2], _bad_seed(2 ** 64, 2))
        assert engine.num_unfinished == 0
        return first, await collect([6, 7, 8])

    try:
        (a, b), after = asyncio.run(main())
        assert isinstance(a, RequestFailed) and isinstance(b, RequestFailed)
        assert str(a) == "forward pass failed (RuntimeError)" and a.output.finished
        assert after[-1].finished and len(after[-1].outputs[0].token_ids) == 12
        assert 2 in seen and engine.num_unfinished == 0
        idle = engine.call(lambda e: (e.scheduler.prefix.clear(), e.has_unfinished(), e.cache_usage()))
        assert not idle[1] and idle[2]["blocks_free"] == idle[2]["blocks_total"]
        assert idle[2]["slots_free"] == idle[2]["slots_total"]
    finally:
        engine.shutdown()


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tmp_path):
    """A checkpoint whose tokenizer.json is missing falls back to the built-in 248k vocabulary; over a model of
    4,096 ids its tokens would index past the embedding and fail every request batched with them."""
    import shutil

    from qwen35.default_model import default_model_dir

    ckpt = tmp_path / "demo"
    shutil.copytree(default_model_dir(), ckpt)
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="vocab_size 4096"):
        make_llm(ckpt)
