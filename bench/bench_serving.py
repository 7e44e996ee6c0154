"""Serving benchmark with the openai client: 1, 8 and 32 concurrent streaming chats.

    .venv/bin/python bench/bench_serving.py [--model DIR | --preset dense-0.8b] [--concurrency 1,8,32]
        [--max-tokens 32] [--engine thread,process] [--llama-server URL]

For each engine home (`thread`: the engine on a thread of the server's process, `AsyncLLM`; `process`: the
engine in a process of its own, `EngineProcess`) it starts the server on a free port, then for each
concurrency level sends that many streaming chat requests at once from a client process of its own (in the
server's process the client's parsing took the GIL from the server: the demo model's 8-way load measured
471 tokens/s there against ~1,000 from outside) and reports time to first token, inter-token latency
(p50/p99), total generated tokens/s, the client's own CPU time over the wall time (a core it took from
the server and the engine on a small machine) and, with the engine in its own process, the API server's CPU
milliseconds per streamed token (warm-up included). It also runs the same 8-way load straight on the engine (no HTTP)
to measure what the server adds. `--llama-server URL` runs the same load against an already
running llama.cpp server (`python -m llama_cpp.server`). Prints the CPU model and measured bandwidth first;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import checkpoint  # noqa: E402
from machine import describe, run_worker  # noqa: E402

FILLER = "Tell me a long story about a lighthouse keeper and the sea, with many details. "


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _one(client, model: str, i: int, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    stamps = []
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"{i}: {FILLER}"}], max_tokens=max_tokens,
        temperature=0, stream=True, extra_body={"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}})
    async for chunk in stream:
        if chunk.choices and (chunk.choices[0].delta.content or getattr(chunk.choices[0].delta, "reasoning_content",
                                                                          None)):
            stamps.append(time.perf_counter())
    return {"ttft": stamps[0] - t0 if stamps else float("nan"),
            "itl": [b - a for a, b in zip(stamps, stamps[1:])], "tokens": len(stamps)}


async def load(base_url: str, model: str, concurrency: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=3600)
    await _one(client, model, -1, 2)  # warm-up
    t0, cpu0 = time.perf_counter(), time.process_time()
    res = await asyncio.gather(*[_one(client, model, i, max_tokens) for i in range(concurrency)],
                               return_exceptions=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await client.close()
    failed = [r for r in res if isinstance(r, BaseException)]
    res = [r for r in res if not isinstance(r, BaseException)]
    itl = [x for r in res for x in r["itl"]]
    return {"concurrency": concurrency, "ttft_p50_s": _pct([r["ttft"] for r in res], 0.5),
            "ttft_p99_s": _pct([r["ttft"] for r in res], 0.99), "itl_p50_s": _pct(itl, 0.5),
            "itl_p99_s": _pct(itl, 0.99), "tokens_per_s": sum(r["tokens"] for r in res) / wall,
            "failed_requests": len(failed), "client_cpu_share": cpu / wall,
            "tokens": sum(r["tokens"] for r in res)}


async def engine_only(engine, tokenizer, concurrency: int, max_tokens: int) -> float:
    from qwen35.engine import SamplingParams
    from qwen35.tokenizer.chat_template import render_chat

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)

    async def one(i):
        text = render_chat(tokenizer.chat_template, [{"role": "user", "content": f"{i}: {FILLER}"}],
                           enable_thinking=False)
        n = 0
        async for out in engine.generate(tokenizer.encode(text), params):
            n = len(out.outputs[0].token_ids)
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*[one(i) for i in range(concurrency)])
    return sum(counts) / (time.perf_counter() - t0)


def load_elsewhere(url: str, model: str, concurrency: int, max_tokens: int) -> dict:
    """`load` from a client process of its own."""
    cmd = [sys.executable, __file__, "--client", url, "--served-model", model, "--concurrency", str(concurrency),
           "--max-tokens", str(max_tokens)]
    return run_worker(cmd, dict(os.environ), f"the client process ({concurrency} chats)")


def serve(client, state_cls, create_app):
    """Start the app over `client` on a free port; returns (server, url)."""
    import uvicorn

    state = state_cls(client, ["bench"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, state, f"http://127.0.0.1:{port}/v1"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--preset", default="dense-0.8b")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine", default="thread,process", help="where the engine runs: thread, process or both")
    p.add_argument("--llama-server", default=None)
    p.add_argument("--client", help=argparse.SUPPRESS)  # internal: be the client process of this server URL
    p.add_argument("--served-model", default="bench", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(load(args.client, args.served_model, int(args.concurrency), args.max_tokens))))
        return
    import torch

    from qwen35.engine.config import EngineConfig
    from qwen35.server.app import ServerState, create_app

    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}", flush=True)
    path = checkpoint(args)
    if not (path / "tokenizer.json").exists():
        from qwen35.tokenizer import Tokenizer

        Tokenizer.from_vocab().save(path)
    cfg = EngineConfig(model=str(path), dtype="bfloat16", max_model_len=2048, max_num_seqs=32,
                       kv_cache_memory=3 << 30, threads=args.threads)
    results: dict = {"model": str(path), "max_tokens": args.max_tokens}
    for home in args.engine.split(","):
        if home == "process":
            from qwen35.engine.process import EngineProcess

            client = EngineProcess(cfg)
        else:
            from qwen35.engine.async_engine import AsyncLLM

            client = AsyncLLM(cfg)
        server, state, url = serve(client, ServerState, create_app)
        for c in map(int, args.concurrency.split(",")):
            cpu0 = time.process_time()
            r = load_elsewhere(url, "bench", c, args.max_tokens)
            if home == "process":  # this process is then the API server alone: its CPU per streamed token
                r["server_cpu_ms_per_token"] = 1e3 * (time.process_time() - cpu0) / max(1, r["tokens"])
            results[f"qwen35_{home}_c{c}"] = r
            print(f"qwen35 ({home:7s}) c={c:3d}  {r}", flush=True)
        direct = asyncio.run(engine_only(client, state.tokenizer, 8, args.max_tokens))
        http = results.get(f"qwen35_{home}_c8", {}).get("tokens_per_s")
        results[f"engine_only_{home}_c8_tokens_per_s"] = direct
        if http:
            results[f"server_overhead_{home}_c8"] = 1 - http / direct
            print(f"engine ({home}) alone c=8: {direct:.1f} tok/s; through HTTP: {http:.1f} tok/s "
                  f"(overhead {100 * results[f'server_overhead_{home}_c8']:.1f}%)", flush=True)
        server.should_exit = True
        client.shutdown()
    if args.llama_server:
        for c in map(int, args.concurrency.split(",")):
            r = load_elsewhere(args.llama_server.rstrip("/") + "/v1", "llama", c, args.max_tokens)
            results[f"llamacpp_c{c}"] = r
            print(f"llama.cpp  c={c:3d}  {r}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
