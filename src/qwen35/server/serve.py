"""`qwen35 serve`: check the command line and the checkpoint, build the engine and the app, run uvicorn.

Any `vllm serve` or SGLang `launch_server` command line from the Qwen3.5 model cards runs with `qwen35 serve`
in front, or fails at once with one line that says why (`qwen35 serve: error: ...`, exit status 2):

    qwen35 serve Qwen/Qwen3.5-0.8B --port 8000 --tensor-parallel-size 1 --max-model-len 128k \\
        --reasoning-parser qwen3 --enable-auto-tool-choice --tool-call-parser qwen3_coder
    qwen35 serve --model-path Qwen/Qwen3.5-0.8B --tp-size 1 --context-length 262144 --mem-fraction-static 0.8

Flag by flag (vLLM name first, SGLang's after a slash):
- model: positional, `--model`, `--model-path`: a checkpoint directory, or a Hugging Face id found in the
  local HF cache (`--revision` picks the snapshot; nothing is downloaded: see model_path.py). The served
  model name is the argument as given, unless `--served-model-name`.
- `--max-model-len` / `--context-length`: `32768`, `2k` (x1000), `2K` (x1024; `k m g t` are decimal,
  `K M G T` binary, as vLLM's human_readable_int), `-1` or `auto` (the full supported length). Above what the
  model supports (max_position_embeddings, or the YaRN range) is an error naming both numbers. Default:
  min(supported, 8192), a CPU-friendly size.
- `--hf-overrides JSON`, `--rope-scaling JSON`, `--rope-theta X`: change config.json (model_overrides.py).
- `--gpu-memory-utilization` / `--mem-fraction-static F`: the share of memory (device memory on CUDA, the
  available RAM on CPU) that weights plus cache may use; the cache gets that share minus the weights, capped
  at what max_num_seqs full-length sequences plus the prefix cache can use. `--kv-cache-memory BYTES` sets
  the cache size directly and wins. Without either, the engine sizes the cache from free RAM.
- `--seed` / `--random-seed`: torch's global seed, set once at start (requests still take their own seed).
- `--api-key` (else `$QWEN35_API_KEY`, else `$VLLM_API_KEY`), `--allowed-origins '["*"]'` (CORS, a JSON
  list), `--allowed-hosts` (Host header check, JSON list or comma-separated), `--max-logprobs N`,
  `--max-waiting-requests N`, `--trust-request-chat-template`, `--default-chat-template-kwargs JSON`,
  `--enable-log-requests` / `--log-requests`: fields of ServerState, enforced by the app.
- `--chat-template`: text containing `{`, `}` or a newline is the template itself (vLLM's rule); anything
  else is a file that must exist. The template in use (this one, else the checkpoint's) must compile.
- `--reasoning-parser qwen3`, `--tool-call-parser qwen3_coder|qwen3_xml`: the only formats Qwen3.5 speaks;
  both are always on. Other names are errors.
- Not implemented yet, so an error naming the feature: tensor / pipeline / data parallelism above 1
  (`--tensor-parallel-size`, `-tp`, `--tp-size`, `--pipeline-parallel-size`, `--pp-size`,
  `--data-parallel-size`, `--dp-size`) and MTP speculative decoding (`--speculative-config`,
  `--speculative-algorithm` / `--speculative-algo`, `--speculative-num-steps`, `--speculative-eagle-topk`,
  `--speculative-num-draft-tokens`, `--num-speculative-tokens`).
- Accepted with no effect here, named once at start-up: `--enable-prefix-caching` (on by default),
  `--enable-chunked-prefill` (always chunked), `--enforce-eager` (no CUDA graphs to turn off),
  `--disable-log-requests` (off by default), `--disable-log-stats`, `--trust-remote-code` (no remote code
  is run), `--language-model-only` (the model runs text-only), `--enable-auto-tool-choice` (tool calls are
  always parsed), `--enable-expert-parallel` (one device), `--enable-metrics` (/metrics is always on).

Start-up checks, so a broken checkpoint fails at start rather than at the first request: the config parses,
max_position_embeddings holds at least one K/V block (16 tokens), the chat template compiles (naming its
file), and a checkpoint without tokenizer.json logs a WARNING that the built-in vocabulary is used.

HTTP: the port is bound before the model loads (a port in use is a one-line error), and
`qwen35 ready: http://HOST:PORT/v1 (model ...)` is printed to stderr only once the socket listens.
Connection limits, chosen so idle or half-open connections cannot pile up:
- `--timeout-keep-alive` (5 s, vLLM's default; `$VLLM_HTTP_TIMEOUT_KEEP_ALIVE`): an idle keep-alive
  connection is closed after this long;
- `--header-timeout` (30 s): a connection whose request headers have not fully arrived this long after it
  opened (or after its previous response) is closed. uvicorn has no such timer: a client that connects and
  sends nothing would otherwise hold its connection forever;
- request headers are capped by h11 at 16 KiB (uvicorn's default `h11_max_incomplete_event_size`), bodies by
  `--max-request-bytes` (16 MiB; 413 above);
- no `limit_concurrency`: it counts connections, so it would refuse health checks and metric scrapes under
  load; the waiting-queue cap (`--max-waiting-requests`, 503 + Retry-After) bounds the work instead;
- on shutdown, open streams get 5 s to finish before they are cut.

Security: without `--api-key`, anyone who can reach the port can use the model. On a non-loopback `--host`
(`0.0.0.0`) that is everyone on the network, and qwen35 warns at start. Even on loopback, a web page open in a
browser on the same machine can reach the server through DNS rebinding (its own domain re-resolved to
127.0.0.1, so the browser treats the server as same-origin); `--api-key` or `--allowed-hosts` (which rejects
the attacker's Host header) closes that.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("qwen35.server")

BLOCK_SIZE = 16  # the engine's K/V block size (EngineConfig.block_size)
DEFAULT_MAX_MODEL_LEN = 8192  # the engine's default cap when --max-model-len is not given
REASONING_PARSERS = ("qwen3",)
TOOL_PARSERS = ("qwen3_coder", "qwen3_xml")
EMBEDDED_NAME = "qwen35-default-random"
MTP_ERROR = "MTP speculative decoding is not implemented yet"

# dest -> (the flag as users write it, why it changes nothing here)
NOOP_FLAGS = {
    "enable_prefix_caching": ("--enable-prefix-caching", "on by default"),
    "enable_chunked_prefill": ("--enable-chunked-prefill", "prefill is always chunked"),
    "enforce_eager": ("--enforce-eager", "no CUDA graphs to turn off"),
    "disable_log_requests": ("--disable-log-requests", "requests are not logged by default"),
    "disable_log_stats": ("--disable-log-stats", "no periodic stats log"),
    "trust_remote_code": ("--trust-remote-code", "no remote code is run"),
    "language_model_only": ("--language-model-only", "the model runs text-only"),
    "enable_auto_tool_choice": ("--enable-auto-tool-choice", "tool calls are always parsed"),
    "enable_expert_parallel": ("--enable-expert-parallel", "one device"),
    "enable_metrics": ("--enable-metrics", "/metrics is always on"),
}
PARALLEL = {  # dest -> what it is
    "tensor_parallel_size": "tensor parallelism",
    "pipeline_parallel_size": "pipeline parallelism",
    "data_parallel_size": "data parallelism",
}
SPECULATIVE = ("speculative_config", "speculative_algorithm", "speculative_num_steps", "speculative_eagle_topk",
               "speculative_num_draft_tokens", "num_speculative_tokens")


SECURITY_NOTE = (
    "Security: without --api-key (or $QWEN35_API_KEY / $VLLM_API_KEY) anyone who can reach the port can use the "
    "model. A non-loopback --host such as 0.0.0.0 opens it to the network (qwen35 warns at start). Even on "
    "loopback, a web page in a browser on this machine can reach it through DNS rebinding; --api-key or "
    "--allowed-hosts prevents that.")


class ServeError(ValueError):
    """A start-up error: printed as one line, exit status 2."""


# ---- argument types -------------------------------------------------------------------------------------

_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_int(text: str) -> int:
    """`1k` = 1000, `1K` = 1024, `25.6k` = 25600 (decimals only with the decimal suffixes), as vLLM."""
    value = text.strip()
    m = _HUMAN_INT.fullmatch(value)
    if m:
        number, suffix = m.groups()
        if suffix in _DECIMAL:
            return int(float(number) * _DECIMAL[suffix])
        if "." in number:
            raise argparse.ArgumentTypeError(f"decimals are not allowed with the binary suffix {suffix} in "
                                              f"{value!r}; did you mean {number}{suffix.lower()}?")
        return int(number) * _BINARY[suffix]
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid length {value!r} (use e.g. 32768, 128k, 1m, 32K, -1 or auto)") \
            from None


def human_int_or_auto(text: str) -> int:
    """As human_int, plus `-1` / `auto`: -1, meaning the model's full supported length."""
    value = text.strip()
    if value == "-1" or value.lower() == "auto":
        return -1
    n = human_int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, -1 or auto, got {value!r}")
    return n


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < f <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return f


def _nonneg_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _positive_int(text: str) -> int:
    n = _nonneg_int(text)
    if n == 0:
        raise argparse.ArgumentTypeError("must be positive, got 0")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return x


def _choice(supported: tuple[str, ...], described: str):
    def check(text: str) -> str:
        if text not in supported:
            raise argparse.ArgumentTypeError(f"{text!r} is not supported; {described}")
        return text
    check.__name__ = "parser name"
    return check


def parse_json(flag: str, text: str | None, kind: type) -> Any:
    """`text` parsed as JSON of type `kind` (dict or list); None stays None. A ServeError names the flag."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ServeError(f"{flag}: not valid JSON ({e.msg} at character {e.pos}): {text!r}") from None
    if not isinstance(value, kind):
        want = "object" if kind is dict else "list"
        raise ServeError(f"{flag}: expected a JSON {want}, got {text!r}")
    return value


# ---- the parser -----------------------------------------------------------------------------------------

def add_serve_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model")
    m.add_argument("model", nargs="?", help="checkpoint directory or Hugging Face id in the local HF cache "
                                            "(default: the embedded random model)")
    m.add_argument("--model", "--model-path", dest="model_flag", metavar="MODEL", help="same as the positional")
    m.add_argument("--revision", default=None, help="HF cache: a branch, tag or commit (default: main)")
    m.add_argument("--served-model-name", nargs="+", default=None,
                   help="names the server answers to (default: the model argument as given)")
    m.add_argument("--max-model-len", "--context-length", dest="max_model_len", type=human_int_or_auto,
                   default=None, metavar="N", help="context length: 32768, 128k, 32K, -1/auto (the full supported "
                                                   f"length); default min(supported, {DEFAULT_MAX_MODEL_LEN})")
    m.add_argument("--hf-overrides", default=None, metavar="JSON", help="deep-merged into config.json, e.g. "
                   '\'{"text_config": {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, ...}}}\'')
    m.add_argument("--rope-scaling", default=None, metavar="JSON", help="merged into rope_parameters (old vLLM)")
    m.add_argument("--rope-theta", type=_positive_float, default=None, help="rope_parameters.rope_theta")
    m.add_argument("--dtype", default="bfloat16", choices=["auto", "bfloat16", "bf16", "float32", "fp32"])
    m.add_argument("--generation-config", default="auto", help="'auto' (checkpoint), 'vllm' (neutral) or a folder")
    m.add_argument("--chat-template", default=None, help="a Jinja template file, or the template text itself")
    m.add_argument("--default-chat-template-kwargs", default=None, metavar="JSON",
                   help='template variables for every request, e.g. \'{"enable_thinking": false}\'')
    m.add_argument("--trust-request-chat-template", action="store_true",
                   help="allow requests to send their own chat_template")
    m.add_argument("--reasoning-parser", default="qwen3", type=_choice(
        REASONING_PARSERS, "the supported reasoning parser is 'qwen3' (Qwen3.5's <think> format)"))
    m.add_argument("--tool-call-parser", default="qwen3_coder", type=_choice(
        TOOL_PARSERS, "the supported tool-call parsers are 'qwen3_coder' and its alias 'qwen3_xml' (Qwen3.5's XML "
                      "tool calls)"))

    e = p.add_argument_group("engine")
    e.add_argument("--max-num-seqs", "--max-running-requests", dest="max_num_seqs", type=_positive_int, default=16)
    e.add_argument("--max-num-batched-tokens", type=_positive_int, default=2048)
    e.add_argument("--kv-cache-memory", default=None, help="bytes for K/V + GDN state, e.g. 4GB (wins over "
                                                           "--gpu-memory-utilization)")
    e.add_argument("--gpu-memory-utilization", "--mem-fraction-static", dest="memory_fraction", type=_fraction,
                   default=None, metavar="F", help="share of memory for weights + cache (see the docs)")
    e.add_argument("--no-enable-prefix-caching", "--disable-radix-cache", dest="no_enable_prefix_caching",
                   action="store_true")
    e.add_argument("--threads", type=_nonneg_int, default=0, help="torch threads (default: torch's choice)")
    e.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    e.add_argument("--seed", "--random-seed", dest="seed", type=int, default=None, help="torch's global seed")

    h = p.add_argument_group("HTTP")
    h.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; see the DNS-rebinding note in the docs")
    h.add_argument("--port", type=_nonneg_int, default=8000)
    h.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 "
                                                   "(default: $QWEN35_API_KEY, else $VLLM_API_KEY)")
    h.add_argument("--allowed-origins", default=None, metavar="JSON", help='CORS origins, e.g. \'["*"]\'')
    h.add_argument("--allowed-hosts", default=None, help="accepted Host headers (JSON list or comma-separated)")
    h.add_argument("--max-request-bytes", type=_positive_int, default=16 << 20)
    h.add_argument("--max-waiting-requests", type=_nonneg_int, default=None,
                   help="queued requests before 503 (default 256)")
    h.add_argument("--max-logprobs", type=_nonneg_int, default=None, help="largest top_logprobs (default 20)")
    h.add_argument("--enable-log-requests", "--log-requests", dest="enable_log_requests", action="store_true")
    h.add_argument("--uvicorn-log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    h.add_argument("--timeout-keep-alive", type=_positive_float,
                   default=float(os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", 5)),
                   help="seconds an idle keep-alive connection stays open (default 5)")
    h.add_argument("--header-timeout", type=_positive_float, default=30.0,
                   help="seconds a connection may take to send its request headers (default 30)")

    u = p.add_argument_group("not implemented yet (values other than 1 / any speculative setting are errors)")
    u.add_argument("--tensor-parallel-size", "-tp", "--tp-size", "--tp", dest="tensor_parallel_size", type=int,
                   default=1)
    u.add_argument("--pipeline-parallel-size", "-pp", "--pp-size", dest="pipeline_parallel_size", type=int,
                   default=1)
    u.add_argument("--data-parallel-size", "-dp", "--dp-size", dest="data_parallel_size", type=int, default=1)
    u.add_argument("--speculative-config", default=None, metavar="JSON")
    u.add_argument("--speculative-algorithm", "--speculative-algo", dest="speculative_algorithm", default=None)
    for name in ("--speculative-num-steps", "--speculative-eagle-topk", "--speculative-num-draft-tokens",
                 "--num-speculative-tokens"):
        u.add_argument(name, type=int, default=None)

    n = p.add_argument_group("accepted, no effect here (named once at start-up)")
    for dest, (flag, why) in NOOP_FLAGS.items():
        n.add_argument(flag, dest=dest, action="store_true", help=why)


# ---- checks that need no files --------------------------------------------------------------------------

def check_features(args: argparse.Namespace) -> list[str]:
    """ServeError for a flag whose feature does not exist yet; the no-op flags given, as `--flag (why)`."""
    for dest, what in PARALLEL.items():
        size = getattr(args, dest)
        if size != 1:
            raise ServeError(f"{what} is not implemented yet (runs on one device); "
                             f"--{dest.replace('_', '-')} {size} needs {size} devices")
    given = [f"--{d.replace('_', '-')}" for d in SPECULATIVE if getattr(args, d) is not None]
    if given:
        raise ServeError(f"{MTP_ERROR} ({', '.join(given)}); drop the flag to serve without it")
    return [f"{flag} ({why})" for dest, (flag, why) in NOOP_FLAGS.items() if getattr(args, dest)]


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def api_key_from(args: argparse.Namespace) -> str | None:
    return args.api_key or os.environ.get("QWEN35_API_KEY") or os.environ.get("VLLM_API_KEY") or None


def parse_hosts(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if text.lstrip().startswith("["):
        hosts = parse_json("--allowed-hosts", text, list)
    else:
        hosts = [h.strip() for h in text.split(",") if h.strip()]
    if not hosts or not all(isinstance(h, str) for h in hosts):
        raise ServeError(f"--allowed-hosts: expected host names, got {text!r}")
    return hosts


# ---- the start-up plan ----------------------------------------------------------------------------------

@dataclass
class ServePlan:
    """Everything `qwen35 serve` decided before loading weights."""

    model_dir: Path  # what the engine loads (an overlay directory when config.json was overridden)
    display_path: str  # the checkpoint as the user knows it
    served_names: list[str]
    embedded: bool
    max_model_len: int | None
    supported_len: int
    kv_cache_memory: int | None
    chat_template: str | None  # from --chat-template; None: the checkpoint's
    noops: list[str]
    state_kwargs: dict[str, Any] = field(default_factory=dict)


def plan_serve(args: argparse.Namespace) -> ServePlan:
    """Check the flags and the checkpoint; ServeError (or ConfigError) with one line on anything wrong."""
    from ..config import ConfigError
    from ..tokenizer.tokenizer import find_chat_template
    from . import model_overrides as mo
    from .model_path import resolve_model

    noops = check_features(args)
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
        from ..default_model import default_model_dir

        model_dir, name = Path(default_model_dir()), EMBEDDED_NAME
    else:
        resolved = resolve_model(arg, args.revision)
        model_dir, name = resolved.path, resolved.name
        if resolved.source == "hf-cache":
            log.info("%s: using the cached snapshot %s", arg, model_dir)

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
    if text.max_position_embeddings < BLOCK_SIZE:
        raise ServeError(f"{where_cfg}: max_position_embeddings={text.max_position_embeddings} is smaller than one "
                         f"K/V block ({BLOCK_SIZE} tokens)")
    supported = mo.supported_length(text)
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
        checked, checked_where = (template, where) if template is not None else find_chat_template(model_dir)
    except ValueError as e:
        raise ServeError(str(e)) from None
    check_chat_template(checked, checked_where, template_kwargs)

    # the engine loads the overridden config through an overlay directory (model_overrides.py)
    engine_dir = model_dir
    needs_yarn = max_len is not None and max_len > text.max_position_embeddings
    if overridden or needs_yarn:
        if needs_yarn:
            config = mo.with_yarn_length(config, text)
        engine_dir = mo.overlay_checkpoint(model_dir, config)
        log.info("serving %s with an overridden config.json (%s)", model_dir, engine_dir / "config.json")

    kv = None
    if args.kv_cache_memory:
        from ..cli import parse_size

        try:
            kv = parse_size(args.kv_cache_memory)
        except ValueError:
            raise ServeError(f"--kv-cache-memory: expected a size like 4GB, got {args.kv_cache_memory!r}") from None
    elif args.memory_fraction is not None:
        kv = cache_budget(model_dir, text, args, max_len or min(supported, DEFAULT_MAX_MODEL_LEN))

    state_kwargs: dict[str, Any] = dict(
        api_key=api_key_from(args), trust_request_chat_template=args.trust_request_chat_template,
        log_requests=args.enable_log_requests, max_request_bytes=args.max_request_bytes,
        use_presets=args.generation_config != "vllm")
    if template_kwargs is not None:
        state_kwargs["default_chat_template_kwargs"] = template_kwargs
    if origins is not None:
        state_kwargs["allowed_origins"] = origins
    if hosts is not None:
        state_kwargs["allowed_hosts"] = hosts
    if args.max_logprobs is not None:
        state_kwargs["max_logprobs"] = args.max_logprobs
    if args.max_waiting_requests is not None:
        state_kwargs["max_waiting_requests"] = args.max_waiting_requests
    return ServePlan(model_dir=engine_dir, display_path=str(model_dir), embedded=embedded,
                     served_names=args.served_model_name or [name], max_model_len=max_len, supported_len=supported,
                     kv_cache_memory=kv, chat_template=template, noops=noops, state_kwargs=state_kwargs)


def cache_budget(model_dir: Path, text, args: argparse.Namespace, max_model_len: int) -> int:
    """Cache bytes for --gpu-memory-utilization / --mem-fraction-static F: F x memory (total device memory on
    CUDA, available RAM on CPU) minus the weights (the checkpoint's file sizes), capped at what max_num_seqs
    full-length sequences and the prefix cache can use (the engine's own default plan)."""
    import torch

    from ..engine.llm_engine import DTYPES
    from ..engine.memory import available_memory
    from ..model.cache import kv_bytes_per_token, state_bytes_per_slot

    frac = args.memory_fraction
    if args.device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(args.device))
        memory, what = min(int(frac * total), free), f"{frac:g} of the device's {total / 2**30:.1f} GiB"
    else:
        memory, what = int(frac * available_memory()), f"{frac:g} of the {available_memory() / 2**30:.1f} GiB of " \
                                                       "available RAM"
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    budget = memory - weights
    if budget <= 0:
        raise ServeError(f"--gpu-memory-utilization {frac:g}: {what} does not even hold the weights "
                         f"({weights / 2**30:.2f} GiB); raise it")
    dtype = DTYPES[args.dtype]
    prefix = 0.0 if args.no_enable_prefix_caching else 0.3  # EngineConfig.prefix_cache_fraction
    block_bytes = kv_bytes_per_token(text, dtype) * BLOCK_SIZE
    run = args.max_num_seqs * state_bytes_per_slot(text, dtype)
    full = args.max_num_seqs * -(-max_model_len // BLOCK_SIZE) * block_bytes + run
    return min(budget, full + int(prefix * full))


# ---- building and running -------------------------------------------------------------------------------

def build_state(plan: ServePlan, args: argparse.Namespace):
    from ..engine.async_engine import AsyncLLM
    from ..engine.llm_engine import EngineConfig
    from .app import ServerState
    from .params import load_generation_defaults

    cfg = EngineConfig(model=str(plan.model_dir), dtype=args.dtype, max_model_len=plan.max_model_len,
                       max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       kv_cache_memory=plan.kv_cache_memory, block_size=BLOCK_SIZE,
                       enable_prefix_caching=not args.no_enable_prefix_caching, threads=args.threads or None,
                       device=args.device)
    engine = AsyncLLM(cfg)
    try:
        defaults = load_generation_defaults(plan.display_path, args.generation_config)
        return ServerState(engine, plan.served_names, chat_template=plan.chat_template,
                           generation_defaults=defaults, **plan.state_kwargs)
    except BaseException:
        engine.shutdown()
        raise


def banner(state, plan: ServePlan) -> str:
    e = state.engine.engine
    lines = [f"qwen35 serving {state.served_names[0]!r}",
             f"  model: {plan.display_path} ({e.model_cfg.text.num_hidden_layers} layers, hidden "
             f"{e.model_cfg.text.hidden_size}, {'MoE' if e.model_cfg.is_moe else 'dense'}), max_model_len "
             f"{e.max_model_len} (supports {plan.supported_len})",
             f"  {e.plan.describe()}"]
    if plan.embedded:
        lines += ["  NOTE: this is the EMBEDDED DEFAULT MODEL, a small checkpoint with RANDOM weights: its answers are",
                  "        noise. Serve a real checkpoint with: qwen35 serve /path/to/Qwen3.5-0.8B"]
    return "\n".join(lines)


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening address, bound now (before the model loads) so a taken port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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


def url_of(host: str, port: int) -> str:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def _protocol_class(header_timeout: float):
    """uvicorn's h11 protocol plus a request-header timer (see the module docstring)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _header_timer = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._on_header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._header_timer is not None and not self._waiting_for_headers():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._waiting_for_headers():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    logging.getLogger("qwen35.server").setLevel(logging.INFO)  # the request log and the no-op line
    plan = plan_serve(args)
    if plan.noops:
        log.info("accepted with no effect here: %s", ", ".join(plan.noops))
    api_key = plan.state_kwargs.get("api_key")
    if not api_key and not is_loopback(args.host):
        print(f"qwen35 serve: WARNING: serving on {args.host} without --api-key: anyone who can reach this port "
              "(and any web page, through DNS rebinding) can use the model", file=sys.stderr, flush=True)
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    if args.seed is not None:
        import random

        import torch

        torch.manual_seed(args.seed)
        random.seed(args.seed)
    try:
        state = build_state(plan, args)
    except BaseException:
        sock.close()
        raise
    print(banner(state, plan), file=sys.stderr, flush=True)
    ready = f"qwen35 ready: {url_of(args.host, port)} (model {plan.served_names[0]!r})"

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # the socket listens now
                print(ready, file=sys.stderr, flush=True)

    config = uvicorn.Config(create_app(state), log_level=args.uvicorn_log_level,
                            http=_protocol_class(args.header_timeout), timeout_keep_alive=args.timeout_keep_alive,
                            timeout_graceful_shutdown=5)
    try:
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
        state.engine.shutdown()
    return 0
