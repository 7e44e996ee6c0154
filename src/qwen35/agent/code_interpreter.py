"""`code_interpreter`: a tool that runs Python in a sandboxed subprocess, with state kept across calls.

The tool has Qwen-Agent's name and schema (`{"code": string}`), so models trained on its traces call it as
they were taught. Each session gets a fresh working directory and one worker process (`sandbox_worker.py`)
that sandboxes itself before running anything: no sockets (seccomp), no writes outside its directory and,
on Linux 6.12+, no signals to processes outside it (Landlock), bounded address space, file size and CPU time
per cell. A cell past its wall-clock limit (or its CPU limit) kills the worker and every process it started,
detached ones included (the worker adopts them: sandbox_worker.py); the next cell starts a fresh worker, and
the reply says that the state was lost. No Docker.

The reply to the model is the cell's output (stdout and stderr as they interleaved) -- alone, when that is
all there is -- else labelled sections with the value of a last bare expression, the error's traceback and
`![name](path)` for each image the cell wrote or each open matplotlib figure, as Qwen-Agent's interpreter
reports them; `CellResult.files` lists the images for
interfaces that show them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .tools import Tool, ToolResult, clip as _clip

WORKER = Path(__file__).with_name("sandbox_worker.py")
# Qwen-Agent's description and schema, word for word: what Qwen models (and our demo model) were taught
SCHEMA = {"type": "object", "properties": {"code": {"description": "The python code.", "type": "string"}},
          "required": ["code"]}
DESCRIPTION = "Python code sandbox, which can be used to execute Python code."
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "HOME")


class SandboxError(RuntimeError):
    """The sandbox cannot start with the protections it was asked for."""


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 30.0  # per cell
    cpu_seconds: int = 30  # per cell
    memory_bytes: int = 2 << 30  # address space of the worker (and of each child)
    file_bytes: int = 256 << 20  # largest file a cell may write
    processes: int = 256  # processes and threads the sandbox may add to its user's (RLIMIT_NPROC; not for root)
    output_chars: int = 20_000  # cell output shown to the model (head and tail kept)


@dataclass
class CellResult:
    output: str = ""
    result: str | None = None
    error: str | None = None
    files: list[str] = field(default_factory=list)
    restarted: bool = False  # the worker was killed (time or CPU limit, crash): the namespace is gone

    def text(self) -> str:
        """What the model reads: plain output when that is all there is, else labelled sections."""
        if self.output.strip() and self.result is None and not self.error and not self.files:
            return self.output.strip()
        parts = []
        if self.output:
            parts.append(f"stdout:\n```\n{self.output.rstrip()}\n```")
        if self.result is not None:
            parts.append(f"execute_result:\n```\n{self.result}\n```")
        if self.error:
            parts.append(f"error:\n```\n{self.error.rstrip()}\n```")
        parts += [f"![{Path(f).name}]({f})" for f in self.files]
        return "\n\n".join(parts) or "Finished execution."


class PythonSandbox:
    """One interpreter session: a working directory and, while alive, its worker process."""

    def __init__(self, limits: Limits = Limits(), workdir: str | Path | None = None,
                 require: tuple[str, ...] = ("no_network", "write_only_workdir")) -> None:
        self.limits, self.require = limits, require
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="qwen35-code-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._private = Path(tempfile.mkdtemp(prefix="qwen35-code-io-"))
        self._proc: asyncio.subprocess.Process | None = None
        self.protections: dict[str, bool] = {}
        self._lock = asyncio.Lock()
        self._seq = 0  # cells sent
        self.closed = False

    async def _start(self) -> None:
        config = {"workdir": str(self.workdir), "capture": str(self._private / "output"),
                  "memory_bytes": self.limits.memory_bytes, "file_bytes": self.limits.file_bytes,
                  "processes": self.limits.processes}
        env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
        env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
                   MPLCONFIGDIR=str(self.workdir / ".matplotlib"), HOME=str(self.workdir))
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(WORKER), json.dumps(config), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=self.workdir, env=env,
            start_new_session=True, limit=1 << 26)
        line = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        if not line:
            await self._kill()
            raise SandboxError("the code interpreter's worker exited at start-up")
        ready = json.loads(line)
        self.protections = ready["protections"]
        missing = [p for p in self.require if not self.protections.get(p)]
        if missing:
            await self._kill()
            raise SandboxError(f"the sandbox could not apply {', '.join(missing)} on this system (needs Linux "
                               "with seccomp and Landlock, kernel 5.13 or newer)")

    async def run(self, code: str) -> CellResult:
        """Run one cell. Limits end the cell, never the caller; a killed worker restarts on the next cell."""
        async with self._lock:
            if self.closed:
                raise SandboxError("this sandbox is closed")
            if self._proc is None or self._proc.returncode is not None:
                await self._start()
            proc = self._proc
            self._seq += 1
            cell = {"code": code, "cpu_seconds": self.limits.cpu_seconds, "output_chars": self.limits.output_chars,
                    "seq": self._seq}
            proc.stdin.write((json.dumps(cell) + "\n").encode())
            try:
                await proc.stdin.drain()
                got = await asyncio.wait_for(self._reply(proc, self._seq), self.limits.wall_seconds)
            except asyncio.TimeoutError:
                await self._kill()
                return CellResult(output=self._salvage(), restarted=True,
                                  error=f"TimeoutError: the cell ran longer than {self.limits.wall_seconds:g} s "
                                        "and was stopped; the interpreter restarted and its variables are gone")
            except (ConnectionError, asyncio.CancelledError):
                await self._kill()
                raise
            if got is None and self.closed:
                return CellResult(output=self._salvage(), restarted=True,
                                  error="the sandbox was closed while the cell ran; it was stopped")
            if got is None:  # the worker died: CPU limit (SIGXCPU), a hard crash, os._exit
                code_ = await proc.wait()
                await self._kill()  # what the cell started
                why = "its CPU time limit" if code_ == -signal.SIGXCPU else f"exit status {code_}"
                return CellResult(output=self._salvage(), restarted=True,
                                  error=f"the interpreter stopped ({why}); it restarted and its variables are gone")
            output = _clip(got["output"], self.limits.output_chars)
            if got.get("output_truncated"):
                output += "\n... [output cut]"
            return CellResult(output, got["result"] and _clip(got["result"], self.limits.output_chars),
                              got["error"] and _clip(got["error"], self.limits.output_chars), got["files"])

    @staticmethod
    async def _reply(proc: asyncio.subprocess.Process, seq: int) -> dict | None:
        """The worker's reply to cell `seq` (None: it exited first). Other lines on the channel (a cell that
        wrote to it) are skipped."""
        while line := await proc.stdout.readline():
            try:
                got = json.loads(line)
            except ValueError:
                continue
            if isinstance(got, dict) and got.get("seq") == seq:
                return got
        return None

    def _salvage(self) -> str:
        try:
            data = (self._private / "output").read_bytes()[: self.limits.output_chars * 4]
        except OSError:
            return ""
        return _clip(data.decode("utf-8", errors="replace"), self.limits.output_chars)

    async def _kill(self) -> None:
        """The worker and everything it started: its process group, and descendants in other sessions (a
        detached process stays the worker's descendant, as the worker adopts orphans), first, while the
        worker still holds them."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for _ in range(3):  # again, for what forked while we were killing
            found = _descendants(proc.pid)
            for pid in found:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if not found:
                break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    async def close(self) -> None:
        """Stop the worker (a cell running now ends with an error saying so) and remove the directories; a
        closed sandbox runs no more cells."""
        self.closed = True
        await self._kill()
        shutil.rmtree(self._private, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _descendants(root: int) -> list[int]:
    """Every live process below `root` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])  # after the command name, which may hold ')'
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def unsupported_reason() -> str | None:
    """Why this system cannot run the sandbox with its protections (None: it can). Starts one worker."""
    async def probe():
        box = PythonSandbox()
        try:
            await box._start()
        except SandboxError as e:
            return str(e)
        finally:
            await box.close()
        return None
    return asyncio.run(probe())


class CodeInterpreter(Tool):
    """The `code_interpreter` tool over one `PythonSandbox` session."""

    def __init__(self, sandbox: PythonSandbox | None = None) -> None:
        super().__init__("code_interpreter", DESCRIPTION, SCHEMA)
        self.sandbox = sandbox or PythonSandbox()

    async def call(self, arguments: dict) -> ToolResult:
        code = arguments.get("code")
        if not isinstance(code, str):
            return ToolResult("error: code_interpreter needs a string argument 'code'", is_error=True)
        try:
            cell = await self.sandbox.run(_unfence(code))
        except SandboxError as e:
            return ToolResult(f"error: {e}", is_error=True)
        return ToolResult(cell.text(), is_error=cell.error is not None, files=cell.files)

    async def close(self) -> None:
        await self.sandbox.close()


def _unfence(code: str) -> str:
    """Models sometimes wrap the code in a markdown fence; run what is inside."""
    s = code.strip()
    if s.startswith("```") and s.endswith("```") and s.count("\n") >= 1:
        return s.split("\n", 1)[1].rsplit("```", 1)[0]
    return code
