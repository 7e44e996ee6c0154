"""Token-budget scheduler with chunked prefill. Torch-free: it counts tokens and hands out cache.

Each step every running request gets the tokens it still needs (one for decode, a chunk for a prompt),
then waiting requests are admitted in arrival order while the token budget, `max_num_seqs`, state slots
and K/V blocks allow. There is no prefill or decode phase: prompt chunks and decodes share a step.
A prompt chunk is cut at the request's next prefix-cache checkpoint so its GDN state can be saved there.
When blocks run out, prefix-cache entries are evicted first, then the newest running request is preempted
(its cache freed; it is recomputed later from prompt + output so far).
Requests asking for prompt logprobs never start from a prefix-cache hit: every prompt position must be computed.
Speculative decoding: a request's `draft_ids` ride along after its last token (verified in the same forward);
drafts that do not fit the step's token budget are dropped, and preemption drops them all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .kv_cache_manager import BlockPool, PrefixCache, PrefixHit, SlotPool, checkpoint_positions
from .request import Request, Status


SHARE_SLACK = 16  # a mark this close to the prompt's end serves n > 1 siblings: they recompute the rest


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    block_size: int = 16
    checkpoint_every: int = 1024  # also save GDN state every this many prompt tokens (0: off)
    checkpoint_min: int = 128  # shorter prefixes are recomputed rather than saved
    checkpoint_min_gap: int = 0  # checkpoints closer than this to a chunk's start do not split it
    boundary_token_id: int | None = None  # the tokenizer's <|im_start|> (the engine passes it); None: no turn marks
    # vision-tower patches a step may encode (items whose placeholders start in the step's chunks); one item
    # larger than this still runs alone. 0: no limit
    max_encoder_patches: int = 0


@dataclass(eq=False)
class ScheduledSeq:
    request: Request
    num_tokens: int  # new tokens computed this step
    context: int  # tokens already cached before this step
    sample: bool  # the chunk reaches the end of the known tokens: sample the next one
    save_at: int | None  # prefix checkpoint reached at the end of this chunk
    num_draft: int = 0  # of the new tokens, draft tokens to verify (the last num_draft)


@dataclass
class SchedulerOutput:
    seqs: list[ScheduledSeq] = field(default_factory=list)
    hits: list[tuple[Request, PrefixHit]] = field(default_factory=list)  # restore these before the forward
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, num_blocks: int, run_slots: list[int], prefix_slots: list[int]) -> None:
        self.cfg = cfg
        self.blocks = BlockPool(num_blocks)
        self.slots = SlotPool(run_slots)
        self.prefix = PrefixCache(self.blocks, SlotPool(prefix_slots), cfg.block_size)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._encoded = 0

    # -- requests -----------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        self.prepare(req)
        self.enqueue([req])

    def prepare(self, req: Request) -> None:
        """Check that `req` can ever run (ValueError if not) and fix its length limit; queues nothing."""
        n = len(req.prompt_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        if n >= self.cfg.max_model_len:
            raise ValueError(f"the prompt has {n} tokens, the model's context is {self.cfg.max_model_len} "
                             f"tokens (max_model_len), which leaves no room to generate")
        need = self._blocks_for(n + 1)
        if need > self.blocks.num_blocks:
            raise ValueError(f"the prompt needs {need} KV blocks but the cache holds {self.blocks.num_blocks}; "
                             f"raise the KV cache memory or shorten the prompt")
        budget = self.cfg.max_model_len - n
        req.max_len = n + (budget if req.params.max_tokens is None else min(req.params.max_tokens, budget))
        req.max_len = min(req.max_len, self.blocks.num_blocks * self.cfg.block_size)  # alone, it always fits
        req.checkpoints = checkpoint_positions(req.prompt_ids, self.cfg.boundary_token_id,
                                               self.cfg.checkpoint_min, self.cfg.checkpoint_every,
                                               self.cfg.checkpoint_min_gap)

    def enqueue(self, reqs: list[Request]) -> None:
        """Queue prepared requests (cannot fail: the engine adds a request's n sub-requests all or none)."""
        self.waiting.extend(reqs)

    def share_prompt(self, reqs: list[Request]) -> None:
        """The n sub-requests of one request (prepared, not queued yet) prefill their prompt once: each saves
        the prompt's state at its last token but one (where the prefix cache's last mark is further back), and
        a sub-request whose sibling is still in its prompt waits for it (`_after_sibling`), then starts from
        that entry instead of computing the whole prompt again. Nothing changes without a prefix cache."""
        if len(reqs) < 2 or not self.prefix.can_insert():
            return
        for r in reqs:
            r.siblings = [o for o in reqs if o is not r]
            end = len(r.prompt_ids) - 1
            if end >= self.cfg.checkpoint_min and (not r.checkpoints or r.checkpoints[-1] + SHARE_SLACK < end):
                r.checkpoints = r.checkpoints + [end]

    @staticmethod
    def _after_sibling(req: Request) -> bool:
        """Whether `req` should wait: a sibling is computing the prompt they share (`share_prompt`) and has a
        prefix-cache mark still to save in it."""
        return req.num_computed == 0 and req.params.prompt_logprobs is None and any(
            s.status == Status.RUNNING and any(s.num_computed < c for c in s.checkpoints) for s in req.siblings)

    def finish(self, req: Request, reason: str) -> None:
        """Mark finished (or aborted) and free its cache. Safe to call in any state."""
        if req.status == Status.RUNNING:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self._free(req)
        req.status, req.finish_reason = Status.FINISHED, reason

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step -----------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.cfg.max_num_batched_tokens
        self._encoded = 0  # patches the step's chunks send through the vision tower so far
        for req in list(self.running):
            if budget == 0:
                break
            if req.status != Status.RUNNING:  # preempted earlier in this loop
                continue
            n = self._cap_at_encoder(req, req.num_computed, self._chunk(req, budget))
            if n == 0:
                continue  # its next media item waits for a step with encoder budget left
            if not self._grow(req, req.num_computed + n, out):
                continue  # req itself was preempted
            out.seqs.append(self._seq(req, n))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs and self.slots.num_free:
            req = self.waiting[0]
            if self._after_sibling(req):
                break  # for a step or a few: then its prompt is one prefix-cache hit
            # a request that wants prompt logprobs computes its whole prompt (as vLLM, it skips the prefix cache)
            lookup = req.num_computed == 0 and req.params.prompt_logprobs is None
            hit = self.prefix.lookup(req.prefix_ids, req.num_tokens - 1, req.prefix_keys,
                                     req.params.cache_salt) if lookup else None
            start = hit.length if hit else 0
            n = min(req.num_tokens - start, budget)
            n = self._cap_at_encoder(req, start, self._cap_at_checkpoint(req, start, n))
            if n == 0:
                if hit:
                    self.blocks.release(hit.shared_blocks)
                break
            shared = hit.shared_blocks if hit else []
            own = self._blocks_for(start + n) - len(shared)
            if not self.prefix.make_room(own, all_or_nothing=True):
                if hit:
                    self.blocks.release(shared)
                break  # head-of-line: wait for running requests to free blocks
            self.waiting.popleft()
            if lookup:
                self.prefix.record(hit)
            req.blocks = shared + self.blocks.allocate(own)
            req.slot = self.slots.allocate()
            req.status = Status.RUNNING
            req.num_computed = req.num_cached = start
            self.running.append(req)
            if hit:
                out.hits.append((req, hit))
            out.seqs.append(self._seq(req, n))
            budget -= n
        return out

    def _seq(self, req: Request, n: int) -> ScheduledSeq:
        end = req.num_computed + n
        return ScheduledSeq(req, n, req.num_computed, sample=end >= req.num_tokens,
                            save_at=end if end in req.checkpoints else None, num_draft=max(end - req.num_tokens, 0))

    def _chunk(self, req: Request, budget: int) -> int:
        n = min(req.num_tokens + len(req.draft_ids) - req.num_computed, budget)
        if req.draft_ids:  # drafts follow the last token: keep those that fit
            del req.draft_ids[max(req.num_computed + n - req.num_tokens, 0):]
        return self._cap_at_checkpoint(req, req.num_computed, n)

    def _cap_at_checkpoint(self, req: Request, start: int, n: int) -> int:
        """Cut a chunk at the first checkpoint inside it, unless that is fewer than `checkpoint_min_gap`
        tokens in: a few tokens more in one forward cost next to nothing, a separate forward costs a step
        (a chat turn's 26 new tokens after a prefix hit went from three forwards to one)."""
        first = start + max(self.cfg.checkpoint_min_gap, 1)
        for c in req.checkpoints:
            if first <= c < start + n:
                return c - start
        return n

    def _cap_at_encoder(self, req: Request, start: int, n: int) -> int:
        """Cut a chunk before the first media item that would take the step past its encoder budget (an item
        counts in the chunk where its placeholders start) and charge the items it keeps."""
        limit = self.cfg.max_encoder_patches
        if req.media is None or not limit:
            return n
        cost = 0
        for item, runs in zip(req.media.items, req.media.runs):
            first = runs[0][0]
            if start <= first < start + n:
                if self._encoded + cost + item.num_patches > limit and self._encoded + cost > 0:
                    n = first - start
                    break
                cost += item.num_patches
        self._encoded += cost
        return n

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.cfg.block_size)

    def _grow(self, req: Request, tokens: int, out: SchedulerOutput) -> bool:
        """Give `req` blocks for `tokens` positions, evicting prefixes, then preempting newer requests."""
        need = self._blocks_for(tokens) - len(req.blocks)
        while need > 0 and not self.prefix.make_room(need):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is req:
                return False
        if need > 0:
            req.blocks += self.blocks.allocate(need)
        return True

    def reserve(self, req: Request, tokens: int) -> bool:
        """Give `req` blocks for `tokens` positions if free blocks (or prefix-cache evictions) allow; never
        preempts. The engine reserves room for next step's drafts this way."""
        need = self._blocks_for(tokens) - len(req.blocks)
        if need <= 0:
            return True
        if not self.prefix.make_room(need):
            return False
        req.blocks += self.blocks.allocate(need)
        return True

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        self._free(req)
        req.status, req.num_computed, req.num_cached = Status.WAITING, 0, 0
        req.checkpoints = []  # recomputation saves nothing new
        req.draft_ids = []
        self.waiting.appendleft(req)
        out.preempted.append(req)

    def _free(self, req: Request) -> None:
        if req.blocks:
            self.blocks.release(req.blocks)
            req.blocks = []
        if req.slot is not None:
            self.slots.release(req.slot)
            req.slot = None

    def on_step_done(self, seqs: list[ScheduledSeq]) -> None:
        for s in seqs:
            s.request.num_computed += s.num_tokens
