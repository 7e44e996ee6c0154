"""`IncrementalDetokenizer`: streamed pieces concatenate to `decode`, and never split a character."""

from __future__ import annotations

import random
import unicodedata

import pytest

from qwen35.tokenizer import IncrementalDetokenizer


def stream(tok, ids, *, skip_special_tokens=False, step=1):
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    pieces = [detok.feed(ids[i : i + step]) for i in range(0, len(ids), step)]
    pieces.append(detok.flush())
    return pieces


def test_split_characters_are_held_back(tok):
    text = "👨‍👩‍👧‍👦 한국어 🇰🇷"
    ids = tok.encode(text)
    # The premise: some characters really are split over several tokens.
    partial = [i for i in ids if "\ufffd" in tok.token_bytes(i).decode("utf-8", "replace")]
    assert partial
    detok = IncrementalDetokenizer(tok)
    pieces = []
    for i in ids:
        piece = detok.feed(i)
        assert "\ufffd" not in piece
        pieces.append(piece)
    assert not detok.has_pending_bytes
    assert detok.flush() == ""
    assert "".join(pieces) == text
    assert "" in pieces  # at least one token completed no character


@pytest.mark.parametrize("step", [1, 2, 5])
def test_concatenation_equals_decode(tok, samples, step):
    for text in samples:
        ids = tok.encode(text)
        pieces = stream(tok, ids, step=step)
        assert "".join(pieces) == tok.decode(ids) == unicodedata.normalize("NFC", text)
        assert not any("\ufffd" in p for p in pieces), repr(text)


def test_random_ids_match_decode(tok):
    """Random ids, including lone bytes and specials: invalid UTF-8 is replaced exactly as decode does."""
    rng = random.Random(0)
    byte_ids = [tok.encode(chr(c))[0] for c in range(32, 127)] + list(range(256))
    for _ in range(500):
        ids = [
            rng.choice([rng.randrange(tok.vocab_size), rng.choice(byte_ids), rng.randrange(248044, 248077)])
            for _ in range(rng.randint(1, 30))
        ]
        for skip in (False, True):
            got = "".join(stream(tok, ids, skip_special_tokens=skip, step=rng.randint(1, 4)))
            assert got == tok.decode(ids, skip_special_tokens=skip), ids


def test_skip_special_tokens(tok):
    text = "<|im_start|>assistant\n<think>\n推理</think>\n\n答案 😀<|im_end|>"
    ids = tok.encode(text)
    assert "".join(stream(tok, ids)) == text
    assert "".join(stream(tok, ids, skip_special_tokens=True)) == "assistant\n\n推理\n\n答案 😀"


def test_special_token_inside_a_split_character(tok):
    # 😀 is F0 9F 98 80; an <|im_end|> between its bytes, skipped, leaves the character whole.
    byte = {tok.token_bytes(i): i for i in range(tok.vocab_size) if len(tok.token_bytes(i)) == 1}
    ids = [byte[b"\xf0"], byte[b"\x9f"], tok.im_end_id, byte[b"\x98"], byte[b"\x80"]]
    assert "".join(stream(tok, ids, skip_special_tokens=True)) == "😀" == tok.decode(ids, skip_special_tokens=True)
    assert "".join(stream(tok, ids)) == tok.decode(ids)


def test_truncated_character_is_flushed_as_replacement(tok):
    byte = {tok.token_bytes(i): i for i in range(tok.vocab_size) if len(tok.token_bytes(i)) == 1}
    ids = tok.encode("ok ") + [byte[b"\xf0"], byte[b"\x9f"]]  # the first half of 😀, then the stream ends
    detok = IncrementalDetokenizer(tok)
    assert detok.feed(ids) == "ok "
    assert detok.has_pending_bytes
    assert detok.flush() == "\ufffd"
    assert tok.decode(ids) == "ok \ufffd"
    assert not detok.has_pending_bytes and detok.feed(tok.encode("再")) == "再"  # a fresh stream after flush


def test_padding_ids_are_ignored(tok):
    detok = IncrementalDetokenizer(tok)
    assert detok.feed([tok.encode("a")[0], 248200]) == "a"
    assert detok.num_tokens == 2
