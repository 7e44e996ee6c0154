"""Prefill and single-sequence decode: qwen35 (through `LLMEngine`, the path `generate` and `serve` use)
against HF transformers, same checkpoint, same run.

    .venv/bin/python bench/bench_model.py [--model DIR | --preset dense-0.8b] [--dtypes bf16,fp32]
                                          [--threads 2] [--prompt-len 256] [--decode-tokens 64]

Prints the CPU model and the measured memory read bandwidth, one line per (engine, dtype), the ratio
ours / transformers and our decode MBU (weight bytes read per token x tok/s / measured bandwidth); the last
line is one JSON object. Warm-up runs are excluded. Timings on a shared 2-core machine are noisy: compare the
ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import cache_root, cpu_model, memory_bandwidth  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def checkpoint(args) -> Path:
    if args.model:
        return Path(args.model)
    from qwen35.config import preset
    from qwen35.loading.writer import write_random_checkpoint

    path = cache_root() / f"bench-{args.preset}"
    if not (path / "config.json").exists():
        print(f"writing a random {args.preset} checkpoint to {path} ...", file=sys.stderr)
        write_random_checkpoint(preset(args.preset), path, seed=0, tokenizer=False)
    return path


QUANT_FORMATS = ("int8", "int4")
INT4_GROUP = 32  # qwen35.ops.quant.INT4_GROUP (llama.cpp's Q4_0 block)


def matrix_bytes(n: int, k: int, fmt) -> float:
    """Bytes of an [n, k] weight matrix stored as `fmt`: a torch dtype, "int8" (int8 + one fp32 scale per row)
    or "int4" (two weights a byte + one fp16 scale per group of 32: 4.5 bits a weight, as llama.cpp's Q4_0)."""
    if fmt == "int8":
        return n * k + 4 * n
    if fmt == "int4":
        return n * k / 2 + 2 * n * k / INT4_GROUP
    return n * k * torch.empty((), dtype=fmt).element_size()


def decode_weight_bytes(t, fmt) -> float:
    """Bytes of weights one single-sequence decode step reads, for a TextConfig `t` whose projections are
    stored as `fmt` (see matrix_bytes). Counted: every projection of every layer, the lm_head (with tied
    embeddings the embedding matrix, read whole as the lm_head); of the routed experts only the top-k a token
    uses (plus the shared expert). Not counted: the embedding row lookup of an untied model. The router and
    shared-expert gate, norms, conv and gate vectors stay in the activation dtype (bf16) in every mode."""
    from qwen35.loading.names import FUSED_EXPERTS, LM_HEAD, text_tensors

    plain = torch.bfloat16 if fmt in QUANT_FORMATS else fmt
    total = 0.0
    for name, shape in text_tensors(t):
        if name.endswith("embed_tokens.weight"):
            if t.tie_word_embeddings:  # the lm_head reads it whole
                total += matrix_bytes(*shape, fmt)
            continue
        if name.endswith(FUSED_EXPERTS):  # [E, N, K]: only the routed experts a token uses
            e, n, k = shape
            total += t.num_experts_per_tok * matrix_bytes(n, k, fmt)
            continue
        if name == LM_HEAD or (len(shape) == 2 and "proj" in name.split(".")[-2]):  # q_proj, in_proj_qkv, ...
            total += matrix_bytes(*shape, fmt)
            continue
        total += matrix_bytes(1, math.prod(shape), plain)
    return total


def weight_bytes_per_token(path: Path, dtype) -> int:
    """decode_weight_bytes for the checkpoint at `path`."""
    from qwen35.config import ModelConfig

    return int(decode_weight_bytes(ModelConfig.from_file(path).text, dtype))


def bench_ours(path: Path, dtype, prompt: list[int], n_decode: int, threads: int) -> dict:
    """One request at a time through the engine: a warm-up request, then the timed one. Prefill is the
    step that computes the prompt and samples the first token; decode is every later step."""
    from qwen35.engine import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(model=str(path), dtype=DTYPE_NAMES[dtype], max_model_len=len(prompt) + n_decode + 1,
                                    max_num_seqs=1, max_num_batched_tokens=max(2048, len(prompt)),
                                    enable_prefix_caching=False, threads=threads))

    def run(ids: list[int], max_tokens: int) -> list[float]:
        engine.add_request(f"bench-{len(ids)}-{max_tokens}", ids,
                           SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
        steps = []
        while engine.has_unfinished():
            t0 = time.perf_counter()
            engine.step()
            steps.append(time.perf_counter() - t0)
        return steps

    run(prompt[:32], 4)  # warm-up
    steps = run(prompt, n_decode + 1)
    assert len(steps) == n_decode + 1, f"expected one prefill step and {n_decode} decode steps, got {len(steps)}"
    del engine
    return {"prefill_tps": len(prompt) / steps[0], "decode_tps": n_decode / sum(steps[1:])}


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
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--skip-transformers", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    path = checkpoint(args)
    prompt = torch.randint(0, 200_000, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    cpu, bandwidth = cpu_model(), memory_bandwidth()
    print(f"cpu: {cpu}, {args.threads} threads; memory read bandwidth {bandwidth:.1f} GB/s (fp32 sum)")
    results: dict = {"model": str(path), "cpu": cpu, "threads": args.threads, "bandwidth_gbs": round(bandwidth, 2),
                     "prompt_len": args.prompt_len, "decode_tokens": args.decode_tokens}
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        ours = bench_ours(path, dtype, prompt, args.decode_tokens, args.threads)
        wbytes = weight_bytes_per_token(path, dtype)
        ours["mbu"] = ours["decode_tps"] * wbytes / (bandwidth * 1e9)
        print(f"qwen35       {name}: prefill {ours['prefill_tps']:8.1f} tok/s   decode {ours['decode_tps']:6.2f} tok/s"
              f"   MBU {ours['mbu']:.0%} ({wbytes / 1e9:.2f} GB/token)")
        row = {"qwen35": ours}
        if not args.skip_transformers:
            hf = bench_transformers(path, dtype, prompt, args.decode_tokens)
            print(f"transformers {name}: prefill {hf['prefill_tps']:8.1f} tok/s   decode {hf['decode_tps']:6.2f} tok/s")
            row["transformers"] = hf
            row["ratio"] = {k: ours[k] / hf[k] for k in ("prefill_tps", "decode_tps")}
            print(f"ratio        {name}: prefill {row['ratio']['prefill_tps']:8.2f}x        "
                  f"decode {row['ratio']['decode_tps']:6.2f}x   ({cpu}, {bandwidth:.1f} GB/s)")
        results[name] = row
    print(json.dumps(results))


if __name__ == "__main__":
    main()
