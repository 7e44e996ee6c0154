"""The ASGI layer in front of every route: what must hold for any request, before and after the app runs.

* `Host` header check (`--allowed-hosts`), against DNS rebinding when the server has no API key;
* API key on everything that costs work (`/v1/*`, `/tokenize`, `/detokenize`), compared in constant
  time; `/health`, `/ping`, `/version` and `/metrics` stay open (vLLM);
* body size and pace: a declared `Content-Length` over the limit is a 413 before reading; a body sent
  without one (chunked) is counted as it arrives and cut off at the limit, also a 413; a body that stalls
  for `BODY_TIMEOUT` seconds is dropped with a 408 (headers are bounded in `http_protocol.py`);
* containment: an exception that escapes a route becomes a 500 whose body names no internals (the
  traceback goes to the log), and the connection stays usable;
* accounting: every API response is counted by endpoint, status and reason, and with
  `--enable-log-requests` logged as one access line.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

from fastapi.responses import JSONResponse

log = logging.getLogger("qwen35.server")
access_log = logging.getLogger("qwen35.access")

BODY_TIMEOUT = 30.0  # seconds between two pieces of a request body before the request is dropped (408)
OPEN_PATHS = ("/health", "/ping", "/version", "/metrics")  # and "/", the chat UI page (it asks for the key)
COUNTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models", "/tokenize",
                 "/detokenize", "/reset_prefix_cache")
REASONS = {200: "ok", 400: "invalid_request", 401: "unauthorized", 404: "not_found", 408: "timeout",
           413: "too_large",
           499: "client_disconnected", 500: "internal_error", 503: "overloaded"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
               503: "server_overloaded"}


def error(status: int, message: str, param: str | None = None, kind: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped error response."""
    kind = kind or ERROR_TYPES.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status, headers=headers)


def route_path(scope) -> str:
    """The path the routes see: without the ASGI root_path (--root-path), which uvicorn puts in front of it."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path


class Guard:
    def __init__(self, app, state) -> None:
        self.app, self.state = app, state
        key = state.api_key
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = route_path(scope)
        status = {"code": 0}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        refusal = self._refuse(scope)
        if refusal is not None:
            await refusal(scope, receive, counted_send)
        else:
            await self._run(scope, receive, counted_send)
        if path in COUNTED_PATHS:
            code = status["code"]
            self.state.metrics.requests.labels(path, str(code), REASONS.get(code, "other")).inc()
        if self.state.log_requests:
            client = scope.get("client") or ("-", 0)
            access_log.info("%s %s %s %d %.3fs", client[0], scope.get("method"), path, status["code"],
                            time.perf_counter() - start)

    def _refuse(self, scope) -> JSONResponse | None:
        headers = _headers(scope)
        state = self.state
        if state.allowed_hosts is not None:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if "*" not in state.allowed_hosts and name.strip("[]") not in state.allowed_hosts:
                return error(400, f"the Host header {host!r} is not allowed (--allowed-hosts)")
        path = route_path(scope)
        if (self.expected is not None and scope.get("method") != "OPTIONS"
                and not path.startswith(OPEN_PATHS) and path != "/"
                and not hmac.compare_digest(headers.get("authorization", "").encode(), self.expected)):
            return error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > state.max_request_bytes):
            return error(413, f"request body of {length} bytes exceeds the limit of {state.max_request_bytes}")
        return None

    async def _run(self, scope, receive, send):
        limit = self.state.max_request_bytes
        seen, body_done, started = 0, False, False
        cut: JSONResponse | None = None  # the answer when the body was cut off (too large, too slow)

        async def limited_receive():
            nonlocal seen, body_done, cut
            if body_done:  # after the body only a disconnect can come: wait as long as it takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT)
            except asyncio.TimeoutError:
                cut = error(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > limit:
                    cut = error(413, f"request body exceeds the limit of {limit} bytes")
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def guarded_send(message):
            nonlocal started
            if cut is not None:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if cut is None:
                log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
                if not started:
                    await error(500, "internal server error (see the server log)")(scope, receive, send)
        if cut is not None and not started:
            await cut(scope, receive, send)


def _headers(scope) -> dict[str, Any]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
