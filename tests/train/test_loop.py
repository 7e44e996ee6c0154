"""`qwen35 train`: deterministic given the recipe, resumable bit-identically, and its output is an official
checkpoint that our loader and transformers load to the same logits, with the trained vocabulary and the real
chat template. Uses the `smoke` recipe (a few steps of a tiny model on 400 synthetic chats)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qwen35.config import ConfigError
from qwen35.loading.checkpoint import load_model
from qwen35.model.qwen35 import Qwen35ForCausalLM
from qwen35.tokenizer import Tokenizer
from qwen35.tokenizer.tokenizer import DEFAULT_CHAT_TEMPLATE
from qwen35.train.examples import IGNORE
from qwen35.train.export import SHARD, read_trained
from qwen35.train.induction import copy_batch, copy_example
from qwen35.train.loop import (BASE_DIR, DRILL_WINDOW, LOG_FILE, STATE_FILE, lr_at, machine, train,
                               unformed_copy_head)
from qwen35.train.recipe import Polish, recipe
from qwen35.train.synth import DEFAULT_MIX
from qwen35.train.vocab import SPECIALS, merged_ids
from tests.model.helpers import all_logits

SMOKE = recipe("smoke")
POLISHED = SMOKE.replace(polish=Polish(steps=4, samples=80, mix=tuple(DEFAULT_MIX.items()), lr=5e-3, warmup_steps=1))


def _quiet(*_args, **_kwargs):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(SMOKE, tmp_path_factory.mktemp("smoke"), log=_quiet, progress=open("/dev/null", "w"))


def _same_weights(a, b) -> bool:
    want, got = load_file(str(a / SHARD)), load_file(str(b / SHARD))
    return want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_training_is_deterministic_and_resumes_bit_identically(trained, tmp_path):
    devnull = open("/dev/null", "w")
    train(SMOKE, tmp_path, log=_quiet, progress=devnull, stop_after=SMOKE.checkpoint_every)
    assert (tmp_path / STATE_FILE).exists() and not (tmp_path / SHARD).exists()
    with pytest.raises(ValueError, match=r"belongs to another recipe \(lr 0\.\d+ there, 0\.0001 now\)"):
        train(SMOKE.replace(lr=1e-4), tmp_path, log=_quiet, progress=devnull)
    train(SMOKE, tmp_path, log=_quiet, progress=devnull)  # picks the state up
    assert not (tmp_path / STATE_FILE).exists()
    assert _same_weights(tmp_path, trained)
    log = json.loads((tmp_path / LOG_FILE).read_text())
    assert [h["step"] for h in log["history"]] == list(range(1, SMOKE.steps + 1))
    assert log["history"] == json.loads((trained / LOG_FILE).read_text())["history"]
    assert log["machine"] == machine(SMOKE.threads)
    assert log["runs"] == 2 and json.loads((trained / LOG_FILE).read_text())["runs"] == 1
    assert log["wall_s"] > 0


def test_a_polish_trains_on_from_the_exported_first_stage_and_resumes(trained, tmp_path):
    devnull = open("/dev/null", "w")
    whole = train(POLISHED, tmp_path / "whole", log=_quiet, progress=devnull)
    base = whole / BASE_DIR
    assert _same_weights(base, trained) and not _same_weights(whole, trained)  # the first stage is the recipe's
    assert (whole / "tokenizer.json").read_bytes() == (trained / "tokenizer.json").read_bytes()
    log = json.loads((whole / LOG_FILE).read_text())
    assert [h["step"] for h in log["history"]] == list(range(1, SMOKE.steps + POLISHED.polish.steps + 1))
    assert log["history"][:SMOKE.steps] == json.loads((trained / LOG_FILE).read_text())["history"]
    assert log["base"]["runs"] == 1 and log["runs"] == 1 and log["wall_s"] > log["base"]["wall_s"] > 0
    assert not (whole / STATE_FILE).exists() and not (base / STATE_FILE).exists()

    # from a copy of the first stage's checkpoint alone, stopped inside the polish and resumed: the same bits
    again = tmp_path / "again"
    shutil.copytree(base, again / BASE_DIR)
    said = []
    train(POLISHED, again, log=said.append, progress=devnull, stop_after=SMOKE.steps + SMOKE.checkpoint_every)
    assert (again / STATE_FILE).exists() and not (again / SHARD).exists()
    assert not any(line.startswith("corpus: 400") for line in said)  # the first stage's corpus was not built
    train(POLISHED, again, log=_quiet, progress=devnull)
    assert _same_weights(again, whole)
    assert json.loads((again / LOG_FILE).read_text())["runs"] == 2

    # a first stage of another recipe is trained again, not polished
    other = tmp_path / "other"
    shutil.copytree(base, other / BASE_DIR)
    record = json.loads((other / BASE_DIR / LOG_FILE).read_text())
    record["recipe"]["lr"] /= 2
    (other / BASE_DIR / LOG_FILE).write_text(json.dumps(record))
    train(POLISHED, other, log=_quiet, progress=devnull, stop_after=SMOKE.checkpoint_every)
    assert (other / BASE_DIR / STATE_FILE).exists() and not (other / STATE_FILE).exists()
    with pytest.raises(ConfigError, match="polish"):
        train(SMOKE.replace(polish=Polish(steps=0, samples=80, mix=(("arith", 1.0),), lr=1e-3)), tmp_path / "bad")


def test_the_output_directory_is_checked_before_any_work(tmp_path, monkeypatch):
    """A directory with other files, a file, or a training state that cannot be read is refused at once (no
    corpus built first), in one line."""
    import qwen35.train.loop as loop

    monkeypatch.setattr(loop, "make_corpus", lambda *a: pytest.fail("the corpus was built"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"old")
    with pytest.raises(ConfigError, match="not empty and holds no training run"):
        train(SMOKE, other, log=_quiet)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        train(SMOKE, tmp_path / "file", log=_quiet)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / STATE_FILE).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match=r"train_state.pt cannot be read \(.*\); remove it to start afresh"):
        train(SMOKE, cut, log=_quiet)


def test_an_interrupted_run_says_where_it_resumes(tmp_path, monkeypatch):
    import qwen35.train.loop as loop

    calls, real = [0], loop.batch_loss

    def interrupted(*args):
        calls[0] += 1
        if calls[0] == SMOKE.checkpoint_every + 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop, "batch_loss", interrupted)
    said = []
    with pytest.raises(KeyboardInterrupt):
        train(SMOKE, tmp_path, log=said.append, progress=open("/dev/null", "w"))
    assert said[-1] == (f"interrupted; {tmp_path / STATE_FILE} holds step {SMOKE.checkpoint_every}: the same "
                        "command resumes from there")


def test_read_trained_gives_the_exported_weights_and_names_a_misfit(trained):
    model = read_trained(Qwen35ForCausalLM(SMOKE.text_config(Tokenizer.from_pretrained(trained).vocab_size),
                                           mtp=True), trained)
    tensors = load_file(str(trained / SHARD))
    assert torch.equal(model.model.embed_tokens.weight, tensors["model.language_model.embed_tokens.weight"].float())
    assert model.model.embed_tokens.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="embed_tokens.weight should be"):
        read_trained(Qwen35ForCausalLM(SMOKE.text_config(SMOKE.vocab_size + 64), mtp=True), trained)


def test_loss_goes_down(trained):
    history = json.loads((trained / LOG_FILE).read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    assert history[-1]["mtp_loss"] < history[0]["mtp_loss"] - 0.1


def test_the_checkpoint_is_official_and_loads_in_transformers(trained):
    transformers = pytest.importorskip("transformers")
    config = json.loads((trained / "config.json").read_text())
    assert config["model_type"] == "qwen3_5" and "vision_config" not in config
    assert config["text_config"]["layer_types"][3] == "full_attention"
    assert config["text_config"]["mtp_num_hidden_layers"] == 1 and config["tie_word_embeddings"]
    assert json.loads((trained / "generation_config.json").read_text())["do_sample"] is False
    tensors = load_file(str(trained / SHARD))
    assert any(k.startswith("mtp.") for k in tensors) and "lm_head.weight" not in tensors
    assert tensors["model.language_model.layers.0.linear_attn.A_log"].dtype == torch.float32
    assert tensors["model.language_model.embed_tokens.weight"].dtype == torch.bfloat16

    tok = Tokenizer.from_pretrained(trained)
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert all(tok.token_to_id(t) is not None for t in SPECIALS)
    assert tok.vocab_size <= SMOKE.vocab_size
    merged = merged_ids(tok)  # what induction drills draw from
    assert len(tok.backend.id_to_token(merged.start - 1)) == 1 and len(tok.backend.id_to_token(merged.start)) > 1
    assert tok.backend.id_to_token(merged.stop) == SPECIALS[0]

    hf = transformers.Qwen3_5ForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    ours, _ = load_model(trained, dtype=torch.float32)
    ids = tok.encode("<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([ids])).logits[0]
    assert (all_logits(ours, [ids])[0] - want).abs().max() < 1e-4


def test_learning_rate_schedule():
    r = SMOKE.replace(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, r) == pytest.approx(0.1) and lr_at(9, r) == pytest.approx(1.0)
    assert lr_at(10, r) == pytest.approx(1.0) and lr_at(99, r) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(i, r) >= lr_at(i + 1, r) for i in range(10, 99))


def test_induction_drills_come_before_the_chats_and_with_them(monkeypatch, tmp_path):
    import qwen35.train.loop as loop

    drawn = []

    def recording(seed, step, batch_tokens, *args):
        drawn.append((step, batch_tokens))
        return copy_batch(seed, step, batch_tokens, *args)

    monkeypatch.setattr(loop, "copy_batch", recording)
    r = SMOKE.replace(copy_steps=2, gdn_gate=2.0)
    train(r, tmp_path, log=_quiet, progress=open("/dev/null", "w"), stop_after=3)
    assert [step for step, _ in drawn] == [0, 1]  # and step 2 a batch of chats
    drawn.clear()
    train(r.replace(chat_drill_tokens=128), tmp_path / "mixed", log=_quiet, progress=open("/dev/null", "w"),
          stop_after=4)
    assert drawn == [(0, r.copy_batch_tokens), (1, r.copy_batch_tokens), (2, 128), (3, 128)]
    for bad in (SMOKE.replace(copy_steps=SMOKE.steps), SMOKE.replace(copy_steps=-1), SMOKE.replace(copy_length=0)):
        with pytest.raises(ConfigError, match="copy_steps"):
            train(bad, tmp_path / "bad", log=_quiet)
    with pytest.raises(ConfigError, match="chat_drill_tokens"):
        train(SMOKE.replace(chat_drill_tokens=-1), tmp_path / "bad", log=_quiet)


def test_drills_that_end_unlearnt_are_named_when_they_end(tmp_path):
    said = []
    r = SMOKE.replace(copy_steps=2, gdn_gate=2.0)  # two drill steps: still at the loss of a guess
    train(r, tmp_path, log=said.append, progress=open("/dev/null", "w"), stop_after=3)
    warnings = [line for line in said if line.startswith("warning")]
    assert len(warnings) == 1 and "induction drills" in warnings[0] and "over their last 2 steps" in warnings[0]
    formed = [{"loss": 5.0}] * 10 + [{"loss": 0.04}] * (DRILL_WINDOW - 1) + [{"loss": 0.5}]
    assert unformed_copy_head(formed) is None  # the shipped run's drills end so: a late spike within a low mean
    assert "mean loss of 1.29" in unformed_copy_head([{"loss": 1.29}] * DRILL_WINDOW)


def test_an_induction_drill_learns_the_repeat_only():
    ex = copy_example(np.random.default_rng(0), 5, 300, 50)
    assert len(ex) == 13 and np.array_equal(ex.ids[1:6], ex.ids[7:12])
    assert ((ex.ids[1:6] >= 300) & (ex.ids[1:6] < 350)).all()
    learnt = np.flatnonzero(ex.next_labels != IGNORE)
    assert learnt.tolist() == list(range(6, 12))  # from the second marker on: the repeat and the end marker
    assert np.array_equal(ex.next_labels[learnt], ex.ids[7:13])
    a, b = copy_batch(0, 7, 2048, 30, 300, 50), copy_batch(0, 7, 2048, 30, 300, 50)
    assert len(a) == 2048 // 63 and all(np.array_equal(x.ids, y.ids) for x, y in zip(a, b))
    assert not np.array_equal(a[0].ids, copy_batch(0, 8, 2048, 30, 300, 50)[0].ids)
