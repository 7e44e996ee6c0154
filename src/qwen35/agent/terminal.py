"""`qwen35 chat`: the agent in a terminal.

Interactive: a prompt with line editing and history (readline, kept in ~/.qwen35_chat_history); the model's
thinking streams dimmed and folds into one line when the answer starts (`/show` unfolds the last one);
tool calls and their results are shown as they happen; Ctrl-C stops the answer in progress (the request
is aborted on the server) and Ctrl-D leaves. Commands: /reset, /think on|off, /show, /tools, /help, /exit.
One-shot (`-p QUESTION`): the answer on stdout, nothing else unless asked, exit status 0 on an answer, 1 with
one line on stderr when the turn fails (the server refused the request, the connection dropped).
SIGTERM ends either mode as Ctrl-D does, closing the tools (the code interpreter's processes, MCP servers).
Text from the model and from tools is shown with terminal control sequences removed: neither can retitle the
window, clear the screen or move the cursor.

Threads: the main thread reads the keyboard and owns Ctrl-C; the agent, its tools and its MCP servers live
on one asyncio loop on a second thread for the whole session (MCP sessions must stay on the loop that
opened them). A turn is a coroutine submitted to that loop; Ctrl-C cancels it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, TextIO

from .loop import Agent, Finished, Reasoning, Text, ToolCall, ToolResultEvent, close_tools

HISTORY_FILE = Path.home() / ".qwen35_chat_history"
HELP = """commands:
  /reset          start a new conversation
  /think on|off   thinking mode (now: {think})
  /show           unfold the last answer's thinking
  /tools          list the tools the model may call
  /exit           leave (or Ctrl-D); Ctrl-C stops an answer in progress"""

# C0 controls but tab and newline, DEL, C1 controls: an ESC sequence loses its ESC and shows as plain text
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` without terminal control characters (model output and tool results are untrusted)."""
    return _CONTROL.sub("", text)


class Terminated(BaseException):
    """SIGTERM: leave as Ctrl-D does, closing the tools first."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


class Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def dim(self, text: str) -> str:
        return self("2", text)


def display_rows(text: str, columns: int) -> int:
    """Terminal rows `text` takes when written from column 0 (wide characters count twice)."""
    rows = 0
    for line in text.split("\n"):
        width = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)
        rows += max(1, -(-width // max(1, columns)))
    return rows


class Screen:
    """Renders agent events to a terminal (or to a plain stream: no colours, nothing folded)."""

    def __init__(self, out: TextIO, tty: bool, show_reasoning: bool = True) -> None:
        self.out, self.tty, self.show_reasoning = out, tty, show_reasoning
        self.style = Style(tty and not os.environ.get("NO_COLOR"))
        self.last_reasoning = ""
        self._reasoning = ""  # of the current step, while it streams
        self._started: float | None = None
        self._in_text = False

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def event(self, ev: Any) -> None:
        if isinstance(ev, Reasoning):
            if not self._reasoning:
                self._started = time.monotonic()
                if self.show_reasoning:
                    self.write(self.style.dim("thinking: "))
            self._reasoning += ev.text
            if self.show_reasoning:
                self.write(self.style.dim(printable(ev.text)))
            return
        self._fold()
        if isinstance(ev, Text):
            self._in_text = True
            self.write(printable(ev.text))
        elif isinstance(ev, ToolCall):
            self._end_text()
            self.write(self.style("36", f"⚙ {printable(ev.name)}") + self.style.dim(f" {printable(ev.arguments)}")
                       + "\n")
        elif isinstance(ev, ToolResultEvent):
            lines = printable(ev.result.text).strip().splitlines() or [""]
            shown = lines[:6] + ([f"... ({len(lines) - 6} more lines)"] if len(lines) > 6 else [])
            color = "31" if ev.result.is_error else "2"
            for i, line in enumerate(shown):
                self.write(self.style(color, ("  ↳ " if i == 0 else "    ") + line[:200]) + "\n")
        elif isinstance(ev, Finished):
            self._end_text()
            if ev.reason != "answer":
                why = {"max_steps": "stopped at the step limit (--max-steps)",
                       "length": "stopped at the token limit (--max-tokens)"}[ev.reason]
                self.write(self.style("33", f"[{why}]") + "\n")

    def _fold(self) -> None:
        """The step's thinking is over: fold it into one line (a terminal) or end its line."""
        if not self._reasoning:
            return
        text, self._reasoning = self._reasoning, ""
        self.last_reasoning = text
        if not self.show_reasoning:
            return
        seconds = time.monotonic() - (self._started or time.monotonic())
        summary = self.style.dim(f"▸ thought for {seconds:.1f} s, {len(text.split())} words (/show to unfold)")
        size = shutil.get_terminal_size()
        rows = display_rows("thinking: " + text, size.columns)
        if self.tty and rows < size.lines - 1:
            self.write(f"\r\x1b[{rows - 1}A\x1b[J" if rows > 1 else "\r\x1b[J")
            self.write(summary + "\n")
        else:
            self.write("\n" + (summary + "\n" if self.tty else ""))

    def _end_text(self) -> None:
        if self._in_text:
            self.write("\n")
            self._in_text = False

    def interrupted(self) -> None:
        self._fold()
        self._end_text()
        self.write(self.style("33", "[stopped]") + "\n")

    def reset(self) -> None:
        self._reasoning, self._in_text = "", False


class Session:
    """One conversation with one agent, on the loop thread."""

    def __init__(self, agent: Agent, screen: Screen, system: str | None, notes: list[str]) -> None:
        self.agent, self.screen = agent, screen
        self.system = "\n\n".join(x for x in [system, *notes] if x) or None
        self.messages: list[dict[str, Any]] = self._fresh()

    def _fresh(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def reset(self) -> None:
        self.messages = self._fresh()

    async def turn(self, text: str) -> Finished | None:
        self.messages.append({"role": "user", "content": text})
        self.screen.reset()
        last = None
        async for ev in self.agent.run(self.messages):
            self.screen.event(ev)
            if isinstance(ev, Finished):
                last = ev
        return last


class LoopThread:
    """An asyncio loop on a daemon thread; `run(coro)` from the main thread, Ctrl-C cancels it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="qwen35-agent")
        self.thread.start()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro):
        unwound = threading.Event()

        async def task():
            try:
                return await coro
            finally:
                unwound.set()

        fut = self.submit(task())
        try:
            while True:
                try:
                    return fut.result(timeout=0.1)
                except concurrent.futures.TimeoutError:
                    continue
        except (KeyboardInterrupt, Terminated):
            fut.cancel()  # marks the future at once; the task itself unwinds on the loop
            unwound.wait(timeout=10)  # its streams closed before anything else (closing the tools) runs
            raise

    def close(self) -> None:
        try:  # finish async generators (HTTP streams) on their loop before it stops
            self.submit(self.loop.shutdown_asyncgens()).result(timeout=5)
        except Exception:  # noqa: BLE001 -- leaving anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def _make_tools(args) -> tuple[list, Any]:
    """The session's tools (the code interpreter) and its MCP servers, not started yet: known to the caller
    before they start, so that an interruption while they start still closes them."""
    tools: list = []
    if args.code_interpreter:
        from .code_interpreter import CodeInterpreter

        tools.append(CodeInterpreter())
    mcp = None
    if args.mcp_config:
        from .mcp import MCPServers

        logging.getLogger("mcp").setLevel(logging.CRITICAL)  # the SDK's tracebacks (a server writing non-JSON
        # to stdout) are not the terminal's: start failures are reported below, a server's stderr is in its log
        mcp = MCPServers(args.mcp_config, start_timeout=args.mcp_timeout, call_timeout=args.mcp_timeout)
    return tools, mcp


async def _start_mcp(mcp, tools: list) -> list[str]:
    """Start the MCP servers, add their tools; notes for the model about servers that failed to start."""
    notes: list[str] = []
    if mcp is None:
        return notes
    await mcp.__aenter__()
    tools += mcp.tools
    for name, why in mcp.failures.items():
        notes.append(f"Note: the tool server {name!r} is unavailable ({why}).")
        print(f"qwen35 chat: MCP server {name!r} did not start: {why}", file=sys.stderr)
    return notes


def run_chat(args, endpoint) -> int:
    """The chat against `endpoint` (an `Endpoint`); returns the exit status."""
    loop = LoopThread()
    tools, mcp, agent = [], None, None
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    try:
        tools, mcp = _make_tools(args)
        notes = loop.run(_start_mcp(mcp, tools))
        sampling = {k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens))
                    if v is not None}
        agent = Agent(endpoint.async_client(), endpoint.model, tools, max_steps=args.max_steps,
                      thinking=args.think, sampling=sampling)
        if args.prompt is not None:
            return _one_shot(loop, agent, args, notes)
        return _interactive(loop, agent, args, notes, endpoint, tools)
    except Terminated:
        return 128 + signal.SIGTERM
    finally:
        async def _close():
            await close_tools(tools)
            if mcp is not None:
                await mcp.close()
            if agent is not None:
                await agent.client.close()
        try:
            loop.run(_close())
        except BaseException:  # noqa: BLE001 -- leaving anyway
            pass
        loop.close()
        if main:
            signal.signal(signal.SIGTERM, before)


def _one_shot(loop: LoopThread, agent: Agent, args, notes: list[str]) -> int:
    verbose = args.show_reasoning
    answer: list[str] = []

    class Split(Screen):  # the answer to stdout, everything else (when asked) to stderr
        def event(self, ev):
            if isinstance(ev, Text):
                answer.append(ev.text)
                sys.stdout.write(printable(ev.text))
                sys.stdout.flush()
            elif verbose or isinstance(ev, Finished):
                super().event(ev)

    session = Session(agent, Split(sys.stderr, sys.stderr.isatty(), show_reasoning=verbose), args.system, notes)
    try:
        done = loop.run(session.turn(args.prompt))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 -- the server refused or failed the request: one line, no traceback
        print(f"qwen35 chat: error: {' '.join(f'{type(e).__name__}: {e}'.split())}", file=sys.stderr)
        return 1
    if answer and not "".join(answer).endswith("\n"):
        sys.stdout.write("\n")
    return 0 if done is not None and done.reason == "answer" else 1


def _interactive(loop: LoopThread, agent: Agent, args, notes: list[str], endpoint, tools) -> int:
    try:
        import readline

        readline.set_history_length(1000)
        if HISTORY_FILE.exists():
            readline.read_history_file(HISTORY_FILE)
    except (ImportError, OSError):
        readline = None
    tty = sys.stdout.isatty()
    screen = Screen(sys.stdout, tty)
    session = Session(agent, screen, args.system, notes)
    style = screen.style
    names = ", ".join(t.name for t in tools) or "none"
    print(style.dim(f"qwen35 chat · {endpoint.model} · tools: {names} · thinking "
                    f"{'off' if agent.thinking is False else 'on'} · /help for commands"))
    # readline must not count the colour codes as prompt width: \001 ... \002 mark them as invisible
    prompt = "\001\x1b[1;35m\002› \001\x1b[0m\002" if style.color else "› "
    try:
        while True:
            try:
                line = input(prompt).strip()
            except KeyboardInterrupt:
                print()
                continue
            except EOFError:
                print()
                return 0
            if not line:
                continue
            if line.startswith("/"):
                if _command(line, session, agent, screen, tools):
                    return 0
                continue
            try:
                loop.run(session.turn(line))
            except KeyboardInterrupt:
                screen.interrupted()
            except Exception as e:  # noqa: BLE001 -- a failed turn (server gone, bad reply) is shown, not fatal
                screen.write(style("31", f"error: {type(e).__name__}: {e}") + "\n")
    finally:
        if readline is not None:
            try:
                readline.write_history_file(HISTORY_FILE)
            except OSError:
                pass


def _command(line: str, session: Session, agent: Agent, screen: Screen, tools) -> bool:
    """Runs a /command; True to leave."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip().lower()
    if cmd in ("/exit", "/quit"):
        return True
    if cmd == "/reset":
        session.reset()
        screen.write(screen.style.dim("new conversation") + "\n")
    elif cmd == "/think" and arg in ("on", "off"):
        agent.thinking = arg == "on"
        screen.write(screen.style.dim(f"thinking {arg}") + "\n")
    elif cmd == "/show":
        text = screen.last_reasoning.strip() or "(no thinking yet)"
        screen.write(screen.style.dim(text) + "\n")
    elif cmd == "/tools":
        for t in tools:
            screen.write(f"{t.name}: " + screen.style.dim(t.description.split("\n")[0][:100]) + "\n")
        if not tools:
            screen.write("no tools (add --code-interpreter or --mcp-config FILE)\n")
    else:
        think = "off" if agent.thinking is False else "on"
        screen.write(HELP.format(think=think) + "\n")
    return False
