"""The `<think>` splitter: corner cases from docs/FORMAT.md §3, each parsed whole and streamed in
every chunking (every chunk size, random cuts, empty deltas), which must agree exactly."""

from __future__ import annotations


import pytest

from qwen35.server.parsers.reasoning import ReasoningParser, parse, prompt_ends_in_reasoning
from tests.server.chunking import chunkings

CALL = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"

# id, started_in_reasoning (the prompt ended in "<think>\n"), output, reasoning, content
CASES = [
    ("think-in-prompt", True, "The user says hi.\n</think>\n\nHello!", "The user says hi.", "Hello!"),
    ("multi-line-reasoning", True, "Step 1.\n\nStep 2.\n</think>\n\nDone.", "Step 1.\n\nStep 2.", "Done."),
    ("explicit-think-old-template", False, "<think>\nHmm.\n</think>\n\nHi", "Hmm.", "Hi"),
    ("explicit-think-absorbed", True, "<think>\nHmm.\n</think>\n\nHi", "Hmm.", "Hi"),
    ("explicit-think-no-newline", False, "<think>Hmm.</think>Hi", "Hmm.", "Hi"),
    ("truncated-no-end-tag", True, "Let me think about this carefully", "Let me think about this carefully", ""),
    ("truncated-ends-in-newline", True, "step 1\nstep 2\n", "step 1\nstep 2\n", ""),
    ("truncated-partial-end-tag", True, "almost done\n</thi", "almost done\n</thi", ""),
    ("truncated-explicit-think", False, "<think>\nstill going", "still going", ""),
    ("thinking-off", False, "Paris is the capital.", None, "Paris is the capital."),
    ("thinking-off-newlines-kept", False, "\n\nHi\n", None, "\n\nHi\n"),
    ("thinking-off-partial-think-tag", False, "<thi", None, "<thi"),
    ("empty-reasoning", True, "\n</think>\n\nHi", None, "Hi"),
    ("one-newline-stripped", True, "a\n\n</think>\n\nb", "a\n", "b"),
    ("content-leading-newlines-dropped", True, "r\n</think>\n\n\n\nc\n\n", "r", "c\n\n"),
    ("end-tag-only", True, "</think>", None, ""),
    ("empty-output", True, "", None, ""),
    ("tool-call-before-end-tag", True, "I need the weather.\n\n" + CALL, "I need the weather.\n", CALL),
    ("tool-call-right-away", True, CALL, None, CALL),
    ("tool-call-space-before-function", True, "x\n<tool_call> <function=f>\n</function>",
     "x", "<tool_call> <function=f>\n</function>"),
    ("tool-call-mentioned-in-reasoning", True,
     "I could emit <tool_call> tags, or <tool_call>{json}.\n</think>\n\nNo tools needed.",
     "I could emit <tool_call> tags, or <tool_call>{json}.", "No tools needed."),
    ("tool-call-mention-then-real-call", True, "Format: <tool_call> then a function.\n" + CALL,
     "Format: <tool_call> then a function.", CALL),
    ("truncated-after-tool-call-tag", True, "Plan.\n<tool_call>\n", "Plan.\n<tool_call>\n", ""),
    ("nous-json-call-stays-reasoning", True, 'Plan.\n<tool_call>\n{"name": "f"}\n</tool_call>\n</think>\n\nok',
     'Plan.\n<tool_call>\n{"name": "f"}\n</tool_call>', "ok"),
    ("stray-end-tag-after-implicit-end", True, "Plan\n" + CALL + "\n</think>\n\n", "Plan", CALL + "\n\n\n"),
    ("stray-end-tag-thinking-off", False, "Hi</think>there", None, "Hithere"),
    ("second-end-tag-in-content", True, "r\n</think>\n\nA</think>B", "r", "AB"),
    ("angle-brackets-in-reasoning", True, "if a < b and </div> or </thinking> <\n</think>\n\nok",
     "if a < b and </div> or </thinking> <", "ok"),
    ("think-tag-later-is-text", False, "Use <think> tags.", None, "Use <think> tags."),
    ("unicode", True, "思考中…🤔\n</think>\n\n答案：你好 🌍", "思考中…🤔", "答案：你好 🌍"),
]


def stream(chunks: list[str], started: bool) -> tuple[str, str]:
    parser = ReasoningParser(started_in_reasoning=started)
    reasoning, content = [], []
    for chunk in [*chunks, None]:
        r, c = parser.feed(chunk) if chunk is not None else parser.finish()
        reasoning.append(r)
        content.append(c)
    return "".join(reasoning), "".join(content)


@pytest.mark.parametrize("started, text, reasoning, content", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case_whole_and_streamed(started, text, reasoning, content):
    assert parse(text, started_in_reasoning=started) == (reasoning, content)
    for chunks in chunkings(text):
        assert stream(chunks, started) == (reasoning or "", content), chunks


def test_partial_end_tag_never_leaks():
    parser = ReasoningParser(started_in_reasoning=True)
    assert parser.feed("abc\n</thi") == ("abc", "")
    assert parser.feed("nk>\n") == ("", "")
    assert parser.feed("\nHi </th") == ("", "Hi ")
    assert parser.feed("ere") == ("", "</there")
    assert parser.finish() == ("", "")


def test_waits_for_function_after_tool_call():
    parser = ReasoningParser(started_in_reasoning=True)
    assert parser.feed("Plan.\n<tool_call>\n") == ("Plan.", "")
    assert parser.feed("<func") == ("", "")
    assert parser.feed("tion=f>") == ("", "<tool_call>\n<function=f>")


def test_prompt_ends_in_reasoning():
    on = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
          "<|im_start|>assistant\n<think>\n")
    off = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    history = ("<|im_start|>assistant\n<think>\nR1\n</think>\n\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
               "<|im_start|>assistant\n")
    assert prompt_ends_in_reasoning(on)
    assert not prompt_ends_in_reasoning(off)
    assert not prompt_ends_in_reasoning(history)  # a template that lets the model open <think> itself
    assert prompt_ends_in_reasoning(history + "<think>\n")
