"""`qwen35 train`: train a Qwen3.5 model of a recipe's shape on the synthetic chat corpus, with our own model
code (the training paths of the ops: the chunked gated delta rule and the conv written out of place, attention
as causal SDPA over right-padded sequences; model/ and ops/ say where).

One step: a batch of whole conversations (examples.py) through `Qwen35ForCausalLM` as one packed
`ForwardBatch` from empty caches (with `share_heads`, conversations that open with the same tool header run
it once: a pass over the headers, then one over the rest, model/shared_prefix.py); loss = cross-entropy of
the next token on the learnt rows + `mtp_weight` x the MTP head's cross-entropy of the token after next (the
head reads the main model's final hidden at position i, detached, and token i+1, as it does when drafting).
A recipe's first `copy_steps` take batches of induction drills (induction.py) instead of conversations.
AdamW, linear warm-up then cosine decay to `min_lr_ratio`, gradient clipping. Every `checkpoint_every` steps
the whole training state goes to `train_state.pt`, from which a rerun of the same command resumes
bit-identically; the finished model is written in the official checkpoint layout (export.py) and the state
file removed. `training_log.json` keeps the recipe, the machine, each step's loss, and the wall time summed over
the runs that made the model (`runs` > 1: it was interrupted, and each resume rebuilt the corpus).

A recipe with a polish stage (`Polish`, recipe.py) trains its steps into `<out>/base` and exports that model
there, then trains on from the exported checkpoint with a fresh optimiser for the polish's steps into `out`.
A rerun finds the finished first stage and goes straight to the polish; the final training_log.json has both
stages' steps (numbered on), their summed wall time, the polish's runs, and `base` (the first stage's wall
time and runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..model.cache import ModelCache
from ..model.qwen35 import Qwen35ForCausalLM
from ..model.shared_prefix import SharedPrefix
from ..ops.batch import BatchBuilder, ForwardBatch
from ..runtime import cpu_model
from ..tokenizer import Tokenizer
from .adamw import AdamW
from .examples import IGNORE, Example, Unit, encode_all, header_len, learnt_spans, plan_batches, share_heads
from .export import read_trained, write_trained
from .induction import copy_batch
from .init import build_model
from .recipe import Recipe
from .synth import generate
from .vocab import merged_ids, train_vocab

STATE_FILE = "train_state.pt"
LOG_FILE = "training_log.json"
BASE_DIR = "base"  # where a recipe with a polish stage keeps its first stage's model
BLOCK = 64  # K/V cache block size of the training forward (the cache is written, never read)
# The induction drills have formed a copy head when their loss over the last DRILL_WINDOW steps averages under
# DRILL_FORMED: 0.045 where the demo was trained, 1.29 in a rerun on an AVX2-only CPU whose model copied worse
# and missed the tool-loop target (docs/LOG.md, 2026-12-07).
DRILL_WINDOW, DRILL_FORMED = 50, 0.1


def make_corpus(recipe: Recipe, log=print) -> tuple[Tokenizer, list[Unit]]:
    """The recipe's synthetic conversations, a vocabulary learnt from them, and the encoded examples as
    batch units: with `share_heads`, conversations with the same tool header share it (`share_heads`)."""
    t0 = time.perf_counter()
    samples = generate(recipe.train_samples, recipe.data_seed, mix=dict(recipe.mix),
                       tool_siblings=recipe.tool_siblings)
    texts = [s.render() for s in samples]
    tok = train_vocab(texts[:recipe.vocab_samples], recipe.vocab_size)
    return tok, _units(recipe, samples, texts, tok, log, t0)


def _units(recipe: Recipe, samples: list, texts: list[str], tok: Tokenizer, log, t0: float) -> list[Unit]:
    """`samples` (rendered: `texts`) encoded with `tok` as batch units (those over `max_len` tokens left out)."""
    im_start = tok.backend.token_to_id("<|im_start|>")
    examples, heads = [], []
    encoded = encode_all(texts, [learnt_spans(text, s.thinking) for s, text in zip(samples, texts)], tok)
    for sample, ex in zip(samples, encoded):
        if len(ex) <= recipe.max_len:
            examples.append(ex)
            heads.append(header_len(ex.ids, im_start) if recipe.share_heads and sample.tools else 0)
    tokens = sum(len(e) for e in examples)
    units = share_heads(examples, heads, recipe.batch_tokens)
    repeats = tokens - sum(len(u) for u in units)
    log(f"corpus: {len(examples)} conversations ({len(samples) - len(examples)} over {recipe.max_len} tokens "
        f"left out), {tokens:,} tokens ({repeats:,} of them repeats of a shared tool header, not run), "
        f"vocabulary {tok.vocab_size} ids ({time.perf_counter() - t0:.0f} s)")
    return units


def machine(threads: int) -> dict:
    """What a bit-identical rerun needs to match: the CPU, the kernels torch picks for it (two hosts that both
    call themselves "AMD EPYC" differed in AVX-512), the torch build and the thread count."""
    return {"cpu": cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "threads": threads}


def lr_at(step: int, recipe: Recipe) -> float:
    """The first stage's learning rate at `step`."""
    return cosine_lr(step, recipe.lr, recipe.warmup_steps, recipe.steps, recipe.min_lr_ratio)


def cosine_lr(step: int, peak: float, warmup: int, steps: int, min_ratio: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then a cosine decay to `peak` x `min_ratio` at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    floor = peak * min_ratio
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _optimizer(model: Qwen35ForCausalLM, recipe: Recipe) -> AdamW:
    """Weight decay on the matrices only (not on norms, gates' A_log / dt_bias or the conv taps)."""
    decay, keep = [], []
    for p in model.parameters():
        (decay if p.dim() == 2 else keep).append(p)
    return AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                  {"params": keep, "weight_decay": 0.0}], lr=recipe.lr, betas=recipe.betas)


def batch_loss(model: Qwen35ForCausalLM, units: list[Unit], builders: tuple[BatchBuilder, BatchBuilder],
               mtp_weight: float) -> tuple[torch.Tensor, float, float]:
    """Returns (total loss to back-propagate, main loss, MTP loss). Units with a shared head run it once
    (model/shared_prefix.py): a first pass over the heads, then the tails continue from them. The passes
    need a builder each, since autograd keeps the first batch's index tensors (views of its builder)."""
    heads = [u.head for u in units if u.head is not None]
    tails = [t for u in units for t in u.tails]
    shared, starts = None, [0] * len(tails)
    if heads:
        shared = SharedPrefix()
        batch, cache = _forward_batch(model, heads, [0] * len(heads), builders[0], shared)
        hidden = model(batch, cache)
        draft_in = torch.from_numpy(np.concatenate([h.mtp_inputs for h in heads]))
        model.record_draft_keys(draft_in, hidden.detach(), batch, cache)
        owner, at = [], 0
        for u in units:
            owner += [at if u.head is not None else -1] * len(u.tails)
            at += u.head is not None
        shared.continue_with(batch, owner)
        starts = [len(heads[o]) if o >= 0 else 0 for o in owner]
    batch, cache = _forward_batch(model, tails, starts, builders[1], shared)
    hidden = model(batch, cache)
    labels = torch.from_numpy(np.concatenate([e.next_labels for e in tails]))
    rows = (labels != IGNORE).nonzero().squeeze(1)
    main = F.cross_entropy(model.logits(hidden.index_select(0, rows)), labels[rows])
    draft_in = torch.from_numpy(np.concatenate([e.mtp_inputs for e in tails]))
    draft = model.draft(draft_in, hidden.detach(), batch, cache)
    mtp_labels = torch.from_numpy(np.concatenate([e.mtp_labels for e in tails]))
    rows = (mtp_labels != IGNORE).nonzero().squeeze(1)
    mtp = F.cross_entropy(model.logits(draft.index_select(0, rows)), mtp_labels[rows])
    return main + mtp_weight * mtp, main.item(), mtp.item()


def _forward_batch(model: Qwen35ForCausalLM, examples: list[Example], starts: list[int], builder: BatchBuilder,
                   shared: SharedPrefix | None) -> tuple[ForwardBatch, ModelCache]:
    """A batch of `examples` whose sequence b starts at position starts[b], and empty caches for it."""
    tables, first = [], 0
    for e, s in zip(examples, starts):
        n = -(-(s + len(e)) // BLOCK)
        tables.append(range(first, first + n))
        first += n
    batch = builder.build([e.ids for e in examples], starts, list(range(len(examples))), tables)
    if shared is not None:
        batch = dataclasses.replace(batch, shared_prefix=shared)
    return batch, model.new_cache(first, BLOCK, len(examples))


@contextlib.contextmanager
def deterministic():
    """torch's deterministic kernels while training. Without them a backward that sums gradients into repeated
    rows (a shared header's keys and states gathered once per conversation that continues it) adds them with
    atomic adds from several threads when the tensor is large enough, in an order that changes from run to run
    (docs/LOG.md, 2026-12-05, later session); with them it adds in index order, no slower here. They would also
    fill every new tensor with NaN first, to expose reads of memory never written: nothing here reads any (its
    results would be NaN), and the filling cost 3% of a step."""
    was = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0])
        torch.utils.deterministic.fill_uninitialized_memory = was[1]


def _drills(recipe: Recipe, step: int, tokens: int, drill_ids: range) -> list[Unit]:
    """Step `step`'s induction drills, `tokens` of them, as units of a batch."""
    return [Unit.whole(e) for e in copy_batch(recipe.seed, step, tokens, recipe.copy_length, drill_ids.start,
                                              len(drill_ids))]


def train(recipe: Recipe, out_dir: str | Path, log=print, progress=sys.stderr, stop_after: int | None = None) -> Path:
    """Train `recipe` into `out_dir` (resuming from its `train_state.pt` if one is there); returns out_dir.
    With a polish stage (`recipe.polish`) the first stage trains into `<out_dir>/base` (not again once its
    training_log.json is there and names this recipe) and the polish into out_dir.
    `stop_after`: leave after that step with the training state saved, as an interruption would (tests)."""
    if not 0 <= recipe.copy_steps < recipe.steps or recipe.copy_length < 1:
        raise ConfigError(f"recipe {recipe.name!r}: copy_steps must be in [0, steps={recipe.steps}) and copy_length "
                          f">= 1, got copy_steps={recipe.copy_steps}, copy_length={recipe.copy_length}")
    if recipe.chat_drill_tokens < 0:
        raise ConfigError(f"recipe {recipe.name!r}: chat_drill_tokens must be >= 0, got {recipe.chat_drill_tokens}")
    if recipe.copy_conv not in (0, 1, 2):
        raise ConfigError(f"recipe {recipe.name!r}: copy_conv keys by 1 or 2 tokens (0: off), got {recipe.copy_conv}")
    if recipe.polish is not None and (recipe.polish.steps < 1 or recipe.polish.samples < 1):
        raise ConfigError(f"recipe {recipe.name!r}: a polish needs steps >= 1 and samples >= 1, got {recipe.polish}")
    out = Path(out_dir)
    check_out_dir(out, recipe)
    with deterministic():
        if recipe.polish is None:
            return _first_stage(recipe, out, log, progress, stop_after)
        base = out / BASE_DIR
        if _base_record(base, recipe) is None:
            _first_stage(recipe, base, log, progress, stop_after)
            if stop_after is not None and stop_after <= recipe.steps:
                return out
        else:
            log(f"first stage: {base} (trained)")
        return _polish(recipe, base, out, log, progress, stop_after)


def check_out_dir(out: Path, recipe: Recipe) -> None:
    """Refuse, before any work, an output directory this run would spoil or could not resume: a file, a
    non-empty directory with no training run of ours in it (the checkpoint's files would mix with what is
    there, and transformers would load a stale model.safetensors), or a training state of another recipe."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not any((out / name).exists() for name in (STATE_FILE, LOG_FILE, BASE_DIR)):
        raise ConfigError(f"{out} is not empty and holds no training run ({STATE_FILE}, {LOG_FILE} or {BASE_DIR}/): "
                          "the checkpoint would be mixed with its files; choose a new or empty directory")
    for state_file in (out / STATE_FILE, out / BASE_DIR / STATE_FILE):
        if state_file.exists():
            # mapped, not read: only its recipe is looked at here (the resume reads the whole state later)
            _check_recipe(state_file, load_state(state_file, mmap=True)["recipe"], recipe)


def load_state(state_file: Path, mmap: bool = False) -> dict:
    """A training state (`train_state.pt`); ValueError in one line when it cannot be read."""
    try:
        return torch.load(state_file, weights_only=False, mmap=mmap)
    except Exception as e:  # cut short, empty, or not ours
        why = (str(e).splitlines() or [""])[0]
        raise ValueError(f"{state_file} cannot be read ({type(e).__name__}: {why}); remove it to start "
                         "afresh") from None


def _check_recipe(state_file: Path, saved: dict, recipe: Recipe) -> None:
    now = asdict(recipe)
    if saved == now:
        return
    diff = [f"{k} {saved.get(k)!r} there, {v!r} now" for k, v in now.items() if saved.get(k) != v]
    raise ValueError(f"{state_file} belongs to another recipe ({'; '.join(diff[:3]) or 'other fields'}): rerun "
                     "with the recipe and --steps it was started with to resume, or remove it to start afresh")


def _first_stage(recipe: Recipe, out: Path, log, progress, stop_after: int | None) -> Path:
    """The recipe's steps from a drawn model: induction drills, then the chat corpus."""
    t_begin = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    tok, units = make_corpus(recipe, log)
    batches = plan_batches([len(u) for u in units], recipe.batch_tokens, recipe.seed)
    model = build_model(recipe.text_config(tok.vocab_size), recipe.seed, recipe.gdn_gate, recipe.copy_conv)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {recipe.steps} steps of "
        f"<= {recipe.batch_tokens} tokens; {len(batches)} batches per epoch")
    drill_ids = merged_ids(tok)  # what induction drills draw from

    def chosen(step: int) -> list[Unit]:
        if step < recipe.copy_steps:
            return _drills(recipe, step, recipe.copy_batch_tokens, drill_ids)
        return _chats(recipe, step, units, batches[(step - recipe.copy_steps) % len(batches)], drill_ids)

    done = _run(recipe, model, out, range(recipe.steps), lambda step: lr_at(step, recipe), chosen, t_begin,
                log, progress, stop_after)
    if done is not None:
        _finish(recipe, model, tok, out, *done, log=log)
    return out


def _polish(recipe: Recipe, base: Path, out: Path, log, progress, stop_after: int | None) -> Path:
    """The polish stage (`Polish` in recipe.py) from the first stage's checkpoint in `base`."""
    polish = recipe.polish
    t_begin = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    tok = Tokenizer.from_pretrained(base)
    samples = generate(polish.samples, polish.data_seed, mix=dict(polish.mix), tool_siblings=recipe.tool_siblings)
    units = _units(recipe, samples, [s.render() for s in samples], tok, log, time.perf_counter())
    batches = plan_batches([len(u) for u in units], recipe.batch_tokens, recipe.seed)
    model = read_trained(Qwen35ForCausalLM(recipe.text_config(tok.vocab_size), mtp=True), base).train()
    log(f"polish: {polish.steps} steps from {base}; {len(batches)} batches per epoch")
    drill_ids = merged_ids(tok)

    def lr(step: int) -> float:
        return cosine_lr(step - recipe.steps, polish.lr, polish.warmup_steps, polish.steps, recipe.min_lr_ratio)

    def chosen(step: int) -> list[Unit]:
        return _chats(recipe, step, units, batches[(step - recipe.steps) % len(batches)], drill_ids)

    done = _run(recipe, model, out, range(recipe.steps, recipe.steps + polish.steps), lr, chosen, t_begin,
                log, progress, stop_after)
    if done is not None:
        base_log = _base_record(base, recipe)
        history, wall_s, runs = done
        _finish(recipe, model, tok, out, base_log["history"] + history, base_log["wall_s"] + wall_s, runs,
                log=log, base={"wall_s": base_log["wall_s"], "runs": base_log["runs"]})
    return out


def _chats(recipe: Recipe, step: int, units: list[Unit], batch: list[int], drill_ids: range) -> list[Unit]:
    """A chat step's units: one planned batch, and the recipe's drills with it."""
    chosen = [units[i] for i in batch]
    if recipe.chat_drill_tokens:
        chosen += _drills(recipe, step, recipe.chat_drill_tokens, drill_ids)
    return chosen


def _run(recipe: Recipe, model: Qwen35ForCausalLM, out: Path, steps: range, lr_of, chosen, t_begin: float, log,
         progress, stop_after: int | None) -> tuple[list[dict], float, int] | None:
    """`steps` of AdamW (a fresh optimiser, or the one in out's training state, which this resumes), saving the
    state every `checkpoint_every` steps and after the last. Returns (history, wall time, runs), or None when
    `stop_after` ended it early."""
    opt = _optimizer(model, recipe)
    history: list[dict] = []
    start, earlier_s, earlier_runs = steps.start, 0.0, 0  # wall time and runs before this one (a resume)
    state_file = out / STATE_FILE
    if state_file.exists():
        state = load_state(state_file)
        _check_recipe(state_file, state["recipe"], recipe)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        earlier_s, earlier_runs = state.get("wall_s", 0.0), state.get("runs", 0)
        log(f"resuming at step {start}")
    builders = (BatchBuilder(BLOCK), BatchBuilder(BLOCK))
    t_start, tokens_done = time.perf_counter(), 0
    saved = start if state_file.exists() else None  # the step the training state on disk holds
    try:
        for step in range(start, steps.stop):
            lr = lr_of(step)
            for group in opt.param_groups:
                group["lr"] = lr
            units = chosen(step)
            loss, main, mtp = batch_loss(model, units, builders, recipe.mtp_weight)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_norm).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens_done += sum(len(u) for u in units)
            elapsed = time.perf_counter() - t_start
            history.append({"step": step + 1, "loss": round(main, 4), "mtp_loss": round(mtp, 4), "lr": lr,
                            "grad_norm": round(grad_norm, 3)})
            rate = tokens_done / elapsed
            eta = (steps.stop - step - 1) * elapsed / (step + 1 - start)
            print(f"\rstep {step + 1}/{steps.stop}  loss {main:.3f}  mtp {mtp:.3f}  lr {lr:.1e}  "
                  f"{rate:,.0f} tok/s  eta {eta / 60:.1f} min ", end="", file=progress, flush=True)
            checkpoint = (step + 1 - steps.start) % recipe.checkpoint_every == 0 or step + 1 == steps.stop
            warning = unformed_copy_head(history) if step + 1 == recipe.copy_steps else None
            if checkpoint or warning:
                print(file=progress)  # ends the progress line
            if warning:
                log(warning)
            if checkpoint:
                torch.save({"recipe": asdict(recipe), "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "step": step + 1, "history": history, "runs": earlier_runs + 1,
                            "wall_s": earlier_s + time.perf_counter() - t_begin}, out / (STATE_FILE + ".tmp"))
                (out / (STATE_FILE + ".tmp")).replace(state_file)
                saved = step + 1
            if stop_after is not None and step + 1 >= stop_after:
                return None
        return history, earlier_s + time.perf_counter() - t_begin, earlier_runs + 1
    except KeyboardInterrupt:
        print(file=progress)  # ends the progress line
        log(f"interrupted; {state_file} holds step {saved}: the same command resumes from there" if saved else
            f"interrupted before the first training state (saved every {recipe.checkpoint_every} steps)")
        raise


def unformed_copy_head(history: list[dict]) -> str | None:
    """A warning when the induction drills that end with `history` have not formed a copy head, else None.
    A late head is the first sign of a worse run (another CPU's rounding, or another seed): the demo recipe's
    model then copied paths and names from its context worse, and drilling on until the head formed did not
    mend it (docs/DEMO.md)."""
    recent = [h["loss"] for h in history[-DRILL_WINDOW:]]
    mean = sum(recent) / len(recent)
    if mean < DRILL_FORMED:
        return None
    return (f"warning: the induction drills end at a mean loss of {mean:.2f} over their last {len(recent)} steps, "
            f"over the {DRILL_FORMED} of a formed copy head; this run's model will likely copy from its context "
            "poorly (docs/DEMO.md, Training: On another CPU)")


def _finish(recipe: Recipe, model: Qwen35ForCausalLM, tok: Tokenizer, out: Path, history: list[dict], wall_s: float,
            runs: int, log, **extra) -> None:
    """Write the trained model and its training_log.json, and drop the training state."""
    write_trained(model, tok, recipe, out)
    log_record = {"recipe": asdict(recipe), "machine": machine(recipe.threads), "wall_s": round(wall_s, 1),
                  "runs": runs, "history": history, **extra}
    (out / LOG_FILE).write_text(json.dumps(log_record) + "\n")
    (out / STATE_FILE).unlink(missing_ok=True)
    log(f"wrote {out} ({wall_s / 60:.1f} min" + (f" over {runs} runs)" if runs > 1 else ")"))


def _base_record(base: Path, recipe: Recipe) -> dict | None:
    """The training_log.json of a finished first stage of `recipe` in `base`, or None. Its recipe is compared
    without the polish, which the first stage does not depend on."""
    if not (base / LOG_FILE).exists():
        return None
    record = json.loads((base / LOG_FILE).read_text())
    first = {k: v for k, v in json.loads(json.dumps(asdict(recipe))).items() if k != "polish"}  # as JSON has it
    return record if {k: v for k, v in record["recipe"].items() if k != "polish"} == first else None
