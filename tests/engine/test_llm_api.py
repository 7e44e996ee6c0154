"""The offline `LLM` API as vLLM scripts use it: default sampling from generation_config, `Logprob` objects,
`use_tqdm`, `get_tokenizer()`, any sequence of prompts, and vLLM's keywords that have nothing to do here."""

from __future__ import annotations

import json
import shutil

import pytest

from qwen35.engine import LLM, SamplingParams
from qwen35.engine.outputs import Logprob


@pytest.fixture(scope="module")
def llm(tiny_ckpt, tmp_path_factory):
    ckpt = shutil.copytree(tiny_ckpt, tmp_path_factory.mktemp("api") / "ckpt")
    (ckpt / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20,
                                                             "max_new_tokens": 3}))
    return LLM(str(ckpt), dtype="float32", max_model_len=256, max_num_seqs=4, kv_cache_memory=48 << 20,
               gpu_memory_utilization=0.9, trust_remote_code=True, enforce_eager=True, swap_space=4)


def test_requests_without_params_sample_with_the_generation_config(llm):
    p = llm.get_default_sampling_params()
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens) == (0.6, 0.95, 20, 3)
    out = llm.generate(("Hello", "Bonjour"), use_tqdm=False)  # any sequence of prompts
    assert [len(o.outputs[0].token_ids) for o in out] == [3, 3]


def test_logprobs_are_logprob_objects(llm):
    out = llm.generate("Hello there", SamplingParams(temperature=0, max_tokens=2, logprobs=2, prompt_logprobs=1))[0]
    first = out.outputs[0].logprobs[0]
    chosen = out.outputs[0].token_ids[0]
    assert all(isinstance(v, Logprob) for v in first.values()) and len(first) == 2  # greedy: chosen is the top
    assert first[chosen].rank == 1 and first[chosen].decoded_token == llm.get_tokenizer().decode([chosen])
    assert sorted(v.rank for v in first.values()) == [1, 2]
    assert out.outputs[0].cumulative_logprob == pytest.approx(sum(
        e[t].logprob for e, t in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)))
    prompt = out.prompt_logprobs
    assert prompt[0] is None and all(isinstance(v, Logprob) for e in prompt[1:] for v in e.values())


def test_chat_takes_a_template_and_vllm_keywords(llm):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    out = llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=1), use_tqdm=False,
                   chat_template=template, mm_processor_kwargs={"max_pixels": 65536})[0]
    assert out.prompt_token_ids == llm.get_tokenizer().encode("Hi")


def test_unsupported_keywords_are_named(tiny_ckpt):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LLM(str(tiny_ckpt), kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="tokenizer='/elsewhere'"):
        LLM(str(tiny_ckpt), tokenizer="/elsewhere")
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        LLM(str(tiny_ckpt), tokenizer=str(tiny_ckpt))


def test_a_tokenizer_from_another_directory(tiny_ckpt, tmp_path):
    """vLLM's tokenizer= / --tokenizer: that directory's tokenizer.json and chat template replace the
    checkpoint's (here the checkpoint has neither)."""
    from qwen35.tokenizer import Tokenizer

    Tokenizer.from_vocab().save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}")
    llm = LLM(str(tiny_ckpt), tokenizer=str(tmp_path), dtype="float32", max_model_len=256,
              kv_cache_memory=32 << 20)
    out = llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=1), use_tqdm=False)[0]
    assert out.prompt_token_ids == llm.get_tokenizer().encode("<<Hi>>")
    assert llm.get_tokenizer().source == str(tmp_path / "tokenizer.json")


def test_vllm_structured_outputs_and_clone(llm):
    from types import SimpleNamespace

    vllm_params = SimpleNamespace(json=None, regex=None, choice=["yes", "no"], grammar=None, json_object=None)
    for kind in (vllm_params, {"choice": ["yes", "no"]}):
        p = SamplingParams(max_tokens=4, structured_outputs=kind)
        assert llm.generate("Answer:", p)[0].outputs[0].text in ("yes", "no")
    schema = SamplingParams(max_tokens=40, temperature=0, guided_decoding={"json": '{"type": "integer"}'})
    assert llm.generate("Number:", schema)[0].outputs[0].text.lstrip("-").isdigit()
    with pytest.raises(ValueError, match="structured_outputs: 'whitespace_pattern' is not supported"):
        SamplingParams(structured_outputs={"json": {}, "whitespace_pattern": " "})
    with pytest.raises(ValueError, match="both set the structured output"):
        SamplingParams(guided={"regex": "a"}, structured_outputs={"regex": "b"})
    p = SamplingParams(stop=["x"], logit_bias={1: 2.0})
    q = p.clone()
    q.stop.append("y")
    q.logit_bias[3] = 1.0
    assert p.stop == ["x"] and p.logit_bias == {1: 2.0}


def test_none_in_a_list_of_params_is_the_default_and_tools_are_not_use_tqdm(llm):
    out = llm.generate(["a", "b"], [SamplingParams(max_tokens=1), None])
    assert [len(o.outputs[0].token_ids) for o in out] == [1, 3]  # the generation config's max_new_tokens
    with pytest.raises(TypeError, match="pass tools="):
        llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=1), [{"type": "function"}])


def test_apply_chat_template_output_is_a_prompt(llm):
    """transformers 5's `apply_chat_template` returns a dict of input_ids: generate takes it as vLLM scripts pass
    it."""
    msgs = [{"role": "user", "content": "Hi"}]
    enc = llm.get_tokenizer().apply_chat_template(msgs, add_generation_prompt=True)
    out = llm.generate(enc, SamplingParams(max_tokens=1))[0]
    assert out.prompt_token_ids == enc["input_ids"] == llm.chat(msgs, SamplingParams(max_tokens=1),
                                                                   use_tqdm=False)[0].prompt_token_ids


def test_detokenize_false_gives_ids_only(llm):
    """vLLM's detokenize=False: the same tokens, no text, logprobs without decoded_token; stop strings refused."""
    want = llm.generate("Hello there", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0].outputs[0]
    out = llm.generate("Hello there", SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=1,
                                                     detokenize=False))[0].outputs[0]
    assert out.token_ids == want.token_ids and want.text and out.text == ""
    assert all(lp.decoded_token is None for e in out.logprobs for lp in e.values())
    with pytest.raises(ValueError, match="stop strings need detokenize=True"):
        SamplingParams(stop=["x"], detokenize=False)
