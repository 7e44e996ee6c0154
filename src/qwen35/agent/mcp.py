"""Tools from MCP servers, through the official `mcp` SDK, configured by the `mcpServers` JSON that Claude
Desktop, Qwen-Agent and others read:

    {"mcpServers": {
        "filesystem": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp/x"]},
        "remote": {"url": "http://127.0.0.1:8000/mcp", "headers": {"Authorization": "Bearer ..."}}}}

A server with `command` runs over stdio (its stderr goes to a log file, not the terminal); one with `url`
over streamable HTTP (`"type": "sse"` for the older SSE transport). Each tool is offered as
`<server>-<tool>` (Qwen-Agent's naming), its input schema cleaned to what the chat template shows.

Each server lives in an asyncio task of its own that enters and leaves the SDK's context managers (they
must be left in the task that entered them), so one server's failure or hang never reaches the others or
the agent loop: a server that does not start within its timeout is reported in `failures` (the agent tells
the model it is unavailable), and a failing or hanging call becomes an error tool result.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from .tools import Tool, ToolResult


class MCPConfigError(ValueError):
    """An `mcpServers` configuration that cannot be used; the text names the server and field."""


def read_config(source: str | Path | dict) -> dict[str, dict[str, Any]]:
    """The `mcpServers` mapping from a file path, a JSON string or a dict, each entry checked."""
    if isinstance(source, dict):
        data = source
    else:
        # JSON text itself, or a file's path (asking the file system about a long JSON string would fail)
        try:
            text = str(source) if str(source).lstrip().startswith("{") else Path(source).read_text(encoding="utf-8")
        except OSError as e:
            raise MCPConfigError(f"cannot read the MCP config {source}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise MCPConfigError(f"MCP config {source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            data = json.loads(text)
        except ValueError as e:
            raise MCPConfigError(f"MCP config {source}: not valid JSON ({e})") from None
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise MCPConfigError('the MCP config needs an object {"mcpServers": {name: {...}}}')
    for name, spec in servers.items():
        if not isinstance(spec, dict) or ("command" in spec) == ("url" in spec):
            raise MCPConfigError(f"mcpServers.{name}: give either command (stdio) or url (HTTP)")
        if "command" in spec and not isinstance(spec.get("args", []), list):
            raise MCPConfigError(f"mcpServers.{name}.args must be a list of strings")
        for key, kind, what in (("command", str, "a string"), ("url", str, "a string"), ("cwd", str, "a string"),
                                ("env", dict, "an object of strings"), ("headers", dict, "an object of strings")):
            if key in spec and not isinstance(spec[key], kind):
                raise MCPConfigError(f"mcpServers.{name}.{key} must be {what}, got {type(spec[key]).__name__}")
        if "-" in name:
            raise MCPConfigError(f"mcpServers.{name}: server names may not contain '-' (tools are <server>-<tool>)")
    return servers


def clean_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """An MCP input schema as a function's parameters: type, properties and required (as Qwen-Agent keeps)."""
    schema = schema or {}
    out = {"type": "object", "properties": schema.get("properties", {})}
    if schema.get("required"):
        out["required"] = schema["required"]
    return out


def _field(obj: Any, camel: str, snake: str) -> Any:
    """mcp 1.x names fields in camelCase, 2.x in snake_case."""
    return getattr(obj, snake, None) if hasattr(obj, snake) else getattr(obj, camel, None)


def result_text(result: Any) -> tuple[str, bool]:
    """A CallToolResult as text for the model, and whether it is an error."""
    parts = []
    for c in result.content or []:
        kind = getattr(c, "type", None)
        if kind == "text":
            parts.append(c.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {_field(c, 'mimeType', 'mime_type')}, {len(c.data) * 3 // 4} bytes]")
        elif kind == "resource":
            res = c.resource
            parts.append(getattr(res, "text", None) or f"[resource {res.uri}]")
        else:
            parts.append(f"[{kind}]")
    if not parts:
        structured = _field(result, "structuredContent", "structured_content")
        if structured is not None:
            parts.append(json.dumps(structured, ensure_ascii=False))
    return "\n".join(parts), bool(_field(result, "isError", "is_error"))


class MCPServer:
    """One configured server, run in its own task; `tools` once started."""

    def __init__(self, name: str, spec: dict[str, Any], call_timeout: float = 120.0) -> None:
        self.name, self.spec, self.call_timeout = name, spec, call_timeout
        self.session = None
        self.tools: list[MCPTool] = []
        self.error: str | None = None
        self._ready: asyncio.Future | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.log = Path(tempfile.mkstemp(prefix=f"qwen35-mcp-{name}-", suffix=".log")[1])

    async def start(self, timeout: float) -> None:
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"mcp-{self.name}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            self.error = f"did not start within {timeout:g} s{self._log_tail()}"
            await self.close(graceful=False)
        except Exception as e:  # noqa: BLE001 -- every start-up failure is reported, none is raised
            self.error = f"{_describe(e)}{self._log_tail()}"
            await self.close(graceful=False)

    async def _run(self) -> None:
        from mcp import ClientSession

        try:
            with self.log.open("w") as errlog:
                async with AsyncExitStack() as stack:
                    streams = await stack.enter_async_context(self._transport(errlog))
                    session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
                    await session.initialize()
                    listed = (await session.list_tools()).tools
                    self.session = session
                    self.tools = [MCPTool(self, t.name, t.description or "",
                                          clean_schema(_field(t, "inputSchema", "input_schema"))) for t in listed]
                    self._ready.set_result(True)
                    await self._stop.wait()
        except asyncio.CancelledError:
            if not self._ready.done():
                self._ready.cancel()
            raise
        except BaseException as e:  # noqa: BLE001 -- reported through the future or `error`
            if not self._ready.done():
                self._ready.set_exception(e if isinstance(e, Exception) else RuntimeError(repr(e)))
            elif not isinstance(e, asyncio.CancelledError):
                self.error = f"stopped: {_describe(e)}"
        finally:
            self.session = None

    def _transport(self, errlog):
        spec = self.spec
        if "command" in spec:
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            params = StdioServerParameters(command=spec["command"], args=[str(a) for a in spec.get("args", [])],
                                           env=spec.get("env"), cwd=spec.get("cwd"))
            return stdio_client(params, errlog=errlog)
        if spec.get("type") == "sse" or spec.get("transport") == "sse":
            from mcp.client.sse import sse_client

            return sse_client(spec["url"], headers=spec.get("headers"))
        return _streamable_http(spec["url"], spec.get("headers"))

    def _log_tail(self) -> str:
        try:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            return ""
        return ("; its log ends: " + " | ".join(tail)) if tail else ""

    async def call(self, tool: str, arguments: dict[str, Any]) -> ToolResult:
        if self.session is None:
            return ToolResult(f"error: the MCP server {self.name!r} is not running ({self.error or 'stopped'})",
                              is_error=True)
        try:
            result = await asyncio.wait_for(self.session.call_tool(tool, arguments), self.call_timeout)
        except asyncio.TimeoutError:
            return ToolResult(f"error: {self.name}-{tool} did not answer within {self.call_timeout:g} s",
                              is_error=True)
        except Exception as e:  # noqa: BLE001 -- a failing call is the model's to read, not the loop's to die of
            if _connection_lost(e):  # the server died: say so from now on, not a transport error per call
                self.error, self.session = f"stopped: {_describe(e)}", None
                self._stop.set()
                return ToolResult(f"error: the MCP server {self.name!r} stopped ({_describe(e)}); its tools are "
                                  "unavailable", is_error=True)
            return ToolResult(f"error: {self.name}-{tool} failed: {_describe(e)}", is_error=True)
        text, is_error = result_text(result)
        return ToolResult(text, is_error=is_error)

    async def close(self, graceful: bool = True) -> None:
        """Leave the session (the SDK ends a stdio server's process); a server that hangs is cancelled."""
        self._stop.set()
        if self._task is not None and not self._task.done():
            if graceful and self.session is not None:  # one still starting has no session to leave: cancelled
                await asyncio.wait({self._task}, timeout=10)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.log.unlink(missing_ok=True)


@asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str] | None):
    """The streamable HTTP transport over an HTTP client with the SDK's recommended timeouts, closed after."""
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with create_mcp_http_client(headers=headers) as http, streamable_http_client(url, http_client=http) as s:
        yield s


class MCPTool(Tool):
    def __init__(self, server: MCPServer, tool: str, description: str, parameters: dict[str, Any]) -> None:
        super().__init__(f"{server.name}-{tool}", description, parameters)
        self.server, self.tool = server, tool

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        return await self.server.call(self.tool, arguments)


class MCPServers:
    """All configured servers, started together: `async with MCPServers(config) as mcp: mcp.tools`."""

    def __init__(self, config: str | Path | dict, start_timeout: float = 120.0, call_timeout: float = 120.0) -> None:
        self.servers = [MCPServer(n, s, call_timeout) for n, s in read_config(config).items()]
        self.start_timeout = start_timeout

    async def __aenter__(self) -> "MCPServers":
        await asyncio.gather(*(s.start(self.start_timeout) for s in self.servers))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers), return_exceptions=True)

    @property
    def tools(self) -> list[MCPTool]:
        return [t for s in self.servers if s.session is not None for t in s.tools]

    @property
    def failures(self) -> dict[str, str]:
        return {s.name: s.error for s in self.servers if s.error}


def _connection_lost(e: BaseException) -> bool:
    """Whether a failed call means the server's transport is gone (its process died, the stream closed)."""
    import anyio

    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    if isinstance(e, (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)):
        return True
    return type(e).__name__ == "McpError" and "connection closed" in str(e).lower()


def _describe(e: BaseException) -> str:
    """An exception as one line; exception groups (anyio task groups) by their first leaf."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
