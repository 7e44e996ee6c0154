"""End-to-end engine behaviour on tiny random checkpoints (dense and MoE)."""

from __future__ import annotations

import pytest
import torch

from qwen35.engine import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _prompts(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 20000, (n,), generator=gen).tolist() for n in lengths]


def make_llm(path, **kw):
    args = dict(dtype="float32", max_model_len=512, max_num_seqs=8, kv_cache_memory=96 << 20)
    args.update(kw)
    return LLM(str(path), **args)


@pytest.fixture(scope="module", params=["tiny_ckpt", "tiny_moe_ckpt"])
def ckpt(request):
    return request.getfixturevalue(request.param)


def _ids(outs):
    return [o.outputs[0].token_ids for o in outs]


def test_greedy_identical_alone_batched_chunked_and_cached(ckpt):
    prompts = _prompts([5, 40, 130, 17, 64, 3])
    llm = make_llm(ckpt)
    alone = [_ids(llm.generate([p], GREEDY))[0] for p in prompts]
    assert _ids(llm.generate(prompts, GREEDY)) == alone
    chunked = make_llm(ckpt, max_num_batched_tokens=7)
    assert _ids(chunked.generate(prompts, GREEDY)) == alone
    # second turn of a "chat": the history is prompt + answer, then more tokens
    hist = prompts[2] + alone[2]
    follow = hist + [11, 12, 13]
    want = _ids(make_llm(ckpt, enable_prefix_caching=False).generate([follow], GREEDY))[0]
    out = llm.generate([follow], GREEDY)[0]
    assert out.num_cached_tokens > 0
    assert out.outputs[0].token_ids == want


def test_seeded_sampling_ignores_batch_composition(ckpt):
    """A seeded request draws the same tokens alone or in a batch, as far as its logits are the same. They need
    not be: on an AMD EPYC with AVX-512, fp32 `mm` and `_grouped_mm` round a row differently in a GEMM of 1 and
    of 4 rows (2026-12-07), and the MoE checkpoint's draw moved there (its experts' groups are sized by the
    batch). So for MoE only the seed's reproducibility is checked (the sampler's own batch independence:
    tests/engine/test_sampler.py)."""
    llm = make_llm(ckpt)
    p = _prompts([30], seed=3)[0]
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=10, ignore_eos=True)
    alone = _ids(llm.generate([p], params))[0]
    assert _ids(llm.generate([p], params))[0] == alone
    if llm.engine.model_cfg.is_moe:
        return
    others = _prompts([12, 50, 7], seed=4)
    batch = llm.generate(others[:2] + [p] + others[2:],
                         [SamplingParams(temperature=1.0, max_tokens=10), GREEDY, params, SamplingParams(seed=9)])
    assert batch[2].outputs[0].token_ids == alone


def test_pools_return_to_idle_after_abort_and_completion(ckpt):
    llm = make_llm(ckpt, max_num_batched_tokens=16)
    eng = llm.engine
    idle = eng.cache_usage()
    for i, p in enumerate(_prompts([100, 60, 9, 33])):
        eng.add_request(f"r{i}", p, SamplingParams(max_tokens=30, ignore_eos=True))
    eng.step()  # r0 is mid-prefill
    assert eng.abort("r0")
    for _ in range(4):
        eng.step()  # the others are decoding
    assert eng.abort("r1")
    while eng.has_unfinished():
        eng.step()
    eng.scheduler.prefix.clear()
    usage = eng.cache_usage()
    assert usage["blocks_free"] == idle["blocks_free"] and usage["slots_free"] == idle["slots_free"]
    assert all(r == 0 for r in eng.scheduler.blocks.refs)


def test_bad_requests_are_refused_and_the_engine_keeps_serving(ckpt):
    llm = make_llm(ckpt, max_model_len=64)
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([list(range(64))], GREEDY)
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([[-1, 5]], GREEDY)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="stop must be a list"):
        SamplingParams(stop=5)
    with pytest.raises(ValueError, match="sampling_params must be a SamplingParams"):
        llm.generate("a", {"max_tokens": 3})
    for bad in ({"logit_bias": {10**9: 5}}, {"stop_token_ids": [10**9]}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            llm.generate([[1, 2]], SamplingParams(max_tokens=2, **bad))
    assert len(llm.generate([[1, 2, 3]], GREEDY)[0].outputs[0].token_ids) == 12


def test_n_logprobs_and_lengths(ckpt):
    llm = make_llm(ckpt)
    out = llm.generate([[5, 6, 7, 8]], SamplingParams(n=3, temperature=1.0, seed=0, max_tokens=5, logprobs=2,
                                                     ignore_eos=True))[0]
    assert len(out.outputs) == 3 and all(len(c.token_ids) == 5 for c in out.outputs)
    assert all(c.finish_reason == "length" for c in out.outputs)
    c = out.outputs[0]
    assert len(c.logprobs) == 5 and all(tok in lp for tok, lp in zip(c.token_ids, c.logprobs))
    assert abs(c.cumulative_logprob - sum(lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs))) < 1e-4


def test_n_sub_requests_prefill_their_prompt_once(tiny_ckpt):
    """n = 4: the first sub-request computes the prompt and saves it at its last token but one; the other three
    wait for it and start from there (before, all were admitted at once and each computed the whole prompt)."""
    llm = make_llm(tiny_ckpt)
    eng = llm.engine
    prompt = list(range(1000, 1300))
    out = llm.generate([prompt], SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=4, ignore_eos=True))[0]
    usage = eng.cache_usage()
    assert len(out.outputs) == 4 and all(len(c.token_ids) == 4 for c in out.outputs)
    assert (usage["prefix_hits"], usage["prefix_hit_tokens"]) == (3, 3 * (len(prompt) - 1))
    assert out.num_cached_tokens == len(prompt) - 1


def test_context_length_is_checked_and_hf_config_overrides_the_file(tiny_ckpt):
    import json

    with pytest.raises(ValueError, match="max_model_len 5000 is larger than the 4096 tokens"):
        make_llm(tiny_ckpt, max_model_len=5000)
    config = json.loads((tiny_ckpt / "config.json").read_text())
    text = config.get("text_config", config)
    text["rope_parameters"] = {**text.get("rope_parameters", {}), "rope_type": "yarn", "factor": 2.0}
    llm = make_llm(tiny_ckpt, max_model_len=8192, hf_config=config)  # YaRN: 2 x 4096
    assert llm.engine.max_model_len == 8192 and llm.engine.model_cfg.text.rope.rope_type == "yarn"
    assert json.loads((tiny_ckpt / "config.json").read_text()) != config  # the checkpoint is not touched


def test_yarn_allows_factor_times_the_original_window_and_no_more(tiny_ckpt):
    """max_model_len may reach factor x original_max_position_embeddings (here 4 x 4096, four times the
    checkpoint's max_position_embeddings), and the engine refuses one token more."""
    import json

    config = json.loads((tiny_ckpt / "config.json").read_text())
    text = config.get("text_config", config)
    text["rope_parameters"] = {**text.get("rope_parameters", {}), "rope_type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 4096}
    llm = make_llm(tiny_ckpt, max_model_len=4 * 4096, max_num_seqs=2, hf_config=config)
    assert llm.engine.max_model_len == 16384 and llm.engine.model_cfg.text.supported_length == 16384
    with pytest.raises(ValueError, match="max_model_len 16385 is larger than the 16384 tokens"):
        make_llm(tiny_ckpt, max_model_len=4 * 4096 + 1, max_num_seqs=2, hf_config=config)
    assert make_llm(tiny_ckpt, max_model_len=None, max_num_seqs=2, hf_config=config).engine.max_model_len == 8192


def test_chat_continues_the_final_message_and_names_bad_arguments(tiny_ckpt):
    llm = make_llm(tiny_ckpt)
    conv = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "The answer is"}]
    params = SamplingParams(temperature=0, max_tokens=2)
    out = llm.chat(conv, params, add_generation_prompt=False, continue_final_message=True)[0]
    assert llm.tokenizer.decode(out.prompt_token_ids).endswith("The answer is")
    closed = llm.chat(conv, params, add_generation_prompt=False)[0]
    assert llm.tokenizer.decode(closed.prompt_token_ids).rstrip().endswith("<|im_end|>")
    with pytest.raises(ValueError, match="continue_final_message"):
        llm.chat(conv, params, continue_final_message=True)  # with the default generation prompt
    for key in ("add_generation_prompt", "tools", "messages"):
        with pytest.raises(ValueError, match=key):
            llm.chat(conv, params, chat_template_kwargs={key: False})


def test_engine_seed_makes_unseeded_requests_repeat(tiny_ckpt):
    """`EngineConfig.seed` (`LLM(seed=)`, `qwen35 serve --seed`) seeds the engine's global RNG at start, which
    requests without their own seed draw from."""
    params = SamplingParams(temperature=1.5, max_tokens=8, ignore_eos=True)
    runs = [make_llm(tiny_ckpt, seed=7).generate([[1, 2, 3]], params)[0].outputs[0].token_ids for _ in range(2)]
    assert runs[0] == runs[1]


def test_truncate_prompt_tokens_and_bad_words(tiny_ckpt):
    """truncate_prompt_tokens keeps the prompt's last k tokens (vLLM's left truncation); bad_words are tokenised
    by the engine and never generated."""
    llm = make_llm(tiny_ckpt)
    prompt = _prompts([40], seed=5)[0]
    cut = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                                truncate_prompt_tokens=9))[0]
    assert cut.prompt_token_ids == prompt[-9:]
    assert cut.outputs[0].token_ids == _ids(llm.generate([prompt[-9:]], SamplingParams(
        temperature=0, max_tokens=6, ignore_eos=True)))[0]
    assert llm.generate([prompt], SamplingParams(max_tokens=2, truncate_prompt_tokens=-1))[0].prompt_token_ids \
        == prompt
    assert llm.generate([prompt], SamplingParams(max_tokens=2, truncate_prompt_tokens=512))[0].prompt_token_ids \
        == prompt  # the context length itself, as TRL sets it: a short prompt is kept whole
    with pytest.raises(ValueError, match="truncate_prompt_tokens 513 is more than the context"):
        llm.generate([prompt], SamplingParams(max_tokens=2, truncate_prompt_tokens=513))
    free = _ids(llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)))[0]
    word = llm.get_tokenizer().decode([free[0]])
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, bad_words=[word])
    banned = _ids(llm.generate([prompt], params))[0]
    assert banned[0] != free[0] and free[0] not in banned
    assert params.bad_words_token_ids is None  # the engine tokenised a copy


def test_cache_salt_keeps_prefix_cache_entries_apart(tiny_ckpt):
    """vLLM's cache_salt: a prompt reuses the prefix cache only of prompts with the same salt (none included)."""
    llm = make_llm(tiny_ckpt)
    prompt = _prompts([70], seed=9)[0]
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)

    def run(ids, salt=None):
        p = {"prompt_token_ids": ids} if salt is None else {"prompt_token_ids": ids, "cache_salt": salt}
        out = llm.generate(p, params)[0]
        return out.num_cached_tokens, ids + out.outputs[0].token_ids + [5, 6, 7]  # the next turn's prompt

    hits, follow = run(prompt)
    assert hits == 0 and run(follow)[0] > 0  # a finished sequence is saved, and its next turn reuses it
    assert run(follow, "tenant-a")[0] == 0
    hits, follow_a = run(prompt, "tenant-a")
    assert hits == 0 and run(follow_a, "tenant-b")[0] == 0 and run(follow_a, "tenant-a")[0] > 0
    with pytest.raises(ValueError, match="cache_salt"):
        run(prompt, "")


def test_prefix_keys_are_keyed_hashes():
    """Keys are a keyed BLAKE2b of the tokens and salt (not Python's invertible tuple hash)."""
    from qwen35.engine.kv_cache_manager import prefix_key

    ids = list(range(40))
    assert prefix_key(ids, 20) == prefix_key(ids[:20] + [7], 20) != prefix_key(ids, 21)
    assert len({prefix_key(ids, 20), prefix_key(ids, 20, "a"), prefix_key(ids, 20, "b")}) == 3
    assert prefix_key([-5, 3], 2) != prefix_key([5, 3], 2) and isinstance(prefix_key(ids, 3), bytes)
