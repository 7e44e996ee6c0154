"""Weight-only int8 / int4 (`--quantization`): quality against bf16, load memory, and a random-weights model of
a preset too large to write as bf16.

    .venv/bin/python bench/quant_quality.py [--model DIR] [--prompts 3] [--prompt-len 128] [--gen 64]
    .venv/bin/python bench/quant_quality.py --memory [--model DIR]
    .venv/bin/python bench/quant_quality.py --random moe-35b-a3b [--quantization int4] [--decode-steps 8]
                                            [--layers N]

Default mode loads the checkpoint (default ~/.cache/qwen35/bench-dense-0.8b, random weights) in bf16, int8 and
int4 and reports, over the prefill of `--prompts` random prompts: mean / max |delta log-softmax| and mean / max
KL(bf16 || quantised) per position (and the same for fp32, for scale); then greedy generation of `--gen` tokens
per prompt: the fraction of positions with the same token as bf16 and the mean length of the identical prefix.
`--memory` loads the checkpoint once per format in a fresh child process and reports peak RSS (VmHWM, reset
just before the load) and the resident weights.
`--random PRESET` builds PRESET with random weights already quantised (loading/random_weights.py: no
checkpoint), reports peak RSS and the weights' bytes, then times a short prefill and single-sequence decode
steps. Prints the CPU model and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

GIB = 1 << 30
DEFAULT_MODEL = Path.home() / ".cache" / "qwen35" / "bench-dense-0.8b"
FORMATS = ("bf16", "int8", "int4")


def status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    try:  # VmHWM back to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# -- quality ---------------------------------------------------------------------------------------------

def _run(model, prompts, gen: int):
    """Prefill log-softmax of every prompt position [sum(len), V] and `gen` greedy tokens per prompt."""
    import torch

    from qwen35.model import ForwardBatch, SeqSpec

    block, max_len = 16, max(len(p) for p in prompts) + gen + 16
    per = -(-max_len // block)
    blocks = [list(range(i * per, (i + 1) * per)) for i in range(len(prompts))]
    cache = model.new_cache(num_blocks=len(prompts) * per, block_size=block, num_slots=len(prompts))
    with torch.no_grad():
        batch = ForwardBatch.build([SeqSpec(p, 0, i, blocks[i]) for i, p in enumerate(prompts)], block)
        logits = model.logits(model(batch, cache))
        logp = logits.log_softmax(-1)
        ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
        tokens = [[int(logits[e].argmax())] for e in ends]
        for t in range(gen - 1):
            seqs = [SeqSpec([tokens[i][-1]], len(p) + t, i, blocks[i]) for i, p in enumerate(prompts)]
            nxt = model.logits(model(ForwardBatch.build(seqs, block), cache)).argmax(-1).tolist()
            for i, n in enumerate(nxt):
                tokens[i].append(n)
    return logp, tokens


def quality(args) -> dict:
    import torch

    from qwen35.loading.checkpoint import load_model

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 20000, (args.prompt_len,), generator=gen).tolist() for _ in range(args.prompts)]
    runs = {}
    for fmt in FORMATS:
        t0 = time.perf_counter()
        model, _ = load_model(args.model, quantization=None if fmt == "bf16" else fmt, progress=False)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        runs[fmt] = _run(model, prompts, args.gen)
        print(f"  {fmt}: loaded in {load_s:.1f} s, prefill + {args.gen} decode steps in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        del model
    # scale: the same measures for fp32 against bf16 (prefill only). A random checkpoint is chaotic: a small
    # change in the weights grows layer by layer, so even bf16's own rounding moves its logits visibly
    model, _ = load_model(args.model, dtype=torch.float32, progress=False)
    runs["fp32"] = (_run(model, prompts, 1)[0], None)
    del model
    ref_logp, ref_tok = runs["bf16"]
    out = {}
    for fmt in ("fp32",) + FORMATS[1:]:
        logp, tok = runs[fmt]
        diff = (logp - ref_logp).abs()
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        top1 = (logp.argmax(-1) == ref_logp.argmax(-1)).float().mean().item()
        out[fmt] = r = {"logsoftmax_mean_abs": diff.mean().item(), "logsoftmax_max_abs": diff.max().item(),
                        "kl_mean": kl.mean().item(), "kl_max": kl.max().item(), "prefill_top1_agree": top1}
        line = (f"{fmt}: |dlogsoftmax| mean {r['logsoftmax_mean_abs']:.4f} max {r['logsoftmax_max_abs']:.3f}; "
                f"KL mean {r['kl_mean']:.2e} max {r['kl_max']:.2e}; prefill top-1 agreement {top1:.3f}")
        if tok is not None:
            same = [sum(a == b for a, b in zip(x, y)) / len(x) for x, y in zip(tok, ref_tok)]
            prefix = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x)) for x, y in zip(tok, ref_tok)]
            r.update(greedy_same_token=sum(same) / len(same), greedy_identical_prefix=sum(prefix) / len(prefix))
            line += (f"; greedy {args.gen} tokens: same token {r['greedy_same_token']:.3f}, identical prefix "
                     f"{r['greedy_identical_prefix']:.1f} tokens")
        print(line)
    return {"positions": args.prompts * args.prompt_len, **out}


# -- load memory -----------------------------------------------------------------------------------------

_CHILD = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from quant_quality import status, reset_peak
from qwen35.config import ModelConfig
from qwen35.loading.checkpoint import load_model
from qwen35.loading.quantize import quantized_bytes
from qwen35.model.qwen35 import Qwen35ForCausalLM
path, fmt = sys.argv[1], sys.argv[2]
with torch.device("meta"):
    Qwen35ForCausalLM(ModelConfig.from_file(path).text)  # lazy imports, not charged to loading
reset_peak()
before = status("VmRSS")
model, _ = load_model(path, quantization=None if fmt == "bf16" else fmt, progress=False)
print(json.dumps({{"before": before, "peak": status("VmHWM"), "steady": status("VmRSS"),
                  "weights": quantized_bytes(model)}}))
"""


def memory(args) -> dict:
    out = {}
    for fmt in FORMATS:
        code = _CHILD.format(bench=str(Path(__file__).parent))
        p = subprocess.run([sys.executable, "-c", code, str(args.model), fmt], capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr[-3000:])
        m = json.loads(p.stdout.strip().splitlines()[-1])
        out[fmt] = {"peak_gib": (m["peak"] - m["before"]) / GIB, "steady_gib": (m["steady"] - m["before"]) / GIB,
                    "weights_gib": m["weights"] / GIB}
        print(f"{fmt}: load peak {out[fmt]['peak_gib']:.2f} GiB over the process's start, resident after load "
              f"{out[fmt]['steady_gib']:.2f} GiB, weights {out[fmt]['weights_gib']:.2f} GiB", flush=True)
    return out


# -- random weights of a large preset -------------------------------------------------------------------

def random_preset(args) -> dict:
    import torch

    from qwen35.config import preset
    from qwen35.loading.quantize import quantized_bytes
    from qwen35.loading.random_weights import random_model
    from qwen35.model import ForwardBatch, SeqSpec

    cfg = preset(args.random)
    full = quantized_bytes(random_model(cfg, args.quantization, meta=True))
    print(f"{args.random} {args.quantization}: all {cfg.text.num_hidden_layers} layers hold {full / GIB:.2f} GiB of "
          "weights (exact, from the structure on the meta device)", flush=True)
    if args.layers:  # the first N layers only, to fit a smaller machine; peak and step time scale per layer
        text = dataclasses.replace(cfg.text, num_hidden_layers=args.layers,
                                   layer_types=cfg.text.layer_types[:args.layers])
        cfg = dataclasses.replace(cfg, text=text)
    reset_peak()
    before = status("VmRSS")
    t0 = time.perf_counter()
    model = random_model(cfg, args.quantization)
    build_s = time.perf_counter() - t0
    weights, peak = quantized_bytes(model), status("VmHWM") - before
    print(f"{args.random} {args.quantization}, {cfg.text.num_hidden_layers} layers: built in {build_s:.0f} s; "
          f"weights {weights / GIB:.2f} GiB, "
          f"peak RSS {peak / GIB:.2f} GiB over the process's start ({before / GIB:.2f} GiB)", flush=True)
    block, n_prompt = 16, args.prompt_len
    cache = model.new_cache(num_blocks=-(-(n_prompt + args.decode_steps + 1) // block), block_size=block,
                            num_slots=1)
    blocks = list(range(-(-(n_prompt + args.decode_steps + 1) // block)))
    prompt = torch.randint(0, 20000, (n_prompt,)).tolist()
    with torch.no_grad():
        t0 = time.perf_counter()
        tok = int(model.logits(model(ForwardBatch.build([SeqSpec(prompt, 0, 0, blocks)], block), cache))[-1].argmax())
        prefill_s = time.perf_counter() - t0
        steps = []
        for t in range(args.decode_steps):
            t0 = time.perf_counter()
            logits = model.logits(model(ForwardBatch.build([SeqSpec([tok], n_prompt + t, 0, blocks)], block), cache))
            tok = int(logits[-1].argmax())
            steps.append(time.perf_counter() - t0)
    peak_all = status("VmHWM") - before
    warm = steps[1:] or steps
    print(f"prefill {n_prompt} tokens {prefill_s:.2f} s; decode {args.decode_steps} steps: first {steps[0]:.2f} s, "
          f"then median {sorted(warm)[len(warm) // 2]:.2f} s/token; peak RSS with the cache {peak_all / GIB:.2f} GiB")
    return {"preset": args.random, "format": args.quantization, "layers": cfg.text.num_hidden_layers,
            "full_weights_gib": full / GIB, "weights_gib": weights / GIB,
            "build_peak_gib": peak / GIB, "run_peak_gib": peak_all / GIB, "build_s": build_s,
            "prefill_s": prefill_s, "decode_s": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--random", metavar="PRESET")
    p.add_argument("--quantization", choices=("int8", "int4"), default="int4")
    p.add_argument("--decode-steps", type=int, default=8)
    p.add_argument("--layers", type=int, default=0, help="--random: build only the first N decoder layers")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    if args.random:
        result = random_preset(args)
    elif args.memory:
        result = memory(args)
    else:
        print(f"model: {args.model}; {args.prompts} prompts x {args.prompt_len} tokens, greedy {args.gen}", flush=True)
        result = quality(args)
    print(json.dumps({"cpu": cpu_model(), **result}))


if __name__ == "__main__":
    main()
