"""StopChecker: stop strings across tokens, hold-back, EOS/stop ids, min/max tokens, UTF-8."""

from __future__ import annotations

import pytest

from qwen35.engine.sampling_params import SamplingParams
from qwen35.engine.stop import Delta, StopChecker

PIECES = [b"Hello", b" wor", b"ld", b"!", b"ST", b"OP", b"xSTOPy", b"ab", b"cd", b"xabcd",
          b"\xc3", b"\xa9", "停".encode(), "止".encode()[:2], "止".encode()[2:], b"<eos>", b"<stop>", b"OPzz"]


class FakeTokenizer:
    """Just what IncrementalDetokenizer reads: per-id bytes and the special ids."""

    def __init__(self) -> None:
        self.token_bytes_table = PIECES
        self.special_ids = frozenset({self.id(b"<eos>"), self.id(b"<stop>")})

    @staticmethod
    def id(piece: bytes | str) -> int:
        return PIECES.index(piece.encode() if isinstance(piece, str) else piece)


TOK = FakeTokenizer()
EOS = TOK.id("<eos>")
STOP_ID = TOK.id("<stop>")


def run(pieces, eos=(EOS,), **kw) -> tuple[StopChecker, list[Delta]]:
    """Feed pieces (str/bytes, or int ids) until finished; return the checker and its deltas."""
    kw.setdefault("max_tokens", 100)
    checker = StopChecker(TOK, SamplingParams(**kw), eos)
    deltas = []
    for piece in pieces:
        deltas.append(checker.feed(piece if isinstance(piece, int) else TOK.id(piece)))
        if deltas[-1].finish_reason:
            break
    assert "".join(d.text for d in deltas) == checker.text  # the stream adds up to the full text
    return checker, deltas


def test_plain_text_until_length():
    c, deltas = run(["Hello", " wor", "ld", "!"], max_tokens=3)
    assert [d.text for d in deltas] == ["Hello", " wor", "ld"]
    assert (c.finish_reason, c.stop_reason, c.text) == ("length", None, "Hello world")
    assert c.token_ids == [TOK.id(p) for p in ["Hello", " wor", "ld"]]


def test_stop_string_split_over_tokens_is_held_back_and_trimmed():
    c, deltas = run(["ab", "ST", "OP", "cd"], stop=["STOP"])
    assert deltas == [Delta("ab", None), Delta("", None), Delta("", "stop")]
    assert (c.text, c.stop_reason, len(c.token_ids)) == ("ab", "STOP", 3)


def test_held_back_text_released_when_disambiguated():
    c, deltas = run(["ab", "ST", "cd"], stop=["STOP"], max_tokens=4)
    assert [d.text for d in deltas] == ["ab", "", "STcd"]
    assert not c.finished


def test_held_back_text_released_at_length_finish():
    c, deltas = run(["ab", "ST"], stop=["STOP"], max_tokens=2)
    assert deltas[-1] == Delta("ST", "length")
    assert c.text == "abST"


def test_stop_string_inside_one_token():
    c, _ = run(["ab", "xSTOPy"], stop=["STOP"])
    assert (c.text, c.finish_reason, c.stop_reason) == ("abx", "stop", "STOP")


def test_stop_string_on_last_token_overrides_length():
    c, deltas = run(["ab", "ST", "OP"], stop=["STOP"], max_tokens=3)
    assert deltas[-1] == Delta("", "stop") and c.text == "ab" and c.stop_reason == "STOP"


def test_earliest_stop_string_wins():
    c, _ = run(["xabcd"], stop=["cd", "ab"])
    assert (c.text, c.stop_reason) == ("x", "ab")
    # nested: "b" completes before "abc" does, however the text is split
    for pieces, text in ((["xabcd"], "xa"), (["ab", "cd"], "a")):
        c, _ = run(pieces, stop=["abc", "b"])
        assert (c.text, c.stop_reason) == (text, "b")


def test_include_stop_str_in_output_keeps_it_and_drops_the_rest():
    c, deltas = run(["ab", "ST", "OPzz"], stop=["STOP"], include_stop_str_in_output=True)
    assert [d.text for d in deltas] == ["ab", "ST", "OP"]  # nothing held back in this mode
    assert (c.text, c.stop_reason) == ("abSTOP", "STOP")


def test_eos_stops_without_its_text():
    for skip in (True, False):
        c, deltas = run(["ab", "ST", EOS], stop=["STOP"], skip_special_tokens=skip)
        assert deltas[-1] == Delta("ST", "stop")  # held-back text released at the finish
        assert (c.text, c.stop_reason, c.token_ids[-1]) == ("abST", None, EOS)


def test_ignore_eos_keeps_going_but_stop_token_ids_still_stop():
    c, deltas = run(["ab", EOS, "cd", STOP_ID, "ab"], ignore_eos=True, stop_token_ids=[STOP_ID],
                    skip_special_tokens=False)
    assert [d.text for d in deltas] == ["ab", "<eos>", "cd", ""]
    assert (c.finish_reason, c.stop_reason, c.text) == ("stop", STOP_ID, "ab<eos>cd")


def test_stop_token_text_with_include_stop_str_in_output():
    c, _ = run(["ab", STOP_ID], stop_token_ids=[STOP_ID], skip_special_tokens=False,
               include_stop_str_in_output=True)
    assert (c.text, c.stop_reason) == ("ab<stop>", STOP_ID)


def test_nothing_stops_before_min_tokens():
    c, _ = run([EOS, STOP_ID, "ab", "cd", EOS], min_tokens=4, stop_token_ids=[STOP_ID])
    assert (len(c.token_ids), c.finish_reason, c.text) == (5, "stop", "abcd")
    # a stop string completed before min_tokens is ignored and its text released
    c, deltas = run(["ST", "OP", "ab", "ST", "OP"], stop=["STOP"], min_tokens=3)
    assert [d.text for d in deltas] == ["", "STOP", "ab", "", ""]
    assert (c.text, c.stop_reason) == ("STOPab", "STOP")


def test_multibyte_characters_are_never_split():
    c, deltas = run(["ab", b"\xc3", b"\xa9", "cd"], max_tokens=4)
    assert [d.text for d in deltas] == ["ab", "", "é", "cd"] and c.text == "abécd"
    # a stop string that is one character split over two tokens
    c, _ = run(["ab", b"\xc3", b"\xa9", "cd"], stop=["é"])
    assert (c.text, c.stop_reason) == ("ab", "é")
    # a CJK stop string whose second character spans two tokens
    c, deltas = run(["ab", "停", "止".encode()[:2], "止".encode()[2:], "cd"], stop=["停止"])
    assert [d.text for d in deltas] == ["ab", "", "", ""] and (c.text, c.stop_reason) == ("ab", "停止")


def test_incomplete_character_at_length_becomes_replacement_char():
    c, deltas = run(["ab", b"\xc3"], max_tokens=2)
    assert deltas[-1] == Delta("\ufffd", "length") and c.text == "ab\ufffd"


def test_force_finish_and_feeding_after_finish():
    c = StopChecker(TOK, SamplingParams(stop=["STOP"]), [EOS])
    c.feed(TOK.id("ab"))
    c.feed(TOK.id("ST"))
    assert c.force_finish() == Delta("ST", "length") and c.text == "abST"
    with pytest.raises(ValueError, match="already finished"):
        c.feed(TOK.id("cd"))
    with pytest.raises(ValueError, match="max_tokens"):
        StopChecker(TOK, SamplingParams(), max_tokens=0)


def test_long_stream_only_scans_the_tail():
    c = StopChecker(TOK, SamplingParams(stop=["STOP"], max_tokens=None), [EOS])
    for _ in range(20000):
        c.feed(TOK.id("ab"))
    assert len(c._tail) == 3 and c.text == "ab" * 20000
    assert c.feed(TOK.id("xSTOPy")) == Delta("x", "stop")


def test_real_tokenizer_matches_decode():
    from qwen35.tokenizer import Tokenizer

    tok = Tokenizer.from_vocab()
    text = "Hello wörld, 停止 here. The answer is 42.\n\nEND of story"
    ids = tok.encode(text)
    c = StopChecker(tok, SamplingParams(stop=["\n\nEND", "answer is 43"], max_tokens=None), [tok.eos_token_id])
    deltas = []
    for i in ids:
        deltas.append(c.feed(i))
        if c.finished:
            break
    assert deltas[-1].finish_reason == "stop" and c.stop_reason == "\n\nEND"
    assert c.text == "".join(d.text for d in deltas) == "Hello wörld, 停止 here. The answer is 42."
    c = StopChecker(tok, SamplingParams(max_tokens=None), [tok.eos_token_id])
    deltas = [c.feed(i) for i in [*ids, tok.eos_token_id]]
    assert deltas[-1].finish_reason == "stop" and c.text == tok.decode(ids) == text
