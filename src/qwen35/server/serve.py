"""`qwen35 serve`: build the engine and the app, print the banner, run uvicorn.

vLLM's flags are accepted where they make sense, so a `vllm serve` command line works with
`qwen35 serve` in front. Reasoning (qwen3) and tool-call (qwen3_coder) parsing are always on: they are the
only formats Qwen3.5 speaks; the flags that select them are accepted and checked.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("qwen35.server")


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="checkpoint directory (default: the embedded random model)")
    p.add_argument("--model", dest="model_flag", help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1")
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--kv-cache-memory", default=None, help="bytes for K/V + GDN state, e.g. 4GB (default: share of free RAM)")
    p.add_argument("--dtype", default="bfloat16", choices=["auto", "bfloat16", "bf16", "float32", "fp32"])
    p.add_argument("--reasoning-parser", default="qwen3", choices=["qwen3", "deepseek_r1"])
    p.add_argument("--tool-call-parser", default="qwen3_coder", choices=["qwen3_coder", "hermes", "qwen3_xml"])
    p.add_argument("--enable-auto-tool-choice", action="store_true", help="accepted; tool calls are always parsed")
    p.add_argument("--chat-template", default=None, help="a Jinja template file (or the template text)")
    p.add_argument("--generation-config", default="auto", help="'auto' (checkpoint), 'vllm' (neutral) or a folder")
    p.add_argument("--no-enable-prefix-caching", action="store_true")
    p.add_argument("--max-request-bytes", type=int, default=16 << 20)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--trust-remote-code", action="store_true", help="accepted and ignored")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, help="accepted; must be 1")


def build_state(args: argparse.Namespace):
    from ..cli import parse_size
    from ..default_model import default_model_dir
    from ..engine.async_engine import AsyncLLM
    from ..engine.llm_engine import EngineConfig
    from .app import ServerState
    from .params import load_generation_defaults

    if args.tensor_parallel_size != 1:
        raise ValueError("--tensor-parallel-size: qwen35 runs on one device")
    path = args.model or args.model_flag
    embedded = path is None
    if embedded:
        path = str(default_model_dir())
    template = None
    if args.chat_template:
        t = Path(args.chat_template)
        template = t.read_text() if t.exists() else args.chat_template
    cfg = EngineConfig(model=path, dtype=args.dtype, max_model_len=args.max_model_len,
                       max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       kv_cache_memory=parse_size(args.kv_cache_memory) if args.kv_cache_memory else None,
                       enable_prefix_caching=not args.no_enable_prefix_caching, threads=args.threads or None,
                       device=args.device)
    engine = AsyncLLM(cfg)
    names = args.served_model_name or [("qwen35-default-random" if embedded else Path(path).name)]
    state = ServerState(engine, names, api_key=args.api_key, chat_template=template,
                        generation_defaults=load_generation_defaults(path, args.generation_config),
                        use_presets=args.generation_config != "vllm", max_request_bytes=args.max_request_bytes)
    return state, path, embedded


def banner(state, path: str, embedded: bool, host: str, port: int) -> str:
    e = state.engine.engine
    lines = [f"qwen35 serving {state.served_names[0]!r} on http://{host}:{port}/v1",
             f"  model: {path} ({e.model_cfg.text.num_hidden_layers} layers, hidden {e.model_cfg.text.hidden_size}, "
             f"{'MoE' if e.model_cfg.is_moe else 'dense'}), max_model_len {e.max_model_len}",
             f"  {e.plan.describe()}"]
    if embedded:
        lines += ["  NOTE: this is the EMBEDDED DEFAULT MODEL, a small checkpoint with RANDOM weights: its answers are",
                  "        noise. Serve a real checkpoint with: qwen35 serve /path/to/Qwen3.5-0.8B"]
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    state, path, embedded = build_state(args)
    print(banner(state, path, embedded, args.host, args.port), file=sys.stderr, flush=True)
    try:
        uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")
    finally:
        state.engine.shutdown()
    return 0
