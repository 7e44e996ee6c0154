"""Prefill and single-sequence decode: qwen35 against HF transformers, same checkpoint, same run.

    .venv/bin/python bench/bench_model.py [--model DIR | --preset dense-0.8b] [--dtypes bf16,fp32]
                                          [--threads 2] [--prompt-len 512] [--decode-tokens 64]

Prints one line per (engine, dtype) and the ratio ours / transformers; the last line is one JSON object.
Timings on a shared 2-core machine are noisy: compare the ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def checkpoint(args) -> Path:
    if args.model:
        return Path(args.model)
    from qwen35.config import preset
    from qwen35.default_model import cache_root
    from qwen35.loading.writer import write_random_checkpoint

    path = cache_root() / f"bench-{args.preset}"
    if not (path / "config.json").exists():
        print(f"writing a random {args.preset} checkpoint to {path} ...", file=sys.stderr)
        write_random_checkpoint(preset(args.preset), path, seed=0, tokenizer=False)
    return path


@torch.inference_mode()
def bench_ours(path: Path, dtype, prompt: list[int], n_decode: int) -> dict:
    from qwen35.engine.sampling_params import SamplingParams
    from qwen35.generate import GenerationStats, Generator
    from qwen35.loading.checkpoint import load_model

    model, _ = load_model(path, dtype=dtype, progress=False)
    gen = Generator(model, len(prompt) + n_decode + 1)
    for _ in gen.stream(prompt[:32], SamplingParams(temperature=0, max_tokens=4)):  # warm-up
        pass
    stats = GenerationStats()
    for _ in gen.stream(prompt, SamplingParams(temperature=0, max_tokens=n_decode + 1), stats=stats):
        pass
    del model, gen
    return {"prefill_tps": stats.prefill_tps, "decode_tps": stats.decode_tps}


@torch.inference_mode()
def bench_transformers(path: Path, dtype, prompt: list[int], n_decode: int) -> dict:
    import transformers

    cfg = json.loads((path / "config.json").read_text())
    cls = transformers.Qwen3_5MoeForCausalLM if "moe" in cfg["model_type"] else transformers.Qwen3_5ForCausalLM
    model = cls.from_pretrained(path, dtype=dtype).eval()
    ids = torch.tensor([prompt])
    model(ids[:, :32], use_cache=True)  # warm-up
    t0 = time.perf_counter()
    out = model(ids, use_cache=True)
    prefill = time.perf_counter() - t0
    pkv, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(n_decode):
        out = model(token, past_key_values=pkv, use_cache=True)
        pkv, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    decode = time.perf_counter() - t0
    del model
    return {"prefill_tps": len(prompt) / prefill, "decode_tps": n_decode / decode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--preset", default="dense-0.8b")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--skip-transformers", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = checkpoint(args)
    prompt = torch.randint(0, 200_000, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    results: dict = {"model": str(path), "threads": args.threads, "prompt_len": args.prompt_len,
                     "decode_tokens": args.decode_tokens}
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        ours = bench_ours(path, dtype, prompt, args.decode_tokens)
        print(f"qwen35       {name}: prefill {ours['prefill_tps']:8.1f} tok/s   decode {ours['decode_tps']:6.2f} tok/s")
        row = {"qwen35": ours}
        if not args.skip_transformers:
            hf = bench_transformers(path, dtype, prompt, args.decode_tokens)
            print(f"transformers {name}: prefill {hf['prefill_tps']:8.1f} tok/s   decode {hf['decode_tps']:6.2f} tok/s")
            row["transformers"] = hf
            row["ratio"] = {k: ours[k] / hf[k] for k in ours}
            print(f"ratio        {name}: prefill {row['ratio']['prefill_tps']:8.2f}x        "
                  f"decode {row['ratio']['decode_tps']:6.2f}x")
        results[name] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
