"""Train a checkpoint's MTP head briefly on the main model's own greedy outputs, so that speculative decoding
can be measured where drafts are right.

    .venv/bin/python bench/train_mtp.py [--model DIR | --preset dense-0.8b] [--out DIR] [--prompts 10]
        [--held-out 2] [--prompt-len 24] [--tokens 192] [--steps 300] [--lr 1e-3] [--rows 128] [--threads 2]

On a shared machine prefix it with OMP_WAIT_POLICY=PASSIVE (src/qwen35/runtime.py says why).

1. Data: `--prompts` prompts of random token ids, continued greedily (temperature 0) by the frozen main model
   through `LLM` for `--tokens` tokens each; the last `--held-out` sequences are kept for evaluation. One
   teacher-forced forward of the main model over each whole sequence (no grad; the main stack fused and
   prepacked as the engine runs it) gives the final-normed hidden h_i of every position and the main model's
   own argmax y_i = argmax lm_head(h_i), the token a verify pass accepts after position i.
2. Training: only `mtp.*` (fp32 master weights, bf16 autocast, AdamW); the embedding and lm_head stay frozen
   and shared. Step 1: row i pairs h_i with token i+1 (at position i) and predicts y_{i+1}, the token at
   i+2. Step 2 (chained drafting, k=2): step 1's output for row i goes back in with token i+2 and predicts
   y_{i+2}. A draft forward is one sequence from position 0 over a fresh MTP-only cache, so attention takes
   its plain causal path, which autograd goes through; step 2 there attends over step-2 rows (DeepSeek-V3's
   MTP training), whereas the engine's step 2 reads step 1's K/V for earlier positions: the evaluation below
   runs it the engine's way. The loss is the cross-entropy of both steps on `--rows` random rows each (the
   248k-row lm_head dominates the cost).
3. Output: a copy of the checkpoint (files hard-linked) whose shards holding `mtp.*` are copied and have those
   tensors' bytes overwritten in place: same names, shapes, dtypes and offsets, so the index and the other
   shards are untouched. It is loaded back as the engine loads it (`load_model(out, mtp=True)`: bf16, fused,
   prepacked) for the final evaluation.
4. Acceptance, teacher-forced, over the continuation positions (a draft exists from the last prompt position
   on): step 1 = draft argmax == y_{i+1}; step 2 = step-2 argmax == y_{i+2} given the true token i+2, with
   step 1's K/V at earlier positions in its cache as in the engine; "both" = both right (what k=2 accepts in
   full). Also printed: agreement with the decoded tokens themselves, and how often the main model's prefill
   argmax equals its own decode's token (the ceiling for any draft of a random model, whose logit margins
   are often below bf16 resolution).

What to expect from a random checkpoint (measured on 2 shared cores, 300 steps, about 1 s a step on
dense-0.8b): dense-0.8b's training sequences are learnt by heart (acceptance 1.000 for both steps by step
100), its held-out ones not at all (0.000): a random model's next token is a hash of its context that no
small head generalises (a linear map from [embedding; h_i] to h_{i+1} does worse than predicting zero on
held-out rows). Its greedy tokens also flip under any change of numerics (prefill vs decode, batch size,
chunking: 13-20% of positions, top-2 logit gaps are often one bf16 step), so a spec-decode run leaves the
learnt trajectories within a few tokens. `tiny` instead repeats one token forever, stably; the head learns
that and generalises when it sees many such tokens: `--preset tiny --prompts 66 --held-out 6 --tokens 48
--lr 3e-3` reaches held-out 0.993 / 0.996 (both 0.989) in 3 minutes, on any prompt. The training prompts are
`random_prompts(--prompts, --prompt-len, --seed)` less the last `--held-out`, for a bench to replay.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import cache_root, describe  # noqa: E402

from qwen35.loading.checkpoint import load_model, shard_files  # noqa: E402
from qwen35.loading.names import MTP, map_name  # noqa: E402
from qwen35.model import ForwardBatch, SeqSpec  # noqa: E402
from qwen35.model.cache import ModelCache  # noqa: E402

BLOCK = 16
SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


# -- checkpoints ------------------------------------------------------------------------------------------

def checkpoint(args) -> Path:
    """`--model`, else the cached random checkpoint of `--preset` (written on first use, as bench_model.py)."""
    if args.model:
        return Path(args.model)
    from qwen35.config import preset
    from qwen35.loading.writer import write_random_checkpoint

    path = cache_root() / f"bench-{args.preset}"
    if not (path / "config.json").exists():
        print(f"writing a random {args.preset} checkpoint to {path} ...", flush=True)
        write_random_checkpoint(preset(args.preset), path, seed=0, tokenizer=False)
    return path


def output_dir(args, src: Path) -> Path:
    if args.out:
        return Path(args.out)

    return cache_root() / f"{src.name}-mtp"


def write_trained_checkpoint(src: Path, out: Path, mtp_state: dict[str, torch.Tensor]) -> None:
    """`out` = `src` with its `mtp.*` tensors replaced by `mtp_state` (our parameter names). Every file is
    hard-linked (copied across file systems) except the shards holding `mtp.*`, which are copied and patched
    in place: a tensor of the same shape and dtype occupies the same bytes, so headers and index stay as
    they are. Built beside `out` and renamed over it."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = shard_files(src)
    holding = {f for f, names in files.items() if any(n.startswith(MTP) for n in names)}
    if "model.safetensors" in files:  # a single file without index: it holds everything
        holding = {"model.safetensors"}
    for f in sorted(p.name for p in src.iterdir() if p.is_file()):
        if f in holding:
            shutil.copyfile(src / f, tmp / f)
        else:
            try:
                os.link(src / f, tmp / f)
            except OSError:
                shutil.copy2(src / f, tmp / f)
    written = set()
    for f in sorted(holding):
        written |= patch_shard(tmp / f, mtp_state)
    missing = sorted(set(mtp_state) - written)
    if missing:
        raise RuntimeError(f"{src} has no checkpoint tensor for {missing[:3]}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def patch_shard(file: Path, mtp_state: dict[str, torch.Tensor]) -> set[str]:
    """Overwrite the bytes of every `mtp.*` tensor of the safetensors file with the trained value (cast to
    the stored dtype). Returns the parameter names written."""
    done = set()
    with open(file, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        for key, info in header.items():
            if not key.startswith(MTP):
                continue
            target = map_name(key, mtp=True)
            if target is None or target.kind != "param" or target.name not in mtp_state:
                raise RuntimeError(f"{file}: cannot write {key!r} (per-expert MoE MTP tensors are not supported)")
            value = mtp_state[target.name]
            if list(value.shape) != info["shape"] or info["dtype"] not in SAFETENSORS_DTYPES:
                raise RuntimeError(f"{file}: {key!r} is {info['dtype']} {info['shape']}, trained {list(value.shape)}")
            raw = value.detach().to(SAFETENSORS_DTYPES[info["dtype"]]).contiguous().view(-1).view(torch.uint8)
            start, end = info["data_offsets"]
            assert raw.numel() == end - start
            f.seek(8 + n + start)
            f.write(raw.numpy().tobytes())
            done.add(target.name)
    return done


# -- data -------------------------------------------------------------------------------------------------

def random_prompts(n: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 200_000, (length,), generator=gen).tolist() for _ in range(n)]


def greedy_continuations(path: Path, prompts: list[list[int]], tokens: int, threads: int) -> list[list[int]]:
    """Each prompt followed by `tokens` greedy tokens of the main model, all prompts batched by the engine."""
    from qwen35.engine import LLM, SamplingParams

    llm = LLM(str(path), dtype="bfloat16", max_model_len=len(prompts[0]) + tokens + 1,
              max_num_seqs=len(prompts), enable_prefix_caching=False, threads=threads,
              kv_cache_memory=1 << 30)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True))
    del llm
    return [p + list(o.outputs[0].token_ids) for p, o in zip(prompts, outs)]


def load_for_training(path: Path):
    """The model with its MTP head, in bf16. The main stack is fused and prepacked (it only runs forward, as
    in the engine); the head stays plain, in fp32, with gradients on: only `mtp.*` trains."""
    model, _ = load_model(path, dtype=torch.bfloat16, mtp=True, fuse=False, prepack=False)
    head, model.mtp = model.mtp, None
    model.fuse()
    model.prepack()
    model.mtp = head.float()
    for p in model.mtp.parameters():
        p.requires_grad_(True)
    return model


@torch.no_grad()
def teacher_forced(model, seqs: list[list[int]]) -> list[dict]:
    """Per sequence: tokens [L], h [L, H] (final-normed hidden) and y [L] (y[i] = argmax lm_head(h[i]))."""
    data = []
    for s in seqs:
        nb = -(-len(s) // BLOCK)
        batch = ForwardBatch.build([SeqSpec(s, 0, 0, list(range(nb)))], BLOCK)
        h = model(batch, model.new_cache(nb, BLOCK, 1))
        y = torch.cat([model.logits(part).argmax(-1) for part in h.split(256)])
        data.append({"tokens": torch.tensor(s), "h": h, "y": y})
    return data


# -- the head's forward -----------------------------------------------------------------------------------

def mtp_cache(model, num_blocks: int) -> ModelCache:
    """K/V for the head's layers only (the draft touches nothing else)."""
    specs = {k: v for k, v in model.cache_specs().items() if k.startswith(MTP)}
    return ModelCache(specs, num_blocks, BLOCK, num_slots=1)


def draft_sequence(model, tokens: torch.Tensor, hidden: torch.Tensor, step: int) -> torch.Tensor:
    """One draft step over a whole sequence from position 0 (row i: hidden[i] with tokens[i]) on a fresh
    cache: attention's one-fresh-sequence path, plain causal SDPA, differentiable."""
    nb = -(-len(tokens) // BLOCK)
    batch = ForwardBatch.build([SeqSpec(tokens.tolist(), 0, 0, list(range(nb)))], BLOCK)
    return model.draft(tokens, hidden, batch, mtp_cache(model, nb), step)


def draft_step2_engine_way(model, cache: ModelCache, blocks: int, tokens: torch.Tensor, hidden: torch.Tensor,
                           positions: list[int]) -> torch.Tensor:
    """Step 2 as the engine runs it: the row at position p sees step 1's K/V at positions < p (already in
    `cache`, blocks [0, blocks)) and its own. Each row is a one-token sequence whose last block is a private
    copy of the shared one, so that writing its own K/V does not disturb the other rows."""
    private = torch.arange(blocks, blocks + len(positions))
    shared = torch.tensor([p // BLOCK for p in positions])
    for k, v in (cache.kv(cid) for cid in cache.specs):
        for c in (k, v):
            c.view(-1, BLOCK, *c.shape[1:])[private] = c.view(-1, BLOCK, *c.shape[1:])[shared]
    specs = [SeqSpec([int(t)], p, 0, list(range(p // BLOCK)) + [blocks + j])
             for j, (t, p) in enumerate(zip(tokens.tolist(), positions))]
    return model.draft(tokens, hidden, ForwardBatch.build(specs, BLOCK), cache, step=1)


# -- training ---------------------------------------------------------------------------------------------

def train(model, data: list[dict], held_out: list[dict], prompt_len: int, steps: int, lr: float, rows: int,
          seed: int) -> None:
    params = list(model.mtp.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(seed)
    t0, log = time.perf_counter(), []
    for step in range(steps):
        seq = data[step % len(data)]
        tok, h, y = seq["tokens"], seq["h"], seq["y"]
        L = len(tok)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            d1 = draft_sequence(model, tok[1:], h[:-1], step=0)  # row i: h_i, token i+1 -> y[i+1]
            d2 = draft_sequence(model, tok[2:], d1[:-1], step=1)  # row i: step 1's output, token i+2 -> y[i+2]
            r1 = torch.tensor(sorted(rng.sample(range(L - 1), min(rows, L - 1))))
            r2 = torch.tensor(sorted(rng.sample(range(L - 2), min(rows, L - 2))))
            l1, l2 = model.logits(d1[r1]), model.logits(d2[r2])
        loss1, loss2 = F.cross_entropy(l1, y[r1 + 1]), F.cross_entropy(l2, y[r2 + 2])
        opt.zero_grad(set_to_none=True)
        (loss1 + loss2).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        log.append((loss1.item(), loss2.item(), (l1.argmax(-1) == y[r1 + 1]).float().mean().item(),
                    (l2.argmax(-1) == y[r2 + 2]).float().mean().item()))
        if (step + 1) % 25 == 0 or step + 1 == steps:
            m = [sum(c) / len(c) for c in zip(*log)]
            log = []
            line = (f"step {step + 1:4d}  {time.perf_counter() - t0:6.0f}s  loss {m[0]:.3f} / {m[1]:.3f}  "
                    f"train top-1 {m[2]:.3f} / {m[3]:.3f}")
            if (step + 1) % 100 == 0 or step + 1 == steps:
                acc = acceptance(model, held_out, prompt_len)
                line += f"  held-out {acc['step1']:.3f} / {acc['step2']:.3f}"
            print(line, flush=True)


# -- evaluation -------------------------------------------------------------------------------------------

@torch.inference_mode()
def acceptance(model, data: list[dict], prompt_len: int) -> dict[str, float]:
    """Teacher-forced acceptance over the continuation (see the module docstring), pooled over sequences."""
    hits = {k: 0 for k in ("step1", "step2", "both", "step1_decoded", "step2_decoded", "main_self")}
    n = 0
    for seq in data:
        tok, h, y = seq["tokens"], seq["h"], seq["y"]
        L = len(tok)
        nb = -(-(L - 1) // BLOCK)
        rows = torch.arange(prompt_len - 1, L - 2)  # row i: drafts token i+2 (step 1) and i+3 (step 2)
        cache = mtp_cache(model, nb + len(rows))
        batch = ForwardBatch.build([SeqSpec(tok[1:].tolist(), 0, 0, list(range(nb)))], BLOCK)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            d1 = model.draft(tok[1:], h[:-1], batch, cache)
            d2 = draft_step2_engine_way(model, cache, nb, tok[rows + 2], d1[rows], (rows + 1).tolist())
            a1 = model.logits(d1[rows]).argmax(-1)
            a2 = model.logits(d2).argmax(-1)
        keep = rows + 3 < L  # step 2 of the last row has nothing to predict
        ok1, ok2 = a1 == y[rows + 1], a2 == y[rows + 2]
        hits["step1"] += int(ok1[keep].sum())
        hits["step2"] += int(ok2[keep].sum())
        hits["both"] += int((ok1 & ok2)[keep].sum())
        hits["step1_decoded"] += int((a1 == tok[rows + 2])[keep].sum())
        hits["step2_decoded"] += int((a2[keep] == tok[rows[keep] + 3]).sum())
        hits["main_self"] += int((y[rows + 1] == tok[rows + 2])[keep].sum())
        n += int(keep.sum())
    return {k: v / n for k, v in hits.items()} | {"positions": n}


def print_acceptance(name: str, acc: dict) -> None:
    print(f"{name:9s} acceptance over {acc['positions']} positions: step 1 {acc['step1']:.3f}, step 2 "
          f"{acc['step2']:.3f}, both {acc['both']:.3f}   (vs the decoded tokens: {acc['step1_decoded']:.3f} / "
          f"{acc['step2_decoded']:.3f}; main model prefill vs its own decode: {acc['main_self']:.3f})", flush=True)


# -- main -------------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint directory (default: the cached random --preset checkpoint)")
    p.add_argument("--preset", default="dense-0.8b")
    p.add_argument("--out", help="output directory (default: <cache root>/<checkpoint name>-mtp)")
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--held-out", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=24)
    p.add_argument("--tokens", type=int, default=192, help="greedy tokens per prompt")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rows", type=int, default=128, help="rows per step and draft step that get logits")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not 0 < args.held_out < args.prompts:
        p.error("--held-out must leave at least one training prompt")
    from qwen35.runtime import setup

    setup(args.threads)
    torch.manual_seed(args.seed)
    print(f"machine: {describe()}", flush=True)
    src = checkpoint(args)
    out = output_dir(args, src)
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    seqs = greedy_continuations(src, random_prompts(args.prompts, args.prompt_len, args.seed), args.tokens,
                                args.threads)
    print(f"data: {len(seqs)} prompts of {args.prompt_len} random tokens + {args.tokens} greedy tokens "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    t0 = time.perf_counter()
    model = load_for_training(src)
    data = teacher_forced(model, seqs)
    train_data, held_out = data[:-args.held_out], data[-args.held_out:]
    print(f"hidden states: teacher-forced forward over {sum(len(s) for s in seqs)} tokens "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    print_acceptance("untrained", acceptance(model, held_out, args.prompt_len))

    t0 = time.perf_counter()
    train(model, train_data, held_out, args.prompt_len, args.steps, args.lr, args.rows, args.seed)
    t_train = time.perf_counter() - t0
    print(f"training: {args.steps} steps ({t_train:.0f}s)", flush=True)

    t0 = time.perf_counter()
    state = {f"{MTP}{k}": v for k, v in model.mtp.state_dict().items()}
    write_trained_checkpoint(src, out, state)
    del model
    trained, _ = load_model(out, mtp=True)  # as the engine loads it: bf16, fused, prepacked
    print(f"wrote {out} and loaded it back ({time.perf_counter() - t0:.0f}s)", flush=True)
    print_acceptance("held-out", acceptance(trained, held_out, args.prompt_len))
    print_acceptance("training", acceptance(trained, train_data, args.prompt_len))
    print(f"total {time.perf_counter() - t_all:.0f}s; trained checkpoint: {out}")


if __name__ == "__main__":
    main()
