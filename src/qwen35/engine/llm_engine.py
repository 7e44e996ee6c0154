"""LLMEngine: requests in, incremental outputs out, one `step()` at a time.

    engine = LLMEngine(EngineConfig(model="ckpt"))
    engine.add_request("r1", "Hello", SamplingParams(max_tokens=16))
    while engine.has_unfinished():
        for out in engine.step(): ...

The engine knows tokens and text; the scheduler knows counts and cache ownership; the runner knows tensors.
`n > 1` becomes n sub-requests (`id#i`, seed + i) whose outputs are gathered under the parent id; they are
built and checked together and queued only when all are valid, so a refused request leaves nothing behind.
Requests with `params.guided` get a grammar matcher (guided.py): their logits rows are masked before
sampling, and they finish ("stop") once the grammar is complete.

Failures: work pinned to one request (its grammar mask, its output processing: logprobs, grammar accept,
stop checking and detokenising) runs under its own `try`; an exception there finishes that request (all its
sub-requests) with `finish_reason="error"` and `RequestOutput.error`, frees its cache, and the rest of the batch
goes on. Only a failure of the whole step (the forward pass, the batched sampler) fails every request in the
step, the same way; the scheduler and cache stay consistent and the engine keeps serving new requests.
Prompt logprobs (`params.prompt_logprobs`) are gathered chunk by chunk from the runner (first sub-request only).

Speculative decoding (`EngineConfig.speculative_config`, docs/SERVING.md): after every step the runner's
`Drafter` runs the checkpoint's MTP head and gives each request that sampled up to k `draft_ids`; the next
step computes them after its last token, `_verify` keeps those the target agrees with (verify.py), rolls the
GDN state back to the last kept token and emits the kept drafts plus the target's own next token, one
`_append` each (so stop strings, grammars and max_tokens apply token by token).

Tensor parallelism (`EngineConfig.tensor_parallel_size`, docs/PARALLEL.md): every rank builds an engine
over its share of the model (parallel/sharding.py) and the same memory plan; rank 0 schedules, samples and
broadcasts each step through its runner, the other ranks run `follow()`. Rank 0 starts the other ranks of
its machine itself (parallel/launch.py).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import runtime
from ..config import ModelConfig, param_count
from ..parallel import launch
from ..parallel.sharding import Shard
from ..loading.checkpoint import has_mtp, load_model
from ..multimodal.inputs import MediaItem
from ..multimodal.layout import PromptMedia
from ..multimodal.prompt import expand_placeholders, placeholder_spans
from ..tokenizer import Tokenizer
from .config import EngineConfig
from .guided import GuidedDecoder, GuidedMatcher
from .memory import default_budget, plan_memory
from .outputs import CompletionOutput, ConstraintFailed, RequestOutput
from .request import Request
from .runner import ModelRunner
from .sampler import PenaltyState, Sampler, SamplerOutput, min_tokens_stop_ids
from .sampling_params import SamplingParams, truncate_prompt
from .scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from .spec_config import DRAFT_VOCAB_FILE
from .speculative import DraftPolicy, SpecStats
from .stop import Delta, StopChecker
from .verify import row_histories, verify

log = logging.getLogger("qwen35.engine")
# A prefix checkpoint this close after a chunk's start is not worth its own forward pass (scheduler.py).
CHECKPOINT_MIN_GAP = 64
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "auto": torch.bfloat16}  # EngineConfig.dtype names


@dataclass(eq=False)
class _Seq:
    """Engine-side state of one (sub-)request."""

    req: Request
    parent: str
    index: int
    stop: StopChecker
    penalties: PenaltyState
    generator: torch.Generator | None
    completion: CompletionOutput
    guide: GuidedMatcher | None = None  # structured output state (params.guided)
    prompt_logprobs: list[dict[int, float] | None] | None = None  # params.prompt_logprobs: [None, entries...]
    drafting: DraftPolicy | None = None  # speculative decoding on


@dataclass(eq=False)
class _Parent:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    seqs: list[_Seq] = field(default_factory=list)
    error: str | None = None  # why the engine failed this request
    error_is_request: bool = False  # the request's own fault (ConstraintFailed): the server answers 400


class LLMEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        par = cfg.parallel
        config = ModelConfig.from_dict(cfg.hf_config) if cfg.hf_config is not None else None
        config = config or ModelConfig.from_file(cfg.model)
        # threads, flush-to-zero on every compute thread; the ranks on one machine share its cores
        explicit = cfg.threads or (max(1, (os.cpu_count() or 1) // par.per_node) if par.world_size > 1 else None)
        chosen = runtime.engine_threads(explicit, param_count(config.text))
        threads = runtime.setup(chosen)["threads"]
        self.threads_note = f"{threads} torch thread{'s' * (threads != 1)}" + (
            f" (a model under {runtime.SMALL_MODEL_PARAMS // 10**6}M parameters decodes fastest on one; --threads N "
            "to change)" if chosen and not explicit else "")
        self.cfg = cfg
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        self.group, self.ranks = launch.start(cfg)
        if self.group.size > 1 and self.group.is_first:
            atexit.register(self.close)  # a live gloo group at interpreter exit aborts the process
        try:
            self._build(cfg, config)
        except BaseException:
            self.close()
            raise

    def _build(self, cfg: EngineConfig, config: ModelConfig) -> None:
        par = cfg.parallel
        if par.world_size > 1 and cfg.device == "cuda":  # one GPU per rank of this machine
            from dataclasses import replace

            cfg = self.cfg = replace(cfg, device=f"cuda:{par.local_rank}")
        shard = Shard(config.text, self.group, par.enable_expert_parallel)  # checks the split before loading
        self.spec = cfg.speculative_config  # None when off, or when the checkpoint cannot draft
        self.spec_note: str | None = None  # why speculation is off although it was asked for
        if self.spec is not None and not has_mtp(cfg.model, config):
            self.spec_note = (f"{cfg.model} has no MTP head (mtp.* tensors): serving without speculative "
                              "decoding")
            log.warning(self.spec_note)
            self.spec = None
        self.limit_mm_per_prompt = dict(cfg.limit_mm_per_prompt or {})
        no_media = cfg.language_model_only or (self.limit_mm_per_prompt.get("image") == 0
                                               and self.limit_mm_per_prompt.get("video") == 0)
        has_tower = config.vision is not None
        # the tower runs on rank 0 only: its outputs travel with the step
        self.model, self.model_cfg = load_model(cfg.model, dtype=DTYPES[cfg.dtype], device=cfg.device, config=config,
                                                mtp=self.spec is not None, quantization=cfg.quantization,
                                                vision=has_tower and not no_media and self.group.is_first,
                                                shard=shard)
        k = self.spec.k if self.spec is not None else 0
        self.tokenizer = Tokenizer.from_pretrained(cfg.tokenizer or cfg.model)
        text = self.model_cfg.text
        if self.tokenizer.vocab_size > text.vocab_size:  # its ids would index past the embedding
            raise ValueError(f"{cfg.model}: the tokenizer ({self.tokenizer.source}) defines "
                             f"{self.tokenizer.vocab_size} ids, more than the model's vocab_size {text.vocab_size}; "
                             "is tokenizer.json missing or from another model?")
        supported = text.supported_length
        if cfg.max_model_len is not None and cfg.max_model_len > supported:
            raise ValueError(f"max_model_len {cfg.max_model_len} is larger than the {supported} tokens the model "
                             "supports (max_position_embeddings, or the YaRN range)")
        self.max_model_len = cfg.max_model_len or min(supported, 8192)
        self.eos_ids = self._eos_ids(Path(cfg.model))
        prefix_fraction = cfg.prefix_cache_fraction if cfg.enable_prefix_caching else 0.0
        mtp_layers = len(self.model.mtp.layers) if k else 0
        local = self.model.local_cfg  # the rank's share of K/V heads and GDN state
        budget = cfg.kv_cache_memory
        if self.group.size > 1:  # every rank must plan the same blocks and slots: the smallest budget wins
            if budget is None:  # on CPU the ranks of this machine share its RAM; GPUs are one per rank
                budget = default_budget(local, DTYPES[cfg.dtype], cfg.max_num_seqs, self.max_model_len,
                                        cfg.block_size, prefix_fraction, device=cfg.device, mtp_layers=mtp_layers,
                                        num_speculative_tokens=k,
                                        sharing=par.per_node if torch.device(cfg.device).type == "cpu" else 1)
            budget = self.group.min_int(budget)
        plan = plan_memory(local, DTYPES[cfg.dtype], budget, cfg.max_num_seqs, self.max_model_len,
                           cfg.block_size, prefix_fraction, device=cfg.device, mtp_layers=mtp_layers,
                           num_speculative_tokens=k)
        self.plan = plan
        slots = plan.run_slots + plan.prefix_slots
        self.runner = ModelRunner(self.model, plan.num_blocks, cfg.block_size, plan.total_slots,
                                  cfg.max_num_batched_tokens, cfg.max_num_seqs, self.max_model_len,
                                  num_speculative_tokens=k, draft_ids=self._draft_vocab(),
                                  encoder_cache_bytes=cfg.encoder_cache_memory,
                                  on_rank_failure=self.ranks.on_failure if self.ranks else launch.exit_process)
        if self.model_cfg.is_moe and par.enable_expert_parallel and self.group.is_first:
            self._moe_layers = [m for m in self.model.modules() if hasattr(m, "track_load")]
            for m in self._moe_layers:
                m.track_load()
        else:
            self._moe_layers = []
        sched_cfg = SchedulerConfig(max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
                                    max_model_len=self.max_model_len, block_size=cfg.block_size,
                                    boundary_token_id=self.tokenizer.im_start_id,
                                    max_encoder_patches=cfg.max_num_encoder_patches,
                                    checkpoint_min_gap=CHECKPOINT_MIN_GAP)
        self.scheduler = Scheduler(sched_cfg, plan.num_blocks, list(range(plan.run_slots)),
                                   list(range(plan.run_slots, slots)))
        self.sampler = Sampler()
        self.guided = GuidedDecoder(self.tokenizer, text.vocab_size, self.tokenizer.eos_token_id, self.eos_ids)
        self.parents: dict[str, _Parent] = {}
        self.seqs: dict[str, _Seq] = {}  # sub-request id -> state
        self.preemptions = 0
        self.spec_stats = SpecStats(k)

    def _draft_vocab(self) -> list[int] | None:
        """The draft vocabulary of `speculative_config.draft_vocab_size` (see spec_config.py), or None."""
        n = self.spec.draft_vocab_size if self.spec is not None else None
        vocab = self.model_cfg.text.vocab_size
        if n is None or n >= vocab:
            return None
        ranked = Path(self.cfg.model) / DRAFT_VOCAB_FILE
        if ranked.exists():
            try:
                order = [t for t in json.loads(ranked.read_text()) if isinstance(t, int) and 0 <= t < vocab]
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"{ranked} is not a JSON list of token ids: {e}") from None
            ids = list(dict.fromkeys(order))[:n]
        else:
            ids = list(range(n))
        return ids + [t for t in (*self.eos_ids, *self.tokenizer.special_ids) if t < vocab]

    def _eos_ids(self, path: Path) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        gen = path / "generation_config.json"
        if gen.exists():
            try:
                eos = json.loads(gen.read_text()).get("eos_token_id")
            except json.JSONDecodeError:
                eos = None
                log.warning("%s is not valid JSON; using the tokenizer's EOS only", gen)
            ids.update(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        return sorted(ids)

    # -- requests -----------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None,
                    media: Sequence[MediaItem] | None = None) -> None:
        """Queue a request. `media`: the prompt's images and videos (multimodal/processor.py), in the order of
        their placeholders: one `<|image_pad|>` per image / `<|vision_start|><|video_pad|><|vision_end|>` per
        video as the chat template writes them (expanded here), or already expanded."""
        params = params or SamplingParams()
        if params.bad_words:
            params = params.clone()
            params.update_from_tokenizer(self.tokenizer)
        params.check_vocab(self.model_cfg.text.vocab_size)
        if params.allowed_token_ids is not None:  # the sampler would fall back to token 0
            banned = {ids[0] for ids in params.bad_words_token_ids or () if len(ids) == 1}
            if params.min_tokens:
                banned.update(min_tokens_stop_ids(params, self.eos_ids))
            if set(params.allowed_token_ids) <= banned:
                raise ValueError("allowed_token_ids leaves no token to sample: each id is a one-token bad word or a "
                                 f"stop token (EOS, stop_token_ids), which min_tokens ({params.min_tokens}) forbids")
        if request_id in self.parents:
            raise ValueError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, list(prompt)
            vocab = self.model_cfg.text.vocab_size
            if any(not isinstance(t, int) or not 0 <= t < vocab for t in ids):
                raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        if params.truncate_prompt_tokens is not None:
            text, ids = self._truncated(text, ids, params.truncate_prompt_tokens, bool(media))
        prompt_media = None
        if media:
            ids, prompt_media = self._place_media(ids, list(media))
        parent = _Parent(request_id, text, ids)
        # Build and check every sub-request (grammar, prompt length, seed) before queueing any: whatever
        # raises here leaves the scheduler untouched.
        guides = [self.guided.matcher(params.guided) for _ in range(params.n)] if params.guided else None
        arrival = time.monotonic()
        for i in range(params.n):
            sub = params if params.n == 1 else _child_params(params, i)
            sid = request_id if params.n == 1 else f"{request_id}#{i}"
            req = Request(sid, list(ids), sub, arrival=arrival, media=prompt_media)
            self.scheduler.prepare(req)  # raises ValueError for prompts that can never run
            stop = StopChecker(self.tokenizer, sub, self.eos_ids, max_tokens=req.max_len - len(ids))
            seq = _Seq(req, request_id, i, stop, PenaltyState(ids, min_tokens_stop_ids(sub, self.eos_ids)),
                       self._generator(sub.seed), CompletionOutput(i), guide=guides[i] if guides else None,
                       prompt_logprobs=[None] if sub.prompt_logprobs is not None else None,
                       drafting=DraftPolicy(k=self.spec.k, acceptance_floor=self.spec.acceptance_floor)
                       if self.spec is not None else None)
            parent.seqs.append(seq)
        self.scheduler.share_prompt([seq.req for seq in parent.seqs])
        self.scheduler.enqueue([seq.req for seq in parent.seqs])  # cannot fail
        self.parents[request_id] = parent
        self.seqs.update((seq.req.request_id, seq) for seq in parent.seqs)

    def _truncated(self, text: str | None, ids: list[int], keep: int, media: bool) -> tuple[str | None, list[int]]:
        """The prompt's last `keep` tokens (vLLM's truncate_prompt_tokens; -1: as many as leave one token of the
        context for the answer); the text only where nothing was cut. A cut prompt that still fills the context is
        refused later, as any such prompt."""
        cut = truncate_prompt(ids, keep, self.max_model_len, media)
        return (text if len(cut) == len(ids) else None), cut

    def vision_note(self) -> str:
        """One line for the start-up banner: whether and how images and video are taken."""
        v = self.model_cfg.vision
        if v is None:
            return "off (the checkpoint has no vision tower)"
        if self.model.visual is None:
            return "off (language model only: the tower is not loaded)"
        limits = ", ".join(f"{n} {k}s" for k, n in sorted(self.limit_mm_per_prompt.items())) or "no limit"
        return (f"images and video, tower of {v.depth} blocks x {v.hidden_size} in "
                f"{str(self.model.dtype).removeprefix('torch.')}; per prompt: {limits}")

    def _place_media(self, ids: list[int], media: list[MediaItem]) -> tuple[list[int], PromptMedia]:
        """The prompt with its placeholders expanded, and where each item's rows and positions go."""
        if self.model.visual is None:
            why = ("the checkpoint has no vision tower" if self.model_cfg.vision is None else
                   "the engine runs the language model only (--language-model-only)")
            raise ValueError(f"this request has images or video, but {why}")
        counts = Counter(item.kind for item in media)
        for kind, n in counts.items():
            limit = self.limit_mm_per_prompt.get(kind)
            if limit is not None and n > limit:
                raise ValueError(f"the prompt has {n} {kind}(s); at most {limit} are allowed per prompt "
                                 "(--limit-mm-per-prompt)")
        image_id, video_id = (self.tokenizer.token_to_id(t) for t in ("<|image_pad|>", "<|video_pad|>"))
        expanded = ids.count(image_id) + ids.count(video_id) == sum(item.num_tokens for item in media)
        if not expanded:
            ids = expand_placeholders(ids, media, self.tokenizer)
        runs = placeholder_spans(ids, media, image_id, video_id)
        return ids, PromptMedia.build(media, runs)

    def _generator(self, seed: int | None) -> torch.Generator | None:
        """The request's own noise stream, on the logits' device (the sampler requires it there)."""
        if seed is None:
            return None
        try:
            return torch.Generator(device=self.runner.device).manual_seed(seed)
        except (ValueError, OverflowError, RuntimeError) as e:  # SamplingParams checks the range already
            raise ValueError(f"seed {seed} cannot seed a generator: {e}") from None

    def abort(self, request_id: str) -> bool:
        parent = self.parents.pop(request_id, None)
        if parent is None:
            return False
        for seq in parent.seqs:
            if not seq.req.finished:
                self.scheduler.finish(seq.req, "abort")
            self.seqs.pop(seq.req.request_id, None)
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # -- tensor parallel ----------------------------------------------------------------------------
    def follow(self) -> None:
        """Ranks other than 0: run rank 0's steps until it closes."""
        self.runner.follow()

    def close(self) -> None:
        """Stop the other ranks (tensor parallel); a no-op on one rank. The engine cannot step afterwards."""
        runner = getattr(self, "runner", None)
        if self.ranks is not None:
            self.ranks.closing = True  # the ranks exit after "stop": not a failure
        if runner is not None and self.group.size > 1 and self.group.is_first:
            try:
                runner.stop_followers()
            except Exception:  # a rank is already gone: nothing to tell it
                pass
        if self.ranks is not None:
            self.ranks.close()
            self.ranks = None
        if self.group.size > 1:
            self.group.destroy()

    def parallel_note(self) -> str:
        """One line for the start-up banner: how the model is split."""
        return self.model.shard.describe()

    def expert_load(self) -> list[int]:
        """Expert parallel: tokens routed to each rank's experts so far (all MoE layers); empty otherwise."""
        if not self._moe_layers:
            return []
        total = sum(m.load for m in self._moe_layers)
        return [int(x) for x in total.view(self.group.size, -1).sum(1)]

    # -- one step -----------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model and sample once; outputs of the requests that moved."""
        with runtime.flush_denormals():  # FTZ/DAZ for the compute only: see runtime.py
            return self._step()

    @torch.inference_mode()
    def _step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if not sched.seqs:
            return []
        self.preemptions += len(sched.preempted)
        touched: dict[str, _Parent] = {}  # parents with news for the caller
        step_seqs = [self.seqs[s.request.request_id] for s in sched.seqs]
        try:
            logits = self._forward(sched)
        except Exception as e:  # global (out of memory, a kernel error): fails the whole step
            self._fail_all(step_seqs, "forward pass", e, touched)
            return [self._output(p) for p in touched.values()]
        prompt_lps, self.runner.prompt_logprobs = self.runner.prompt_logprobs, {}
        for rid, (first, entries) in prompt_lps.items():
            self._guarded(self.seqs[rid], "collecting prompt logprobs", touched, self._add_prompt_logprobs,
                          self.seqs[rid], first, entries)

        # logits: one row per sampling sequence, 1 + num_draft for one verifying drafts
        rows, start = [], 0
        for q, s in zip(step_seqs, sched.seqs):
            if s.sample:
                rows.append((q, s, start))
                start += 1 + s.num_draft
        live = [(q, s, r) for q, s, r in rows if not q.req.finished]  # a request may have failed above
        if live and len(live) < len(rows):
            keep = [r + i for _, s, r in live for i in range(1 + s.num_draft)]
            logits = logits[torch.tensor(keep, device=logits.device)]
        if any(s.num_draft for _, s, _ in live):
            self._verify(logits, [(q, s) for q, s, _ in live], touched)
        elif live:
            self._sample(logits, [q for q, _, _ in live], touched)
        if self.spec is not None:
            self._draft(sched.seqs)
        return [self._output(p) for p in touched.values()]

    def _sample(self, logits: torch.Tensor, sampled: list[_Seq], touched: dict[str, _Parent]) -> None:
        """One token for each sampling sequence."""
        guided = [i for i, q in enumerate(sampled) if q.guide is not None]
        if guided:
            self._apply_guided(logits, sampled, guided, touched)
        try:
            out = self.sampler(logits, [q.req.params for q in sampled], [q.penalties for q in sampled],
                               [q.generator for q in sampled])
            tokens = out.token_ids.tolist()
        except Exception as e:  # one call for every sampled row: fails them all (prefill chunks go on)
            self._fail_all(sampled, "sampling", e, touched)
            return
        for i, seq in enumerate(sampled):
            if not seq.req.finished:  # a sibling sub-request may have failed it
                self._guarded(seq, "processing the output", touched, self._append, seq, tokens[i], out, i)
                touched[seq.parent] = self.parents[seq.parent]

    def _verify(self, logits: torch.Tensor, seqs: list[tuple[_Seq, ScheduledSeq]],
                touched: dict[str, _Parent]) -> None:
        """Speculative step: keep the drafts the target agrees with (verify.py), roll back the rest, emit."""
        drafts = [q.req.draft_ids[:s.num_draft] for q, s in seqs]
        params, histories, starts = [], [], []
        for (q, _), d in zip(seqs, drafts):
            starts.append(len(params))
            params += [q.req.params] * (len(d) + 1)
            histories += row_histories(q.penalties, q.req.params, d)
        for (q, _), d, r in zip(seqs, drafts, starts):
            if q.guide is not None:  # row i is masked by the grammar state after d_1..d_i
                self._guarded(q, "applying the grammar", touched, self.guided.apply_drafts, logits, r, q.guide, d)
        try:
            out, kept = verify(logits, params, histories, [q.generator for q, _ in seqs], drafts,
                               self.sampler.generator)
            tokens = out.token_ids.tolist()
        except Exception as e:
            self._fail_all([q for q, _ in seqs], "sampling", e, touched)
            return
        live = [(q, d, n) for (q, _), d, n in zip(seqs, drafts, kept) if not q.req.finished]
        # roll back before emitting: emitting may finish a request and save its prefix (state included)
        self.runner.drafter.rollback([(q.req, len(d), n) for q, d, n in live])
        for q, d, n in live:
            q.req.num_computed -= len(d) - n
            q.req.draft_ids = []
            q.drafting.record(len(d), n)
            self.spec_stats.record(len(d), n)
        for (q, _), r, n in zip(seqs, starts, kept):
            for i in range(n + 1):
                if q.req.finished:  # a stop string, EOS or max_tokens among the kept tokens
                    break
                self._guarded(q, "processing the output", touched, self._append, q, tokens[r + i], out, r + i)
            touched[q.parent] = self.parents[q.parent]

    def _draft(self, seqs: list[ScheduledSeq]) -> None:
        """Run the MTP head over this step's sequences and give the ones that sampled their next drafts."""
        busy = self.spec.disable_by_batch_size is not None and len(self.scheduler.running) >= \
            self.spec.disable_by_batch_size
        budgets = {}
        for s in seqs:
            req = s.request
            seq = self.seqs.get(req.request_id)
            if req.finished or seq is None or not s.sample:
                continue
            k = min(seq.drafting.budget(), req.max_len - req.num_tokens - 1)
            if k > 0 and not busy and self.scheduler.reserve(req, req.num_tokens + k):
                budgets[id(req)] = k
        try:
            drafts = self.runner.drafter.propose(budgets)
        except Exception:  # drafts only make decoding faster: go on without them
            log.exception("MTP drafting failed; this step drafts nothing")
            return
        for s in seqs:
            if id(s.request) in drafts:
                s.request.draft_ids = drafts[id(s.request)]

    def _forward(self, sched) -> torch.Tensor:
        """Prepare the cache (fresh or restored GDN state), run the model, save prefix checkpoints reached."""
        hit_reqs = {id(r) for r, _ in sched.hits}
        for s in sched.seqs:  # fresh state for requests starting from scratch
            if s.context == 0 and id(s.request) not in hit_reqs:
                self.runner.reset_state(s.request)
        for req, hit in sched.hits:
            self.runner.restore(req, hit)
        logits = self.runner.forward(sched.seqs)
        self.scheduler.on_step_done(sched.seqs)
        for s in sched.seqs:  # prefix checkpoints reached by this step
            if s.save_at is not None:
                self._save_prefix(s.request, s.save_at)
        return logits

    def _apply_guided(self, logits: torch.Tensor, sampled: list[_Seq], rows: list[int],
                      touched: dict[str, _Parent]) -> None:
        """Mask the grammar rows, all at once; if that fails, row by row so only the failing requests end."""
        try:
            self.guided.apply(logits, rows, [sampled[i].guide for i in rows])
        except Exception:
            for i in rows:
                self._guarded(sampled[i], "applying the grammar", touched, self.guided.apply,
                              logits, [i], [sampled[i].guide])

    def _guarded(self, seq: _Seq, what: str, touched: dict[str, _Parent], fn, *args) -> None:
        """Run work that belongs to `seq` alone; if it raises, fail that request and let the others go on."""
        try:
            fn(*args)
        except ConstraintFailed as e:
            log.warning("request %s: %s", seq.parent, e)
            self._fail(seq, str(e), touched, request_error=True)
        except Exception as e:
            log.exception("request %s: %s failed", seq.parent, what)
            self._fail(seq, f"{what} failed ({type(e).__name__})", touched)

    def _fail_all(self, seqs: list[_Seq], what: str, e: Exception, touched: dict[str, _Parent]) -> None:
        log.error("%s failed: failing the %d requests of this step", what, len(seqs), exc_info=e)
        for seq in seqs:
            self._fail(seq, f"{what} failed ({type(e).__name__})", touched)

    def _fail(self, seq: _Seq, message: str, touched: dict[str, _Parent], request_error: bool = False) -> None:
        """Finish `seq`'s request, every sub-request of it, with an error, and free their cache."""
        parent = self.parents[seq.parent]
        if parent.error is None:
            parent.error, parent.error_is_request = message, request_error
        for sib in parent.seqs:
            if not sib.req.finished:
                self.scheduler.finish(sib.req, "error")
                sib.completion.finish_reason = "error"
        touched[parent.request_id] = parent

    def _add_prompt_logprobs(self, seq: _Seq, first: int, entries: list[dict[int, float]]) -> None:
        """Append the entries for prompt tokens first, first + 1, ... (a recomputed chunk adds nothing new)."""
        have = len(seq.prompt_logprobs)
        if first <= have:
            seq.prompt_logprobs.extend(entries[have - first:])

    def _append(self, seq: _Seq, token: int, out: SamplerOutput, i: int) -> None:
        req = seq.req
        req.output_ids.append(token)
        seq.penalties.append(token)
        c = seq.completion
        if out.logprobs is not None and req.params.logprobs is not None:
            entry = {token: float(out.logprobs[i])}
            n = req.params.logprobs
            if n and out.top_ids is not None:  # top_* are None when no row asked for top logprobs
                for tid, lp in zip(out.top_ids[i, :n].tolist(), out.top_logprobs[i, :n].tolist()):
                    entry.setdefault(tid, lp)
            c.logprobs = (c.logprobs or []) + [entry]
            c.cumulative_logprob = (c.cumulative_logprob or 0.0) + float(out.logprobs[i])
        delta = seq.stop.feed(token)  # the stop checker also ends at max_tokens ("length")
        if seq.guide is not None and delta.finish_reason is None:
            if not seq.guide.accept(token):  # e.g. llguidance's "too complex" limits, met mid-generation: the
                # output can no longer be held to the constraint, so the request fails (not a "stop" with
                # broken JSON); `_guarded` ends it with an error
                raise ConstraintFailed(f"the structured-output constraint failed after {len(c.token_ids)} tokens: "
                                       f"{seq.guide.error}")
            if seq.guide.is_finished():  # the grammar is complete: only EOS could follow
                more = seq.stop.force_finish("stop")
                delta = Delta(delta.text + more.text, "stop")
        c.delta_text += delta.text
        c.text += delta.text
        c.delta_token_ids.append(token)
        c.token_ids.append(token)
        if delta.finish_reason is not None:
            c.finish_reason, c.stop_reason = delta.finish_reason, seq.stop.stop_reason
            c.text = seq.stop.text
            self._save_finished(req)
            self.scheduler.finish(req, delta.finish_reason)

    def _save_finished(self, req: Request) -> None:
        """Keep the finished sequence's prefix: the next chat turn or agent step usually extends it. (A stop
        inside a run of kept drafts can leave more tokens computed than emitted: that state is not a prefix
        of the text and is not kept.)"""
        if req.slot is not None and self.cfg.block_size <= req.num_computed <= req.num_tokens:
            self._save_prefix(req, req.num_computed)

    def _save_prefix(self, req: Request, length: int) -> None:
        """Register `req`'s first `length` tokens in the prefix cache and copy its GDN state there."""
        prefix = self.scheduler.prefix
        slot = prefix.insert(req.prefix_ids, length, req.blocks, req.params.cache_salt)
        if slot is not None:
            try:
                self.runner.save_state(req, slot)
            except BaseException:
                prefix.discard(req.prefix_ids, length, req.params.cache_salt)  # never an entry without its state
                raise

    def _output(self, parent: _Parent) -> RequestOutput:
        outs = []
        for seq in parent.seqs:
            c = seq.completion
            outs.append(CompletionOutput(c.index, c.text, list(c.token_ids), c.cumulative_logprob,
                                         list(c.logprobs) if c.logprobs is not None else None, c.finish_reason,
                                         c.stop_reason, c.delta_text, list(c.delta_token_ids)))
            c.delta_text, c.delta_token_ids = "", []
        finished = all(seq.req.finished for seq in parent.seqs)
        cached = max(seq.req.num_cached for seq in parent.seqs)
        if finished:
            self.parents.pop(parent.request_id, None)
            for seq in parent.seqs:
                self.seqs.pop(seq.req.request_id, None)
        plp = parent.seqs[0].prompt_logprobs
        plp = plp if plp is not None and len(plp) == len(parent.prompt_ids) else None  # complete ones only
        return RequestOutput(parent.request_id, parent.prompt, parent.prompt_ids, outs, finished, cached,
                             prompt_logprobs=plp, error=parent.error, error_is_request=parent.error_is_request)

    # -- introspection ------------------------------------------------------------------------------
    def speculation(self) -> str:
        """One line for the start-up banner: whether and how the engine speculates."""
        if self.spec is not None:
            return (f"MTP head, {self.spec.k} draft token(s) per step (drafting pauses per request "
                    f"while fewer than {self.spec.acceptance_floor:.0%} of its drafts are kept)")
        return self.spec_note or "off"

    def cache_usage(self) -> dict[str, int]:
        """Pool and prefix-cache counters for metrics.

        blocks_*/slots_*: K/V blocks and running-request GDN state slots. running/waiting: sub-requests
        (n > 1 counts n). num_waiting_requests / num_running_requests: client requests with a sub-request
        waiting for admission / none waiting. blocks_prefix_only: blocks that only prefix-cache entries hold
        (freed by clearing it); prefix_slots_*: the prefix cache's own state slots; prefix_cache_bytes: the
        memory only the prefix cache holds (those blocks and its used slots).
        """
        s, prefix = self.scheduler, self.scheduler.prefix
        prefix_only = prefix.exclusive_blocks()
        prefix_slots_used = prefix.slots.capacity - prefix.slots.num_free
        waiting_parents = {self.seqs[r.request_id].parent for r in s.waiting if r.request_id in self.seqs}
        return {"blocks_total": s.blocks.num_blocks, "blocks_free": s.blocks.num_free,
                "slots_total": s.slots.capacity, "slots_free": s.slots.num_free,
                "prefix_entries": len(prefix), "prefix_hits": prefix.hits, "prefix_misses": prefix.misses,
                "prefix_hit_tokens": prefix.hit_tokens, "running": len(s.running), "waiting": len(s.waiting),
                "preemptions": self.preemptions,
                "num_waiting_requests": len(waiting_parents),
                "num_running_requests": len(self.parents) - len(waiting_parents),
                "blocks_prefix_only": prefix_only,
                "prefix_slots_used": prefix_slots_used, "prefix_slots_total": prefix.slots.capacity,
                "prefix_cache_bytes": prefix_only * self.plan.block_bytes + prefix_slots_used * self.plan.slot_bytes,
                "expert_load": self.expert_load(),
                **self.spec_stats.as_counters()}


def _child_params(params: SamplingParams, i: int) -> SamplingParams:
    """Sub-request i of an n > 1 request: seed + i (as vLLM); prompt logprobs only once, from sub-request 0."""
    from dataclasses import replace

    return replace(params, n=1, seed=None if params.seed is None else params.seed + i,
                   prompt_logprobs=params.prompt_logprobs if i == 0 else None)
