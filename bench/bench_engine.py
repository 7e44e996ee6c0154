"""Offline engine throughput and latency: qwen35's engine against llama.cpp (and HF transformers), same
checkpoint, same run.

    .venv/bin/python bench/bench_engine.py [--model DIR | --preset dense-0.8b|small-moe] [--dtype bf16]
        [--threads 2] [--cases single,batch8,batch32,prefill2048,chat] [--decode-tokens 32]
        [--quantization int8,int4|none] [--skip-transformers] [--skip-llama-cpp] [--quick]
        [--gguf BF16.gguf] [--gguf-q8_0 Q8_0.gguf] [--gguf-q4_0 Q4_0.gguf] [--llama-cpp-src DIR]

First the machine: CPU model and measured read bandwidth; then, for single-sequence decode, the bytes of
weights one token reads in each mode (bf16, int8 and int4 with their scales; lm_head included, the embedding
row lookup not; MoE: the top-k routed experts + the shared one) and the bandwidth bound tokens/s.

Cases: single-sequence decode, 8 and 32 concurrent sequences (total generated tokens/s after the first token,
as llama.cpp's rows time decode after the prompt; single decode on either side is the faster of two runs), a
2048-token prefill (prompt tokens/s), and the second turn of a chat with a ~2,000-token history (time to first
token with and without the prefix cache). Each runs on our engine in bf16 and in every `--quantization` mode
(`LLM(..., quantization="int8")`; a mode the engine rejects is reported unavailable and skipped), on
transformers (bf16) and on llama.cpp (single and prefill: llama-cpp-python runs one sequence at a time) with
the GGUF of the same precision: BF16 for bf16, Q8_0 for int8, Q4_0 for int4.

GGUFs not given are made once and cached next to the checkpoint (`<checkpoint>.BF16.gguf` ...): BF16 and Q8_0
with the convert_hf_to_gguf.py of llama-cpp-python's own sdist (`--no-mtp`: llama.cpp's decode does not use
the MTP head), Q4_0 from the BF16 GGUF with llama.cpp's quantiser (`llama_model_quantize`, `pure`: every
matrix Q4_0, the output/lm_head too, as our int4 does; llama.cpp's default would keep it Q6_K).

The issue-10 targets are printed as ratios with their target; the last line is one JSON object holding the
machine, the bytes and bounds, every row and the ratios. `--quick` is a smoke run (4 decode tokens, short
prompts, a 256-token prefill); its numbers are not measurements.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import DTYPES, QUANT_FORMATS, checkpoint, decode_weight_bytes  # noqa: E402
from machine import cache_root, cpu_model, memory_bandwidth  # noqa: E402

GGUF_TYPES = {"bf16": "BF16", "int8": "Q8_0", "int4": "Q4_0"}
LLAMA_CASES = ("single", "prefill2048")
QUANT_CASES_SKIPPED = ("chat",)  # prefix-cache TTFT: the same with any weight format
MOE_GGUF_EXPERTS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_up_exps")


class Sizes:
    """Prompt and decode lengths: the real bench, or `--quick`'s smoke run."""

    def __init__(self, quick: bool, decode_tokens: int | None) -> None:
        self.decode = decode_tokens or (4 if quick else 32)
        self.decode_prompt = 16 if quick else 64
        self.prefill = 256 if quick else 2048
        self.chat_facts = 20 if quick else 190


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 200_000, (length,), generator=gen).tolist() for _ in range(n)]


# ---------------------------------------------------------------------------------------------- our engine

def make_llm(path: Path, args, mode: str):
    """Our engine in `mode` (a dtype name, or a quantization); None when the engine does not offer it."""
    from qwen35.engine import LLM

    kwargs = dict(dtype=args.dtype, max_model_len=4096, max_num_seqs=32, max_num_batched_tokens=2048,
                  kv_cache_memory=(1 if args.quick else 3) << 30, threads=args.threads)
    if mode in QUANT_FORMATS:
        kwargs["quantization"] = mode
    try:
        return LLM(str(path), **kwargs)
    except (TypeError, ValueError, NotImplementedError) as e:
        if mode not in QUANT_FORMATS:
            raise
        print(f"qwen35 {mode}: unavailable in this engine ({type(e).__name__}: {e}); skipped", flush=True)
        return None


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ours_case(llm, case: str, sizes: Sizes) -> dict:
    from qwen35.engine import SamplingParams

    if case.startswith("batch") or case == "single":
        n = 1 if case == "single" else int(case[5:])
        prompts = _prompts(n, sizes.decode_prompt, seed=n)
        first = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
        llm.generate(prompts, first)  # warm-up
        # decode only, as the llama.cpp rows time it (after the prompt): the same request with and without
        # `decode` more tokens, each the faster of two runs
        t_first = min(_timed(lambda: llm.generate(prompts, first)) for _ in range(2))
        longer = SamplingParams(temperature=0, max_tokens=sizes.decode + 1, ignore_eos=True)
        runs = [_timed(lambda: llm.generate(prompts, longer)) for _ in range(2)]
        dt = min(runs) - t_first
        return {"tokens_per_s": n * sizes.decode / dt, "seconds": dt, "first_token_seconds": t_first}
    if case == "prefill2048":
        prompt = _prompts(1, sizes.prefill, seed=7)[0]
        llm.generate([prompt[:32]], SamplingParams(temperature=0, max_tokens=1))  # warm-up
        t0 = time.perf_counter()
        llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1))
        dt = time.perf_counter() - t0
        return {"prompt_tokens_per_s": sizes.prefill / dt, "seconds": dt, "prompt_tokens": sizes.prefill}
    if case == "chat":
        return chat_case(llm, sizes)
    raise ValueError(f"unknown case {case!r}")


def chat_case(llm, sizes: Sizes) -> dict:
    """Turn 2 of a chat whose history is ~2,000 tokens: TTFT with the prefix cache warm from turn 1."""
    from qwen35.engine import SamplingParams
    from qwen35.tokenizer.chat_template import render_chat

    tok = llm.tokenizer
    filler = " ".join(f"fact {i}: the value of item {i} is {i * 7 % 97}." for i in range(sizes.chat_facts))
    turn1 = [{"role": "system", "content": "You are a careful assistant."},
             {"role": "user", "content": filler + "\nSummarise the facts."}]
    one = SamplingParams(temperature=0, max_tokens=1)
    r1 = llm.chat(turn1, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
                  chat_template_kwargs={"enable_thinking": False})[0]
    turn2 = turn1 + [{"role": "assistant", "content": r1.outputs[0].text},
                     {"role": "user", "content": "And the value of item 42?"}]
    prompt = llm.engine.tokenizer.encode(render_chat(tok.chat_template, turn2, enable_thinking=False))
    t0 = time.perf_counter()
    hit = llm.generate([prompt], one)[0]
    warm = time.perf_counter() - t0
    llm.engine.scheduler.prefix.clear()
    t0 = time.perf_counter()
    llm.generate([prompt], one)
    cold = time.perf_counter() - t0
    return {"history_tokens": len(prompt), "cached_tokens": hit.num_cached_tokens, "ttft_cached_s": warm,
            "ttft_uncached_s": cold, "speedup": cold / warm}


# ---------------------------------------------------------------------------------------------- transformers

@torch.inference_mode()
def hf_case(model, case: str, sizes: Sizes) -> dict:
    if case.startswith("batch") or case == "single":
        n = 1 if case == "single" else int(case[5:])
        ids = torch.tensor(_prompts(n, sizes.decode_prompt, seed=n))
        model.generate(ids, max_new_tokens=2, do_sample=False)
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=sizes.decode, min_new_tokens=sizes.decode, do_sample=False)
        dt = time.perf_counter() - t0
        return {"tokens_per_s": (out.shape[1] - ids.shape[1]) * n / dt, "seconds": dt}
    if case == "prefill2048":
        ids = torch.tensor(_prompts(1, sizes.prefill, seed=7))
        t0 = time.perf_counter()
        model(ids, logits_to_keep=1)
        dt = time.perf_counter() - t0
        return {"prompt_tokens_per_s": sizes.prefill / dt, "seconds": dt, "prompt_tokens": sizes.prefill}
    return {}


def load_transformers(path: Path, dtype):
    import transformers

    moe = "moe" in json.loads((path / "config.json").read_text())["model_type"]
    cls = transformers.Qwen3_5MoeForCausalLM if moe else transformers.Qwen3_5ForCausalLM
    return cls.from_pretrained(path, dtype=dtype).eval()


# ---------------------------------------------------------------------------------------------- llama.cpp

def llama_cpp_source(explicit: str | None) -> Path:
    """The llama.cpp tree of llama-cpp-python's sdist (same version as the installed library): its
    convert_hf_to_gguf.py, conversion/ and gguf-py/. Fetched once with pip and cached."""
    if explicit:
        return Path(explicit)
    import llama_cpp

    version = llama_cpp.__version__
    root = cache_root() / f"llama-cpp-python-{version}-src"
    if (root / "convert_hf_to_gguf.py").exists():
        return root
    print(f"fetching llama-cpp-python {version}'s sdist for its GGUF converter ...", flush=True)
    keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True, capture_output=True)
        tarball = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=root.name + "."))
        with tarfile.open(tarball) as tar:
            for member in tar:
                inner = member.name.split("/", 1)[1] if "/" in member.name else ""
                rel = inner.removeprefix("vendor/llama.cpp/")
                if (not member.isfile() or not inner.startswith("vendor/llama.cpp/") or not rel.startswith(keep)
                        or ".." in Path(rel).parts):
                    continue
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
        os.replace(staging, root)
    return root


def make_gguf(path: Path, qtype: str, src: Path, threads: int) -> Path:
    """`<checkpoint>.<qtype>.gguf`, made when missing or older than the checkpoint's config.json."""
    out = path.parent / f"{path.name}.{qtype}.gguf"
    if out.exists() and out.stat().st_mtime >= (path / "config.json").stat().st_mtime:
        return out
    part = out.with_name(out.name + ".part")
    t0 = time.perf_counter()
    if qtype in ("BF16", "Q8_0"):
        cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(path), "--outtype", qtype.lower(),
               "--outfile", str(part), "--no-mtp"]
    elif qtype == "Q4_0":
        bf16 = make_gguf(path, "BF16", src, threads)
        code = ("import sys, llama_cpp as l\n"
                "p = l.llama_model_quantize_default_params()\n"
                f"p.nthread = {threads}; p.ftype = l.LLAMA_FTYPE_MOSTLY_Q4_0; p.pure = True\n"
                "sys.exit(l.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), l.byref(p)))\n")
        cmd = [sys.executable, "-c", code, str(bf16), str(part)]
    else:
        raise ValueError(qtype)
    print(f"making {out.name} ...", flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        part.unlink(missing_ok=True)
        raise RuntimeError(f"making {out} failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    os.replace(part, out)
    print(f"made {out} ({out.stat().st_size / 1e9:.2f} GB, {time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def gguf_decode_bytes(gguf: Path, src: Path | None, experts_used: int, experts: int) -> float | None:
    """Bytes one llama.cpp decode step reads, from the GGUF's own tensor sizes: all but token_embd (unless
    it is also the output matrix), routed expert tensors scaled to the experts a token uses."""
    if src is not None and str(src / "gguf-py") not in sys.path:
        sys.path.insert(0, str(src / "gguf-py"))
    try:
        import gguf as gguf_py
    except ImportError:
        return None
    tensors = gguf_py.GGUFReader(str(gguf)).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    total = 0.0
    for t in tensors:
        if t.name == "token_embd.weight" and not tied:
            continue
        n = float(t.n_bytes)
        if any(f".{kind}." in t.name for kind in MOE_GGUF_EXPERTS):
            n *= experts_used / experts
        total += n
    return total


def llamacpp_case(llm, case: str, sizes: Sizes) -> dict:
    if case == "single":  # the faster of two runs, as ours
        prompt = _prompts(1, sizes.decode_prompt, seed=1)[0]
        runs = []
        for _ in range(2):
            llm.reset()
            llm.eval(prompt)
            t0 = time.perf_counter()
            for _ in range(sizes.decode):
                llm.eval([llm.sample(temp=0)])
            runs.append(time.perf_counter() - t0)
        dt = min(runs)
        return {"tokens_per_s": sizes.decode / dt, "seconds": dt}
    if case == "prefill2048":
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(_prompts(1, sizes.prefill, seed=7)[0])
        dt = time.perf_counter() - t0
        return {"prompt_tokens_per_s": sizes.prefill / dt, "seconds": dt, "prompt_tokens": sizes.prefill}
    return {}


# ---------------------------------------------------------------------------------------------- report

def _value(results: dict, case: str, row: str) -> float | None:
    r = results["cases"].get(case, {}).get(row)
    if not r:
        return None
    return r.get("tokens_per_s", r.get("prompt_tokens_per_s"))


def targets(results: dict, modes: list[str], dtype: str, moe: bool) -> list[dict]:
    """Issue 10's goals as ratios: value, target (None: reported, no number set) and whether it is met."""
    out: list[dict] = []

    def add(name: str, num: float | None, den: float | None, target: float | None, why: str = "") -> None:
        """`why`: "numerator row|denominator row", named as missing when it did not run."""
        value = num / den if num and den else None
        missing = ", ".join(w for w, v in zip(why.split("|"), (num, den)) if not v)
        out.append({"name": name, "value": value, "target": target,
                    "met": None if value is None or target is None else value >= target,
                    **({"missing": f"not run: {missing}"} if value is None else {})})

    single = _value(results, "single", "qwen35")
    llama_bf16 = _value(results, "single", f"llama.cpp {GGUF_TYPES.get(dtype, 'BF16')}")
    if moe:
        add(f"MoE {dtype} single decode / llama.cpp BF16", single, llama_bf16, 1.5, "qwen35 single|llama.cpp BF16 single")
    else:
        add(f"{dtype} single decode / llama.cpp BF16", single, llama_bf16, None, "qwen35 single|llama.cpp BF16 single")
    bound = results["bytes_per_token"].get(dtype, {}).get("bound_tokens_per_s")
    add(f"{dtype} single decode / (0.85 x bandwidth bound)", single, 0.85 * bound if bound else None, 1.0,
        "qwen35 single|bound")
    for mode in (m for m in modes if m in QUANT_FORMATS):
        add(f"{mode} single decode / llama.cpp {GGUF_TYPES[mode]}", _value(results, "single", f"qwen35 {mode}"),
            _value(results, "single", f"llama.cpp {GGUF_TYPES[mode]}"), 1.2,
            f"qwen35 {mode} single|llama.cpp {GGUF_TYPES[mode]} single")
    for mode in modes:
        row = "qwen35" if mode == dtype else f"qwen35 {mode}"
        add(f"{mode} batch8 total decode / {mode} single decode", _value(results, "batch8", row),
            _value(results, "single", row), 4.0, f"{row} batch8|{row} single")
    add(f"{dtype} prefill2048 / llama.cpp BF16", _value(results, "prefill2048", "qwen35"),
        _value(results, "prefill2048", "llama.cpp BF16"), 1.5, "qwen35 prefill2048|llama.cpp BF16 prefill2048")
    return out


def record(results: dict, case: str, row: str, r: dict, ref: str | None = None) -> None:
    results["cases"].setdefault(case, {})[row] = r
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    extra = ""
    if ref and r:
        key = next(iter(r))
        base = results["cases"][case].get(ref, {}).get(key)
        if base:
            extra = f"   {ref} / {row}: {base / r[key]:.2f}x"
    print(f"{row:20s} {case:12s} {shown}{extra}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--preset", default="dense-0.8b")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default="single,batch8,batch32,prefill2048,chat")
    p.add_argument("--decode-tokens", type=int, default=None, help="default 32 (4 with --quick)")
    p.add_argument("--quantization", default="int8,int4",
                   help="our weight-only modes to run besides --dtype, comma-separated (int8, int4), or none")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 decode tokens, short prompts")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--skip-llama-cpp", action="store_true")
    p.add_argument("--gguf", default=None, help="BF16 GGUF of the same checkpoint (default: made and cached)")
    p.add_argument("--gguf-q8_0", default=None, help="Q8_0 GGUF (default: made and cached)")
    p.add_argument("--gguf-q4_0", default=None, help="Q4_0 GGUF (default: made and cached)")
    p.add_argument("--llama-cpp-src", default=None,
                   help="llama.cpp tree with convert_hf_to_gguf.py (default: llama-cpp-python's sdist, cached)")
    p.add_argument("--llama-worker", default=None, help=argparse.SUPPRESS)  # internal: one GGUF's rows
    p.add_argument("--no-extra-bufts", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.llama_worker:
        torch.set_num_threads(args.threads)
        return llama_worker_main(args)
    quant = [] if args.quantization in ("", "none") else args.quantization.split(",")
    for q in quant:
        if q not in QUANT_FORMATS:
            p.error(f"--quantization: {q!r} is not one of {QUANT_FORMATS}")
    modes = [args.dtype] + quant
    sizes = Sizes(args.quick, args.decode_tokens)
    cases = args.cases.split(",")
    torch.set_num_threads(args.threads)

    cpu, bandwidth = cpu_model(), memory_bandwidth()
    print(f"machine: {cpu}, {args.threads} threads, read bandwidth {bandwidth:.1f} GB/s (fp32 sum)", flush=True)
    path = checkpoint(args)
    if not (path / "tokenizer.json").exists():
        from qwen35.tokenizer import Tokenizer

        Tokenizer.from_vocab().save(path)
    from qwen35.config import ModelConfig

    text = ModelConfig.from_file(path).text
    results: dict = {
        "machine": {"cpu": cpu, "threads": args.threads, "bandwidth_gbs": round(bandwidth, 2)},
        "model": str(path), "moe": text.is_moe, "dtype": args.dtype, "quick": args.quick,
        "decode_tokens": sizes.decode, "decode_prompt_tokens": sizes.decode_prompt, "prefill_tokens": sizes.prefill,
        "bytes_per_token": {}, "cases": {}, "unavailable": [],
    }
    print("single-sequence decode, weights read per token (lm_head in, embedding lookup out"
          + (f", {text.num_experts_per_tok} of {text.num_experts} routed experts + shared" if text.is_moe else "")
          + "):", flush=True)
    for mode in modes:
        nbytes = decode_weight_bytes(text, DTYPES.get(mode, mode))
        bound = bandwidth * 1e9 / nbytes
        results["bytes_per_token"][mode] = {"bytes": int(nbytes), "bound_tokens_per_s": bound}
        print(f"  {mode:5s} {nbytes / 1e9:7.3f} GB/token   bound {bound:7.2f} tok/s", flush=True)

    ran: list[str] = []
    for mode in modes:
        llm = make_llm(path, args, mode)
        if llm is None:
            results["unavailable"].append(f"qwen35 {mode}")
            continue
        ran.append(mode)
        row = "qwen35" if mode == args.dtype else f"qwen35 {mode}"
        for case in cases:
            if mode in QUANT_FORMATS and case in QUANT_CASES_SKIPPED:
                continue
            record(results, case, row, ours_case(llm, case, sizes), None if mode == args.dtype else "qwen35")
        del llm
        gc.collect()
    for mode in ran:  # fraction of the bandwidth bound
        tps = _value(results, "single", "qwen35" if mode == args.dtype else f"qwen35 {mode}")
        if tps:
            b = results["bytes_per_token"][mode]
            b["qwen35_fraction_of_bound"] = tps / b["bound_tokens_per_s"]
            print(f"qwen35 {mode} single decode: {tps:.2f} tok/s = {b['qwen35_fraction_of_bound']:.0%} of the "
                  f"bound {b['bound_tokens_per_s']:.2f}", flush=True)

    if not args.skip_transformers:
        model = load_transformers(path, DTYPES[args.dtype])
        for case in cases:
            hf = hf_case(model, case, sizes)
            if hf:
                record(results, case, "transformers", hf, "qwen35")
        del model
        gc.collect()

    if not args.skip_llama_cpp:
        run_llama_cpp(args, path, text, modes, cases, sizes, results, bandwidth)

    results["targets"] = targets(results, modes, args.dtype, text.is_moe)
    print(f"targets ({cpu}, {args.threads} threads, {bandwidth:.1f} GB/s"
          + (", --quick: not measurements" if args.quick else "") + "):", flush=True)
    for t in results["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}x"
        goal = "reported" if t["target"] is None else f"target {t['target']}x"
        verdict = "" if t["met"] is None else ("  met" if t["met"] else "  NOT met")
        print(f"  {t['name']:55s} {value:>8s}   {goal}{verdict}" + (f"  ({t['missing']})" if "missing" in t else ""))
    print(json.dumps(results))


def run_llama_cpp(args, path: Path, text, modes: list[str], cases: list[str], sizes: Sizes, results: dict,
                  bandwidth: float) -> None:
    """llama.cpp rows for every mode asked for, ours available or not (its numbers are the reference). Each
    GGUF runs in its own process: a crash in llama.cpp (its AMX kernels segfault on quantised weights on some
    Xeons in 0.3.36) costs that row a retry without llama.cpp's extra buffer types (AMX, CPU repack), not
    the bench."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        print(f"llama.cpp: llama_cpp not importable ({e}); no llama.cpp rows", flush=True)
        results["unavailable"].append("llama.cpp")
        return
    given = {"BF16": args.gguf, "Q8_0": args.gguf_q8_0, "Q4_0": args.gguf_q4_0}
    src = Path(args.llama_cpp_src) if args.llama_cpp_src else None
    for mode in modes:
        qtype = GGUF_TYPES.get(mode)
        if qtype is None:  # e.g. --dtype fp32: no GGUF counterpart
            continue
        if given[qtype]:
            gguf = Path(given[qtype])
        else:
            src = src or llama_cpp_source(None)
            gguf = make_gguf(path, qtype, src, args.threads)
        row = f"llama.cpp {qtype}"
        llama_cases = [c for c in cases if c in LLAMA_CASES]
        rows, note = llama_worker(gguf, llama_cases, args, extra_bufts=True)
        if rows is None:
            print(f"{row}: llama.cpp crashed ({note}); rerunning without its extra buffer types (AMX, repack)",
                  flush=True)
            rows, note2 = llama_worker(gguf, llama_cases, args, extra_bufts=False)
            if rows is None:
                print(f"{row}: llama.cpp failed again ({note2}); no {row} rows", flush=True)
                results["unavailable"].append(f"{row} ({note}; {note2})")
                continue
            results.setdefault("notes", []).append(f"{row}: default run crashed ({note}); measured with "
                                                   "use_extra_bufts=False (no AMX, no CPU repack)")
        ours = "qwen35" if mode == args.dtype else f"qwen35 {mode}"
        for case in llama_cases:
            record(results, case, row, rows[case], ours)
        nbytes = gguf_decode_bytes(gguf, src, text.num_experts_per_tok, text.num_experts)
        tps = _value(results, "single", row)
        if nbytes:
            b = results["bytes_per_token"].setdefault(mode, {})
            b[f"{row} bytes"] = int(nbytes)
            if tps:
                b[f"{row} fraction_of_bound"] = tps * nbytes / (bandwidth * 1e9)
                print(f"{row} single decode: {tps:.2f} tok/s, {nbytes / 1e9:.3f} GB/token = "
                      f"{b[f'{row} fraction_of_bound']:.0%} of its bound", flush=True)


def llama_worker(gguf: Path, cases: list[str], args, extra_bufts: bool) -> tuple[dict | None, str]:
    """Run the llama.cpp cases on `gguf` in a fresh process: (rows, "") or (None, why it failed)."""
    cmd = [sys.executable, __file__, "--llama-worker", str(gguf), "--cases", ",".join(cases),
           "--threads", str(args.threads)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--decode-tokens", str(args.decode_tokens)] if args.decode_tokens else []
    cmd += [] if extra_bufts else ["--no-extra-bufts"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        why = f"signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}: {r.stderr[-500:]}"
        return None, why
    return json.loads(r.stdout.strip().splitlines()[-1]), ""


def llama_worker_main(args) -> None:
    import llama_cpp
    import llama_cpp.llama as llama_module

    if args.no_extra_bufts:  # Llama() has no argument for it: set it in the params it starts from
        default = llama_module.llama_cpp.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        llama_module.llama_cpp.llama_model_default_params = params
    sizes = Sizes(args.quick, args.decode_tokens)
    ref = llama_cpp.Llama(args.llama_worker, n_ctx=4096, n_threads=args.threads, n_threads_batch=args.threads,
                          n_batch=2048, n_ubatch=512, verbose=False)
    ref.reset()
    ref.eval(_prompts(1, 16, seed=0)[0])  # warm-up
    print(json.dumps({case: llamacpp_case(ref, case, sizes) for case in args.cases.split(",")}))


if __name__ == "__main__":
    main()
