"""Qwen3.5 tool calls in the `qwen3_coder` XML format, whole (`parse`) or streamed (`ToolCallParser`).

The model writes the calls shown in `output_format.py` (docs/FORMAT.md §2), optionally after some prose and
possibly several times. Rules, following vLLM's `qwen3_coder` parser unless noted:

* `<tool_call>` opens a call only when `<function=NAME>` follows (NAME without spaces, quotes,
  braces or angle brackets); otherwise it is plain content, so a tag mentioned in prose cannot
  swallow the rest of the reply (vLLM #58227). Whitespace next to a call is dropped from content.
* A `<function=NAME>` without `<tool_call>` before it opens a call too, as in vLLM, but only where it
  starts a line (or the output), so that a mention in prose stays text.
* A value loses one leading and one trailing newline (markup). It ends at `</parameter>` when a tag
  or the end of output follows, at a `<parameter=` that starts a line, at `</function>` or
  `</tool_call>` followed by a tag or the end, or at the end of output: missing closing tags lose
  nothing (vLLM #57699 loses the last argument). Other tag text inside a value stays literal.
* Several `<function=...>` in one `<tool_call>` are separate calls (vLLM #43713). A repeated
  parameter keeps its first value.
* Names are not checked against `tools` (vLLM `validate_tool_names=False`); unknown ones log a
  warning. Values are typed by the tool's JSON schema (`schema.coerce_value`).

Streaming follows docs/FORMAT.md §4: a call's first delta carries index, id, type, name and
`arguments: ""`; later deltas carry only index and an arguments fragment. A parameter typed exactly
`string` (or not in the schema) streams as it arrives; any other parameter is sent whole, as
`"key": value`, when it closes. The fragments concatenate to `json.dumps(args, ensure_ascii=False)`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...output_format import (FUNCTION, FUNCTION_END, PARAMETER, PARAMETER_END, TOOL_CALL_END, TOOL_CALL_START,
                              is_plain_string)
from .schema import coerce_value

logger = logging.getLogger(__name__)

START, END = TOOL_CALL_START, TOOL_CALL_END  # this parser's markers
_TAGS = (START, END, FUNCTION, FUNCTION_END, PARAMETER, PARAMETER_END)
_BAD_NAME_CHARS = frozenset("{}<>\"' \t\r\n")  # vLLM `_is_valid_function_name`
_BAD_PARAM_CHARS = _BAD_NAME_CHARS - {" "}  # a property name may hold spaces (vLLM keeps "my city" too)
_TEXT, _BODY, _PARAM, _AFTER_FUNCTION = "text", "body", "param", "after_function"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""  # a JSON object, as text

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCallDelta:
    """One streamed piece of call `index`: the header (id and name set, arguments "") or a fragment."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


Event = tuple[str, Any]  # ("content", str) or ("tool_call", ToolCallDelta), in output order


def _read_name(text: str, final: bool, bad: frozenset = _BAD_NAME_CHARS) -> tuple[str, int] | bool | None:
    """`text` follows `<function=` or `<parameter=` (`bad`: `_BAD_PARAM_CHARS`): (name, length through '>'),
    False if malformed, None if more text is needed."""
    for k, ch in enumerate(text):
        if ch == ">":
            return (text[:k], k + 1) if k else False
        if ch in bad:
            return False
    return False if final else None


def _followed_by(after: str, tags: tuple[str, ...], final: bool) -> bool | None:
    """Is `after` (whitespace, then) one of `tags` or the end of output? None: cannot tell yet."""
    s = after.lstrip()
    if any(s.startswith(t) for t in tags):
        return True
    if any(t.startswith(s) for t in tags):  # the end so far, or a tag cut short
        return True if final else None
    return False


def _tool_properties(tools: list[dict] | None) -> dict[str, dict] | None:
    """Function name -> its `parameters.properties` (None when the request has no tools)."""
    if tools is None:
        return None
    out: dict[str, dict] = {}
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
            props = params.get("properties")
            out[fn["name"]] = props if isinstance(props, dict) else {}
    return out


class ToolCallParser:
    """Streaming parser over content text: `feed(delta) -> events`, then `finish() -> events`.

    `calls` holds every call seen so far with its arguments as streamed; after `finish()` each is
    complete JSON.
    """

    def __init__(self, tools: list[dict] | None = None, *, id_factory: Callable[[], str] = new_call_id) -> None:
        self._props = _tool_properties(tools)
        self._new_id = id_factory
        self.calls: list[ToolCall] = []
        self._state = _TEXT
        self._buf = ""
        self._events: list[Event] = []
        self._after_call = False  # drop whitespace that follows a call
        self._in_call = False
        self._schema: dict = {}  # the open call's properties
        self._seen: set[str] = set()  # the open call's parameter names
        self._sent = 0  # the open call's parameters sent so far
        self._param: str | None = None  # None: a repeated parameter, ignored
        self._streaming = False  # the open parameter's value is streamed as a JSON string
        self._scan = 0  # the open value's text before this index holds no terminator
        self._line_start = True  # the open value's buffer starts a line
        self._text_line_start = True  # the content buffer starts a line (or the output, or follows a call)

    def feed(self, delta: str) -> list[Event]:
        self._buf += delta
        return self._run(final=False)

    def finish(self, truncated: bool = False) -> list[Event]:
        """End of output: close whatever is open (missing closing tags are tolerated).

        `truncated` (the output hit max_tokens): a call still open is not closed. Its arguments stay the
        partial JSON that was generated, with the open value's text as written, so a cut-off call is never
        presented as complete (with required parameters silently missing). Markup the cut left unfinished
        (a tag cut short, the newline before it, a `<tool_call>` whose function name never came) is
        dropped rather than shown as text."""
        if truncated:
            events = self._run(final=False)
            if self._in_call:
                tail = self._buf[:len(self._buf) - _held_len(self._buf, _TAGS)]
                tail = tail[:-1] if tail.endswith("\n") else tail  # a value's last newline is markup
                if self._state == _PARAM and self._param is not None and tail:
                    if self._streaming:
                        self._emit_args(json.dumps(tail, ensure_ascii=False)[1:-1])
                    else:
                        self._emit_args(self._key(self._param) + tail)
                self._buf, self._in_call, self._state = "", False, _TEXT
                return events + self._take_events()
            held = self._buf.lstrip()
            openings = (START, FUNCTION) if self._state == _TEXT else (END,)
            if held and any(held.startswith(o) or o.startswith(held) for o in openings):
                self._buf = ""
            return events + self._run(final=True)
        events = self._run(final=True)
        if self._in_call:
            self._close_call()
            events += self._take_events()
        return events

    # -- state machine ------------------------------------------------------------------------------
    def _run(self, final: bool) -> list[Event]:
        step = {_TEXT: self._text, _BODY: self._body, _PARAM: self._value, _AFTER_FUNCTION: self._after_function}
        # at the end an open value is closed even when nothing of it is left in the buffer
        while (self._buf or (final and self._state == _PARAM)) and step[self._state](final):
            pass
        return self._take_events()

    def _text(self, final: bool) -> bool:
        if self._after_call:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return False
            self._after_call = False
        buf = self._buf
        i = buf.find(START)
        j = self._bare_function(buf)
        if j >= 0 and (i < 0 or j < i):
            name_at = j + len(FUNCTION)
            return self._open_at(buf, j, name_at, name_at, _read_name(buf[name_at:], final))
        if i < 0:
            head = buf if final else buf[:len(buf) - _held_len(buf, (START, FUNCTION))].rstrip()
            self._emit_content(head)
            self._buf = buf[len(head):]
            return False
        s = buf[i + len(START):].lstrip()
        if s.startswith(FUNCTION):
            opened = _read_name(s[len(FUNCTION):], final)
        else:  # a real call needs <function= next: wait while that is still possible
            opened = None if not final and FUNCTION.startswith(s) else False
        return self._open_at(buf, i, i + len(START), len(buf) - len(s) + len(FUNCTION), opened)

    def _bare_function(self, buf: str) -> int:
        """Where a `<function=` that starts a line begins in `buf`, or -1."""
        j = buf.find(FUNCTION)
        while j >= 0 and not (buf[j - 1] == "\n" if j else self._text_line_start):
            j = buf.find(FUNCTION, j + 1)
        return j

    def _open_at(self, buf: str, at: int, tag_end: int, name_at: int, opened) -> bool:
        """`_text` at opening markup starting at `at` (`<tool_call>`, or a bare `<function=`) whose tag ends at
        `tag_end` and whose function name starts at `name_at`, read as `opened` (`_read_name`)."""
        if opened is False:  # just text that mentions the tag
            self._emit_content(buf[:tag_end])
            self._buf = buf[tag_end:]
            return True
        before = buf[:at].rstrip()  # whitespace before a call is dropped
        self._emit_content(before)
        if opened is None:
            self._buf = buf[len(before):]
            return False
        self._buf = buf[name_at + opened[1]:]
        self._open_call(opened[0])
        return True

    def _body(self, final: bool) -> bool:
        s = self._buf = self._buf.lstrip()
        if not s:
            return False
        if s.startswith(PARAMETER):
            got = _read_name(s[len(PARAMETER):], final, _BAD_PARAM_CHARS)
            if got is None:
                return False
            if got is False:
                self._buf = s[len(PARAMETER):]  # malformed tag: skip it
                return True
            end = len(PARAMETER) + got[1]
            if end == len(s) and not final:
                return False  # wait for the newline that starts the value
            self._buf = s[end + 1:] if s[end:end + 1] == "\n" else s[end:]
            self._open_param(got[0])
        elif s.startswith(FUNCTION_END):
            self._buf = s[len(FUNCTION_END):]
            self._close_call()
            self._state = _AFTER_FUNCTION
        elif s.startswith(END):
            self._buf = s[len(END):]
            self._close_call()
            self._state, self._after_call = _TEXT, True
        elif s.startswith((START, FUNCTION)):  # the call was never closed
            self._close_call()
            self._state = _AFTER_FUNCTION
        elif not final and any(t.startswith(s) for t in _TAGS):
            return False
        else:  # stray text between parameters is dropped
            k = s.find("<", 1)
            self._buf = s[k:] if k > 0 else ""
        return True

    def _after_function(self, final: bool) -> bool:
        s = self._buf = self._buf.lstrip()
        if not s:
            return False
        if s.startswith(END):
            self._buf = s[len(END):]
            self._state, self._after_call = _TEXT, True
            return True
        if s.startswith(FUNCTION):  # another function inside the same <tool_call>
            got = _read_name(s[len(FUNCTION):], final)
            if got is None:
                return False
            if got:
                self._buf = s[len(FUNCTION) + got[1]:]
                self._open_call(got[0])
                return True
        elif not final and (END.startswith(s) or FUNCTION.startswith(s)):
            return False
        self._state = _TEXT  # no </tool_call>: the rest is content again
        return True

    def _value(self, final: bool) -> bool:
        buf = self._buf
        end, kind = self._value_end(final)
        if kind is None:
            if self._streaming:  # send what is settled; a newline may still be the markup's
                safe = end - 1 if end and buf[end - 1] == "\n" else end
                if safe > 0:
                    self._emit_args(json.dumps(buf[:safe], ensure_ascii=False)[1:-1])
                    self._buf, self._scan, self._line_start = buf[safe:], self._scan - safe, False
            return False
        value = buf[:end - 1] if end and buf[end - 1] == "\n" else buf[:end]
        self._buf = buf[end + len(PARAMETER_END):] if kind == "close" else buf[end:]
        self._close_param(value)
        self._state = _BODY
        return True

    def _value_end(self, final: bool) -> tuple[int, str | None]:
        """Where the open value ends and how: "close" (at `</parameter>`), "implicit" (before another
        tag or the end), or None with the index up to which the value is settled."""
        buf, pos = self._buf, self._scan
        while (j := buf.find("<", pos)) >= 0:
            line_start = buf[j - 1] == "\n" if j else self._line_start
            kind = _terminator(buf[j:], line_start, final)
            if kind == "wait":
                self._scan = j
                return j, None
            if kind != "literal":
                return j, kind
            pos = j + 1
        self._scan = len(buf)
        return len(buf), ("implicit" if final else None)

    # -- output -------------------------------------------------------------------------------------
    def _open_call(self, name: str) -> None:
        if self._props is not None and name not in self._props:
            logger.warning("the model called %r, which is not in the request's tools", name)
        call = ToolCall(self._new_id(), name)
        self.calls.append(call)
        self._events.append(("tool_call", ToolCallDelta(len(self.calls) - 1, "", call.id, name)))
        self._schema = (self._props or {}).get(name, {})
        self._seen, self._sent = set(), 0
        self._in_call, self._state, self._text_line_start = True, _BODY, True

    def _close_call(self) -> None:
        self._emit_args("}" if self._sent else "{}")
        self._in_call = False

    def _open_param(self, name: str) -> None:
        self._param = None if name in self._seen else name
        self._streaming = self._param is not None and is_plain_string(self._schema.get(name))
        if self._streaming:
            self._emit_args(self._key(name) + '"')
        self._seen.add(name)
        self._scan, self._line_start, self._state = 0, True, _PARAM

    def _close_param(self, value: str) -> None:
        if self._param is None:
            logger.warning("tool call %r repeats a parameter; the first value is kept", self.calls[-1].name)
        elif self._streaming:
            self._emit_args(json.dumps(value, ensure_ascii=False)[1:-1] + '"')
        else:
            try:
                typed = json.dumps(coerce_value(value, self._schema.get(self._param)), ensure_ascii=False)
            except RecursionError:  # model output nested past the stack (e.g. 1000+ "["): keep it as text
                typed = json.dumps(value, ensure_ascii=False)
            self._emit_args(self._key(self._param) + typed)

    def _key(self, name: str) -> str:
        """`{"name": ` for the first parameter of a call, `, "name": ` after."""
        self._sent += 1
        return ("{" if self._sent == 1 else ", ") + json.dumps(name, ensure_ascii=False) + ": "

    def _emit_args(self, text: str) -> None:
        call = self.calls[-1]
        call.arguments += text
        last = self._events[-1][1] if self._events else None
        if isinstance(last, ToolCallDelta) and last.id is None and last.index == len(self.calls) - 1:
            last.arguments += text
        else:
            self._events.append(("tool_call", ToolCallDelta(len(self.calls) - 1, text)))

    def _emit_content(self, text: str) -> None:
        if not text:
            return
        self._text_line_start = text.endswith("\n")
        if self._events and self._events[-1][0] == "content":
            self._events[-1] = ("content", self._events[-1][1] + text)
        else:
            self._events.append(("content", text))

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def _held_len(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `markers`."""
    for n in range(min(len(text), max(map(len, markers)) - 1), 0, -1):
        if any(m.startswith(text[-n:]) for m in markers):
            return n
    return 0


def _terminator(t: str, line_start: bool, final: bool) -> str:
    """Classify the "<" that starts `t` inside a value: "close", "implicit", "literal" or "wait"."""
    if t.startswith(PARAMETER_END):
        tags: tuple[str, ...] = (PARAMETER, FUNCTION_END, END, START, FUNCTION)
        kind, after = "close", t[len(PARAMETER_END):]
    elif t.startswith(FUNCTION_END):
        kind, tags, after = "implicit", (END, START, FUNCTION), t[len(FUNCTION_END):]
    elif t.startswith(END):
        kind, tags, after = "implicit", (START,), t[len(END):]
    elif t.startswith(PARAMETER):
        return "implicit" if line_start else "literal"
    elif any(tag.startswith(t) for tag in _TAGS):  # a tag cut off by the chunk (or by max_tokens)
        return "wait" if not final else ("implicit" if line_start else "literal")
    else:
        return "literal"
    verdict = _followed_by(after, tags, final)
    return "wait" if verdict is None else (kind if verdict else "literal")


def parse(text: str, tools: list[dict] | None = None, *,
          id_factory: Callable[[], str] = new_call_id) -> tuple[str, list[ToolCall]]:
    """Split a whole reply into `(content, calls)`."""
    parser = ToolCallParser(tools, id_factory=id_factory)
    events = parser.feed(text) + parser.finish()
    return "".join(v for kind, v in events if kind == "content"), parser.calls
