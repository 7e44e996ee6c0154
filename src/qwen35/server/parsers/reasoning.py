"""Qwen3.5 reasoning split: `<think>...</think>` text becomes `reasoning`, the rest `content`.

With thinking on, the chat template ends the prompt with `<think>\\n`, so the output starts *inside*
the reasoning and contains only `</think>`; the caller says so with `started_in_reasoning` (see
`prompt_ends_in_reasoning`). With thinking off the prompt already holds `<think>\\n\\n</think>\\n\\n`
and everything is content. Rules (docs/FORMAT.md §3, vLLM `qwen3` reasoning parser):

* a `<think>` at the very start of the output opens reasoning (older templates) or, when the prompt
  already opened it, is absorbed; one newline after it is dropped;
* reasoning ends at `</think>` or at a `<tool_call>` followed (after whitespace) by `<function=`: the
  model may open a call before closing its thoughts, and the call must reach the tool parser as
  content. A `<tool_call>` merely mentioned in the reasoning does not end it;
* **no `</think>` at all (output truncated) means everything is reasoning and content is empty**, as
  vLLM's and SGLang's qwen3 parsers do;
* one newline before the end marker is dropped from the reasoning, and the newlines right after
  `</think>` are dropped from the content (the template writes `\\n</think>\\n\\n`);
* a stray `</think>` inside the content (e.g. after a call ended the reasoning early) is dropped.

`<think>`, `</think>` and `<tool_call>` are special tokens: decode with `skip_special_tokens=False`.
Streaming holds back only what could still be the start of a marker (`</thi`, a trailing newline,
`<tool_call>` waiting for its `<function=`), so any chunking gives the same text as `parse`.
"""

from __future__ import annotations

from ...output_format import FUNCTION, THINK_END, THINK_START, TOOL_CALL_START

START, END, TOOL_CALL = THINK_START, THINK_END, TOOL_CALL_START  # this parser's markers
_REASONING_ENDS = ("\n" + END, END, "\n" + TOOL_CALL, TOOL_CALL)

_OPEN, _REASONING, _AFTER_END, _CONTENT = "open", "reasoning", "after_end", "content"


def prompt_ends_in_reasoning(prompt: str) -> bool:
    """True when the rendered prompt leaves the assistant turn inside an open `<think>` block."""
    turn = prompt[max(prompt.rfind("<|im_start|>"), 0):]
    return turn.rfind(START) > turn.rfind(END)


def _held_len(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers`."""
    for n in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(m.startswith(text[-n:]) for m in markers):
            return n
    return 0


def _opens_call(after: str, final: bool) -> bool | None:
    """Is the text after a `<tool_call>` a real call? None: cannot tell yet."""
    s = after.lstrip()
    if s.startswith(FUNCTION):
        return True
    return None if FUNCTION.startswith(s) and not final else False


class ReasoningParser:
    """Streaming splitter: `feed(delta) -> (reasoning_delta, content_delta)`, then `finish()`."""

    def __init__(self, *, started_in_reasoning: bool) -> None:
        self.started_in_reasoning = started_in_reasoning
        self._state = _OPEN
        self._buf = ""
        self._drop_newline = False  # one "\n" right after an explicit <think>

    def feed(self, delta: str) -> tuple[str, str]:
        self._buf += delta
        return self._run(final=False)

    def finish(self) -> tuple[str, str]:
        """End of output: flush what was held back (a missing `</think>` leaves it all reasoning)."""
        return self._run(final=True)

    def _run(self, final: bool) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        while self._buf:
            if self._state == _OPEN:
                if not final and len(self._buf) < len(START) and START.startswith(self._buf):
                    break
                explicit = self._buf.startswith(START)
                if explicit:
                    self._buf = self._buf[len(START):]
                    self._drop_newline = True
                self._state = _REASONING if (explicit or self.started_in_reasoning) else _CONTENT
            elif self._state == _REASONING:
                if not self._reasoning_step(reasoning, final):
                    break
            elif self._state == _AFTER_END:
                self._buf = self._buf.lstrip("\n")
                if self._buf:
                    self._state = _CONTENT
            else:
                while (i := self._buf.find(END)) >= 0:  # a stray </think> in the answer
                    content.append(self._buf[:i])
                    self._buf = self._buf[i + len(END):]
                keep = 0 if final else _held_len(self._buf, (END,))
                content.append(self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                break
        return "".join(reasoning), "".join(content)

    def _reasoning_step(self, out: list[str], final: bool) -> bool:
        """Consume reasoning text; True when the state changed and the loop should go on."""
        if self._drop_newline:
            if self._buf.startswith("\n"):
                self._buf = self._buf[1:]
            self._drop_newline = False
        buf = self._buf
        end = buf.find(END)
        cut, verdict = -1, None
        i = buf.find(TOOL_CALL)
        while i >= 0 and (end < 0 or i < end):
            verdict = _opens_call(buf[i + len(TOOL_CALL):], final)
            if verdict is not False:
                cut = i
                break
            i = buf.find(TOOL_CALL, i + 1)
        if cut < 0 and end < 0:  # no marker: keep back what may become one
            keep = 0 if final else _held_len(buf, _REASONING_ENDS)
            out.append(buf[:len(buf) - keep])
            self._buf = buf[len(buf) - keep:]
            return False
        if cut < 0:
            cut, verdict = end, True
        text = buf[:cut]
        if text.endswith("\n"):
            text = text[:-1]
        if verdict is None:  # a <tool_call> still waiting for its <function=
            out.append(text)
            self._buf = buf[len(text):]
            return False
        out.append(text)
        if cut == end:
            self._buf = buf[end + len(END):]
            self._state = _AFTER_END
        else:
            self._buf = buf[cut:]
            self._state = _CONTENT
        return True


def parse(text: str, *, started_in_reasoning: bool) -> tuple[str | None, str]:
    """Split a whole output into `(reasoning, content)`; reasoning is None when there is none."""
    parser = ReasoningParser(started_in_reasoning=started_in_reasoning)
    reasoning, content = parser.feed(text)
    tail_reasoning, tail_content = parser.finish()
    return (reasoning + tail_reasoning) or None, content + tail_content
