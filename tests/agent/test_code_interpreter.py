"""The code interpreter's sandbox: state across cells, results and errors as a notebook shows them, and the
limits -- no network, no writes outside its directory, killed at its time and CPU limits, memory bounded."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from qwen35.agent.code_interpreter import CodeInterpreter, Limits, PythonSandbox, SandboxError, unsupported_reason

WHY_NOT = unsupported_reason()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no sandbox on this system: {WHY_NOT}")


def run(sandbox: PythonSandbox, *cells: str):
    async def go():
        try:
            return [await sandbox.run(c) for c in cells]
        finally:
            await sandbox.close()
    return asyncio.run(go())


def test_state_output_and_last_expression(tmp_path):
    a, b, c, d = run(PythonSandbox(workdir=tmp_path), "x = 20\nprint('hi')\nx + 1", "x * 2", "1/0", "print(1 +")
    assert (a.output, a.result, a.error) == ("hi\n", "21", None)
    assert b.result == "40"
    assert "ZeroDivisionError" in c.error and "sandbox_worker" not in c.error
    assert d.error.startswith('  File "<cell>", line 1') and "SyntaxError" in d.error and "ast.py" not in d.error


def test_fd_level_output_of_children_is_captured(tmp_path):
    (cell,) = run(PythonSandbox(workdir=tmp_path), "import subprocess; subprocess.run(['echo', 'from-child'])")
    assert "from-child" in cell.output


def test_no_network(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    try:
        (cell,) = run(PythonSandbox(workdir=tmp_path),
                      f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)")
    finally:
        server.close()
    assert "PermissionError" in cell.error


def test_cannot_write_outside_its_directory(tmp_path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    cells = run(PythonSandbox(workdir=work),
                f"open({str(outside / 'a.txt')!r}, 'w')",
                f"import os; os.system('touch {outside / 'b.txt'}')",
                "open('inside.txt', 'w').write('ok')")
    assert "PermissionError" in cells[0].error or "Read-only file system" in cells[0].error
    assert not list(outside.iterdir())
    assert (work / "inside.txt").read_text() == "ok"


def test_cannot_change_metadata_outside_its_directory(tmp_path):
    """Mode, times and owner of the user's files outside stay as they are (Landlock alone has no right for them:
    the read-only mount namespace covers them)."""
    work, outside = tmp_path / "work", tmp_path / "outside.txt"
    work.mkdir()
    outside.write_text("x")
    outside.chmod(0o600)
    before = outside.stat()
    box = PythonSandbox(workdir=work)
    cells = run(box, f"import os; os.chmod({str(outside)!r}, 0o777)", f"import os; os.utime({str(outside)!r}, (0, 0))",
                f"import os; os.chown({str(outside)!r}, 1, 1)", "import os; os.system('mount -o remount,rw /')",
                f"import os; os.chmod({str(outside)!r}, 0o777)",
                "open('f.txt', 'w').close(); import os, shutil; os.chmod('f.txt', 0o700); "
                "shutil.copy2('f.txt', 'g.txt')")
    if not box.protections.get("read_only_outside"):
        pytest.skip("no unprivileged user namespaces on this system")
    assert all(c.error and "Read-only file system" in c.error for c in (cells[0], cells[1], cells[4])), cells
    assert cells[2].error
    after = outside.stat()
    assert (after.st_mode, after.st_mtime_ns, after.st_uid) == (before.st_mode, before.st_mtime_ns, before.st_uid)
    assert cells[5].error is None and (work / "g.txt").stat().st_mode & 0o777 == 0o700  # inside: as usual


def test_no_local_sockets(tmp_path):
    """Unix sockets too: a cell cannot reach a local service (abstract or on the file system)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "svc.sock"))
    server.listen()
    try:
        (cell,) = run(PythonSandbox(workdir=tmp_path / "work"),
                      f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(tmp_path / 'svc.sock')!r})")
    finally:
        server.close()
    assert "PermissionError" in cell.error


def test_cannot_signal_outside_processes(tmp_path):
    import subprocess

    box = PythonSandbox(workdir=tmp_path)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        (cell,) = run(box, f"import os\nos.kill({victim.pid}, 9)")
        if not (box.protections.get("signals_scoped") or box.protections.get("processes_contained")):
            pytest.skip("neither Landlock signal scoping (Linux 6.12+) nor a PID namespace on this system")
        # in its PID namespace the pid names no process (or one of the sandbox's own); else Landlock refuses
        assert ("PermissionError" in cell.error or "ProcessLookupError" in cell.error) and victim.poll() is None
    finally:
        victim.kill()


def test_detached_processes_die_with_the_sandbox(tmp_path):
    """What a cell starts in a session of its own (or double-forked) is killed on close and at the time limit."""
    start = "import subprocess\nsubprocess.Popen(['sleep', '301'], start_new_session=True)"

    def alive() -> bool:
        import subprocess

        return subprocess.run(["pgrep", "-f", "sleep 301"], capture_output=True).returncode == 0

    run(PythonSandbox(workdir=tmp_path / "a"), start)
    assert not alive()
    run(PythonSandbox(Limits(wall_seconds=1), workdir=tmp_path / "b"),
        start + "\nimport os\nif os.fork() == 0:\n    os.setsid()\n    import time; time.sleep(300)\n"
        "import time; time.sleep(30)")
    assert not alive()


def test_detached_processes_die_when_the_parent_is_killed(tmp_path):
    """Even a SIGKILL of the process that holds the sandbox (no close, no clean-up) ends what a cell detached:
    the cells run in a PID namespace whose init dies with that process."""
    import os
    import signal
    import subprocess
    import sys
    import time

    marker = f"sleep 30{os.getpid() % 10}"  # a process name of this test's own
    holder = subprocess.Popen([sys.executable, "-c", f"""
import asyncio, sys
from qwen35.agent.code_interpreter import PythonSandbox
async def go():
    box = PythonSandbox(workdir={str(tmp_path)!r})
    await box.run("import subprocess; subprocess.Popen({marker.split()!r}, start_new_session=True)")
    print(box.protections.get("processes_contained"), flush=True)
    await asyncio.sleep(60)
asyncio.run(go())
"""], stdout=subprocess.PIPE, text=True)

    def alive() -> bool:
        return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0

    try:
        contained = holder.stdout.readline().strip()
        if contained != "True":
            pytest.skip("no unprivileged user namespaces on this system")
        assert alive()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 10
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive()
    finally:
        holder.kill()
        subprocess.run(["pkill", "-f", marker])


def test_writes_to_the_reply_channel_do_not_shift_replies(tmp_path):
    spoof = "import os\nos.write(3, b'{\"result\": \"SPOOFED\", \"seq\": 99}\\nnot json\\n')"
    cells = run(PythonSandbox(workdir=tmp_path), spoof, "print('real')", "print(2)")
    assert cells[0].result != "SPOOFED"
    assert cells[1].output == "real\n" and cells[2].output == "2\n"


def test_killed_at_the_time_limit_and_restarted(tmp_path):
    sandbox = PythonSandbox(Limits(wall_seconds=1, cpu_seconds=60), workdir=tmp_path)
    a, b, c = run(sandbox, "x = 1", "import time; time.sleep(30)", "'x' in globals()")
    assert b.restarted and "TimeoutError" in b.error
    assert c.result == "False"  # a fresh interpreter


def test_cpu_limit(tmp_path):
    sandbox = PythonSandbox(Limits(wall_seconds=30, cpu_seconds=1), workdir=tmp_path)
    (cell,) = run(sandbox, "while True: pass")
    assert cell.restarted and "CPU time limit" in cell.error


def test_a_cell_killed_by_a_signal_is_reported_so(tmp_path):
    """The worker's death by a signal reaches the parent as that signal (through the PID namespace's init)."""
    a, b = run(PythonSandbox(workdir=tmp_path), "import os; os.kill(os.getpid(), 9)", "import os; os._exit(3)")
    assert a.restarted and "exit status -9" in a.error
    assert b.restarted and "exit status 3" in b.error


def test_multiprocessing_input_and_odd_text(tmp_path):
    """multiprocessing's semaphores get a /dev/shm of the sandbox's own; input() ends at once (the cells' stdin
    is /dev/null, not the channel the next cell arrives on); a lone surrogate prints escaped."""
    box = PythonSandbox(workdir=tmp_path)
    pool_cell = "from multiprocessing import Pool\nwith Pool(2) as p: print(p.map(abs, [-1, -2]))"
    pool, ask, cat, odd, after = run(box, pool_cell,
                                     "input('x?')", "import subprocess; subprocess.run(['cat'], timeout=5).returncode",
                                     "print('a\\ud800b')", "print('still here')")
    if box.protections.get("read_only_outside"):
        assert pool.error is None and pool.output == "[1, 2]\n"
    assert "EOFError" in ask.error and not ask.restarted
    assert cat.result == "0" and odd.output == "a\\ud800b\n" and after.output == "still here\n"


def test_closing_while_a_cell_runs(tmp_path):
    async def go():
        box = PythonSandbox(workdir=tmp_path)
        cell = asyncio.create_task(box.run("import time; time.sleep(30)"))
        await asyncio.sleep(1.0)
        await box.close()
        got = await cell
        with pytest.raises(SandboxError, match="closed"):
            await box.run("1")
        return got

    got = asyncio.run(go())
    assert got.restarted and "closed while the cell ran" in got.error


def test_memory_limit(tmp_path):
    sandbox = PythonSandbox(Limits(memory_bytes=512 << 20), workdir=tmp_path)
    (cell,) = run(sandbox, "b = bytearray(1 << 30)")
    assert "MemoryError" in cell.error


def test_output_is_clipped(tmp_path):
    sandbox = PythonSandbox(Limits(output_chars=1000), workdir=tmp_path)
    (cell,) = run(sandbox, "print('x' * 100000)")
    assert len(cell.output) < 1200 and "characters cut" in cell.output


def test_images_are_reported(tmp_path):
    (cell,) = run(PythonSandbox(workdir=tmp_path),
                  "open('plot.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n')")
    assert cell.files == [str(tmp_path.resolve() / "plot.png")]
    assert f"![plot.png]({tmp_path.resolve() / 'plot.png'})" in cell.text()


def test_the_tool_reports_errors_as_results(tmp_path):
    tool = CodeInterpreter(PythonSandbox(workdir=tmp_path))

    async def go():
        try:
            return await tool.call({"code": "```python\nprint(6 * 7)\n```"}), await tool.call({})
        finally:
            await tool.close()
    ok, bad = asyncio.run(go())
    assert "42" in ok.text and not ok.is_error
    assert bad.is_error and "code" in bad.text
