"""`qwen35 serve` command line: the flags, their types, and the checks that need no files.

Every `vllm serve` / SGLang `launch_server` flag from the Qwen3.5 model cards is accepted here, or refused
with one line naming the missing feature; what each flag does is in `docs/SERVING.md`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..multimodal.media import MediaPolicy

BLOCK_SIZE = 16  # the engine's K/V block size (EngineConfig.block_size)
DEFAULT_MAX_MODEL_LEN = 8192  # the engine's default cap when --max-model-len is not given
REASONING_PARSERS = ("qwen3",)
TOOL_PARSERS = ("qwen3_coder", "qwen3_xml")
ENGINE_PROCESS = True  # the engine's default home: chosen by bench/bench_serving.py (docs/LOG.md)
MEDIA_KINDS = ("image", "video")
# Images and videos per request without --limit-mm-per-prompt. vLLM's default is 999; every item here is
# fetched and decoded on this machine, so the default is what a chat plausibly sends.
DEFAULT_MM_LIMITS = {"image": 16, "video": 2}
_MM_ITEM_OPTIONS = ("count", "num_frames", "width", "height")  # vLLM's per-modality object (sizes: profiling)

# dest -> (the flag as users write it, why it changes nothing here)
NOOP_FLAGS = {
    "enable_prefix_caching": ("--enable-prefix-caching", "on by default"),
    "enable_chunked_prefill": ("--enable-chunked-prefill", "prefill is always chunked"),
    "enforce_eager": ("--enforce-eager", "no CUDA graphs to turn off"),
    "disable_log_requests": ("--disable-log-requests", "requests are not logged by default"),
    "disable_log_stats": ("--disable-log-stats", "no periodic stats log"),
    "trust_remote_code": ("--trust-remote-code", "no remote code is run"),
    "enable_auto_tool_choice": ("--enable-auto-tool-choice", "tool calls are always parsed"),
    "headless": ("--headless", "ranks other than 0 never serve HTTP"),
    "enable_metrics": ("--enable-metrics", "/metrics is always on"),
    "enable_prompt_tokens_details": ("--enable-prompt-tokens-details",
                                     "usage always reports prompt_tokens_details.cached_tokens"),
}
# vLLM flags that take a value and have nothing to change here: dest -> (flag, the values that mean that (None:
# any), why); another value is an error naming the ones that work
VALUE_NOOPS = {
    "kv_cache_dtype": ("--kv-cache-dtype", ("auto",), "the K/V cache is kept in the model's dtype"),
    "load_format": ("--load-format", ("auto", "safetensors"), "checkpoints are read as safetensors"),
    "block_size": ("--block-size", ("16",), "K/V blocks are 16 tokens"),
    "swap_space": ("--swap-space", None, "no device memory to swap out of"),
    "max_log_len": ("--max-log-len", None, "logged requests are not cut"),
    "guided_decoding_backend": ("--guided-decoding-backend", None, "structured outputs always use llguidance"),
    "chat_template_content_format": ("--chat-template-content-format", ("auto", "openai"),
                                     "content parts reach the template as OpenAI parts, which Qwen3.5's reads"),
}
PARALLEL = {  # dest -> what it is
    "pipeline_parallel_size": "pipeline parallelism",
    "data_parallel_size": "data parallelism",
}


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


def _number(convert, ok, rule: str):
    """An argparse type: `convert(text)` (int or float) that must satisfy `ok`, else an error saying `rule`."""
    def parse(text: str):
        try:
            x = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if convert is int else 'a number'}, "
                                              f"got {text!r}") from None
        if not ok(x):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return x
    return parse


_fraction = _number(float, lambda f: 0 < f <= 1, "in (0, 1]")
_nonneg_int = _number(int, lambda n: n >= 0, ">= 0")
_port = _number(int, lambda n: 0 <= n <= 65535, "in [0, 65535]")
_positive_int = _number(int, lambda n: n > 0, "positive")
_positive_float = _number(float, lambda x: x > 0, "positive")
_seed = _number(int, lambda n: -(1 << 63) <= n < (1 << 63), "a signed 64-bit integer")


def _choice(supported: tuple[str, ...], described: str):
    def check(text: str) -> str:
        if text not in supported:
            raise argparse.ArgumentTypeError(f"{text!r} is not supported; {described}")
        return text
    check.__name__ = "parser name"
    return check


def _quantization(text: str) -> str:
    from ..config import check_quantization

    try:
        return check_quantization(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
                                            "(default: the embedded demo model)")
    m.add_argument("--model", "--model-path", dest="model_flag", metavar="MODEL", help="same as the positional")
    m.add_argument("--revision", default=None, help="HF cache: a branch, tag or commit (default: main)")
    m.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="a directory or HF id whose tokenizer.json and chat template replace the checkpoint's")
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
    m.add_argument("--quantization", "-q", type=_quantization, default=None, metavar="{int8,int4,fp8,gptq,awq}",
                   help="weight-only: int8 / int4 quantise the checkpoint at load; fp8 / gptq / awq: the checkpoint "
                        "is one (checked; gptq and awq load as int4). Default: as the checkpoint is")
    m.add_argument("--generation-config", default="auto",
                   help="sampling defaults: 'auto' (the checkpoint's generation_config.json), 'vllm' (neutral) or a "
                        "folder holding a generation_config.json; they come before the model card's presets")
    m.add_argument("--override-generation-config", default=None, metavar="JSON",
                   help='merged over the generation config, e.g. \'{"temperature": 0.5}\'')
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
    e.add_argument("--kv-cache-memory", "--kv-cache-memory-bytes", dest="kv_cache_memory", default=None,
                   help="bytes for K/V + GDN state, e.g. 4GB (wins over --gpu-memory-utilization)")
    e.add_argument("--gpu-memory-utilization", "--mem-fraction-static", dest="memory_fraction", type=_fraction,
                   default=None, metavar="F", help="share of memory for weights + cache (see the docs)")
    e.add_argument("--no-enable-prefix-caching", "--disable-radix-cache", dest="no_enable_prefix_caching",
                   action="store_true")
    e.add_argument("--threads", type=_nonneg_int, default=0,
                   help="torch threads (default: 1 for a model under 8M parameters, else one per core)")
    e.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    e.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=ENGINE_PROCESS,
                   help="run the engine in a process of its own, apart from HTTP and tokenisation "
                        f"(default: {'on' if ENGINE_PROCESS else 'off'}; see docs/SERVING.md)")
    e.add_argument("--seed", "--random-seed", dest="seed", type=_seed, default=None, help="torch's global seed")

    h = p.add_argument_group("HTTP")
    h.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; see the DNS-rebinding note in the docs")
    h.add_argument("--port", type=_port, default=8000)
    h.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 "
                                                   "(default: $QWEN35_API_KEY, else $VLLM_API_KEY)")
    h.add_argument("--allowed-origins", default=None, metavar="JSON", help='CORS origins, e.g. \'["*"]\'')
    h.add_argument("--allowed-hosts", default=None, help="accepted Host headers (JSON list or comma-separated)")
    h.add_argument("--max-request-bytes", type=_positive_int, default=16 << 20)
    h.add_argument("--max-waiting-requests", type=_nonneg_int, default=None,
                   help="queued requests before 503 (default 256)")
    h.add_argument("--max-logprobs", type=_nonneg_int, default=None,
                   help="largest logprobs / top_logprobs / prompt_logprobs a request may ask (default and most: 20)")
    h.add_argument("--enable-log-requests", "--log-requests", dest="enable_log_requests", action="store_true")
    h.add_argument("--uvicorn-log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    h.add_argument("--disable-uvicorn-access-log", action="store_true",
                   help="no line per request from uvicorn (they show at --uvicorn-log-level info)")
    h.add_argument("--timeout-keep-alive", type=_positive_float,
                   default=float(os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", 5)),
                   help="seconds an idle keep-alive connection stays open (default 5)")
    h.add_argument("--header-timeout", type=_positive_float, default=30.0,
                   help="seconds a connection may take to send its request headers (default 30)")
    h.add_argument("--root-path", default="", help="the path prefix a reverse proxy serves this under (ASGI root_path)")
    h.add_argument("--ssl-keyfile", default=None, help="serve HTTPS: the private key file (PEM)")
    h.add_argument("--ssl-certfile", default=None, help="serve HTTPS: the certificate chain file (PEM)")
    h.add_argument("--ssl-ca-certs", default=None, help="CA certificates for verifying clients (with --ssl-cert-reqs)")
    h.add_argument("--ssl-cert-reqs", type=int, choices=[0, 1, 2], default=0,
                   help="client certificates: 0 none (default), 1 optional, 2 required (Python's ssl.CERT_*)")
    h.add_argument("--response-role", default="assistant", help="the role of chat replies (default assistant)")
    h.add_argument("--return-tokens-as-token-ids", action="store_true",
                   help="logprobs name tokens as 'token_id:N' (a request's own return_tokens_as_token_ids wins)")
    h.add_argument("--enable-force-include-usage", action="store_true",
                   help="every stream ends with a usage chunk, asked for or not")

    v = p.add_argument_group("images and video")
    v.add_argument("--limit-mm-per-prompt", default=None, metavar="JSON",
                   help='most images and videos per request, \'{"image": 4, "video": 1}\' (or image=4,video=1); '
                        f'default {json.dumps(DEFAULT_MM_LIMITS)}; all 0: text only, as --language-model-only')
    for kind in MEDIA_KINDS:  # vLLM's dotted form, --limit-mm-per-prompt.image 4
        v.add_argument(f"--limit-mm-per-prompt.{kind}", dest=f"limit_mm_{kind}", type=_nonneg_int, default=None,
                       metavar="N", help=f"most {kind}s per request (over the same key of --limit-mm-per-prompt)")
    v.add_argument("--language-model-only", action="store_true",
                   help="text only: the vision tower is not loaded, and requests with images or videos get a 400")
    v.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                   help="file:// media URLs may name files under DIR (symlinks resolved); default: file:// refused")
    v.add_argument("--allowed-media-domains", nargs="+", default=None, metavar="HOST",
                   help="http(s) media only from these exact host names (space- or comma-separated)")
    v.add_argument("--allow-private-media-urls", action="store_true",
                   help="let media URLs reach loopback, private and link-local addresses (refused by default: a "
                        "request could otherwise read services inside this network)")
    v.add_argument("--media-fetch-timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="time limit of one media fetch (default: images $VLLM_IMAGE_FETCH_TIMEOUT or 10, videos "
                        "$VLLM_VIDEO_FETCH_TIMEOUT or 30)")
    v.add_argument("--media-decode-timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="time limit of decoding one video's frames (ours; default 60)")

    s = p.add_argument_group("speculative decoding with the checkpoint's MTP head")
    s.add_argument("--speculative-config", default=None, metavar="JSON",
                   help='vLLM\'s form: \'{"method": "mtp", "num_speculative_tokens": 2}\' (qwen3_next_mtp and '
                        'qwen3_5_mtp are accepted names of mtp)')
    s.add_argument("--speculative-algorithm", "--speculative-algo", dest="speculative_algorithm", default=None,
                   help="SGLang's form: NEXTN (or EAGLE), with --speculative-num-steps k")
    for name in ("--speculative-num-steps", "--speculative-eagle-topk", "--speculative-num-draft-tokens",
                 "--num-speculative-tokens"):
        s.add_argument(name, type=int, default=None)

    t = p.add_argument_group("parallelism (docs/PARALLEL.md)")
    t.add_argument("--tensor-parallel-size", "-tp", "--tp-size", "--tp", dest="tensor_parallel_size",
                   type=_positive_int, default=1, metavar="N",
                   help="ranks the model is split across (one process each)")
    t.add_argument("--enable-expert-parallel", "--enable-ep-moe", "--ep", dest="enable_expert_parallel",
                   action="store_true", help="MoE: whole routed experts per rank instead of a slice of each")
    t.add_argument("--ep-size", "--expert-parallel-size", dest="ep_size", type=_positive_int, default=None, metavar="N",
                   help="SGLang's form: equal to the tensor-parallel size turns expert parallelism on")
    t.add_argument("--nnodes", type=_positive_int, default=1, metavar="N", help="machines the ranks span")
    t.add_argument("--node-rank", type=_nonneg_int, default=0, metavar="N", help="this machine's index (0 serves HTTP)")
    t.add_argument("--master-addr", default=None, metavar="HOST", help="where the ranks meet: node 0's address")
    t.add_argument("--master-port", type=_nonneg_int, default=0, metavar="PORT",
                   help="and its port (any free one on node 0)")
    t.add_argument("--dist-init-addr", default=None, metavar="HOST:PORT", help="SGLang's form of the two above")

    u = p.add_argument_group("not implemented yet (values other than 1 are errors)")
    u.add_argument("--pipeline-parallel-size", "-pp", "--pp-size", dest="pipeline_parallel_size", type=int,
                   default=1)
    u.add_argument("--data-parallel-size", "-dp", "--dp-size", dest="data_parallel_size", type=int, default=1)

    n = p.add_argument_group("accepted, no effect here (named once at start-up)")
    for dest, (flag, why) in NOOP_FLAGS.items():
        n.add_argument(flag, dest=dest, action="store_true", help=why)
    for dest, (flag, values, why) in VALUE_NOOPS.items():
        n.add_argument(flag, dest=dest, default=None, metavar="|".join(values) if values else "X",
                       help=why + (f" (only {', '.join(values)})" if values else ""))


# ---- checks that need no files --------------------------------------------------------------------------

def parallel_config(args: argparse.Namespace):
    """The ranks of the command line: torchrun's environment when it started this process, else the flags
    (this process is the first rank of its node). ServeError on a malformed setup."""
    from ..parallel.config import ParallelConfig

    tp, ep = args.tensor_parallel_size, args.enable_expert_parallel
    if args.ep_size not in (None, 1, tp):
        raise ServeError(f"--ep-size {args.ep_size}: experts are split across all {tp} tensor-parallel ranks or none "
                         f"(use --ep-size {tp} or 1)")
    ep = ep or (args.ep_size or 1) > 1
    try:
        launched = ParallelConfig.from_env(tp, ep)
        if launched is not None:
            return launched
        addr, port = args.master_addr, args.master_port
        if args.dist_init_addr:
            host, sep, p = args.dist_init_addr.rpartition(":")
            if not sep or not p.isdigit():
                raise ValueError(f"--dist-init-addr: expected HOST:PORT, got {args.dist_init_addr!r}")
            addr, port = host.strip("[]"), int(p)
        if args.nnodes > 1 and not addr:
            raise ValueError("--nnodes > 1 needs --master-addr (node 0's address) and --master-port on every node")
        return ParallelConfig(tp, ep, nnodes=args.nnodes, node_rank=args.node_rank, master_addr=addr or "127.0.0.1",
                              master_port=port).first_rank_of_node()
    except ValueError as e:
        raise ServeError(str(e)) from None


def check_features(args: argparse.Namespace) -> list[str]:
    """ServeError for a flag whose feature does not exist yet; the no-op flags given, as `--flag (why)`."""
    for dest, what in PARALLEL.items():
        size = getattr(args, dest)
        if size != 1:
            raise ServeError(f"{what} is not implemented yet (runs on one device); "
                             f"--{dest.replace('_', '-')} {size} needs {size} devices")
    noops = [f"{flag} ({why})" for dest, (flag, why) in NOOP_FLAGS.items() if getattr(args, dest)]
    for dest, (flag, values, why) in VALUE_NOOPS.items():
        given = getattr(args, dest)
        if given is None:
            continue
        if values is not None and given not in values:
            raise ServeError(f"{flag} {given}: only {' or '.join(values)} works here ({why})")
        noops.append(f"{flag} {given} ({why})")
    return noops


def speculative_config(args: argparse.Namespace) -> dict[str, Any] | None:
    """The speculative decoding settings of the command line as vLLM's JSON object (None: off); ServeError
    for a malformed or unsupported one, or for two of the three forms at once (vLLM's --speculative-config,
    SGLang's --speculative-algorithm family, the old --num-speculative-tokens)."""
    from ..engine.spec_config import SpeculativeConfig

    given = [flag for flag, dest in (("--speculative-config", "speculative_config"),
                                     ("--speculative-algorithm", "speculative_algorithm"),
                                     ("--num-speculative-tokens", "num_speculative_tokens"))
             if getattr(args, dest) is not None]
    if len(given) > 1:
        raise ServeError(f"{given[0]} and {given[1]} both set speculative decoding; give one")
    try:
        if args.speculative_config is not None:
            raw = parse_json("--speculative-config", args.speculative_config, dict)
            SpeculativeConfig.from_dict(raw)
            return raw
        if args.speculative_algorithm is not None:
            cfg = SpeculativeConfig.from_sglang(args.speculative_algorithm, args.speculative_num_steps,
                                                args.speculative_eagle_topk, args.speculative_num_draft_tokens)
            return {"method": "mtp", "num_speculative_tokens": cfg.k}
        if args.num_speculative_tokens is not None:
            SpeculativeConfig(num_speculative_tokens=args.num_speculative_tokens)
            return {"method": "mtp", "num_speculative_tokens": args.num_speculative_tokens}
    except ValueError as e:
        raise ServeError(str(e)) from None
    if any(getattr(args, d) is not None for d in ("speculative_num_steps", "speculative_eagle_topk",
                                                  "speculative_num_draft_tokens")):
        raise ServeError("--speculative-num-steps / --speculative-eagle-topk / --speculative-num-draft-tokens need "
                         "--speculative-algorithm NEXTN")
    return None


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


# ---- images and video ------------------------------------------------------------------------------------

def _mm_count(kind: str, value: Any, text: str) -> int:
    if isinstance(value, dict):  # vLLM's {"video": {"count": 1, "num_frames": 32, ...}}: only count limits
        unknown = sorted(set(value) - set(_MM_ITEM_OPTIONS))
        if unknown or "count" not in value:
            raise ServeError(f"--limit-mm-per-prompt: {kind} needs a count ({', '.join(_MM_ITEM_OPTIONS)} are "
                             f"its keys), got {text!r}")
        value = value["count"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ServeError(f"--limit-mm-per-prompt: {kind} must be a count >= 0, got {value!r} in {text!r}")
    return value


def mm_limits(args: argparse.Namespace) -> dict[str, int]:
    """Most images and videos one request may carry, from --limit-mm-per-prompt (vLLM's JSON object, or the
    older `image=4,video=1`) and --language-model-only. All zero means text only: the vision tower need not be
    loaded (vLLM draws the same conclusion from zero limits). ServeError for a malformed value."""
    text = args.limit_mm_per_prompt
    if text is None:
        given: dict[str, Any] = {}
    elif text.lstrip().startswith("{"):
        given = parse_json("--limit-mm-per-prompt", text, dict)
    else:
        given = {}
        for item in filter(None, (i.strip() for i in text.split(","))):
            kind, eq, count = (x.strip() for x in item.partition("="))
            if not eq or not re.fullmatch(r"\d+", count):
                raise ServeError(f"--limit-mm-per-prompt: expected JSON like '{{\"image\": 4, \"video\": 1}}' or "
                                 f"image=4,video=1, got {text!r}")
            given[kind] = int(count)
    given.update({kind: getattr(args, f"limit_mm_{kind}") for kind in MEDIA_KINDS
                  if getattr(args, f"limit_mm_{kind}", None) is not None})
    for kind in given:
        if kind not in MEDIA_KINDS:
            raise ServeError(f"--limit-mm-per-prompt: Qwen3.5 takes no {kind!r} input; the kinds are image and "
                             "video")
    limits = {**DEFAULT_MM_LIMITS, **{kind: _mm_count(kind, v, text) for kind, v in given.items()}}
    if args.language_model_only:
        if any(limits[k] for k in given):
            allowed = ", ".join(f"{limits[k]} {k}s" for k in given if limits[k])
            raise ServeError(f"--language-model-only takes no images or videos, but --limit-mm-per-prompt allows "
                             f"{allowed}")
        limits = {kind: 0 for kind in MEDIA_KINDS}
    return limits


def _fetch_timeout(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ServeError(f"${env}: expected seconds, got {raw!r}") from None
    if not value > 0:
        raise ServeError(f"${env}: must be positive, got {raw!r}")
    return value


def media_policy(args: argparse.Namespace) -> MediaPolicy:
    """Where media URLs may point and how long a fetch may take, from the command line; ServeError for a
    --allowed-local-media-path that is not a directory."""
    from ..multimodal.media import MediaPolicy

    local = None
    if args.allowed_local_media_path is not None:
        local = Path(args.allowed_local_media_path).expanduser()
        if not local.is_dir():
            raise ServeError(f"--allowed-local-media-path {args.allowed_local_media_path}: "
                             f"{'not a directory' if local.exists() else 'no such directory'}")
        local = local.resolve()
    domains = None
    if args.allowed_media_domains is not None:
        domains = tuple(d.strip() for item in args.allowed_media_domains for d in item.split(",") if d.strip())
        bad = [d for d in domains if "/" in d or ":" in d]
        if not domains or bad:
            raise ServeError(f"--allowed-media-domains: expected host names like upload.wikimedia.org, got "
                             f"{' '.join(args.allowed_media_domains)!r}")
    timeout = args.media_fetch_timeout
    return MediaPolicy(
        allowed_local_media_path=local, allow_private_urls=args.allow_private_media_urls,
        allowed_media_domains=domains,
        image_timeout_s=timeout or _fetch_timeout("VLLM_IMAGE_FETCH_TIMEOUT", MediaPolicy.image_timeout_s),
        video_timeout_s=timeout or _fetch_timeout("VLLM_VIDEO_FETCH_TIMEOUT", MediaPolicy.video_timeout_s),
        video_decode_timeout_s=args.media_decode_timeout or MediaPolicy.video_decode_timeout_s)
