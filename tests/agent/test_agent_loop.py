"""The agent loop against a live server: real unforced tool loops with the embedded demo model (a Python
tool, the code interpreter, the MCP filesystem server from npm), the conversation kept in the model's own
format (the prefix cache hits on every step), and everything a tool can do wrong reaching the model as a
result instead of ending the loop."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from qwen35.agent.code_interpreter import CodeInterpreter, PythonSandbox
from qwen35.agent.loop import Agent, Finished, Text, ToolCall, ToolResultEvent, close_tools
from qwen35.agent.mcp import MCPServers
from qwen35.agent.tools import FunctionTool, ToolResult
from tests.server.conftest import API_KEY

MCP_PACKAGE = "@modelcontextprotocol/server-filesystem"


def agent_for(server, tools, **kw) -> Agent:
    client = openai.AsyncOpenAI(base_url=server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
    return Agent(client, "tiny", tools, **kw)


def run(agent: Agent, question: str, messages=None):
    """The events of one question (the agent's tools closed afterwards, on the same loop), and the messages."""
    messages = messages if messages is not None else []
    messages.append({"role": "user", "content": question})

    async def go():
        try:
            return [ev async for ev in agent.run(messages)]
        finally:
            await close_tools(list(agent.tools.values()))
    return asyncio.run(go()), messages


def set_timer(minutes: int) -> dict:
    """Start a countdown timer."""
    return {"status": "started", "minutes": minutes}


def test_function_tool_schema():
    tool = FunctionTool(set_timer)
    assert tool.spec()["function"]["parameters"] == {"type": "object", "properties": {"minutes": {"type": "integer"}},
                                                     "required": ["minutes"]}


def test_unforced_tool_loop_with_a_python_tool(demo):
    events, messages = run(agent_for(demo, [FunctionTool(set_timer)], thinking=False), "Set a timer for 25 minutes.")
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("set_timer", {"minutes": 25})]
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    assert json.loads(results[0].result.text) == {"status": "started", "minutes": 25}
    assert isinstance(events[-1], Finished) and events[-1].reason == "answer" and events[-1].steps == 2
    answer = "".join(e.text for e in events if isinstance(e, Text))
    assert "25" in answer
    # the conversation is in the model's own format: the call turn, its result, the answer
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "set_timer"


def test_prefix_cache_hits_on_the_second_step(demo):
    state = demo["state"]
    state.client.reset_prefix_cache()
    agent = agent_for(demo, [FunctionTool(set_timer)], thinking=True)
    events, _ = run(agent, "Set a timer for 40 minutes.")
    usage = events[-1].usage
    assert events[-1].steps == 2
    # the second step's prompt is the first's plus the call and its result: nearly all of the first step's
    # prompt (about half of both prompts) comes from the cache
    assert usage["cached_tokens"] >= 0.3 * usage["prompt_tokens"], usage


def test_code_interpreter_computes(demo, tmp_path):
    """An unforced loop with the code interpreter, thinking on (the default). Its code is the model's own: the
    request writes the expression as training does (`100-1`, no spaces); what is checked is the loop: the sandbox
    ran exactly that code, and the answer reports what it printed. (With thinking off the shipped checkpoint
    answers some such requests by calling a filesystem tool that is not offered: docs/DEMO.md, Limits.)"""
    from qwen35.agent.code_interpreter import unsupported_reason

    if (why := unsupported_reason()) is not None:
        pytest.skip(f"no sandbox on this system: {why}")
    tool = CodeInterpreter(PythonSandbox(workdir=tmp_path))
    events, _ = run(agent_for(demo, [tool], thinking=True), "Use code_interpreter to compute 100-1.")
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls and calls[0].name == "code_interpreter"
    code = json.loads(calls[0].arguments)["code"]
    result = [e for e in events if isinstance(e, ToolResultEvent)][0].result
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert not result.is_error and result.text == printed != ""
    assert result.text in "".join(e.text for e in events if isinstance(e, Text))


class Broken(FunctionTool):
    async def call(self, arguments):
        raise RuntimeError("disk on fire")


def test_tool_failures_are_results_not_crashes(demo):
    def set_timer(minutes: int) -> dict:  # noqa: F811 -- same name as the trained tool, failing
        """Start a countdown timer."""
        raise RuntimeError("disk on fire")

    events, messages = run(agent_for(demo, [FunctionTool(set_timer)], thinking=False, max_steps=2),
                           "Set a timer for 5 minutes.")
    result = [e for e in events if isinstance(e, ToolResultEvent)][0].result
    assert result.is_error and "disk on fire" in result.text
    assert messages[2]["role"] == "tool" and "disk on fire" in messages[2]["content"]
    assert isinstance(events[-1], Finished)


def test_unknown_tool_and_bad_arguments_become_results():
    agent = Agent(client=None, model="m", tools=[FunctionTool(set_timer)])

    async def go():
        return await agent._run_tools([
            {"id": "a", "function": {"name": "nope", "arguments": "{}"}},
            {"id": "b", "function": {"name": "set_timer", "arguments": "{not json"}},
            {"id": "c", "function": {"name": "set_timer", "arguments": '{"hours": 1}'}},
            {"id": "d", "function": {"name": "set_timer", "arguments": '{"minutes": 3}'}}])
    (a, _), (b, _), (c, _), (d, _) = asyncio.run(go())
    assert a.is_error and "no tool named 'nope'" in a.text
    assert b.is_error and "not a JSON object" in b.text
    assert c.is_error and "wrong arguments" in c.text
    assert not d.is_error and json.loads(d.text)["minutes"] == 3


def test_a_huge_tool_result_reaches_the_model_clipped():
    """A 1 MB result would overflow the context on this turn and every later one: head and tail are kept."""
    def dump() -> str:
        """Return a lot."""
        return "head " + "x" * 1_000_000 + " tail"

    agent = Agent(client=None, model="m", tools=[FunctionTool(dump)], max_result_chars=1000)
    ((result, _),) = asyncio.run(agent._run_tools([{"id": "a", "function": {"name": "dump", "arguments": "{}"}}]))
    assert len(result.text) < 1100 and result.text.startswith("head ") and result.text.endswith(" tail")
    assert "characters cut" in result.text


def test_parallel_calls_run_concurrently():
    async def slow(x: int) -> str:
        """Wait a second."""
        await asyncio.sleep(1)
        return str(x)

    agent = Agent(client=None, model="m", tools=[FunctionTool(slow)], parallel_calls=True)
    calls = [{"id": str(i), "function": {"name": "slow", "arguments": json.dumps({"x": i})}} for i in range(4)]

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await agent._run_tools(calls)
        return got, loop.time() - t0
    got, seconds = asyncio.run(go())
    assert [r.text for r, _ in got] == ["0", "1", "2", "3"] and seconds < 2.5


def test_step_limit(demo):
    def set_timer(minutes: int) -> ToolResult:  # noqa: F811
        """Start a countdown timer."""
        return ToolResult("error: try again", is_error=True)

    agent = agent_for(demo, [FunctionTool(set_timer)], thinking=False, max_steps=1)
    events, _ = run(agent, "Set a timer for 5 minutes.")
    assert events[-1] == Finished("max_steps", 1, events[-1].usage)


# ---- MCP -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mcp_command(tmp_path_factory):
    """npx's command for the MCP filesystem server, fetched from npm once (skips when that is impossible)."""
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx (Node.js) is not on PATH: the MCP filesystem server runs under it")
    root = tmp_path_factory.mktemp("mcp-probe")
    try:  # the server starts, says so on stderr, and leaves at the end of its (empty) stdin
        probe = subprocess.run([npx, "-y", MCP_PACKAGE, str(root)], capture_output=True, text=True, timeout=180,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npx did not start {MCP_PACKAGE} within 180 s")
    if "Secure MCP Filesystem Server" not in probe.stderr:
        pytest.skip(f"cannot fetch {MCP_PACKAGE} from npm (or npx's cache): {probe.stderr.strip()[-300:]}")
    return [npx, "-y", MCP_PACKAGE]


def mcp_config(command: list[str], root) -> dict:
    return {"mcpServers": {"filesystem": {"command": command[0], "args": [*command[1:], str(root)]}}}


def test_mcp_filesystem_tools_and_errors(mcp_command, tmp_path):
    async def go():
        async with MCPServers(mcp_config(mcp_command, tmp_path)) as servers:
            tools = {t.name: t for t in servers.tools}
            wrote = await tools["filesystem-write_file"].call({"path": str(tmp_path / "a.txt"), "content": "hi"})
            read = await tools["filesystem-read_text_file"].call({"path": str(tmp_path / "a.txt")})
            outside = await tools["filesystem-read_text_file"].call({"path": "/etc/hostname"})
            return tools, wrote, read, outside
    tools, wrote, read, outside = asyncio.run(go())
    assert "filesystem-list_directory" in tools and tools["filesystem-write_file"].parameters["required"]
    assert not wrote.is_error and (tmp_path / "a.txt").read_text() == "hi"
    assert read.text == "hi"
    assert outside.is_error and "denied" in outside.text.lower()


def test_mcp_server_that_cannot_start_is_reported(tmp_path):
    config = {"mcpServers": {"broken": {"command": "/nonexistent/mcp-server"},
                             "slow": {"command": "sleep", "args": ["60"]}}}

    async def go():
        servers = MCPServers(config, start_timeout=1)
        async with servers:
            return servers.tools, servers.failures
    tools, failures = asyncio.run(go())
    assert tools == [] and set(failures) == {"broken", "slow"}
    assert "did not start within 1 s" in failures["slow"]


def test_unforced_mcp_loop_writes_and_reads_a_file(demo, mcp_command):
    """The request of examples/qwen_agent_tools.py (a folder and file shape the demo model was trained on)."""
    root = Path("/tmp/demo-1234")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    try:
        async def go():
            async with MCPServers(mcp_config(mcp_command, root)) as servers:
                agent = agent_for(demo, servers.tools, thinking=True)
                messages = [{"role": "user", "content": f'Write "hello" to {root}/notes.txt, then read the file '
                                                        "back and tell me its content."}]
                return [ev async for ev in agent.run(messages)]
        events = asyncio.run(go())
        names = [c.name for c in events if isinstance(c, ToolCall)]
        assert names[:2] == ["filesystem-write_file", "filesystem-read_text_file"], names
        assert (root / "notes.txt").read_text() == "hello"
        results = [e.result for e in events if isinstance(e, ToolResultEvent)]
        assert not results[0].is_error and results[1].text == "hello"
        assert isinstance(events[-1], Finished) and events[-1].reason == "answer"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_server_that_dies_is_reported_and_its_tools_say_so(tmp_path):
    """A stdio server whose process dies mid-call: the call and every later one say the server stopped (not
    a transport error each time), and `failures` names it."""
    import sys

    server = tmp_path / "crashy.py"
    server.write_text("import os\nfrom mcp.server.fastmcp import FastMCP\napp = FastMCP('t')\n"
                      "@app.tool()\ndef crash() -> str:\n    os._exit(3)\n"
                      "@app.tool()\ndef echo(x: str) -> str:\n    return x\napp.run()\n")

    async def go():
        async with MCPServers({"mcpServers": {"t": {"command": sys.executable, "args": [str(server)]}}}) as servers:
            tools = {t.name: t for t in servers.tools}
            before = await tools["t-echo"].call({"x": "hi"})
            crashed = await tools["t-crash"].call({})
            after = await tools["t-echo"].call({"x": "hi"})
            return before, crashed, after, servers.failures, servers.tools
    before, crashed, after, failures, tools = asyncio.run(go())
    assert before.text == "hi" and not before.is_error
    assert crashed.is_error and "stopped" in crashed.text
    assert after.is_error and "is not running" in after.text and "t" in failures and tools == []


def test_mcp_over_streamable_http(tmp_path):
    """A server of the SDK's own (FastMCP) over streamable HTTP, on a thread."""
    import socket
    import threading
    import time

    import uvicorn
    from mcp.server.fastmcp import FastMCP

    app = FastMCP("calc")

    @app.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app.streamable_http_app(), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        async def go():
            async with MCPServers({"mcpServers": {"calc": {"url": f"http://127.0.0.1:{port}/mcp"}}}) as servers:
                (tool,) = servers.tools
                return tool, await tool.call({"a": 2, "b": 40}), await tool.call({"a": "x"})
        tool, ok, bad = asyncio.run(go())
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert tool.name == "calc-add" and tool.parameters["required"] == ["a", "b"]
    assert ok.text == "42" and not ok.is_error
    assert bad.is_error


def test_cancelling_a_run_aborts_the_request_and_keeps_what_was_said(demo):
    """What Ctrl-C in `qwen35 chat` does: the consumer's task is cancelled mid-answer."""
    from tests.server.conftest import wait_idle

    agent = agent_for(demo, [], thinking=True, sampling={"max_tokens": 2000, "temperature": 1.0, "seed": 1,
                                                         "ignore_eos": True})
    messages = [{"role": "user", "content": "Tell me a long story."}]

    async def go():
        seen = []

        async def consume():
            async for ev in agent.run(messages):
                seen.append(ev)
        task = asyncio.create_task(consume())
        while len(seen) < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return seen
    seen = asyncio.run(go())
    assert not any(isinstance(e, Finished) for e in seen)
    assert messages[-1]["role"] == "assistant" and messages[-1].get("reasoning_content")  # the partial turn
    stats = wait_idle(demo["state"])
    assert stats["unfinished"] == 0  # the server aborted the request when the stream closed


def test_mcp_config_from_text_file_and_errors(tmp_path):
    from qwen35.agent.mcp import MCPConfigError, read_config

    servers = {f"s{i}": {"command": "npx", "args": ["-y", "pkg", "/tmp/" + "x" * 40]} for i in range(10)}
    text = json.dumps({"mcpServers": servers})  # longer than a file name may be
    assert read_config(text) == servers
    (tmp_path / "mcp.json").write_text(text)
    assert read_config(tmp_path / "mcp.json") == servers
    with pytest.raises(MCPConfigError, match="cannot read the MCP config"):
        read_config(tmp_path / "absent.json")
    with pytest.raises(MCPConfigError, match="not valid JSON"):
        read_config("{mcpServers")
    with pytest.raises(MCPConfigError, match="either command"):
        read_config({"mcpServers": {"a": {}}})
    (tmp_path / "latin1.json").write_bytes(b'{"mcpServers": {"\xe9": {"command": "x"}}}')
    with pytest.raises(MCPConfigError, match="not UTF-8"):
        read_config(tmp_path / "latin1.json")
    with pytest.raises(MCPConfigError, match=r"mcpServers.a.command must be a string, got int"):
        read_config({"mcpServers": {"a": {"command": 5}}})
    with pytest.raises(MCPConfigError, match=r"mcpServers.a.env must be an object"):
        read_config({"mcpServers": {"a": {"command": "x", "env": ["A=1"]}}})
