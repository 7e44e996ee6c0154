"""`qwen35` command line: serve, chat, generate, init, train, eval."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}


def _dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def parse_size(text: str) -> int:
    """Bytes of a size such as 2GB, 500M or 1024; ValueError naming the text otherwise."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b")
    try:
        size = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise ValueError(f"--shard-size {text!r} is not a size such as 2GB, 500MB or 1048576") from None
    if size <= 0:
        raise ValueError(f"--shard-size must be positive, got {text!r}")
    return size


def cmd_init(args: argparse.Namespace) -> int:
    from .config import preset
    from .loading.writer import write_random_checkpoint

    cfg = preset(args.preset)
    target = Path(args.out_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} is {'a file' if not target.is_dir() else 'not empty'}: a checkpoint goes into a "
                         "new or empty directory (old shards beside the new ones would be loaded by some tools)")
    out = write_random_checkpoint(cfg, args.out_dir, seed=args.seed, dtype=_dtype(args.dtype),
                                  shard_bytes=parse_size(args.shard_size))
    print(f"wrote a random {args.preset} checkpoint to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import train
    from .train.recipe import recipe

    chosen = recipe(args.recipe)
    if args.steps is not None:
        if args.steps <= chosen.copy_steps:
            raise ValueError(f"--steps {args.steps}: recipe {chosen.name!r} spends its first {chosen.copy_steps} "
                             "steps on induction drills; give more steps than that")
        chosen = chosen.replace(steps=args.steps)
    if args.seed is not None:
        chosen = chosen.replace(seed=args.seed)
    train(chosen, args.out or f"qwen35-{chosen.name}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream one completion through the engine (the same path as `serve`), then a stats line on stderr."""
    import time

    from .config import ModelConfig
    from .default_model import default_model_dir
    from .engine import EngineConfig, LLMEngine, SamplingParams
    from .loading.model_path import resolve_model
    from .tokenizer import Tokenizer

    path = None if args.model is None else resolve_model(args.model).path
    if path is None:
        path = default_model_dir()
        from .default_model import CAPABILITIES

        print(f"[qwen35] no --model given: using the embedded demo model, {CAPABILITIES}. Pass --model DIR for a "
              "real Qwen3.5 checkpoint.", file=sys.stderr)
    # size the cache for this one request: the prompt's length is needed before the engine is built
    context = ModelConfig.from_file(path).text.supported_length
    tokenizer = Tokenizer.from_pretrained(path)  # held while the engine loads: it shares the parsed file
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise ValueError("the prompt is empty")
    if len(prompt) + args.max_tokens > context:
        raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({args.max_tokens}) exceeds the "
                         f"context of {context} tokens")
    engine = LLMEngine(EngineConfig(model=str(path), dtype=args.dtype, quantization=args.quantization,
                                    max_model_len=len(prompt) + args.max_tokens,
                                    max_num_seqs=1, enable_prefix_caching=False, threads=args.threads or None))
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                            seed=args.seed, max_tokens=args.max_tokens)
    engine.add_request("generate", prompt, params)
    generated, prefill_s, decode_s = 0, 0.0, 0.0
    while engine.has_unfinished():
        t0 = time.perf_counter()
        outs = engine.step()
        took = time.perf_counter() - t0
        out = outs[0].outputs[0] if outs else None
        if generated == 0:  # prompt chunks up to and including the step that samples the first token
            prefill_s += took
        else:
            decode_s += took
        if out is None:
            continue
        if outs[0].error:  # the engine has logged the details
            print(f"\nqwen35: error: generation failed: {outs[0].error}", file=sys.stderr)
            return 1
        generated += len(out.delta_token_ids)
        sys.stdout.write(out.delta_text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    prefill_tps = len(prompt) / prefill_s if prefill_s else 0.0
    decode_tps = (generated - 1) / decode_s if decode_s and generated > 1 else 0.0  # the first comes from prefill
    print(f"[qwen35] prompt {len(prompt)} tok at {prefill_tps:.1f} tok/s, "
          f"generated {generated} tok at {decode_tps:.1f} tok/s", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a checkpoint on the recipe's held-out chats through a `qwen35 serve` it starts; prints the report
    (exit status 0 whatever the scores: a report, not a gate; 1 when the server fails or every request
    failed)."""
    import json
    import shlex
    import signal

    from .train.evaluate import EvalError, heldout_samples, run_eval

    try:
        serve_args = shlex.split(args.serve_flags)
    except ValueError as e:
        raise ValueError(f"--serve-flags {args.serve_flags!r}: {e}") from None
    if args.json:  # before the run, not after minutes of it
        target = Path(args.json)
        if target.is_dir() or not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
            raise ValueError(f"--json {args.json}: not a file that can be written")
    # SIGTERM ends the run as Ctrl-C does: through run_eval's clean-up, which stops the server it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    samples = heldout_samples(args.recipe, args.samples, args.draw)
    step = max(1, len(samples) // 10)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            print(f"[eval] {done}/{total} samples", file=sys.stderr, flush=True)

    try:
        report = run_eval(args.model, samples, recipe_name=args.recipe, mtp_tokens=args.mtp_tokens, port=args.port,
                          concurrency=args.concurrency, serve_args=serve_args,
                          max_tokens=args.max_tokens, request_timeout=args.timeout, progress=progress)
    except EvalError as e:
        print(f"qwen35 eval: error: {e}", file=sys.stderr)
        return 1
    print(report.table())
    failures = report.failures() if args.failures else ""
    if failures:
        print("\nfailed samples:\n" + failures)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=1, ensure_ascii=False)
    if report.outcomes and all(o.error is not None for o in report.outcomes):
        print("qwen35 eval: error: every request failed (see the errors above, or --failures)", file=sys.stderr)
        return 1
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (`qwen35 serve: error: ...`, exit status 2), not usage plus a line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import QUANTIZATION_CHOICES

    p = OneLineParser(prog="qwen35", description="Qwen3.5 model, engine and server.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--version", action="version", version=f"qwen35 {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    i = sub.add_parser("init", help="write a random checkpoint of a Qwen3.5 shape in the official layout")
    i.add_argument("preset", help="tiny, tiny-moe, dense-0.8b, dense-2b, dense-4b, dense-9b, dense-27b, "
                                  "moe-35b-a3b, moe-122b-a10b, moe-397b-a17b, "
                                  "small-moe (the 397B's layer shapes in 4 layers)")
    i.add_argument("out_dir")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    i.add_argument("--shard-size", default="2GB", help="largest shard file (default 2GB)")
    i.set_defaults(func=cmd_init, subparser=i)

    t = sub.add_parser("train", help="train a model of a recipe on the synthetic chat corpus (official layout out)")
    t.add_argument("--recipe", default="demo", help="demo (the embedded default model) or smoke (a one-minute run)")
    t.add_argument("--out", help="output directory (default: ./qwen35-RECIPE); a train_state.pt there is resumed, "
                   "and a recipe with a polish stage keeps its finished first stage in OUT/base")
    t.add_argument("--steps", type=int, help="override the recipe's step count (the result then differs from it)")
    t.add_argument("--seed", type=int, help="override the recipe's seed (model init, batch order, drills); the "
                   "same seed gives the same bits on the same CPU and torch build")
    t.set_defaults(func=cmd_train, subparser=t)

    g = sub.add_parser("generate", help="stream a completion of a prompt")
    g.add_argument("--model", help="checkpoint directory or a Hugging Face id in the local cache (default: the "
                   "embedded demo model)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    g.add_argument("--quantization", "-q", choices=QUANTIZATION_CHOICES, default=None,
                   help="weight-only: int8 / int4 quantise at load; gptq / awq: the checkpoint is one")
    g.add_argument("--threads", type=int, default=0,
                   help="torch threads (default: 1 for a model under 8M parameters, else one per core)")
    g.set_defaults(func=cmd_generate, subparser=g)

    from .server.serve_args import SECURITY_NOTE, add_serve_args

    s = sub.add_parser("serve", help="OpenAI-compatible server (vLLM and SGLang flags)", allow_abbrev=False,
                       description="OpenAI-compatible server. A `vllm serve` or SGLang `launch_server` command line "
                                   "from the Qwen3.5 model cards works with `qwen35 serve` in front.",
                       epilog=SECURITY_NOTE)
    add_serve_args(s)
    s.set_defaults(func=cmd_serve, subparser=s)

    c = sub.add_parser("chat", help="chat with the agent in the terminal (tools: MCP servers, a code interpreter)",
                       allow_abbrev=False, description="The agent in a terminal, against a model served in this "
                       "process (any `qwen35 serve` flag applies) or a running server (--url).")
    add_serve_args(c)
    a = c.add_argument_group("agent")
    a.add_argument("-p", "--prompt", default=None, help="one-shot: ask this, print the answer, exit")
    a.add_argument("--url", default=None, help="a running OpenAI-compatible server instead of serving MODEL here")
    a.add_argument("--mcp-config", default=None, metavar="FILE",
                   help='tools from MCP servers: a JSON file {"mcpServers": {...}} (Claude Desktop format)')
    a.add_argument("--mcp-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long an MCP server may take to start, and each tool call (default 120: npx may "
                   "first download the server)")
    a.add_argument("--code-interpreter", action="store_true",
                   help="offer code_interpreter: Python in a sandboxed subprocess (no network, own directory)")
    a.add_argument("--think", dest="think", action="store_true", default=None, help="thinking on")
    a.add_argument("--no-think", dest="think", action="store_false", help="thinking off")
    a.add_argument("--show-reasoning", action="store_true", help="one-shot: also print thinking and tools to stderr")
    a.add_argument("--system", default=None, help="system prompt")
    a.add_argument("--max-steps", type=int, default=10, help="model calls per question (default 10)")
    a.add_argument("--temperature", type=float, default=None)
    a.add_argument("--max-tokens", type=int, default=None, help="per model call")
    c.set_defaults(func=cmd_chat, subparser=c)

    e = sub.add_parser("eval", help="score a trained checkpoint on held-out synthetic chats, through the server")
    e.add_argument("model", help="checkpoint directory")
    e.add_argument("--recipe", default="demo", help="the held-out set and targets (default demo)")
    e.add_argument("--samples", type=int, default=300, help="held-out samples (default 300)")
    e.add_argument("--draw", type=int, default=0,
                   help="which draw of held-out questions (default 0, the one docs/DEMO.md reports)")
    e.add_argument("--json", metavar="FILE", help="also write the report (with every sample's scores) as JSON")
    e.add_argument("--failures", action="store_true",
                   help="also print every failed sample: the request, what the reply had to contain, the reply")
    e.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    e.add_argument("--mtp-tokens", type=int, default=2, help="MTP draft tokens (0: no speculative decoding)")
    e.add_argument("--max-tokens", type=int, default=512, help="per reply (default 512)")
    e.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    e.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    e.add_argument("--serve-flags", default="", metavar="FLAGS",
                   help="more `qwen35 serve` flags, e.g. '--device cuda --dtype float32' (a single flag as "
                        "--serve-flags=--no-engine-process)")
    e.set_defaults(func=cmd_eval, subparser=e)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    """Start-up errors are one line, `qwen35 serve: error: ...`, exit status 2, no traceback."""
    from .config import ConfigError
    from .loading.checkpoint import CheckpointError
    from .server.serve import serve

    try:
        return serve(args)  # --threads reaches the engine through EngineConfig (runtime.setup)
    except (ConfigError, CheckpointError, ValueError, OSError) as e:
        one_line = " ".join(str(e).split())
        print(f"qwen35 serve: error: {one_line}", file=sys.stderr)
        return 2


def cmd_chat(args: argparse.Namespace) -> int:
    from .agent.endpoint import local_server, remote
    from .agent.terminal import run_chat
    from .config import ConfigError
    from .loading.checkpoint import CheckpointError

    try:
        if args.url:
            return run_chat(args, remote(args.url, args.api_key, args.model or args.model_flag))
        if not args.prompt:
            print("qwen35 chat: loading the model ...", file=sys.stderr, flush=True)
        with local_server(args) as endpoint:
            return run_chat(args, endpoint)
    except (ConfigError, CheckpointError, ValueError, OSError) as e:
        print(f"qwen35 chat: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.command == "chat":
        if args.max_steps <= 0:
            args.subparser.error(f"--max-steps must be positive, got {args.max_steps}")
        if args.temperature is not None and args.temperature < 0:
            args.subparser.error(f"--temperature must be >= 0, got {args.temperature}")
        if args.max_tokens is not None and args.max_tokens <= 0:
            args.subparser.error(f"--max-tokens must be positive, got {args.max_tokens}")
        if not 0 < args.mcp_timeout < float("inf"):
            args.subparser.error(f"--mcp-timeout must be positive and finite, got {args.mcp_timeout}")
    if args.command == "eval":
        for flag in ("samples", "max_tokens", "concurrency"):
            if getattr(args, flag) <= 0:
                args.subparser.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
        if args.mtp_tokens < 0 or args.port < 0 or not 0 < args.timeout < float("inf"):
            args.subparser.error("--mtp-tokens and --port must be >= 0, --timeout positive and finite")
    if args.command == "train" and args.steps is not None and args.steps <= 0:
        args.subparser.error(f"--steps must be positive, got {args.steps}")
    if args.command == "generate":
        if args.max_tokens <= 0:
            parser.error(f"--max-tokens must be positive, got {args.max_tokens}")
        if args.temperature < 0:
            parser.error(f"--temperature must be >= 0, got {args.temperature}")
        if not 0 < args.top_p <= 1:
            parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
        if args.top_k < 0:
            parser.error(f"--top-k must be >= 0, got {args.top_k}")
        if not 0 <= args.min_p <= 1:
            parser.error(f"--min-p must be in [0, 1], got {args.min_p}")
        if args.threads < 0:
            parser.error(f"--threads must be >= 0, got {args.threads}")


DIE_WITH_PARENT = "QWEN35_DIE_WITH_PARENT"  # PID: `qwen35 eval` sets it for the server it starts


def die_with_parent() -> None:
    """Under `QWEN35_DIE_WITH_PARENT=PID`: this process gets SIGKILL when that parent dies, however it dies. Armed
    here in the child, not in a `preexec_fn`: Python code between fork and exec can deadlock in a threaded
    parent (it hung two test workers' Popen, docs/LOG.md 2026-12-07)."""
    pid = os.environ.pop(DIE_WITH_PARENT, None)
    if pid is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != int(pid):  # the parent died before the signal was armed
        os._exit(128 + signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the subcommand, so the line reads `qwen35 serve: error: ...`
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _validate(args, parser)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="[%(name)s] %(message)s")
    from .config import ConfigError
    from .loading.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (ConfigError, CheckpointError, ValueError, OSError) as e:  # OSError: a path that cannot be written
        print(f"qwen35: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
