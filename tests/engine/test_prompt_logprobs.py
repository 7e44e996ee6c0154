"""Prompt logprobs against a direct forward pass; prefix-cache accounting; vLLM prompt dicts in LLM.generate."""

from __future__ import annotations

import pytest
import torch

from qwen35.engine import SamplingParams
from qwen35.model import ForwardBatch, SeqSpec

from .test_engine import _prompts, make_llm


@pytest.fixture(scope="module")
def llm(tiny_ckpt):
    return make_llm(tiny_ckpt)


def _reference(llm, prompt: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits at every prompt position, computed in one plain forward pass."""
    model, bs = llm.engine.model, 16
    blocks = -(-len(prompt) // bs)
    cache = model.new_cache(blocks, bs, 1)
    batch = ForwardBatch.build([SeqSpec(prompt, 0, 0, list(range(blocks)))], bs)
    with torch.inference_mode():
        return torch.log_softmax(model.logits(model(batch, cache)), -1)


def _check(entries, prompt: list[int], ref: torch.Tensor, k: int) -> None:
    assert entries is not None and len(entries) == len(prompt) and entries[0] is None
    for i in range(1, len(prompt)):
        entry, row, tok = entries[i], ref[i - 1], prompt[i]
        assert next(iter(entry)) == tok  # the prompt token first, then the top k
        assert abs(entry[tok].logprob - float(row[tok])) < 1e-4
        top = row.topk(k) if k else None
        if k:
            assert set(top.indices.tolist()) <= set(entry) and len(entry) <= k + 1
            for t, v in zip(top.indices.tolist(), top.values.tolist()):
                assert abs(entry[t].logprob - v) < 1e-4
        else:
            assert list(entry) == [tok]


@pytest.mark.parametrize("k", [0, 3])
def test_prompt_logprobs_match_a_full_forward(llm, tiny_ckpt, k):
    prompts = _prompts([1, 2, 37, 150], seed=11)
    refs = [_reference(llm, p) for p in prompts]
    params = SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=k, ignore_eos=True)
    chunked = make_llm(tiny_ckpt, max_num_batched_tokens=7)
    for engine in (llm, chunked):
        outs = engine.generate(prompts, params)
        for out, p, ref in zip(outs, prompts, refs):
            _check(out.prompt_logprobs, p, ref, k)
    # without prompt_logprobs: none
    assert llm.generate([prompts[2]], SamplingParams(max_tokens=2))[0].prompt_logprobs is None


def test_prompt_logprobs_skip_the_prefix_cache(llm):
    prompt = _prompts([60], seed=12)[0]
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    history = prompt + llm.generate([prompt], greedy)[0].outputs[0].token_ids
    follow = history + [3, 4, 5]
    assert llm.generate([follow], greedy)[0].num_cached_tokens > 0  # it would hit
    out = llm.generate([follow], SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=2))[0]
    assert out.num_cached_tokens == 0
    ref = _reference(llm, follow)
    _check(out.prompt_logprobs, follow, ref, 2)
    # n > 1: sub-request 0 scores the prompt, the others may still use the cache
    out = llm.generate([follow], SamplingParams(max_tokens=2, prompt_logprobs=2, n=3, seed=0))[0]
    assert len(out.outputs) == 3 and out.num_cached_tokens > 0
    _check(out.prompt_logprobs, follow, ref, 2)


def test_streamed_outputs_carry_prompt_logprobs_once_complete(llm):
    eng = llm.engine
    prompt = _prompts([20], seed=13)[0]
    eng.add_request("s", prompt, SamplingParams(max_tokens=3, prompt_logprobs=1, ignore_eos=True))
    outs = []
    while eng.has_unfinished():
        outs += eng.step()
    assert len(outs) == 3 and all(o.prompt_logprobs is outs[0].prompt_logprobs for o in outs)
    assert len(outs[0].prompt_logprobs) == len(prompt)


def test_cache_usage_counts_what_the_prefix_cache_holds(llm):
    eng = llm.engine
    eng.scheduler.prefix.clear()
    idle = eng.cache_usage()
    assert idle["blocks_prefix_only"] == 0 and idle["prefix_slots_used"] == 0 and idle["prefix_cache_bytes"] == 0
    assert idle["prefix_slots_total"] == eng.plan.prefix_slots and idle["num_waiting_requests"] == 0
    prompt = _prompts([70], seed=14)[0]
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    usage = eng.cache_usage()
    tokens = len(prompt) + len(out.outputs[0].token_ids) - 1  # the last token is never computed
    blocks = -(-tokens // eng.cfg.block_size)
    assert usage["prefix_entries"] == 1 and usage["prefix_slots_used"] == 1
    assert usage["blocks_prefix_only"] == blocks == usage["blocks_total"] - usage["blocks_free"]
    assert usage["prefix_cache_bytes"] == blocks * eng.plan.block_bytes + eng.plan.slot_bytes
    # a running request sharing those blocks: they are no longer the prefix cache's alone
    hist = prompt + out.outputs[0].token_ids
    eng.add_request("hit", hist + [1], SamplingParams(n=2, max_tokens=2, ignore_eos=True))
    eng.add_request("other", [1, 2, 3], SamplingParams(max_tokens=2))
    usage = eng.cache_usage()
    assert usage["num_waiting_requests"] == 2 and usage["num_running_requests"] == 0 and usage["waiting"] == 3
    eng.step()
    usage = eng.cache_usage()
    assert usage["num_waiting_requests"] == 0 and usage["num_running_requests"] == 2
    assert usage["blocks_prefix_only"] < blocks
    while eng.has_unfinished():
        eng.step()
    assert eng.cache_usage()["num_running_requests"] == 0


def test_generate_accepts_vllm_prompt_dicts(llm):
    greedy = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    ids = [5, 6, 7]
    want = llm.generate([ids], greedy)[0].outputs[0].token_ids
    outs = llm.generate([{"prompt_token_ids": ids}, ids, {"prompt_token_ids": ids}], greedy)
    assert [o.outputs[0].token_ids for o in outs] == [want] * 3
    assert llm.generate({"prompt_token_ids": ids}, greedy)[0].outputs[0].token_ids == want
    for bad, match in [({"prompt": 5}, "prompt dict"), ({"text": "hi"}, "prompt dict"),
                       ({"prompt_token_ids": ["a"]}, "token-id prompt"), ([{"prompt_token_ids": [1.5]}], "token-id"),
                       (3.5, "prompts must be"), ([None], "a prompt must be")]:
        with pytest.raises(ValueError, match=match):
            llm.generate(bad, greedy)
    # a bad prompt after good ones runs nothing
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([ids, [-1]], greedy)
    assert not llm.engine.has_unfinished()
