"""Building the vocabulary from tiktoken ranks, and the on-disk cache."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer as HFTokenizer

from qwen35.tokenizer import vocab


def test_derive_merges_keeps_every_split_in_rank_order():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    # abc has two splits: tiktoken merges whichever pair is adjacent first, so HF needs both.
    assert vocab.derive_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c")]


def test_bytes_to_unicode_is_gpt2_alphabet():
    table = vocab.bytes_to_unicode()
    assert len(set(table)) == 256
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_cache_file_is_written_once_and_reused(tok, qwen35_cache):
    files = list(qwen35_cache.iterdir())
    assert [f.name for f in files] == [f"qwen35-tokenizer-{vocab.cache_key(vocab.default_vocab_file())}.json"]
    reread = HFTokenizer.from_file(str(files[0]))
    assert reread.encode("Hello 世界 <think>").ids == tok.encode("Hello 世界 <think>")


def test_unreadable_cache_is_rebuilt(tmp_path):
    key = vocab.cache_key(vocab.default_vocab_file())
    cached = tmp_path / f"qwen35-tokenizer-{key}.json"
    cached.write_text('{"truncated": ')
    built = vocab._load.__wrapped__(str(vocab.default_vocab_file()), str(tmp_path))
    assert built.encode("<|im_end|>").ids == [248046]
    assert HFTokenizer.from_file(str(cached)).get_vocab_size() == 248077
    assert sorted(p.name for p in tmp_path.iterdir()) == [cached.name]  # no temp files left behind


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN35_CACHE", str(tmp_path / "c"))
    assert vocab.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("QWEN35_CACHE")
    assert vocab.cache_dir().parts[-2:] == (".cache", "qwen35")


def test_bad_tiktoken_file_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"YQ== 0\nnot base64!! 1\n")
    with pytest.raises(ValueError, match=r"bad\.tiktoken:2"):
        vocab.load_ranks(bad)
    gap = tmp_path / "gap.tiktoken"
    gap.write_bytes(b"YQ== 0\nYg== 2\n")
    with pytest.raises(ValueError, match="contiguous"):
        vocab.load_ranks(gap)
