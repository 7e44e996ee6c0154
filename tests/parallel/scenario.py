"""One engine scenario, run by the tensor-parallel tests in a process of its own (rank 0 starts rank 1 and,
on a lost rank, ends its process): prefill in chunks, decode, a prefix-cache hit and MTP drafting, greedy,
with prompt and sampled logprobs; the same on one rank; how they compare as JSON on stdout.

    python tests/parallel/scenario.py CKPT [--ep] [--spec K] [--device cpu|cuda] [--tp 2]
"""

from __future__ import annotations

import argparse
import json
import sys

from qwen35.engine.llm import LLM
from qwen35.engine.sampling_params import SamplingParams

CHATS = ["What is 23 + 58?", "Convert 3 km to metres.", "hello"]


def run(args, tp: int) -> dict:
    spec = {"method": "mtp", "num_speculative_tokens": args.spec} if args.spec else None
    llm = LLM(args.ckpt, dtype="float32", device=args.device, tensor_parallel_size=tp,
              enable_expert_parallel=args.ep, speculative_config=spec, kv_cache_memory=96 << 20,
              max_num_batched_tokens=32, max_model_len=512, max_num_seqs=4)
    try:
        logits = []  # every logits tensor rank 0's runner returns: prefill, decode, verification of drafts
        run_step = llm.engine.runner.run_step
        llm.engine.runner.run_step = lambda s: _keep(logits, run_step(s))
        tok = llm.tokenizer
        prompts = [tok.encode(f"<|im_start|>user\n{c}<|im_end|>\n<|im_start|>assistant\n") for c in CHATS]
        prompts[0] = prompts[0] * 4  # longer than a chunk of 32: prefilled over several steps
        params = SamplingParams(max_tokens=20, temperature=0, logprobs=4, prompt_logprobs=3)
        outs = llm.generate(prompts, params)
        # the next turn extends the first conversation: its prefix comes from the prefix cache (which a
        # request for prompt logprobs skips)
        follow = prompts[0] + outs[0].outputs[0].token_ids + tok.encode("<|im_end|>\n<|im_start|>user\nmore<|im_end|>")
        outs += llm.generate([follow], SamplingParams(max_tokens=20, temperature=0, logprobs=4))
        engine = llm.engine
        held = [*engine.model.parameters(), *engine.model.buffers(),  # + weights moved to oneDNN's layout
                *(m.packed for m in engine.model.modules() if getattr(m, "packed", None) is not None)]
        model_bytes = sum(t.numel() * t.element_size() for t in held)
        return {"tokens": [o.outputs[0].token_ids for o in outs],
                "logprobs": [[{str(k): v.logprob for k, v in e.items()} for e in o.outputs[0].logprobs] for o in outs],
                "prompt_logprobs": [[{str(k): v.logprob for k, v in e.items()} for e in o.prompt_logprobs[1:]]
                                    for o in outs if o.prompt_logprobs],
                "logits": logits,
                "usage": {k: v for k, v in engine.cache_usage().items() if isinstance(v, (int, list))},
                "model_bytes": model_bytes, "collective_calls": engine.group.calls,
                "parallel": engine.parallel_note()}
    finally:
        llm.engine.close()


def _keep(store: list, logits):
    if logits is not None and logits.numel():
        store.append(logits.cpu())
    return logits


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("ckpt")
    p.add_argument("--ep", action="store_true")
    p.add_argument("--spec", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tp", type=int, default=2)
    args = p.parse_args()
    a, b = run(args, args.tp), run(args, 1)
    same_steps = len(a["logits"]) == len(b["logits"]) and \
        all(x.shape == y.shape for x, y in zip(a["logits"], b["logits"]))
    json.dump({
        "tokens_equal": a["tokens"] == b["tokens"], "tokens": a["tokens"],
        "steps": len(a["logits"]), "same_steps": same_steps,
        "max_logit_diff": max((x - y).abs().max().item() for x, y in zip(a["logits"], b["logits"])),
        "logit_scale": max(y.abs().max().item() for y in b["logits"]),
        "max_logprob_diff": max(_diff(a["logprobs"], b["logprobs"]), _diff(a["prompt_logprobs"], b["prompt_logprobs"])),
        "usage": a["usage"], "single_usage": b["usage"], "weight_bytes_ratio": a["model_bytes"] / b["model_bytes"],
        "collective_calls": a["collective_calls"], "parallel": a["parallel"]}, sys.stdout)


def _diff(x: list, y: list) -> float:
    """Largest logprob difference over entries with the same tokens (inf when the tokens differ)."""
    worst = 0.0
    for ex, ey in zip(x, y, strict=True):
        for a, b in zip(ex, ey, strict=True):
            if a.keys() != b.keys():
                return float("inf")
            worst = max(worst, max(abs(a[k] - b[k]) for k in a))
    return worst


if __name__ == "__main__":
    main()
