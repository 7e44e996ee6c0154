"""A live qwen35 server on a random local port, serving the tiny random checkpoint."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

API_KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENGINE = dict(dtype="float32", max_model_len=1024, max_num_seqs=8, kv_cache_memory=96 << 20)


@contextlib.contextmanager
def live_server(client, **state_kwargs):
    """A uvicorn server in a thread on a free loopback port, over `client` (shut down afterwards)."""
    import uvicorn

    from qwen35.server.app import ServerState, create_app
    from qwen35.server.http_protocol import TimedH11Protocol

    state = ServerState(client, ["tiny"], api_key=API_KEY, max_request_bytes=1 << 20, **state_kwargs)
    port = _free_port()
    config = uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning",
                            http=TimedH11Protocol)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "state": state}
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        client.shutdown()


@pytest.fixture(scope="session")
def server(tiny_ckpt):
    """The engine on a thread of the server's process (AsyncLLM)."""
    from qwen35.engine.async_engine import AsyncLLM
    from qwen35.engine.config import EngineConfig

    with live_server(AsyncLLM(EngineConfig(model=str(tiny_ckpt), **ENGINE))) as srv:
        yield srv


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def wait_idle(state, timeout=20.0) -> dict:
    """Cache pools back at their idle counts (prefix-cache entries cleared first)."""
    deadline = time.time() + timeout
    while True:
        if not state.client.stats()["unfinished"] or time.time() > deadline:
            break
        time.sleep(0.05)
    state.client.reset_prefix_cache()
    return state.client.stats()
