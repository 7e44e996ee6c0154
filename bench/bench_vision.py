"""One image through the vision tower and the prefill: qwen35 (through `LLM`, the path `serve` uses) against
HF transformers' `Qwen3_5ForConditionalGeneration`, same checkpoint, same run; then a second question about
the same image with the encoder and prefix caches warm.

    .venv/bin/python bench/bench_vision.py [--model DIR | --preset dense-0.8b] [--size 1024] [--dtype bf16]
                                           [--threads 2] [--repeats 2] [--skip-transformers]

Cases (each timed `--repeats` times after a warm-up, best kept):
- encode: the tower alone on the image (4096 patches for 1024x1024 -> 1024 tokens);
- cold: time to first token of a chat asking about the image, caches empty (encode + prefill + one step);
- warm: time to first token of the next turn about the same image (prefix cache and encoder cache warm).
Targets (issue 11): cold >= 1.5x transformers' forward over the same prompt; warm >= 10x faster than cold.
Prints the CPU model and measured read bandwidth; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_model import checkpoint  # noqa: E402
from machine import cpu_model, memory_bandwidth, timed  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def image(size: int) -> Image.Image:
    """A natural-ish test picture: smooth gradients plus noise (the content does not change the cost)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, (x + y) / 2], -1) * 200 + np.random.default_rng(0).integers(0, 55, (size, size, 3))
    return Image.fromarray(rgb.astype(np.uint8))


def bench_ours(path: Path, dtype: str, img: Image.Image, repeats: int) -> tuple[dict, list[int], object]:
    from qwen35.engine import LLM, SamplingParams
    from qwen35.multimodal.load import to_item
    from qwen35.tokenizer.chat_template import render_chat

    # max_num_seqs 4: room for a few prefix-cache entries (the turn boundary and the finished turn)
    llm = LLM(str(path), dtype=dtype, max_model_len=4096, max_num_seqs=4, max_num_batched_tokens=4096)
    item = to_item("image", img, llm.processor)
    engine, one = llm.engine, SamplingParams(max_tokens=1, temperature=0)
    q1 = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}]

    def ask(messages):
        text = render_chat(llm.tokenizer.chat_template, messages, add_generation_prompt=True, enable_thinking=False)
        return llm.generate({"prompt": text, "multi_modal_data": {"image": item}}, one)[0]

    def cold():
        engine.scheduler.prefix.clear()
        engine.runner.encoder_cache.clear()
        return ask(q1)

    def encode():
        engine.runner.encoder_cache.clear()
        with torch.inference_mode():
            engine.runner.encode([item])

    first = ask(q1)
    q2 = q1 + [{"role": "assistant", "content": first.outputs[0].text or "A picture."},
               {"role": "user", "content": "And what colour is its top left corner?"}]
    out = {"encode_s": timed(encode, repeats), "cold_ttft_s": timed(cold, repeats)}

    def warm():
        cold()  # the first turn fills both caches
        t = time.perf_counter()
        second = ask(q2)
        warm.seconds, warm.cached = time.perf_counter() - t, second.num_cached_tokens
    warm()
    times = []
    for _ in range(repeats):
        warm()
        times.append(warm.seconds)
    out["warm_ttft_s"], out["warm_cached_tokens"] = min(times), warm.cached
    out["prompt_tokens"] = len(first.prompt_token_ids)
    return out, first.prompt_token_ids, item


def bench_transformers(path: Path, dtype, ids: list[int], item, repeats: int) -> dict:
    import transformers

    model = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
    t = torch.tensor([ids])
    kinds = (t == 248056).int()  # <|image_pad|>
    pixels, grid = torch.from_numpy(item.pixels).to(dtype), torch.tensor([item.grid_thw])

    @torch.inference_mode()
    def encode():
        model.model.visual(pixels, grid_thw=grid)

    @torch.inference_mode()
    def forward():
        model(input_ids=t, mm_token_type_ids=kinds, pixel_values=pixels, image_grid_thw=grid, logits_to_keep=1)

    return {"encode_s": timed(encode, repeats), "cold_ttft_s": timed(forward, repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--preset", default="dense-0.8b")
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = checkpoint(args)
    cpu, bandwidth = cpu_model(), memory_bandwidth()
    print(f"cpu: {cpu}, {args.threads} threads; memory read bandwidth {bandwidth:.1f} GB/s (fp32 sum)")
    img = image(args.size)
    ours, ids, item = bench_ours(path, args.dtype, img, args.repeats)
    results = {"model": str(path), "cpu": cpu, "threads": args.threads, "bandwidth_gbs": round(bandwidth, 2),
               "dtype": args.dtype, "image": f"{args.size}x{args.size}", "grid_thw": list(item.grid_thw),
               "qwen35": ours}
    print(f"qwen35        encode {ours['encode_s']:7.3f} s   cold TTFT {ours['cold_ttft_s']:7.3f} s   "
          f"warm TTFT {ours['warm_ttft_s']:7.3f} s ({ours['warm_cached_tokens']} of the prompt cached)   "
          f"prompt {ours['prompt_tokens']} tokens")
    warm_x = ours["cold_ttft_s"] / ours["warm_ttft_s"]
    results["warm_speedup"] = round(warm_x, 2)
    print(f"warm vs cold: {warm_x:.1f}x faster (target >= 10x)   ({cpu}, {bandwidth:.1f} GB/s)")
    if not args.skip_transformers:
        hf = bench_transformers(path, DTYPES[args.dtype], ids, item, args.repeats)
        results["transformers"] = hf
        ratio = {k: round(hf[k] / ours[k], 2) for k in ("encode_s", "cold_ttft_s")}
        results["ratio"] = ratio
        print(f"transformers  encode {hf['encode_s']:7.3f} s   forward {hf['cold_ttft_s']:7.3f} s")
        print(f"ours vs transformers: encode {ratio['encode_s']:.2f}x, encode + prefill {ratio['cold_ttft_s']:.2f}x "
              f"(target >= 1.5x)   ({cpu}, {bandwidth:.1f} GB/s)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
