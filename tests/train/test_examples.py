"""What a training example learns: exactly the assistant's words after the last user message (reasoning, tool
calls, answers, each turn's <|im_end|>), never the prompt, tool list, user turns or tool responses; and the
vocabulary it is written in: Qwen3.5's special tokens and pipeline, digits one per token."""

from __future__ import annotations

import pytest

from qwen35.train.examples import IGNORE, encode, encode_all, learnt_spans, plan_batches
from qwen35.train.synth import training
from qwen35.train.vocab import SPECIALS, train_vocab


@pytest.fixture(scope="module")
def samples():
    return training(300)


@pytest.fixture(scope="module")
def tok(samples):
    return train_vocab([s.render() for s in samples], 1024)


def _learnt_text(sample, tok) -> str:
    text = sample.render()
    ex = encode(text, learnt_spans(text, sample.thinking), tok)
    ids = [int(i) for i, lab in zip(ex.ids[1:], ex.next_labels[:-1]) if lab != IGNORE]
    assert all(lab in (IGNORE, nxt) for lab, nxt in zip(ex.next_labels[:-1], ex.ids[1:]))
    return tok.decode(ids)


def test_a_tool_conversation_learns_the_calls_and_the_answer_only(samples, tok):
    sample = next(s for s in samples if s.kind == "tool" and s.thinking)
    learnt = _learnt_text(sample, tok)
    calls = [m for m in sample.messages if m.get("tool_calls")]
    final = sample.messages[-1]
    assert learnt.startswith(calls[0]["reasoning_content"])
    assert "<tool_call>\n<function=" + calls[0]["tool_calls"][0]["function"]["name"] in learnt
    assert learnt.endswith(final["content"] + "<|im_end|>")
    assert "<tool_response>" not in learnt and "# Tools" not in learnt and "<|im_start|>" not in learnt


def test_thinking_off_learns_the_answer_after_the_empty_think(samples, tok):
    sample = next(s for s in samples if s.kind == "arith" and not s.thinking)
    assert _learnt_text(sample, tok) == sample.messages[-1]["content"] + "<|im_end|>"


def test_earlier_turns_are_context(samples, tok):
    sample = next(s for s in samples if s.kind == "followup" and s.thinking)
    learnt = _learnt_text(sample, tok)
    last = sample.messages[-1]
    assert learnt == last["reasoning_content"] + "\n</think>\n\n" + last["content"] + "<|im_end|>"


def test_encoding_many_at_once_gives_each_one_alone(samples, tok):
    texts = [s.render() for s in samples[:40]]
    spans = [learnt_spans(t, s.thinking) for t, s in zip(texts, samples)]
    for many, (text, own) in zip(encode_all(texts, spans, tok), zip(texts, spans)):
        assert many.ids.tolist() == tok.backend.encode(text).ids  # what encoding the text alone gives
        one = encode(text, own, tok)
        assert all((a == b).all() for a, b in zip((many.next_labels, many.mtp_labels, many.mtp_inputs),
                                                  (one.next_labels, one.mtp_labels, one.mtp_inputs)))


def test_mtp_labels_are_two_ahead(samples, tok):
    text = samples[0].render()
    ex = encode(text, learnt_spans(text, samples[0].thinking), tok)
    for i in range(len(ex) - 2):
        assert ex.mtp_labels[i] in (IGNORE, ex.ids[i + 2])
        assert ex.mtp_inputs[i] == ex.ids[i + 1]
    assert (ex.mtp_labels != IGNORE).sum() == (ex.next_labels != IGNORE).sum() - (ex.next_labels[0] != IGNORE)


def test_vocabulary(tok, samples):
    ids = [tok.token_to_id(t) for t in SPECIALS]
    assert ids == list(range(tok.vocab_size - len(SPECIALS), tok.vocab_size))  # after the BPE ids, in order
    text = samples[1].render()
    assert tok.decode(tok.encode(text)) == text
    assert [tok.id_to_token(i) for i in tok.encode("x 1234")][-4:] == ["1", "2", "3", "4"]
    assert tok.encode("<|im_start|>assistant")[0] == tok.im_start_id
    with pytest.raises(ValueError, match="no room"):
        train_vocab(["a"], 100)


def test_batches_respect_the_budget_and_the_seed():
    lengths = [(i * 37) % 500 + 10 for i in range(400)]
    batches = plan_batches(lengths, 2048, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(400))
    assert all(len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 2048 for b in batches)
    assert batches == plan_batches(lengths, 2048, seed=1) != plan_batches(lengths, 2048, seed=2)
