"""Checkpoints written by `qwen35 init` (loading.writer) are real official-layout checkpoints: transformers'
multimodal classes load them with no missing keys (text model and vision tower) and compute the same text
logits as we do. Also: peak memory of `load_model` stays near the size of the weights."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from qwen35.config import preset
from qwen35.loading.checkpoint import load_model
from qwen35.loading.writer import write_random_checkpoint
from tests.model.helpers import all_logits

from .util import random_prompts, read_tensor

TOL = 1e-4
MEMORY_RATIO = 1.25


@pytest.mark.parametrize("which", ["dense", "moe"])
def test_transformers_loads_our_checkpoint(which, request):
    transformers = pytest.importorskip("transformers")
    path = request.getfixturevalue(f"{which}_ckpt")
    cls = transformers.Qwen3_5MoeForConditionalGeneration if which == "moe" else \
        transformers.Qwen3_5ForConditionalGeneration
    hf, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"], sorted(info["missing_keys"])[:10]
    assert not info["mismatched_keys"]
    assert all(k.startswith("mtp.") for k in info["unexpected_keys"])  # transformers ignores the MTP head
    # weights really come from the file (the vision tower included), not from initialisation
    for name, param in (("model.visual.blocks.0.attn.qkv.weight", hf.model.visual.blocks[0].attn.qkv.weight),
                        ("model.visual.merger.linear_fc2.weight", hf.model.visual.merger.linear_fc2.weight),
                        ("model.language_model.layers.0.linear_attn.A_log",
                         hf.model.language_model.layers[0].linear_attn.A_log)):
        assert torch.equal(param, read_tensor(path, name).float()), name

    ours, cfg = load_model(path, dtype=torch.float32)
    ids = random_prompts(cfg.text.vocab_size, lengths=(150,), seed=7)[0]  # 3 GDN chunks, ragged
    with torch.no_grad():  # text-only: input_ids alone (transformers builds the 3 equal mRoPE rows itself)
        want = hf(input_ids=torch.tensor([ids])).logits[0].float()
    got = all_logits(ours, [ids])[0]
    assert got.shape == want.shape == (150, cfg.text.vocab_size)
    assert (got - want).abs().max().item() < TOL


# -- memory ---------------------------------------------------------------------------------------------
# Peak RSS is read from /proc/self/status (VmHWM, reset just before loading), not resource.getrusage: on Linux
# ru_maxrss survives exec, so a child of a large pytest process reports the parent's peak (seen: 1.36 GB for
# a load that peaked at 0.75 GB).

_CHILD = textwrap.dedent("""
    import json, sys, torch
    from qwen35.config import ModelConfig
    from qwen35.loading.checkpoint import load_model
    from qwen35.model.qwen35 import Qwen35ForCausalLM

    path, dtype = sys.argv[1], getattr(torch, sys.argv[2])

    def status(key):  # bytes
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    def rss():
        return status("VmRSS")

    # warm up what any first model build pays once (lazy imports: ~75 MB), so it is not charged to loading
    with torch.device("meta"):
        Qwen35ForCausalLM(ModelConfig.from_file(path).text)
    torch.ones(1024, dtype=torch.bfloat16).to(dtype)
    try:  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = rss()
    model, _ = load_model(path, dtype=dtype, progress=False)
    peak = status("VmHWM")
    # prepacked projections live outside parameters(): count them too (logical size in the load dtype)
    packed = [m.packed for m in model.modules() if getattr(m, "packed", None) is not None]
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()) + packed)
    for p in model.parameters():  # touch everything: lazily mapped weights would only count now
        p.float().sum() if p.numel() < (1 << 24) else p[::97].float().sum()
    steady = rss()
    print(json.dumps({"before": before, "peak": peak, "steady": steady, "weights": weights}))
""")


def _measure(path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), dtype], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    m["peak_ratio"] = (m["peak"] - m["before"]) / m["weights"]
    m["steady_ratio"] = (m["steady"] - m["before"]) / m["weights"]
    return m


needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


@needs_proc
def test_load_peak_memory_tiny(moe_ckpt):
    """Fast guard on the 128 MB fp32 tiny-moe load (bf16 on disk). Measured: 1.05x (the mmap-based loader
    this replaced: 1.25x; at this size fixed overheads are a few percent, hence the large preset below)."""
    m = _measure(moe_ckpt, "float32")
    assert m["peak_ratio"] < MEMORY_RATIO, m


@pytest.fixture(scope="module")
def big_ckpt(tmp_path_factory):
    """dense-0.8b cut to 4 layers and a 131072-token vocabulary, no vision/MTP: 434 MB of bf16 weights in a
    single shard (a shard as large as the weights is the hard case for anything mmap-based)."""
    base = preset("dense-0.8b")
    text = dataclasses.replace(base.text, num_hidden_layers=4, layer_types=base.text.layer_types[:4],
                               vocab_size=1 << 17, mtp_num_hidden_layers=0)
    cfg = dataclasses.replace(base, text=text, vision=None)
    return write_random_checkpoint(cfg, tmp_path_factory.mktemp("big"), seed=0, tokenizer=False)


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_load_peak_memory(big_ckpt, dtype):
    """Peak RSS growth during load_model < 1.25x the loaded weights. Measured: bf16 1.01x, fp32 1.01x
    (the earlier mmap loader: fp32 1.50x, its bf16 tensors stayed file-backed and were not resident until
    used); steady-state RSS after touching every weight is the same ~1.0x."""
    m = _measure(big_ckpt, dtype)
    assert m["peak_ratio"] < MEMORY_RATIO, m
    assert m["steady_ratio"] < MEMORY_RATIO, m
