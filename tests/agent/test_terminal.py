"""`qwen35 chat` as a person uses it: under tmux, typing and reading the screen, on the embedded demo model;
and the one-shot mode a script uses."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen35.agent.terminal import Screen, display_rows
from qwen35.agent.loop import Finished, Reasoning, Text, ToolCall, ToolResultEvent
from qwen35.agent.tools import ToolResult
from tests.server.conftest import API_KEY

QWEN35 = str(Path(sys.executable).with_name("qwen35"))
ENGINE_FLAGS = ["--dtype", "float32", "--max-model-len", "4096", "--max-num-seqs", "2"]


def test_display_rows_counts_wrapping_and_wide_characters():
    assert display_rows("abc", 10) == 1
    assert display_rows("a" * 25, 10) == 3
    assert display_rows("一二三四五六", 10) == 2  # 12 columns
    assert display_rows("a\n\nb", 10) == 3


def test_screen_on_a_plain_stream(tmp_path):
    out = (tmp_path / "out.txt").open("w+")
    screen = Screen(out, tty=False)
    for ev in [Reasoning("let me "), Reasoning("think"), Text("The answer"), Text(" is 4."),
               ToolCall("c1", "set_timer", '{"minutes": 5}'), ToolResultEvent("c1", "set_timer", ToolResult("ok"), 0.1),
               Finished("max_steps", 3)]:
        screen.event(ev)
    out.seek(0)
    text = out.read()
    assert "\x1b" not in text  # no colours, nothing folded, when the output is not a terminal
    assert "thinking: let me think\nThe answer is 4.\n⚙ set_timer" in text and "↳ ok" in text
    assert "[stopped at the step limit (--max-steps)]" in text
    assert screen.last_reasoning == "let me think"


def test_one_shot_prints_the_answer(demo, capsys):
    """`qwen35 chat -p`: the answer alone on stdout (here against a running server; the tmux test below starts
    the model in-process)."""
    from qwen35.agent.endpoint import Endpoint
    from qwen35.agent.terminal import run_chat

    args = argparse.Namespace(prompt="Hello!", code_interpreter=False, mcp_config=None, temperature=None,
                              max_tokens=None, max_steps=10, think=False, show_reasoning=False, system=None)
    status = run_chat(args, Endpoint(demo["url"] + "/v1", API_KEY, "tiny"))
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.strip() and out.out.endswith("\n") and "<think>" not in out.out and "⚙" not in out.out


def test_control_sequences_from_the_model_and_tools_are_not_sent_to_the_terminal(tmp_path):
    out = (tmp_path / "out.txt").open("w+")
    screen = Screen(out, tty=False)
    hostile = "\x1b]0;PWNED\x07\x1b[2J\x00ok\x9b"
    for ev in [Text(hostile), ToolCall("c1", "t", hostile), ToolResultEvent("c1", "t", ToolResult(hostile), 0.1)]:
        screen.event(ev)
    out.seek(0)
    text = out.read()
    assert not any(c in text for c in "\x1b\x07\x00\x9b") and "]0;PWNED[2Jok" in text


def test_one_shot_failure_is_one_line(demo, capsys):
    """The server refuses the request (here: a negative temperature reaching it): one line, exit status 1."""
    from qwen35.agent.endpoint import Endpoint
    from qwen35.agent.terminal import run_chat

    args = argparse.Namespace(prompt="Hello!", code_interpreter=False, mcp_config=None, temperature=-5.0,
                              max_tokens=None, max_steps=10, think=False, show_reasoning=False, system=None)
    status = run_chat(args, Endpoint(demo["url"] + "/v1", API_KEY, "tiny"))
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("qwen35 chat: error: BadRequestError") and err.count("\n") == 1, err


def test_sigterm_while_mcp_servers_start_closes_them(demo, capsys, tmp_path, monkeypatch):
    """SIGTERM (or Ctrl-C) while an MCP server is still starting: exit 143 at once, the server's process and
    log gone, no SDK tracebacks on the terminal (a server writing non-JSON to stdout printed them)."""
    import os
    import signal
    import tempfile
    import threading
    import time

    from qwen35.agent.endpoint import Endpoint
    from qwen35.agent.terminal import run_chat

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    marker = f"sleep 99{os.getpid() % 10}"
    config = tmp_path / "mcp.json"
    config.write_text('{"mcpServers": {"x": {"command": "/bin/sh", "args": ["-c", "echo not json; %s"]}}}' % marker)
    args = argparse.Namespace(prompt="Hello!", code_interpreter=False, mcp_config=str(config), temperature=None,
                              max_tokens=None, max_steps=10, think=False, show_reasoning=False, system=None,
                              mcp_timeout=120.0)
    threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    t0 = time.monotonic()
    status = run_chat(args, Endpoint(demo["url"] + "/v1", API_KEY, "tiny"))
    err = capsys.readouterr().err
    assert status == 128 + signal.SIGTERM and time.monotonic() - t0 < 8
    assert "Traceback" not in err and not list(tmp_path.glob("qwen35-mcp-*.log"))
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode != 0


def test_mcp_timeout_bounds_a_server_that_never_answers(tmp_path):
    """`--mcp-timeout`: a server that never answers `initialize` is reported as failed after that long, not the
    default 120 s."""
    import asyncio
    import time

    from qwen35.agent.terminal import _make_tools

    config = tmp_path / "mcp.json"
    config.write_text('{"mcpServers": {"mute": {"command": "/bin/sh", "args": ["-c", "sleep 60"]}}}')
    _, mcp = _make_tools(argparse.Namespace(code_interpreter=False, mcp_config=str(config), mcp_timeout=1.0))

    async def start():
        t0 = time.monotonic()
        try:
            async with mcp:
                return time.monotonic() - t0, mcp.failures
        finally:
            await mcp.close()

    took, failures = asyncio.run(start())
    assert took < 6 and "mute" in failures, (took, failures)


class Tmux:
    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "110", "-y", "45",
                        f"env {exports} {' '.join(command)}; sleep 30"], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True).stdout

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", text], check=True)
        subprocess.run(["tmux", "send-keys", "-t", self.name, "Enter"], check=True)

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, needle: str, timeout: float = 120, after: int = 0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            screen = self.screen()
            if screen.count(needle) > after:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} did not appear; the screen:\n{self.screen()}")

    def wait_cleared(self, timeout: float = 60) -> None:
        """Until the screen holds one line at most (the prompt, after readline's clear-screen)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(1 for line in self.screen().splitlines() if line.strip()) <= 1:
                return
            time.sleep(0.2)
        raise AssertionError(f"the screen was not cleared:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def tmux(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    # a HOME of its own (the readline history), but this machine's build of our kernels: without it the chat
    # compiles them at its first greedy argmax, minutes on a loaded 2-core machine
    cache = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    session = Tmux(f"qwen35-chat-{os.getpid()}", [QWEN35, "chat", *ENGINE_FLAGS],
                   {"HOME": str(tmp_path), "XDG_CACHE_HOME": cache, "TERM": "xterm-256color",
                    "PATH": os.environ["PATH"]})
    yield session
    session.close()


def test_interactive_chat_under_tmux(tmux, tmp_path):
    tmux.wait_for("/help for commands")
    prompt = "›"  # capture-pane drops the trailing space of an empty prompt line
    tmux.type("/think off")
    tmux.wait_for("thinking off")
    tmux.type("Hello!")
    screen = tmux.wait_for(prompt, after=2)  # the banner's prompt, /think's and this answer's
    lines = screen.splitlines()
    asked = next(i for i, line in enumerate(lines) if line.startswith(prompt + " Hello!"))
    assert lines[asked + 1].strip() and "thinking" not in lines[asked + 1]  # the answer, no thinking

    tmux.type("/think on")
    tmux.wait_for("thinking on")
    tmux.type("What is 3 + 4?")
    screen = tmux.wait_for("▸ thought for")  # the thinking streamed, then folded into one line
    tmux.wait_for(prompt, after=4)
    tmux.type("/show")
    tmux.wait_for("3 + 4", after=2)  # the question, the answer, and now the unfolded thinking
    tmux.type("/reset")
    tmux.wait_for("new conversation")
    tmux.keys("C-c")  # at the prompt: a fresh line, still running
    tmux.type("/help")
    tmux.wait_for("/think on|off")
    tmux.type("Write a long story about a cat.")
    tmux.keys("C-c")  # mid-answer (or just after it, on a fast machine): the answer stops, the chat goes on
    time.sleep(1)
    tmux.keys("C-l")  # readline clears the screen
    tmux.wait_cleared()  # before typing on: a C-l still queued behind the stopped answer would erase the question
    tmux.type("Hello!")
    tmux.wait_for("▸ thought for")  # answered, thinking folded: the engine survived the Ctrl-C
    screen = tmux.wait_for(prompt, after=1)  # "› Hello!" and the prompt after the answer: C-d now ends the chat
    assert prompt + " Hello!" in screen
    tmux.keys("C-d")
    deadline = time.time() + 30
    while time.time() < deadline and not (tmp_path / ".qwen35_chat_history").exists():
        time.sleep(0.2)
    assert "Hello!" in (tmp_path / ".qwen35_chat_history").read_text()
