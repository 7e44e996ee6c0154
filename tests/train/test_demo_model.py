"""The shipped demo model behaves as trained, through every layer: `qwen35 serve` on the embedded default (no
model argument) with MTP drafting, the openai client, the reasoning and tool-call parsers. A handful of
held-out questions here; `test_demo_eval_meets_the_targets` (slow) runs the full held-out evaluation and
`test_the_recipe_reproduces_the_shipped_model` (slow, ~50 min: the first stage, then the polish) the
training."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from qwen35.default_model import DEFAULT_NAME, default_model_dir
from qwen35.loading.checkpoint import load_model
from qwen35.tokenizer import Tokenizer
from qwen35.train.evaluate import TARGETS, ServerProcess, evaluate, run_eval
from qwen35.train.export import SHARD
from qwen35.train.loop import LOG_FILE, machine, train, unformed_copy_head
from qwen35.train.recipe import recipe
from qwen35.train.synth import heldout
from tests.model.helpers import all_logits

pytest.importorskip("openai")
# of 193 answers and 72 tool loops: two runs of one recipe differ by about 8 and 5 (docs/DEMO.md), and a little more
RUN_SPREAD = {"answer": 10, "tool": 6}
HANDFUL = {("arith", True): 3, ("arith", False): 2, ("convert", True): 1, ("followup", True): 1,
           ("tool", True): 3, ("tool", False): 1, ("no_tool", True): 2, ("smalltalk", True): 2,
           ("smalltalk", False): 1}


def _handful():
    chosen, want = [], dict(HANDFUL)
    for s in heldout(400):
        if want.get((s.kind, s.thinking), 0) > 0:
            want[(s.kind, s.thinking)] -= 1
            chosen.append(s)
    return chosen


def test_the_embedded_model_answers_calls_tools_and_drafts():
    server = ServerProcess(None, mtp_tokens=2, startup_timeout=120)  # no model argument: the embedded one
    url = server.start()
    try:
        report = evaluate(url, DEFAULT_NAME, _handful(), concurrency=4)
    finally:
        server.stop()
    m = report.metrics
    print(report.table())
    # what the shipped model does reliably (docs/DEMO.md has the full held-out numbers): the chat format, the
    # thinking switch, a schema-valid call of the right tool, no call when none fits, drafts worth accepting
    assert m["errors"].num == 0
    assert m["reasoning/think"].value == 1.0 and m["reasoning/no_think"].value == 0.0
    assert m["no_tool"].value == 1.0
    assert m["smalltalk"].value == 1.0  # a greeting gets a greeting, with thinking on (the default) too
    assert m["tool/valid_call"].num >= m["tool/valid_call"].den - 1
    assert m["mtp/pos0"].value >= 0.6


def test_the_shipped_checkpoint_computes_transformers_logits():
    """The embedded checkpoint as transformers reads its config.json (the rotary width included) and ours."""
    transformers = pytest.importorskip("transformers")
    shipped = default_model_dir()
    tok = Tokenizer.from_pretrained(shipped)
    ids = tok.encode("<|im_start|>user\nList the files in /home/user/notes, then add 45 and 38.<|im_end|>\n"
                     "<|im_start|>assistant\n<think>\n")
    hf = transformers.Qwen3_5ForCausalLM.from_pretrained(shipped, dtype=torch.float32).eval()
    ours, _ = load_model(shipped, dtype=torch.float32)
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([ids])).logits[0]
    assert (all_logits(ours, [ids])[0] - want).abs().max() < 1e-4


# With several requests in flight, which of them share a batch changes the bf16 rounding, and a reply at the
# margin can flip from run to run (docs/DEMO.md, "A larger draw"); one at a time, the eval gives the same
# figures every run.
ONE_AT_A_TIME = 1


def test_the_shipped_demo_formed_its_copy_head_in_the_drills():
    """The warning a retrain gives when its drills end unlearnt (loop.unformed_copy_head) stays quiet on the
    history of the run that made the shipped model."""
    history = json.loads((default_model_dir() / LOG_FILE).read_text())["history"]
    assert unformed_copy_head(history[:recipe("demo").copy_steps]) is None


@pytest.mark.slow
def test_demo_eval_meets_the_targets():
    report = run_eval(default_model_dir(), n=300, concurrency=ONE_AT_A_TIME)
    print(report.table())
    failed = [t.metric for t in TARGETS["demo"] if not t.passes(report.metrics.get(t.metric))]
    assert not failed, report.table()


@pytest.mark.slow
def test_the_recipe_reproduces_the_shipped_model(tmp_path):
    """Bit-identical where the shipped model was trained (`machine()`: the CPU, torch's kernels for it, torch and
    threads). Elsewhere matmul rounding differs, and the reproduction must instead meet every target the shipped
    model meets and score at most a run-to-run spread below it on answers and tool loops."""
    shipped = default_model_dir()
    out = train(recipe("demo"), tmp_path / "demo")
    log = json.loads((shipped / LOG_FILE).read_text())
    if log["machine"] == machine(recipe("demo").threads):
        want, got = load_file(str(shipped / SHARD)), load_file(str(out / SHARD))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        assert (shipped / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    else:  # other rounding, other weights: the same recipe's behaviour, as far as two runs of it differ
        ours, theirs = (run_eval(d, n=300, concurrency=ONE_AT_A_TIME) for d in (out, shipped))
        met = [t for t in TARGETS["demo"] if t.passes(theirs.metrics.get(t.metric))]
        assert all(t.passes(ours.metrics.get(t.metric)) for t in met), ours.table()
        for metric, spread in RUN_SPREAD.items():
            assert ours.metrics[metric].num >= theirs.metrics[metric].num - spread, (metric, ours.table())
