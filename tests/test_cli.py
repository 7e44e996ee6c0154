"""The command line: `qwen35 init` writes a loadable checkpoint, `qwen35 generate` streams from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def qwen35(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qwen35.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ckpt"
    r = qwen35("init", "tiny", str(out), "--seed", "3", "--shard-size", "20MB")
    assert r.returncode == 0, r.stderr
    return out


def test_init_writes_the_official_layout(init_dir):
    files = {p.name for p in init_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= files
    assert sum(name.endswith(".safetensors") for name in files) >= 2  # sharded
    cfg = json.loads((init_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_5" and "text_config" in cfg and "vision_config" in cfg


@pytest.mark.slow  # 11 s: two CLI runs; test_generate_stops_on_generation_config_eos covers the command fast
def test_generate_streams_text(init_dir):
    r = qwen35("generate", "--model", str(init_dir), "--prompt", "Hello there", "--max-tokens", "8",
               "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--seed", "1", "--dtype", "fp32")
    assert r.returncode == 0, r.stderr
    assert "generated" in r.stderr and r.stdout.strip()
    again = qwen35("generate", "--model", str(init_dir), "--prompt", "Hello there", "--max-tokens", "8",
                   "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--seed", "1", "--dtype", "fp32")
    assert again.stdout == r.stdout  # seeded


def _main(capsys, *args) -> tuple[int, str]:
    """`qwen35 ARGS` in this process: (exit status, stderr)."""
    from qwen35.cli import main

    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["generate", "--prompt", "x", "--max-tokens", "0"], "--max-tokens"),
    (["generate", "--prompt", "x", "--top-p", "2"], "--top-p"),
    (["init", "70b", "/tmp/nowhere"], "unknown preset"),
    (["generate", "--prompt", "x", "--threads", "-3"], "--threads"),
    (["init", "tiny", "/tmp/nowhere", "--shard-size", "abc"], "--shard-size"),
    (["init", "tiny", "/proc/nope"], "/proc/nope"),  # cannot be created: one line, no traceback
    (["chat", "--mcp-timeout", "0"], "--mcp-timeout"),
])
def test_bad_arguments_are_named(args, message, capsys):
    code, err = _main(capsys, *args)
    assert code != 0 and message in err


def test_init_refuses_a_directory_with_files(init_dir, tmp_path, capsys):
    """Old shards of another shape beside the new files would be read by tools that glob *.safetensors."""
    code, err = _main(capsys, "init", "tiny", str(init_dir))
    assert code == 2 and "not empty" in err
    (tmp_path / "f").write_text("x")
    code, err = _main(capsys, "init", "tiny", str(tmp_path / "f"))
    assert code == 2 and "is a file" in err


def test_shards_are_readable_by_others(init_dir):
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in init_dir.glob("*.safetensors"))  # not safetensors' 0600


@pytest.mark.parametrize("args,message", [
    (["train", "--recipe", "demo", "--steps", "5"], "spends its first 1000 steps on induction drills"),
    (["eval", "x", "--timeout", "nan"], "--timeout positive and finite"),
    (["eval", "x", "--timeout", "inf"], "--timeout positive and finite"),
    (["eval", "x", "--json", "/nonexistent/dir/r.json"], "--json /nonexistent/dir/r.json: not a file"),
    (["eval", "x", "--serve-flags", "'"], "--serve-flags \"'\": No closing quotation"),
])
def test_train_and_eval_arguments_are_checked_first(args, message, capsys):
    code, err = _main(capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_train_seed_and_steps_reach_the_recipe(monkeypatch):
    import qwen35.train.loop as loop
    from qwen35.cli import main

    got = []
    monkeypatch.setattr(loop, "train", lambda recipe, out: got.append((recipe.seed, recipe.steps, out)))
    assert main(["train", "--recipe", "smoke", "--seed", "7", "--steps", "9", "--out", "x"]) == 0
    assert got == [(7, 9, "x")]


def test_bad_arguments_are_one_line_without_traceback():
    r = qwen35("init", "tiny", "/proc/nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_llm_and_generate_find_a_hugging_face_id_in_the_local_cache(init_dir, tmp_path, monkeypatch, capsys):
    """As `qwen35 serve` does: `LLM("org/name")` and `generate --model org/name` use the cached snapshot."""
    from qwen35.engine import LLM, SamplingParams

    repo = tmp_path / "hub" / "models--Org--Tiny"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "snapshots" / "abc123").symlink_to(init_dir, target_is_directory=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code, err = _main(capsys, "generate", "--model", "Org/Tiny", "--prompt", "Hello", "--max-tokens", "2",
                      "--dtype", "fp32")
    assert code == 0 and "generated 2 tok" in err, err
    out = LLM("Org/Tiny", dtype="fp32", max_model_len=64).generate("Hello", SamplingParams(max_tokens=2))
    assert len(out[0].outputs[0].token_ids) == 2


def test_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    code, err = _main(capsys, "generate", "--model", str(tmp_path / "absent"), "--prompt", "x")
    assert code == 2 and "absent" in err


def test_generate_stops_on_generation_config_eos(init_dir, tmp_path, capsys):
    """`generate` runs through the engine's stop logic: a token listed as EOS in generation_config.json ends
    the stream (here the first greedy token, so exactly one token is generated and none is printed)."""
    import shutil

    from qwen35.cli import main
    from qwen35.engine import LLM, SamplingParams

    ckpt = shutil.copytree(init_dir, tmp_path / "ckpt")
    llm = LLM(str(ckpt), dtype="fp32", max_model_len=64)  # kept: `generate` below shares its parsed tokenizer
    first = llm.generate("Hello there", SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))[0]
    gen = json.loads((ckpt / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": first.outputs[0].token_ids}))
    capsys.readouterr()
    assert main(["generate", "--model", str(ckpt), "--prompt", "Hello there", "--max-tokens", "8",
                 "--dtype", "fp32"]) == 0
    out = capsys.readouterr()
    assert "generated 1 tok" in out.err and out.out == "\n"
