"""Offline engine throughput and latency: qwen35's engine against HF transformers `generate`, same checkpoint.

    .venv/bin/python bench/bench_engine.py [--model DIR | --preset dense-0.8b] [--dtype bf16] [--threads 2]
        [--cases single,batch8,batch32,prefill2048,chat] [--decode-tokens 32] [--skip-transformers]
        [--gguf MODEL.gguf]

Cases: single-sequence decode, 8 and 32 concurrent sequences (total generated tokens/s), a 2048-token prefill
(prompt tokens/s), and the second turn of a chat with a ~2,000-token history (time to first token with and
without the prefix cache). Ratios ours / transformers are printed; the last line is one JSON object.

With `--gguf` (a BF16 GGUF of the same checkpoint, made with the convert_hf_to_gguf.py that llama-cpp-python's
sdist ships) and `llama_cpp` importable, llama.cpp runs the single-sequence and prefill cases too.
llama-cpp-python's API runs one sequence at a time, so it has no batch rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import DTYPES, checkpoint  # noqa: E402
from machine import describe  # noqa: E402


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 200_000, (length,), generator=gen).tolist() for _ in range(n)]


def ours_case(llm, case: str, n_decode: int) -> dict:
    from qwen35.engine import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=n_decode, ignore_eos=True)
    if case.startswith("batch") or case == "single":
        n = 1 if case == "single" else int(case[5:])
        prompts = _prompts(n, 64, seed=n)
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))  # warm-up, prefill
        t0 = time.perf_counter()
        outs = llm.generate(prompts, greedy)
        dt = time.perf_counter() - t0
        toks = sum(len(o.outputs[0].token_ids) for o in outs)
        return {"tokens_per_s": toks / dt, "seconds": dt}
    if case == "prefill2048":
        prompt = _prompts(1, 2048, seed=7)[0]
        t0 = time.perf_counter()
        llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1))
        dt = time.perf_counter() - t0
        return {"prompt_tokens_per_s": 2048 / dt, "seconds": dt}
    if case == "chat":
        return chat_case(llm)
    raise ValueError(case)


def chat_case(llm) -> dict:
    """Turn 2 of a chat whose history is ~2,000 tokens: TTFT with the prefix cache warm from turn 1."""
    from qwen35.engine import SamplingParams

    tok = llm.tokenizer
    filler = " ".join(f"fact {i}: the value of item {i} is {i * 7 % 97}." for i in range(190))
    turn1 = [{"role": "system", "content": "You are a careful assistant."},
             {"role": "user", "content": filler + "\nSummarise the facts."}]
    one = SamplingParams(temperature=0, max_tokens=1)
    r1 = llm.chat(turn1, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                  chat_template_kwargs={"enable_thinking": False})[0]
    turn2 = turn1 + [{"role": "assistant", "content": r1.outputs[0].text},
                     {"role": "user", "content": "And the value of item 42?"}]
    prompt = llm.engine.tokenizer.encode(
        __import__("qwen35.tokenizer.chat_template", fromlist=["render_chat"]).render_chat(
            tok.chat_template, turn2, enable_thinking=False))
    t0 = time.perf_counter()
    hit = llm.generate([prompt], one)[0]
    warm = time.perf_counter() - t0
    llm.engine.scheduler.prefix.clear()
    t0 = time.perf_counter()
    llm.generate([prompt], one)
    cold = time.perf_counter() - t0
    return {"history_tokens": len(prompt), "cached_tokens": hit.num_cached_tokens, "ttft_cached_s": warm,
            "ttft_uncached_s": cold, "speedup": cold / warm}


@torch.inference_mode()
def hf_case(model, case: str, n_decode: int) -> dict:
    if case.startswith("batch") or case == "single":
        n = 1 if case == "single" else int(case[5:])
        ids = torch.tensor(_prompts(n, 64, seed=n))
        model.generate(ids, max_new_tokens=2, do_sample=False)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n_decode, min_new_tokens=n_decode, do_sample=False)
        dt = time.perf_counter() - t0
        return {"tokens_per_s": (out.shape[1] - ids.shape[1]) * n / dt, "seconds": dt}
    if case == "prefill2048":
        ids = torch.tensor(_prompts(1, 2048, seed=7))
        t0 = time.perf_counter()
        model(ids, logits_to_keep=1)
        dt = time.perf_counter() - t0
        return {"prompt_tokens_per_s": 2048 / dt, "seconds": dt}
    return {}


def llamacpp_case(llm, case: str, n_decode: int) -> dict:
    if case == "single":
        prompt = _prompts(1, 64, seed=1)[0]
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(n_decode):
            llm.eval([llm.sample(temp=0)])
        return {"tokens_per_s": n_decode / (time.perf_counter() - t0)}
    if case == "prefill2048":
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(_prompts(1, 2048, seed=7)[0])
        return {"prompt_tokens_per_s": 2048 / (time.perf_counter() - t0)}
    return {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--preset", default="dense-0.8b")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default="single,batch8,batch32,prefill2048,chat")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--gguf", default=None, help="BF16 GGUF of the same checkpoint, for llama.cpp rows")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}", flush=True)
    path = checkpoint(args)
    if not (path / "tokenizer.json").exists():
        from qwen35.tokenizer import Tokenizer

        Tokenizer.from_vocab().save(path)
    cases = args.cases.split(",")
    from qwen35.engine import LLM

    llm = LLM(str(path), dtype=args.dtype, max_model_len=4096, max_num_seqs=32, max_num_batched_tokens=2048,
              kv_cache_memory=3 << 30)
    results: dict = {"model": str(path), "dtype": args.dtype, "threads": args.threads}
    for case in cases:
        results[case] = {"qwen35": ours_case(llm, case, args.decode_tokens)}
        print(f"qwen35       {case:12s} {results[case]['qwen35']}", flush=True)
    del llm
    if not args.skip_transformers:
        import transformers

        model = transformers.Qwen3_5ForCausalLM.from_pretrained(path, dtype=DTYPES[args.dtype]).eval()
        for case in cases:
            hf = hf_case(model, case, args.decode_tokens)
            if not hf:
                continue
            results[case]["transformers"] = hf
            key = next(iter(hf))
            ratio = results[case]["qwen35"][key] / hf[key]
            results[case]["ratio"] = ratio
            print(f"transformers {case:12s} {hf}   ratio {ratio:.2f}x", flush=True)
    if args.gguf:
        import llama_cpp

        ref = llama_cpp.Llama(args.gguf, n_ctx=4096, n_threads=args.threads, n_batch=2048, n_ubatch=512,
                              verbose=False)
        ref.reset()
        ref.eval(_prompts(1, 16, seed=0)[0])  # warm-up
        for case in cases:
            lc = llamacpp_case(ref, case, args.decode_tokens)
            if not lc:
                continue
            key = next(iter(lc))
            results[case]["llama.cpp"] = lc
            results[case]["ratio_llama.cpp"] = results[case]["qwen35"][key] / lc[key]
            print(f"llama.cpp    {case:12s} {lc}   ratio {results[case]['ratio_llama.cpp']:.2f}x", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
