"""`qwen35 serve`: check the command line and the checkpoint, build the engine and the app, run uvicorn.

The flags live in `serve_args.py` and are described in `docs/SERVING.md`. Start-up checks, so that a broken
checkpoint fails at start rather than at the first request: the config parses (with `--hf-overrides`),
max_position_embeddings holds at least one K/V block, `--max-model-len` fits what the model supports, the
chat template compiles (naming its file), and a checkpoint without tokenizer.json logs a WARNING that the
built-in vocabulary is used. The port is bound before the model loads (a port in use is a one-line error);
`qwen35 ready: http://HOST:PORT/v1 (model ...)` is printed once the socket listens.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import CHECKPOINT_METHODS
from ..engine.sampling_params import MAX_LOGPROBS
from .serve_args import (BLOCK_SIZE, DEFAULT_MAX_MODEL_LEN, ServeError, api_key_from,
                         check_features, is_loopback, media_policy, mm_limits, parallel_config, parse_hosts,
                         parse_json,
                         speculative_config)

log = logging.getLogger("qwen35.server")


# ---- chat templates ---------------------------------------------------------------------------------------

def load_chat_template(arg: str) -> tuple[str, str]:
    """(template, where it came from) for --chat-template: inline text when it contains `{`, `}` or a newline
    (vLLM's rule), else a file that must exist."""
    if any(c in arg for c in "{}\n"):
        return arg, "--chat-template (inline)"
    path = Path(arg).expanduser()
    if not path.is_file():
        raise ServeError(f"--chat-template {arg!r}: no such file (inline templates contain '{{' or '}}')")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ServeError(f"--chat-template {arg!r}: cannot be read: {e}") from None


def check_chat_template(template: str, where: str, kwargs: dict[str, Any] | None = None) -> None:
    """ServeError when `template` does not compile under our renderer; a WARNING when it cannot render a
    one-message conversation (with the server's default template variables `kwargs`)."""
    import jinja2

    from ..tokenizer.chat_template import _compile, render_chat

    try:
        _compile(template)
    except jinja2.TemplateSyntaxError as e:
        raise ServeError(f"the chat template from {where} does not compile: {e.message} (line {e.lineno})") \
            from None
    except jinja2.TemplateError as e:
        raise ServeError(f"the chat template from {where} does not compile: {e}") from None
    try:
        render_chat(template, [{"role": "user", "content": "hi"}], **(kwargs or {}))
    except Exception as e:  # noqa: BLE001 - any failure here is the template's
        log.warning("the chat template from %s fails on a one-message chat: %s: %s", where, type(e).__name__, e)


# ---- the start-up plan ----------------------------------------------------------------------------------

@dataclass
class ServePlan:
    """Everything `qwen35 serve` decided before loading weights."""

    model_dir: Path  # the checkpoint directory
    hf_config: dict | None  # config.json with the command-line overrides (None: the file as it is)
    served_names: list[str]
    embedded: bool
    max_model_len: int | None
    supported_len: int
    kv_cache_memory: int | None
    chat_template: str | None  # from --chat-template; None: the checkpoint's
    noops: list[str]
    speculative_config: dict | None = None  # vLLM's JSON form; None: no speculation
    mm_limits: dict[str, int] = field(default_factory=dict)  # images / videos per request; all 0: text only
    media_policy: Any = None  # multimodal.media.MediaPolicy: where media URLs may point
    state_kwargs: dict[str, Any] = field(default_factory=dict)
    parallel: Any = None  # parallel.config.ParallelConfig: this process's rank and where the ranks meet
    generation_defaults: dict[str, Any] = field(default_factory=dict)  # params.load_generation_defaults
    tokenizer_dir: Path | None = None  # --tokenizer: its tokenizer.json and chat template instead of the checkpoint's


def plan_serve(args: argparse.Namespace) -> ServePlan:
    """Check the flags and the checkpoint; ServeError (or ConfigError) with one line on anything wrong."""
    from ..config import ConfigError
    from ..tokenizer.tokenizer import find_chat_template
    from . import model_overrides as mo
    from ..loading.model_path import resolve_model, tokenizer_dir
    from .params import load_generation_defaults

    noops = check_features(args)
    parallel = parallel_config(args)
    speculative = speculative_config(args)
    limits, policy = mm_limits(args), media_policy(args)
    if args.model and args.model_flag and args.model != args.model_flag:
        raise ServeError(f"two models given: {args.model!r} and --model {args.model_flag!r}")
    hf_overrides = parse_json("--hf-overrides", args.hf_overrides, dict)
    rope_scaling = parse_json("--rope-scaling", args.rope_scaling, dict)
    template_kwargs = parse_json("--default-chat-template-kwargs", args.default_chat_template_kwargs, dict)
    origins = parse_json("--allowed-origins", args.allowed_origins, list)
    if origins is not None and not all(isinstance(o, str) for o in origins):
        raise ServeError(f"--allowed-origins: expected a JSON list of strings, got {args.allowed_origins!r}")
    hosts = parse_hosts(args.allowed_hosts)
    template = where = None
    if args.chat_template is not None:
        template, where = load_chat_template(args.chat_template)

    arg = args.model or args.model_flag
    embedded = arg is None
    if embedded:
        from ..default_model import DEFAULT_NAME, default_model_dir

        model_dir, name = default_model_dir(), DEFAULT_NAME
    else:
        resolved = resolve_model(arg, args.revision)
        model_dir, name = resolved.path, resolved.name
        if resolved.source == "hf-cache":
            log.info("%s: using the cached snapshot %s", arg, model_dir)

    tokenizer = None
    if args.tokenizer is not None:
        try:
            tokenizer = tokenizer_dir(args.tokenizer)  # --revision is the model's
        except ValueError as e:
            raise ServeError(f"--tokenizer: {e}") from None

    # config.json, with the command-line overrides, and the length it supports
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ServeError(f"{model_dir} has no config.json: not a Hugging Face checkpoint directory")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServeError(f"{config_file} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ServeError(f"{config_file} is not a JSON object")
    overridden = hf_overrides is not None or rope_scaling is not None or args.rope_theta is not None
    try:
        config = mo.apply_overrides(raw, hf_overrides, rope_scaling, args.rope_theta) if overridden else raw
    except ConfigError as e:
        raise ServeError(f"--hf-overrides/--rope-scaling: {e}") from None
    where_cfg = f"{config_file} with the command-line overrides" if overridden else str(config_file)
    cfg = mo.parse_config(config, where_cfg)
    text = cfg.text
    if parallel.world_size > 1:
        from ..loading.checkpoint import check_fp8_split
        from ..parallel.group import Group
        from ..parallel.sharding import Shard

        if args.device.startswith("cuda:"):
            raise ServeError(f"--device {args.device} with --tensor-parallel-size {parallel.world_size}: use "
                             "--device cuda (rank i of each machine takes GPU i; CUDA_VISIBLE_DEVICES picks them)")
        try:
            for rank in (0, parallel.world_size - 1):  # the first and the last share hold every kind of edge
                check_fp8_split(cfg, Shard(text, Group(rank, parallel.world_size), parallel.enable_expert_parallel))
        except ConfigError as e:
            raise ServeError(f"--tensor-parallel-size {parallel.world_size}: {e} ({where_cfg})") from None
        if parallel.enable_expert_parallel and not text.is_moe:
            log.info("--enable-expert-parallel: %s is dense (no routed experts): tensor parallel only", where_cfg)
    if text.max_position_embeddings < BLOCK_SIZE:
        raise ServeError(f"{where_cfg}: max_position_embeddings={text.max_position_embeddings} is smaller than one "
                         f"K/V block ({BLOCK_SIZE} tokens)")
    method = cfg.quant.method if cfg.quant is not None else None
    if args.quantization in CHECKPOINT_METHODS and method != args.quantization:
        raise ServeError(f"--quantization {args.quantization} needs a {args.quantization} checkpoint; {where_cfg} is "
                         f"{method or 'unquantised'} (use --quantization int8 or int4 to quantise it at load)")
    supported = text.supported_length
    max_len = args.max_model_len
    if max_len == -1:
        max_len = supported
    elif max_len is not None and max_len > supported:
        raise ServeError(f"--max-model-len {max_len} is larger than the {supported} tokens the model supports "
                         f"({mo.describe_supported(text)} in {where_cfg}); lower it, or extend the context with "
                         f"YaRN via --hf-overrides (see qwen35 serve --help)")
    if max_len is not None and max_len < 2:
        raise ServeError(f"--max-model-len must be at least 2, got {max_len}")

    # the chat template: --chat-template's, else the checkpoint's
    try:
        checked, checked_where = (template, where) if template is not None else \
            find_chat_template(tokenizer or model_dir)
    except ValueError as e:
        raise ServeError(str(e)) from None
    check_chat_template(checked, checked_where, template_kwargs)

    override = parse_json("--override-generation-config", args.override_generation_config, dict)
    try:
        generation_defaults = load_generation_defaults(model_dir, args.generation_config, override)
    except ValueError as e:
        raise ServeError(f"--generation-config {args.generation_config}: {e}") from None

    kv = None
    if args.kv_cache_memory:
        from ..cli import parse_size

        try:
            kv = parse_size(args.kv_cache_memory)
        except ValueError:
            raise ServeError(f"--kv-cache-memory: expected a size like 4GB, got {args.kv_cache_memory!r}") from None
    elif args.memory_fraction is not None:
        kv = cache_budget(model_dir, text, args, max_len or min(supported, DEFAULT_MAX_MODEL_LEN),
                          speculative, method, parallel)

    state_kwargs: dict[str, Any] = dict(
        api_key=api_key_from(args), trust_request_chat_template=args.trust_request_chat_template,
        log_requests=args.enable_log_requests, max_request_bytes=args.max_request_bytes,
        use_presets=args.generation_config == "auto" and args.override_generation_config is None)
    if template_kwargs is not None:
        state_kwargs["default_chat_template_kwargs"] = template_kwargs
    if origins is not None:
        state_kwargs["allowed_origins"] = origins
    if hosts is not None:
        state_kwargs["allowed_hosts"] = hosts
    if args.max_logprobs is not None:
        if args.max_logprobs > MAX_LOGPROBS:
            raise ServeError(f"--max-logprobs {args.max_logprobs}: at most {MAX_LOGPROBS} (the most a request may "
                             "ask here, as vLLM's default); the flag can only lower it")
        state_kwargs["max_logprobs"] = args.max_logprobs
    if args.max_waiting_requests is not None:
        state_kwargs["max_waiting_requests"] = args.max_waiting_requests
    state_kwargs.update(response_role=args.response_role, return_tokens_as_token_ids=args.return_tokens_as_token_ids,
                        force_include_usage=args.enable_force_include_usage)
    _check_ssl(args)
    return ServePlan(model_dir=model_dir, tokenizer_dir=tokenizer, hf_config=config if overridden else None,
                     embedded=embedded,
                     served_names=args.served_model_name or [name], max_model_len=max_len, supported_len=supported,
                     kv_cache_memory=kv, chat_template=template, noops=noops, speculative_config=speculative,
                     mm_limits=limits, media_policy=policy, state_kwargs=state_kwargs, parallel=parallel,
                     generation_defaults=generation_defaults)


def _check_ssl(args: argparse.Namespace) -> None:
    """The TLS files exist and load, so that a wrong path fails before the model loads, with its name."""
    if args.ssl_keyfile is None and args.ssl_certfile is None:
        if args.ssl_ca_certs or args.ssl_cert_reqs:
            raise ServeError("--ssl-ca-certs and --ssl-cert-reqs need --ssl-certfile and --ssl-keyfile")
        return
    if args.ssl_certfile is None:
        raise ServeError("--ssl-keyfile needs --ssl-certfile (the certificate that goes with the key)")
    import ssl

    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
        if args.ssl_ca_certs:
            ctx.load_verify_locations(args.ssl_ca_certs)
    except (OSError, ssl.SSLError) as e:
        raise ServeError(f"--ssl-certfile/--ssl-keyfile/--ssl-ca-certs: cannot load them: {e}") from None


def cache_budget(model_dir: Path, text, args: argparse.Namespace, max_model_len: int,
                 speculative: dict | None = None, checkpoint_quant: str | None = None, parallel=None) -> int:
    """Cache bytes for --gpu-memory-utilization / --mem-fraction-static F: F x memory (total device memory on
    CUDA, available RAM on CPU) minus the weights (the checkpoint's file sizes, scaled to the bits per weight of
    --quantization int8/int4), capped at what max_num_seqs
    full-length sequences and the prefix cache can use (`memory.full_budget`, the engine's own default plan)."""
    from ..engine.llm_engine import DTYPES
    from ..engine.memory import available_memory, full_budget

    frac = args.memory_fraction
    tp = parallel.world_size if parallel is not None else 1
    per_node = parallel.per_node if parallel is not None else 1
    if args.device.startswith("cuda"):  # per rank: one device each
        import torch

        device = torch.device("cuda", parallel.local_rank) if tp > 1 else torch.device(args.device)
        free, total = torch.cuda.mem_get_info(device)
        memory, what = min(int(frac * total), free), f"{frac:g} of the device's {total / 2**30:.1f} GiB"
    else:  # the ranks of this machine share its RAM
        memory = int(frac * available_memory() / per_node)
        what = f"{frac:g} of the {available_memory() / 2**30:.1f} GiB of available RAM" + \
            (f" over {per_node} ranks" if per_node > 1 else "")
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) // tp  # each rank holds its share
    if tp > 1:
        from ..parallel.group import Group
        from ..parallel.sharding import Shard

        text = Shard(text, Group(0, tp), parallel.enable_expert_parallel).text_config()
    quantized = getattr(args, "quantization", None)
    if quantized in ("int8", "int4"):  # the weights as loaded: bits per weight of the format over the file's
        on_disk = 8 if checkpoint_quant == "fp8" else 16
        weights = int(weights * min(1.0, 1.1 * (8.25 if quantized == "int8" else 4.5) / on_disk))
    budget = memory - weights
    if budget <= 0:
        raise ServeError(f"--gpu-memory-utilization {frac:g}: {what} does not even hold the weights "
                         f"({weights / 2**30:.2f} GiB); raise it")
    prefix = 0.0 if args.no_enable_prefix_caching else 0.3  # EngineConfig.prefix_cache_fraction
    k = (speculative or {}).get("num_speculative_tokens", 0)
    return min(budget, full_budget(text, DTYPES[args.dtype], args.max_num_seqs, max_model_len, BLOCK_SIZE, prefix,
                                   text.mtp_num_hidden_layers if k else 0, k))


# ---- building and running -------------------------------------------------------------------------------

def build_config(plan: ServePlan, args: argparse.Namespace):
    from ..engine.config import EngineConfig

    return EngineConfig(model=str(plan.model_dir), hf_config=plan.hf_config, dtype=args.dtype,
                        tokenizer=None if plan.tokenizer_dir is None else str(plan.tokenizer_dir),
                       quantization=args.quantization,
                       max_model_len=plan.max_model_len,
                       max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       kv_cache_memory=plan.kv_cache_memory, block_size=BLOCK_SIZE,
                       enable_prefix_caching=not args.no_enable_prefix_caching, threads=args.threads or None,
                       seed=args.seed,
                       device=args.device, speculative_config=plan.speculative_config,
                       language_model_only=not any(plan.mm_limits.values()), limit_mm_per_prompt=plan.mm_limits,
                       tensor_parallel_size=plan.parallel.world_size,
                       distributed=plan.parallel if plan.parallel.world_size > 1 else None)


def build_state(plan: ServePlan, args: argparse.Namespace):
    from .app import ServerState

    cfg = build_config(plan, args)
    if args.engine_process:
        from ..engine.process import EngineProcess, EngineStartError

        try:
            client = EngineProcess(cfg)
        except EngineStartError as e:
            raise ServeError(f"the engine did not start: {e}") from None
    else:
        from ..engine.async_engine import AsyncLLM

        client = AsyncLLM(cfg)
    try:
        return ServerState(client, plan.served_names, chat_template=plan.chat_template,
                           generation_defaults=plan.generation_defaults, mm_limits=plan.mm_limits,
                           media_policy=plan.media_policy,
                           **plan.state_kwargs)
    except BaseException:
        client.shutdown()
        raise


def banner(state, plan: ServePlan) -> str:
    info = state.client.info
    where = "its own process" if type(state.client).__name__ == "EngineProcess" else "a thread of the server"
    lines = [f"qwen35 serving {state.served_names[0]!r}",
             f"  model: {plan.model_dir} ({info.num_hidden_layers} layers, hidden {info.hidden_size}, "
             f"{'MoE' if info.is_moe else 'dense'}), max_model_len {info.max_model_len} "
             f"(supports {plan.supported_len}); engine in {where}",
             f"  {info.cache_plan}",
             f"  speculative decoding: {info.speculative}",
             f"  parallel: {info.parallel}" + (f"; {info.threads}" if info.threads else ""),
             f"  vision: {info.vision_note}"]
    if plan.embedded:
        from ..default_model import CAPABILITIES

        lines += [f"  NOTE: no model given, so this is the EMBEDDED DEMO MODEL, {CAPABILITIES}.",
                  "        Serve a real checkpoint with: qwen35 serve /path/to/Qwen3.5-0.8B"]
    return "\n".join(lines)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening address, bound now (before the model loads) so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP; without it
    # Nagle's algorithm and delayed ACKs held every reply on a kept-alive connection back ~40 ms
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        why = "the port is already in use (pick another with --port)" if e.errno == errno.EADDRINUSE else \
            (e.strerror or str(e))
        raise ServeError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int, https: bool = False) -> str:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"{'https' if https else 'http'}://{shown}:{port}/v1"


def serve(args: argparse.Namespace) -> int:
    from .. import runtime

    runtime.configure_env()  # passive OpenMP waits for the engine: set before anything loads torch
    import uvicorn

    from .app import create_app
    from .http_protocol import with_header_timeout

    logging.getLogger("qwen35.server").setLevel(logging.INFO)  # the request log and the no-op line
    plan = plan_serve(args)
    if plan.noops:
        log.info("accepted with no effect here: %s", ", ".join(plan.noops))
    api_key = plan.state_kwargs.get("api_key")
    if not api_key and not is_loopback(args.host):
        print(f"qwen35 serve: WARNING: serving on {args.host} without --api-key: anyone who can reach this port "
              "(and any web page, through DNS rebinding) can use the model", file=sys.stderr, flush=True)
    if plan.parallel.rank != 0:  # another node's first rank: no HTTP, only the model's share
        return follow(plan, args)
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    try:
        state = build_state(plan, args)
    except BaseException:
        sock.close()
        raise
    print(banner(state, plan), file=sys.stderr, flush=True)
    ready = f"qwen35 ready: {url_of(args.host, port, args.ssl_certfile is not None)} (model {plan.served_names[0]!r})"

    class Server(uvicorn.Server):
        engine_gone = False

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # the socket listens now
                print(ready, file=sys.stderr, flush=True)

        async def on_tick(self, counter: int) -> bool:
            if not state.client.healthy and not self.engine_gone:  # its process died (or a rank of it): stop
                self.engine_gone = True
                print("qwen35 serve: the engine stopped running (see the message above); exiting",
                      file=sys.stderr, flush=True)
                self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(create_app(state), log_level=args.uvicorn_log_level,
                            access_log=not args.disable_uvicorn_access_log,
                            http=with_header_timeout(args.header_timeout), timeout_keep_alive=args.timeout_keep_alive,
                            timeout_graceful_shutdown=5, root_path=args.root_path,
                            ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile,
                            ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs)
    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        state.client.shutdown()
    return 1 if server.engine_gone else 0


def follow(plan: ServePlan, args: argparse.Namespace) -> int:
    """A node other than 0 (`--node-rank n`) or a torchrun rank other than 0: build this rank's share of the
    engine (and start the node's other ranks) and run rank 0's steps until it stops."""
    from ..engine.llm_engine import LLMEngine

    p = plan.parallel
    print(f"qwen35 rank {p.rank} of {p.world_size} (node {p.node_rank} of {p.nnodes}): joining rank 0 at "
          f"{p.master_addr}:{p.master_port}", file=sys.stderr, flush=True)
    engine = LLMEngine(build_config(plan, args))
    try:
        engine.follow()
    finally:
        engine.close()  # this node's other ranks
    return 0
