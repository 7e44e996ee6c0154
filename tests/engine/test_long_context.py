"""A 32,000-token prompt through the engine (issue 9, long context): chunked prefill with the default
`max_num_batched_tokens` on the tiny preset made to reach 32,768 tokens with YaRN (factor 8 over a 4,096-token
original window), then the same prompt again from the prefix cache.

It runs in a child process so that its peak memory is its own: VmHWM (reset through /proc/self/clear_refs after
a warm-up request, or a sampling thread reading VmRSS where that reset is refused) less VmRSS before the request.
Anything sized by the whole context per step shows up here: a [T, T] fp32 score matrix of one head would be
4.1 GB, a [T, vocab] fp32 logits tensor 32 GB, even a [chunk, T] fp32 mask 131 MB. Measured on a 2-core CPU
shared with other jobs: growth under 1 MB (0.1-0.7 MB), 35-45 s for the prompt (32 chunks of 1,024 tokens, cut at the
prefix-cache checkpoints; 0.4 s per chunk near the start, 1 s near the end, as attention over the context
grows), 2-4 s for the cached repeat (31,744 tokens from the cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import qwen35

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")]

PROMPT = 32_000
ORIGINAL, FACTOR = 4096, 8  # the tiny preset's max_position_embeddings is 4096
GROWTH_LIMIT = 128 << 20  # bytes; see the module docstring for what context-sized tensors would need

_CHILD = textwrap.dedent("""
    import json, sys, threading, time
    import torch
    from qwen35.engine import SamplingParams
    from qwen35.engine.llm_engine import EngineConfig, LLMEngine

    path, T, original, factor = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def status(key):  # bytes
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    config = json.load(open(f"{path}/config.json"))
    text = config.get("text_config", config)
    text["rope_parameters"] = {**text.get("rope_parameters", {}), "rope_type": "yarn", "factor": float(factor),
                               "original_max_position_embeddings": original}
    eng = LLMEngine(EngineConfig(model=path, dtype="float32", max_model_len=factor * original, max_num_seqs=2,
                                 kv_cache_memory=128 << 20, hf_config=config))  # default max_num_batched_tokens
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0)

    def run(rid, prompt):
        eng.add_request(rid, prompt, params)
        steps, final = [], None
        while eng.has_unfinished():
            t = time.perf_counter()
            outs = eng.step()
            steps.append(round(time.perf_counter() - t, 3))
            final = next((o for o in outs if o.finished), final)
        return final, steps

    gen = torch.Generator().manual_seed(0)
    run("warm-up", torch.randint(0, 20000, (3000,), generator=gen).tolist())  # first-use costs of every path
    eng.scheduler.prefix.clear()
    prompt = torch.randint(0, 20000, (T,), generator=gen).tolist()

    sampled, done = [0], threading.Event()
    def sample():
        while not done.is_set():
            sampled[0] = max(sampled[0], status("VmRSS"))
            time.sleep(0.002)
    try:  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = status("VmRSS")
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    first, steps = run("long", prompt)
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    peak = max(status("VmHWM") if reset else 0, sampled[0])
    hits = eng.cache_usage()["prefix_hits"]
    t0 = time.perf_counter()
    again, steps_again = run("again", prompt)
    seconds_again = time.perf_counter() - t0

    def result(o):
        c = o.outputs[0]
        return {"tokens": c.token_ids, "logprobs": [lp[t] for t, lp in zip(c.token_ids, c.logprobs)],
                "finish": c.finish_reason, "cached": o.num_cached_tokens, "error": o.error}

    print(json.dumps({"before": before, "growth": peak - before, "hwm_reset": reset, "seconds": seconds,
                      "seconds_again": seconds_again, "steps": steps, "steps_again": steps_again,
                      "first": result(first), "again": result(again),
                      "new_hits": eng.cache_usage()["prefix_hits"] - hits, "plan": eng.plan.describe()}))
""")


def test_32k_prompt_prefills_in_bounded_memory_and_repeats_from_the_prefix_cache(tiny_ckpt):
    src = str(Path(qwen35.__file__).resolve().parents[1])  # this checkout's package, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tiny_ckpt), str(PROMPT), str(ORIGINAL), str(FACTOR)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in m.items() if k not in ("steps", "steps_again")}))  # shown with -s
    first, again = m["first"], m["again"]
    assert first["error"] is None and first["finish"] == "length" and len(first["tokens"]) == 8
    assert first["cached"] == 0
    # chunked: with 2048-token steps (and 1024-token chunks between checkpoints) no step saw the whole prompt
    assert len(m["steps"]) >= PROMPT // 2048 + 7
    assert m["growth"] < GROWTH_LIMIT, m
    # the repeat: one prefix hit covering all but the last stretch, the same greedy tokens and log-probs
    assert m["new_hits"] == 1 and again["cached"] >= PROMPT - 2048
    assert again["tokens"] == first["tokens"]
    assert max(abs(a - b) for a, b in zip(again["logprobs"], first["logprobs"])) < 1e-4
    assert m["seconds_again"] < m["seconds"] / 2
