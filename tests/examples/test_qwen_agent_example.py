"""examples/qwen_agent_tools.py: Qwen-Agent's native tool loop against `qwen35 serve` on the demo model.

The end-to-end test is slow and needs what the example needs: qwen-agent (`pip install -e '.[agent-example]'`),
Node.js's npx, and the npm registry (or npx's cache) for the MCP filesystem server. It skips, naming what is
missing, without them. The server is `qwen35 serve` on $QWEN35_DEMO_MODEL, else on the embedded demo model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "qwen_agent_tools.py"
MCP_READY = "Secure MCP Filesystem Server running on stdio"  # the server's start-up line on stderr


def load_example():
    pytest.importorskip("qwen_agent.agents", reason="qwen-agent is not installed: pip install -e '.[agent-example]'")
    pytest.importorskip("mcp", reason="mcp is not installed: pip install -e '.[agent-example]'")
    spec = importlib.util.spec_from_file_location("qwen_agent_tools_example", EXAMPLE)
    module = sys.modules.get(spec.name)
    if module is None:  # once per session: the module registers its tool with Qwen-Agent on import
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def test_python_tools_are_the_trained_tools():
    """What the example offers is exactly what the demo model was trained on."""
    from qwen35.train.synth.catalogue import API_TOOLS

    example = load_example()
    for tool in (example.GetWeather(), example.SetTimer()):
        assert {"type": "function", "function": tool.function} == API_TOOLS[tool.name]
    assert example.SetTimer().call('{"minutes": 25}') == '{"status": "started", "minutes": 25}'
    report, again = example.weather_report("Paris"), example.weather_report("paris ")
    assert set(report) == {"city", "temperature", "unit", "condition"} and report["city"] == "Paris"
    assert (report["temperature"], report["condition"]) == (again["temperature"], again["condition"])


def demo_model() -> str | None:
    """$QWEN35_DEMO_MODEL, or None for the embedded demo model (skips when neither is there)."""
    path = os.environ.get("QWEN35_DEMO_MODEL")
    if path:
        if not (Path(path) / "config.json").is_file():
            pytest.skip(f"QWEN35_DEMO_MODEL={path} has no config.json")
        return path
    from qwen35.default_model import default_model_dir

    try:
        default_model_dir()
    except FileNotFoundError as e:  # a checkout without the trained demo model
        pytest.skip(str(e))
    return None


def mcp_server_problem(root: Path, timeout: float = 180.0) -> str | None:
    """Start the MCP filesystem server once with npx (fetching it from npm unless cached); None when it ran."""
    npx = shutil.which("npx")
    if npx is None:
        return "npx (Node.js) is not on PATH"
    proc = subprocess.Popen([npx, "-y", "@modelcontextprotocol/server-filesystem", str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            seen.append(line.rstrip())
            if MCP_READY in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while not ready.wait(0.5) and proc.poll() is None and time.monotonic() < deadline:
            pass
    finally:
        proc.kill()
        proc.wait()
    if ready.is_set():
        return None
    return f"the MCP filesystem server did not start (npm registry unreachable?): {' | '.join(seen[-5:])}"


@pytest.fixture
def mcp_root():
    """The example's folder for the MCP server: a new /tmp/demo-NNNN."""
    root = Path(load_example().demo_folder())
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_qwen_agent_tool_loops(tmp_path, mcp_root):
    load_example()  # skips without qwen-agent / mcp
    model = demo_model()
    problem = mcp_server_problem(tmp_path)
    if problem:
        pytest.skip(problem)
    from qwen35.train.evaluate import ServerProcess

    # as `qwen35 serve [MODEL]`: the model's generation_config applies (the demo model's: greedy)
    server = ServerProcess(model, mtp_tokens=0, extra_args=("--generation-config", "auto"))
    url = server.start()
    try:
        run = subprocess.run([sys.executable, str(EXAMPLE), "--base-url", url, "--root", str(mcp_root)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=1200)
        alive = server.alive()
    finally:
        server.stop()
    transcript = f"--- stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr[-3000:]}{server.stderr_tail()}"
    assert alive, transcript
    assert run.returncode == 0, transcript
    assert "timer: PASS" in run.stdout and "files: PASS" in run.stdout, transcript
    assert (mcp_root / "notes.txt").read_text() == "hello"
