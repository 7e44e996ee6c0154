"""`qwen35 serve -tp 2`: the openai client gets answers, /metrics shows the expert load per rank, and when
a rank is killed the server says so and exits within seconds."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _wait_ready(proc: subprocess.Popen, lines: "queue.Queue[str]", log: list[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, "".join(log)
            continue
        log.append(line)
        if line.startswith("qwen35 ready: "):
            return line.split()[2]
    raise AssertionError("".join(log))


def _start(cmd: list[str], env: dict | None = None) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    return proc, lines


def _free_port() -> int:
    from qwen35.parallel.launch import free_port

    return free_port()


def test_serve_two_ranks_then_lose_one(moe_ckpt):
    proc, lines = _start([sys.executable, "-m", "qwen35.cli", "serve", str(moe_ckpt), "-tp", "2",
                          "--enable-expert-parallel", "--port", "0", "--kv-cache-memory", "64MB"])
    log: list[str] = []
    try:
        url = _wait_ready(proc, lines, log)
        assert any("parallel: tensor parallel, 2 ranks" in line and "expert parallel" in line for line in log), log

        client = openai.OpenAI(base_url=url, api_key="none")
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                               max_tokens=8, temperature=0)
        assert reply.usage.completion_tokens == 8
        metrics = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics").read().decode()
        assert 'qwen35_expert_parallel_routed_tokens{rank="1"}' in metrics

        ranks = [p for p in _descendants(proc.pid) if "qwen35.parallel.worker" in _cmdline(p)]
        assert len(ranks) == 1
        os.kill(ranks[0], signal.SIGKILL)
        start = time.monotonic()
        rc = proc.wait(timeout=15)
        took = time.monotonic() - start
        time.sleep(0.2)
        while not lines.empty():
            log.append(lines.get())
        text = "".join(log)
        assert rc != 0 and took < 10, (rc, took, text)
        assert "tensor-parallel rank 1" in text and "was killed by signal 9" in text, text
        assert "exiting" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["two nodes by hand", "torchrun"])
def test_ranks_started_from_outside(moe_ckpt, how):
    """The commands of docs/PARALLEL.md on one machine: a node-1 process joining node 0 by its address, or
    torchrun starting both ranks; greedy answers equal the one-rank server's."""
    port = _free_port()
    serve = [sys.executable, "-m", "qwen35.cli", "serve", str(moe_ckpt), "--dtype", "float32", "-tp", "2",
             "--kv-cache-memory", "64MB"]
    procs = []
    try:
        if how == "torchrun":
            procs.append(_start([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                 "--master-port", str(port), *serve[1:], "--port", "0"]))
        else:
            node = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port)]
            procs.append(_start(serve + node + ["--node-rank", "0", "--port", "0"]))
            procs.append(_start(serve + node + ["--node-rank", "1"]))
        url = _wait_ready(*procs[0], [])
        procs.append(_start(serve[:-4] + ["--kv-cache-memory", "64MB", "--port", "0"]))  # one rank
        single = _wait_ready(*procs[-1], [])
        answers = []
        for base in (url, single):
            client = openai.OpenAI(base_url=base, api_key="none")
            model = client.models.list().data[0].id
            answers.append(client.completions.create(model=model, prompt="The quick brown", max_tokens=12,
                                                     temperature=0).choices[0].text)
        assert answers[0] == answers[1]
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGINT)
        for proc, _ in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
