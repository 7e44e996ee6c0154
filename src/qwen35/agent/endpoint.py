"""Where the agent's model answers: a remote OpenAI-compatible URL, or our own server started in this process
(`local_server`: the `qwen35 serve` start-up path on a free loopback port with a random API key, uvicorn on
a thread), so the agent always talks HTTP and the server's prefix cache, parsers and limits all apply."""

from __future__ import annotations

import argparse
import contextlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # ends in /v1
    api_key: str
    model: str
    banner: str = ""  # what the local server says about its model (empty for a remote one)

    def async_client(self):
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=None)


def remote(url: str, api_key: str | None, model: str | None) -> Endpoint:
    """A running server; the model is the first it lists unless named."""
    import httpx

    base = url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    key = api_key or "none"
    if model is None:
        try:
            r = httpx.get(base + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
            raise ConnectionError(f"cannot list the models at {base}/models: {e}") from None
    return Endpoint(base, key, model)


@contextlib.contextmanager
def local_server(args: argparse.Namespace) -> Iterator[Endpoint]:
    """Serve `args` (the `qwen35 serve` flags) on 127.0.0.1 on a free port until the context ends."""
    from .. import runtime

    runtime.configure_env()
    import uvicorn

    from ..server.app import create_app
    from ..server.serve import banner, bind_socket, build_state, plan_serve

    args.host, args.port = "127.0.0.1", 0
    # the engine on a thread of this process: a terminal's Ctrl-C (SIGINT to the whole foreground process
    # group) must stop an answer, not kill an engine process (tool subprocesses get sessions of their own)
    args.engine_process = False
    args.api_key = args.api_key or secrets.token_hex(16)
    plan = plan_serve(args)
    sock = bind_socket(args.host, args.port)
    try:
        state = build_state(plan, args)
    except BaseException:
        sock.close()
        raise
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="qwen35-server")
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local server did not start")
            time.sleep(0.02)
        port = sock.getsockname()[1]
        yield Endpoint(f"http://127.0.0.1:{port}/v1", args.api_key, plan.served_names[0], banner(state, plan))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        state.client.shutdown()
