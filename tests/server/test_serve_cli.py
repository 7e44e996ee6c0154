"""`qwen35 serve`'s command line: the model cards' vLLM and SGLang lines start or fail with one named line.

Everything but the last test checks the start-up plan (flags, model resolution, config overrides, template),
which reads config.json and the template only, so the "checkpoints" here are directories with a config.json.
The last test starts one real server on the tiny checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

import qwen35
from qwen35.cli import build_parser, main
from qwen35.config import ModelConfig, preset
from qwen35.server import model_overrides as mo
from qwen35.loading.model_path import ModelNotFound, find_in_hf_cache, hf_cache_dir, resolve_model
from qwen35.server.serve import bind_socket, plan_serve
from qwen35.server.serve_args import ServeError, human_int, human_int_or_auto

HF_ID = "Qwen/Qwen3.5-0.8B"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
YARN = {"mrope_interleaved": True, "mrope_section": [11, 11, 10], "rope_type": "yarn", "rope_theta": 10000000,
        "partial_rotary_factor": 0.25, "factor": 4.0, "original_max_position_embeddings": 262144}


def write_config_dir(d: Path, config: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config or preset("dense-0.8b").to_dict()))
    (d / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    return d


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding Qwen/Qwen3.5-0.8B (config only), pointed at by HF_HUB_CACHE."""
    cache = tmp_path / "hub"
    repo = cache / "models--Qwen--Qwen3.5-0.8B"
    snap = write_config_dir(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return SimpleNamespace(cache=cache, snapshot=snap)


def plan(*argv: str):
    return plan_serve(build_parser().parse_args(["serve", *argv]))


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


# ---- the model cards' command lines ---------------------------------------------------------------------

CARD_LINES = [
    # vLLM (QwenLM/Qwen3.5 README and model cards), on one device
    f"{HF_ID} --port 8000 --tensor-parallel-size 1 --max-model-len 262144 --reasoning-parser qwen3",
    f"{HF_ID} --port 8000 --tensor-parallel-size 1 --max-model-len 262144 --reasoning-parser qwen3 "
    "--enable-auto-tool-choice --tool-call-parser qwen3_coder",
    f"{HF_ID} --port 8000 -tp 1 --max-model-len 262144 --reasoning-parser qwen3 --language-model-only",
    f"--model {HF_ID} --max-model-len 128k --tool-call-parser qwen3_xml --enable-prefix-caching "
    "--enable-chunked-prefill --enforce-eager --disable-log-requests --trust-remote-code --disable-log-stats "
    "--gpu-memory-utilization 0.9 --seed 0 --uvicorn-log-level info",
    # SGLang (sgl-project/sglang docs/basic_usage/qwen3_5.md)
    f"--model-path {HF_ID} --port 8000 --tp-size 1 --mem-fraction-static 0.8 --context-length 262144 "
    "--reasoning-parser qwen3",
    f"--model-path {HF_ID} --tp 1 --context-length 262144 --reasoning-parser qwen3 --tool-call-parser qwen3_coder",
    # vLLM flags of copied launch scripts that have nothing to change here
    f"{HF_ID} --max-model-len 128000 --kv-cache-dtype auto --load-format safetensors --block-size 16 --swap-space 4 "
    "--max-log-len 100 --guided-decoding-backend xgrammar --disable-uvicorn-access-log --kv-cache-memory-bytes 1G",
]


@pytest.mark.parametrize("line", CARD_LINES)
def test_model_card_lines_start(hf_cache, line):
    p = plan(*line.split())
    assert p.model_dir == hf_cache.snapshot and p.hf_config is None  # no overrides: the checkpoint as it is
    assert p.served_names == [HF_ID]
    assert p.max_model_len in (262144, 128000)


def test_seed_reaches_the_engine(hf_cache):
    from qwen35.server.serve import build_config

    args = build_parser().parse_args(["serve", HF_ID, "--seed", "5"])
    assert build_config(plan_serve(args), args).seed == 5


def test_model_card_yarn_line_reaches_the_loader(hf_cache):
    p = plan(HF_ID, "--hf-overrides", json.dumps({"text_config": {"rope_parameters": YARN}}),
             "--max-model-len", "1010000")
    assert p.max_model_len == 1010000 and p.supported_len == 4 * 262144
    assert p.model_dir == hf_cache.snapshot  # the overridden config travels as EngineConfig.hf_config
    text = ModelConfig.from_dict(p.hf_config).text
    assert text.rope.rope_type == "yarn" and text.rope.factor == 4.0
    assert text.rope.original_max_position_embeddings == 262144
    assert text.supported_length == 4 * 262144
    assert json.loads((hf_cache.snapshot / "config.json").read_text())["text_config"]["max_position_embeddings"] \
        == 262144  # the checkpoint is not touched


@pytest.mark.parametrize("line,message", [
    (f"{HF_ID} --tensor-parallel-size 3 --max-model-len 262144",
     "--tensor-parallel-size 3: num_attention_heads=8 is not divisible by tensor_parallel_size=3"),
    (f"--model-path {HF_ID} --tp-size 8 --nnodes 2", "--nnodes > 1 needs --master-addr"),
    (f"{HF_ID} -tp 8 --nnodes 3 --master-addr 10.0.0.1 --master-port 5000",
     "nnodes=3 must be a positive divisor of tensor_parallel_size=8"),
    (f"{HF_ID} -tp 8 --dist-init-addr 10.0.0.1", "--dist-init-addr: expected HOST:PORT"),
    (f"--model-path {HF_ID} --tp 8 --ep-size 4", "--ep-size 4: experts are split across all 8"),
    (f"{HF_ID} --pipeline-parallel-size 2", "pipeline parallelism is not implemented yet"),
    (f"{HF_ID} --dp-size 2", "data parallelism is not implemented yet"),
    (f"{HF_ID} --speculative-config {{\"method\":\"ngram\",\"num_speculative_tokens\":2}}",
     "speculative method must be one of"),
    (f"{HF_ID} --speculative-config {{\"method\":\"mtp\",\"num_speculative_tokens\":0}}",
     "num_speculative_tokens must be an integer in [1, 8]"),
    (f"{HF_ID} --speculative-config {{\"method\":\"mtp\",\"num_speculative_tokens\":2,\"model\":\"x/y\"}}",
     "only the target checkpoint's own MTP head can draft"),
    (f"--model-path {HF_ID} --speculative-algo NEXTN --speculative-num-steps 3 --speculative-eagle-topk 4",
     "only chain drafting (topk 1) is supported"),
    (f"{HF_ID} --speculative-num-steps 3", "need --speculative-algorithm NEXTN"),
    (f"{HF_ID} --tool-call-parser hermes", "'qwen3_coder' and its alias 'qwen3_xml'"),
    (f"{HF_ID} --reasoning-parser deepseek_r1", "the supported reasoning parser is 'qwen3'"),
    (f"{HF_ID} --max-model-len 300k", "--max-model-len 300000 is larger than the 262144 tokens"),
    (f"{HF_ID} --kv-cache-dtype fp8", "--kv-cache-dtype fp8: only auto works here"),
    (f"{HF_ID} --no-such-flag 3", "unrecognized arguments: --no-such-flag 3"),
    ("Qwen/Qwen3.5-9B", "qwen35 does not download weights"),
    (f"{HF_ID} --port 99999", "must be in [0, 65535], got 99999"),
    (f"{HF_ID} --speculative-config {{\"method\":\"mtp\",\"num_speculative_tokens\":2}} --num-speculative-tokens 3",
     "--speculative-config and --num-speculative-tokens both set speculative decoding"),
])
def test_unsupported_lines_fail_with_one_line(hf_cache, capsys, line, message):
    rc, err = run_cli(capsys, "serve", *line.split())
    assert rc == 2
    assert err.startswith("qwen35 serve: error: ") and err.count("\n") == 1, err
    assert message in err


def test_parallel_lines(hf_cache, monkeypatch):
    p = plan(HF_ID, "--tensor-parallel-size", "8", "--enable-expert-parallel").parallel
    assert (p.world_size, p.rank, p.enable_expert_parallel, p.launched) == (8, 0, True, False)
    p = plan("--model-path", HF_ID, "--tp", "8", "--nnodes", "2", "--node-rank", "1",
             "--dist-init-addr", "10.0.0.1:5000").parallel  # SGLang's multi-node form
    assert (p.rank, p.per_node, p.master_addr, p.master_port) == (4, 4, "10.0.0.1", 5000)
    assert plan("--model-path", HF_ID, "--tp", "8", "--ep-size", "8").parallel.enable_expert_parallel
    for k, v in {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h0",
                 "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)
    p = plan(HF_ID, "-tp", "8").parallel  # torchrun started this process
    assert (p.rank, p.local_rank, p.node_rank, p.nnodes, p.launched) == (5, 1, 1, 2, True)
    rc, err = run_cli_plan(HF_ID, "-tp", "4")
    assert "torchrun started 8 processes (WORLD_SIZE) but --tensor-parallel-size is 4" in err


def run_cli_plan(*argv: str) -> tuple[int, str]:
    try:
        plan(*argv)
    except ServeError as e:
        return 2, str(e)
    return 0, ""


def test_noop_flags_are_collected_once(hf_cache):
    p = plan(HF_ID, "--enforce-eager", "--trust-remote-code", "--enable-auto-tool-choice", "--kv-cache-dtype", "auto",
             "--chat-template-content-format", "openai")
    assert [n.split()[0] for n in p.noops] == ["--enforce-eager", "--trust-remote-code", "--enable-auto-tool-choice",
                                                 "--kv-cache-dtype", "--chat-template-content-format"]


@pytest.mark.parametrize("args, says", [
    (["--kv-cache-dtype", "fp8"], "--kv-cache-dtype fp8: only auto works here"),
    (["--block-size", "32"], "--block-size 32: only 16 works here"),
    (["--load-format", "gguf"], "--load-format gguf: only auto or safetensors"),
    (["--chat-template-content-format", "string"], "--chat-template-content-format string: only auto or openai"),
])
def test_noop_flags_with_another_value_are_errors(hf_cache, args, says):
    with pytest.raises(ServeError, match=says):
        plan(HF_ID, *args)


def test_seed_out_of_range_is_a_parse_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--seed", str(1 << 64)])
    assert "signed 64-bit" in capsys.readouterr().err


# ---- --max-model-len ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("2k", 2000), ("128k", 128000), ("1m", 1_000_000), ("25.6k", 25600), ("32K", 32768), ("1M", 1 << 20),
    ("262144", 262144), ("-1", -1), ("auto", -1), ("AUTO", -1),
])
def test_max_model_len_forms(text, value):
    assert human_int_or_auto(text) == value


@pytest.mark.parametrize("text", ["1.5K", "abc", "0", "-2", "12q"])
def test_max_model_len_rejects(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        human_int_or_auto(text)


def test_human_int_matches_vllm_case_rule():
    assert human_int("1g") == 10**9 and human_int("1G") == 1 << 30


def test_auto_is_the_supported_length(hf_cache):
    assert plan(HF_ID, "--max-model-len", "auto").max_model_len == 262144
    assert plan(HF_ID, "--context-length", "-1").max_model_len == 262144
    assert plan(HF_ID).max_model_len is None  # the engine's default (min(supported, 8192))


def test_too_long_names_both_numbers(hf_cache):
    with pytest.raises(ServeError, match=r"--max-model-len 1048576 is larger than the 262144 tokens.*"
                                         r"max_position_embeddings=262144"):
        plan(HF_ID, "--max-model-len", "1M")


# ---- YaRN: from config.json, --hf-overrides (nested and top level), --rope-scaling ------------------------

def test_yarn_in_config_json(tmp_path):
    cfg = preset("dense-0.8b").to_dict()
    cfg["text_config"]["rope_parameters"] = dict(YARN)
    d = write_config_dir(tmp_path / "yarn", cfg)
    p = plan(str(d), "--max-model-len", "auto")
    assert p.supported_len == p.max_model_len == 1048576
    assert p.hf_config is None  # the checkpoint's own config already has YaRN


@pytest.mark.parametrize("flags", [
    ["--hf-overrides", json.dumps({"rope_parameters": YARN})],  # top level, moved into text_config
    ["--hf-overrides", json.dumps({"text_config": {"rope_scaling": {"type": "yarn", "factor": 4.0,
                                                                     "original_max_position_embeddings": 262144}}})],
    ["--rope-scaling", '{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":262144}'],
])
def test_yarn_from_the_command_line(hf_cache, flags):
    p = plan(HF_ID, *flags, "--max-model-len", "1010000")
    text = ModelConfig.from_dict(p.hf_config).text
    assert p.supported_len == 1048576 and text.rope.rope_type == "yarn"
    assert text.rope.mrope_section == (11, 11, 10)  # merged, not replaced


def test_max_position_embeddings_override(hf_cache):
    p = plan(HF_ID, "--hf-overrides", '{"max_position_embeddings": 65536}', "--max-model-len", "auto")
    assert p.max_model_len == 65536
    assert ModelConfig.from_dict(p.hf_config).text.max_position_embeddings == 65536


def test_apply_overrides_leaves_the_input_alone():
    raw = preset("dense-0.8b").to_dict()
    before = json.dumps(raw, sort_keys=True)
    out = mo.apply_overrides(raw, {"text_config": {"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}},
                             rope_theta=5e6)
    assert json.dumps(raw, sort_keys=True) == before
    rope = out["text_config"]["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0 and rope["rope_theta"] == 5e6
    assert rope["mrope_interleaved"] is True


@pytest.mark.parametrize("flags,message", [
    (["--hf-overrides", "{not json"], "--hf-overrides: not valid JSON"),
    (["--hf-overrides", "[1]"], "--hf-overrides: expected a JSON object"),
    (["--hf-overrides", '{"text_config": {"rope_parameters": {"rope_type": "linear"}}}'], "rope_type='linear'"),
    (["--default-chat-template-kwargs", "enable_thinking=false"], "--default-chat-template-kwargs: not valid JSON"),
    (["--allowed-origins", "*"], "--allowed-origins: not valid JSON"),
])
def test_bad_json_flags(hf_cache, flags, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        plan(HF_ID, *flags)


def test_tiny_max_position_embeddings_fails_at_start(tmp_path):
    cfg = preset("tiny").to_dict()
    cfg["text_config"]["max_position_embeddings"] = 8
    d = write_config_dir(tmp_path / "short", cfg)
    with pytest.raises(ServeError, match="max_position_embeddings=8 is smaller than one K/V block"):
        plan(str(d))


# ---- chat templates -------------------------------------------------------------------------------------

def test_chat_template_missing_path(hf_cache):
    with pytest.raises(ServeError, match="--chat-template '/no/such/template.jinja': no such file"):
        plan(HF_ID, "--chat-template", "/no/such/template.jinja")


def test_chat_template_inline_and_file(hf_cache, tmp_path):
    inline = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert plan(HF_ID, "--chat-template", inline).chat_template == inline
    f = tmp_path / "t.jinja"
    f.write_text(inline)
    assert plan(HF_ID, "--chat-template", str(f)).chat_template == inline


def test_broken_chat_template_fails_at_start(hf_cache, tmp_path):
    with pytest.raises(ServeError, match=r"--chat-template \(inline\) does not compile"):
        plan(HF_ID, "--chat-template", "{% for m in messages %}")
    d = write_config_dir(tmp_path / "ckpt")
    (d / "chat_template.jinja").write_text("{% if messages %}never closed")
    with pytest.raises(ServeError, match=f"{d / 'chat_template.jinja'} does not compile"):
        plan(str(d))


def test_missing_tokenizer_json_warns(tmp_path, caplog):
    from qwen35.tokenizer import Tokenizer

    d = write_config_dir(tmp_path / "notok")
    with caplog.at_level("WARNING", logger="qwen35.tokenizer"):
        Tokenizer.from_pretrained(d)
    assert any(str(d) in r.getMessage() and "built-in Qwen3.5 vocabulary" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


# ---- the model argument ---------------------------------------------------------------------------------

def test_served_name_is_the_argument_as_given(tmp_path, monkeypatch):
    d = write_config_dir(tmp_path / "models" / "Qwen3.5-0.8B")
    assert plan(str(d)).served_names == [str(d)]
    monkeypatch.chdir(tmp_path)
    assert plan("./models/Qwen3.5-0.8B").served_names == ["./models/Qwen3.5-0.8B"]
    assert plan("--model", str(d), "--served-model-name", "a", "b").served_names == ["a", "b"]


def test_hf_cache_resolution(hf_cache, tmp_path, monkeypatch):
    assert resolve_model(HF_ID).path == hf_cache.snapshot
    repo = hf_cache.cache / "models--Qwen--Qwen3.5-0.8B"
    other = write_config_dir(repo / "snapshots" / ("f" * 40))
    (repo / "refs" / "v2").write_text("f" * 40)
    assert find_in_hf_cache(HF_ID, "v2") == other  # a named ref
    assert find_in_hf_cache(HF_ID, COMMIT) == hf_cache.snapshot  # a commit
    assert find_in_hf_cache(HF_ID, "nope") is None
    (repo / "refs" / "main").unlink()  # no refs/main: the newest snapshot
    os.utime(hf_cache.snapshot, (1, 1))
    assert resolve_model(HF_ID).path == other
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"


def test_model_not_found_messages(hf_cache, tmp_path):
    with pytest.raises(ModelNotFound) as e:
        resolve_model("Qwen/Qwen3.5-9B")
    msg = str(e.value)
    assert str(hf_cache.cache) in msg and "does not download weights" in msg
    assert "huggingface-cli download Qwen/Qwen3.5-9B --local-dir DIR" in msg and "qwen35 serve DIR" in msg
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model(str(tmp_path / "absent"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelNotFound, match="is a file"):
        resolve_model(str(tmp_path / "file"))


# ---- flags that become ServerState fields, memory, HTTP -------------------------------------------------

def test_flags_reach_server_state(hf_cache, monkeypatch):
    from qwen35.server.app import ServerState

    monkeypatch.setenv("VLLM_API_KEY", "from-vllm-env")
    p = plan(HF_ID, "--default-chat-template-kwargs", '{"enable_thinking": false}', "--allowed-origins", '["*"]',
             "--allowed-hosts", "a.example,b.example", "--max-logprobs", "5", "--max-waiting-requests", "3",
             "--trust-request-chat-template", "--enable-log-requests", "--response-role", "bot",
             "--return-tokens-as-token-ids", "--enable-force-include-usage")
    client = SimpleNamespace(tokenizer=SimpleNamespace(chat_template="t"),
                             info=SimpleNamespace(max_model_len=9, vocab_size=64, max_num_seqs=4, vision=False))
    state = ServerState(client, p.served_names, **p.state_kwargs)
    assert state.api_key == "from-vllm-env"
    assert state.default_chat_template_kwargs == {"enable_thinking": False}
    assert state.allowed_origins == ["*"] and state.allowed_hosts == ["a.example", "b.example"]
    assert (state.max_logprobs, state.max_waiting_requests) == (5, 3)
    assert state.trust_request_chat_template and state.log_requests
    assert state.response_role == "bot" and state.return_tokens_as_token_ids and state.force_include_usage
    monkeypatch.setenv("QWEN35_API_KEY", "from-qwen35-env")
    assert plan(HF_ID).state_kwargs["api_key"] == "from-qwen35-env"
    assert plan(HF_ID, "--api-key", "flag").state_kwargs["api_key"] == "flag"
    assert plan(HF_ID, "--allowed-hosts", '["h"]').state_kwargs["allowed_hosts"] == ["h"]
    with pytest.raises(ServeError, match="--max-logprobs 21: at most 20"):
        plan(HF_ID, "--max-logprobs", "21")


def test_memory_fraction_sizes_the_cache(hf_cache, monkeypatch):
    import qwen35.engine.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda: 8 << 30)
    with open(hf_cache.snapshot / "model.safetensors", "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB of "weights"
    assert plan(HF_ID, "--gpu-memory-utilization", "0.5").kv_cache_memory == 1 << 30  # 4 GiB - 3 GiB
    small = plan(HF_ID, "--mem-fraction-static", "0.5", "--max-model-len", "1k", "--max-num-seqs", "1")
    assert 0 < small.kv_cache_memory < 1 << 30  # capped at what one 1000-token sequence can use
    with pytest.raises(ServeError, match="does not even hold the weights"):
        plan(HF_ID, "--gpu-memory-utilization", "0.3")
    assert plan(HF_ID, "--gpu-memory-utilization", "0.3", "--kv-cache-memory", "1GB").kv_cache_memory == 1 << 30


def test_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ServeError, match=r"cannot listen on 127\.0\.0\.1:\d+: the port is already in use"):
            bind_socket("127.0.0.1", taken.getsockname()[1])


def test_accepted_connections_send_without_delay():
    """The listening socket says TCP, so asyncio (uvicorn) turns Nagle's algorithm off on every connection: a
    reply written in two parts (headers, body) is not held ~40 ms for a delayed ACK on a kept-alive connection."""
    import asyncio

    sock = bind_socket("127.0.0.1", 0)

    async def go() -> int:
        got = asyncio.get_running_loop().create_future()

        def accepted(reader, writer):
            got.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname())
        try:
            return await asyncio.wait_for(got, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(go()) != 0


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"qwen35 {qwen35.__version__}"


# ---- one real server ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C a `qwen35 serve` process, killed if it has not stopped in 30 s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # 12 s: a whole `qwen35 serve` process; `qwen35 chat` tests start the same path in-process
def test_real_server_ready_line(tiny_ckpt):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen35.cli", "serve", str(tiny_ckpt), "--port", str(port), "--dtype", "float32",
         "--max-model-len", "256", "--max-num-seqs", "2", "--kv-cache-memory", "32MB", "--header-timeout", "1",
         "--enforce-eager"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    ready = threading.Event()
    connected_at_ready: list[bool] = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("qwen35 ready:") and not ready.is_set():
                try:  # the port must accept the moment the line is printed
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    connected_at_ready.append(True)
                except OSError:
                    connected_at_ready.append(False)
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(180), "".join(lines)
        assert connected_at_ready == [True]
        ready_line = next(line for line in lines if line.startswith("qwen35 ready:"))
        assert f"http://127.0.0.1:{port}/v1" in ready_line
        assert any("accepted with no effect here: --enforce-eager" in line for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=30) as r:
            assert [m["id"] for m in json.load(r)["data"]] == [str(tiny_ckpt)]
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        start = time.monotonic()
        assert idle.recv(1) == b""  # closed by the header timer, not held forever
        assert time.monotonic() - start < 8
        idle.close()
    finally:
        _interrupt(proc)


def _self_signed(tmp_path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate")
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def test_tokenizer_flag(hf_cache, tmp_path):
    """--tokenizer: a directory (or HF id) with tokenizer.json, whose chat template is the one checked at start."""
    from qwen35.tokenizer import Tokenizer

    Tokenizer.from_vocab().save(tmp_path)
    assert plan(HF_ID, "--tokenizer", str(tmp_path)).tokenizer_dir == tmp_path
    (tmp_path / "chat_template.jinja").write_text("{% if %}")
    with pytest.raises(ServeError, match="chat_template.jinja"):
        plan(HF_ID, "--tokenizer", str(tmp_path))
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ServeError, match="--tokenizer: .* has no tokenizer.json"):
        plan(HF_ID, "--tokenizer", str(tmp_path))
    with pytest.raises(ServeError, match="--tokenizer: tokenizer '/nowhere' is neither a directory"):
        plan(HF_ID, "--tokenizer", "/nowhere")


def test_ssl_files_are_checked_before_the_model_loads(hf_cache, tmp_path):
    key, cert = _self_signed(tmp_path)
    assert plan(HF_ID, "--ssl-keyfile", key, "--ssl-certfile", cert)  # loads
    for argv, says in ((("--ssl-keyfile", key), "--ssl-keyfile needs --ssl-certfile"),
                       (("--ssl-keyfile", key, "--ssl-certfile", str(tmp_path / "nope.pem")), "cannot load them"),
                       (("--ssl-keyfile", cert, "--ssl-certfile", cert), "cannot load them"),
                       (("--ssl-cert-reqs", "2"), "need --ssl-certfile")):
        with pytest.raises(ServeError, match=says):
            plan(HF_ID, *argv)


@pytest.mark.slow  # 12 s: a whole `qwen35 serve` process
def test_https_and_a_root_path(tiny_ckpt, tmp_path):
    """--ssl-certfile/--ssl-keyfile serve HTTPS, as the ready line says. --root-path is the prefix of a proxy that
    strips it: the routes answer as before."""
    import ssl

    key, cert = _self_signed(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen35.cli", "serve", str(tiny_ckpt), "--port", str(port), "--dtype", "float32",
         "--max-model-len", "256", "--max-num-seqs", "2", "--kv-cache-memory", "32MB", "--ssl-keyfile", key,
         "--ssl-certfile", cert, "--root-path", "/qwen", "--api-key", "k"], stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("qwen35 ready:"):
                break
        assert f"https://127.0.0.1:{port}/v1" in lines[-1], "".join(lines)
        trusted = ssl.create_default_context(cafile=cert)
        base = f"https://127.0.0.1:{port}"
        models = urllib.request.Request(base + "/v1/models", headers={"Authorization": "Bearer k"})
        with urllib.request.urlopen(models, timeout=30, context=trusted) as r:
            assert [m["id"] for m in json.load(r)["data"]] == [str(tiny_ckpt)]
        for open_path in ("/health", "/", "/metrics"):  # open without the key under the root path too
            with urllib.request.urlopen(base + open_path, timeout=30, context=trusted) as r:
                assert r.status == 200
                if open_path == "/metrics":
                    assert 'endpoint="/v1/models"' in r.read().decode()  # counted under its route's path
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP gets no answer
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    finally:
        _interrupt(proc)


@pytest.mark.parametrize("flags,k", [
    (["--speculative-config", '{"method":"qwen3_next_mtp","num_speculative_tokens":2}'], 2),
    (["--speculative-config", '{"method":"mtp","num_speculative_tokens":1}'], 1),
    (["--speculative-algo", "NEXTN", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
      "--speculative-num-draft-tokens", "4"], 3),
    (["--speculative-algorithm", "NEXTN"], 3),
    (["--num-speculative-tokens", "2"], 2),
])
def test_speculative_flags_of_vllm_and_sglang(hf_cache, flags, k):
    p = plan(HF_ID, *flags)
    assert p.speculative_config["num_speculative_tokens"] == k
    assert plan(HF_ID).speculative_config is None


def test_a_generation_config_the_user_gives_is_used_as_vllm_uses_it(tmp_path):
    """Under `auto` the model card's presets come before the checkpoint's generation_config.json; a configuration
    the user gives (`--generation-config DIR`, `--override-generation-config`) is used with no presets, as vLLM
    uses it. A folder without a readable generation_config.json, or an override key that is not a sampling
    default, is an error at start."""
    from types import SimpleNamespace

    from qwen35.server.params import load_generation_defaults, sampling_params

    ckpt = write_config_dir(tmp_path / "ckpt")  # its generation_config says temperature 0.7
    folder = tmp_path / "gc"
    folder.mkdir()
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.01, "top_k": 1, "do_sample": False}))
    body = SimpleNamespace(n=1, seed=None, stop=None, min_tokens=0, stop_token_ids=None, ignore_eos=False,
                           skip_special_tokens=True, include_stop_str_in_output=False, logit_bias=None)

    def chat(argv, thinking=True):
        p = plan(str(ckpt), *argv)
        s = sampling_params(body, max_tokens=8, thinking=thinking, defaults=p.generation_defaults,
                            use_presets=p.state_kwargs["use_presets"], logprobs=None)
        return s.temperature, s.top_p, s.top_k

    assert chat([]) == (0.6, 0.95, 20) and chat([], thinking=False) == (0.7, 0.8, 20)
    assert chat(["--generation-config", str(folder)]) == (0.0, 1.0, 1)  # do_sample false: greedy
    assert chat(["--generation-config", str(folder), "--override-generation-config", '{"temperature": 0.5}'],
                thinking=False) == (0.5, 1.0, 1)
    assert chat(["--override-generation-config", '{"top_k": 5}']) == (0.7, 1.0, 5)
    assert plan(str(ckpt), "--override-generation-config", '{"max_new_tokens": 9}').generation_defaults == {
        "temperature": 0.7, "max_tokens": 9}
    assert load_generation_defaults(ckpt, "vllm") == {}
    with pytest.raises(ServeError, match="no such file"):
        plan(str(ckpt), "--generation-config", str(tmp_path / "typo"))
    with pytest.raises(ServeError, match="'max_tokens' is not a sampling default"):
        plan(str(ckpt), "--override-generation-config", '{"max_tokens": 5}')
    with pytest.raises(ServeError, match="'temperature' has the wrong type"):
        plan(str(ckpt), "--override-generation-config", '{"temperature": "0.5"}')
    (folder / "generation_config.json").write_text("{not json")
    with pytest.raises(ServeError, match="generation_config.json"):
        plan(str(ckpt), "--generation-config", str(folder))


def test_route_path_strips_the_root_path():
    from qwen35.server.guard import route_path

    assert route_path({"path": "/qwen/health", "root_path": "/qwen"}) == "/health"
    assert route_path({"path": "/qwen", "root_path": "/qwen"}) == "/"
    assert route_path({"path": "/qwenx/health", "root_path": "/qwen"}) == "/qwenx/health"
    assert route_path({"path": "/health"}) == "/health"
