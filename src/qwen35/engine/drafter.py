"""`Drafter`: the MTP side of speculative decoding, and the GDN rollback of rejected drafts.

Each step the runner hands over the main model's hidden states. After the engine has decided which tokens
to keep, `propose` runs the MTP head:

1. over the same rows as the step (prompt chunks and verified tokens alike): row i pairs the hidden of
   position i with the token now known at position i + 1, which fills the head's K/V (cache id `mtp.0`) for
   every position, as vLLM does. Rows past the last kept token carry token 0: causal attention keeps them
   from the rows that matter, and later steps overwrite their K/V. The row of the last kept position
   gives the first draft token.
2. then k - 1 chained single-token steps, feeding the head's own output back with the previous draft.

Drafts are the argmax of the head's logits (the verification in verify.py treats them as point masses).
With a draft vocabulary (`draft_ids`), the argmax runs over those tokens only: the draft lm_head then reads
len(draft_ids) rows of the output embedding instead of all of them, which on a small model is most of the
cost of a draft step. Drafts outside it are never proposed; the output is unchanged either way.

Rollback: the target forward writes the GDN state after each of the last k + 1 tokens of a verifying
sequence into scratch slots (`snapshot_slots`); scratch slots are fixed per running slot (`base + slot * k
+ j`), so nothing is allocated per step and nothing can leak. Keeping n of k drafts is one slot copy
(`restore_snapshots`); attention K/V past the kept tokens is simply overwritten later.

Tensor parallel: rank 0 turns a proposal into `DraftInputs` (plain data) and every rank runs `run_draft`
(runner.py); the chained steps feed back `model.argmax`, which is the same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..model.linear import QuantLinear
from .request import Request
from .scheduler import ScheduledSeq

if TYPE_CHECKING:
    from .runner import MediaStep, ModelRunner


@dataclass(eq=False)
class Drafting:
    """One sequence that drafts: its row in the head's first output, how many drafts, where they go."""

    row: int
    budget: int
    num_tokens: int
    slot: int
    blocks: list[int]
    rope_offset: int


@dataclass(eq=False)
class DraftInputs:
    """A proposal as plain data: the head's first step over the live sequences' rows, then the chains."""

    rows: list[tuple[int, int]] | None  # (first row, rows) of each live sequence in the step's hidden; None: all
    ids: list[list[int]]
    contexts: list[int]
    slots: list[int]
    blocks: list[list[int]]
    media: "MediaStep | None"
    drafting: list[Drafting]


class Drafter:
    def __init__(self, runner: "ModelRunner", k: int, scratch_base: int,
                 draft_ids: list[int] | None = None) -> None:
        if runner.model.mtp is None:
            raise ValueError("speculative decoding needs the model's MTP head (load_model(mtp=True))")
        self.runner, self.k, self.base = runner, k, scratch_base
        self.vocab_ids: torch.Tensor | None = None  # draft vocabulary (None: all of it); this rank's part of it
        self.head: torch.Tensor | None = None  # its rows of the lm_head weight [N, H]
        head = runner.model.lm_head
        weight = getattr(head, "weight", None)
        first, end = runner.model.shard.vocab  # this rank's vocabulary rows (all of them on one rank)
        ids = sorted(t for t in set(draft_ids or ()) if first <= t < end)
        if draft_ids is not None and isinstance(head, QuantLinear):  # its rows, dequantised once
            self.vocab_ids = torch.tensor(ids, dtype=torch.int64, device=head.q.device)
            self.head = head.rows(self.vocab_ids - first, runner.model.dtype)
        elif draft_ids is not None and weight.is_floating_point() and weight.element_size() >= 2:
            self.vocab_ids = torch.tensor(ids, dtype=torch.int64, device=weight.device)
            self.head = weight.detach()[self.vocab_ids - first].contiguous()
        self._seqs: list[ScheduledSeq] = []  # the last step's sequences, in batch order
        self._hidden: torch.Tensor | None = None

    # -- the target step ------------------------------------------------------------------------------
    def snapshot_rows(self, seqs: list[ScheduledSeq]) -> list[list[int]] | None:
        """`snapshot_slots` rows for a step: k scratch slots (and -1 for the own slot) per verifying sequence."""
        if not any(s.num_draft for s in seqs):
            return None
        none = [-1] * (self.k + 1)
        return [self._scratch(s.request.slot) + [-1] if s.num_draft else none for s in seqs]

    def _scratch(self, slot: int) -> list[int]:
        start = self.base + slot * self.k
        return list(range(start, start + self.k))

    def keep(self, seqs: list[ScheduledSeq]) -> None:
        """Rank 0: the step's sequences, in batch order."""
        self._seqs = seqs

    def keep_hidden(self, hidden: torch.Tensor) -> None:
        """Every rank: the step's hidden states, which the head reads next."""
        self._hidden = hidden

    def rollback(self, kept: list[tuple[Request, int, int]]) -> None:
        """kept: (request, drafts verified, drafts kept). Puts the GDN state after the last kept token into
        each request's slot (nothing to do when every draft was kept)."""
        src, dst = [], []
        for req, drafted, n in kept:
            if n < drafted:
                src.append(self.base + req.slot * self.k + n + self.k - drafted)
                dst.append(req.slot)
        if src:
            self.runner.cache_op("restore_snapshots", src, dst)

    # -- drafting -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, budgets: dict[int, int]) -> dict[int, list[int]]:
        """Run the MTP head over the last step's sequences that are still running; `budgets[id(request)]`
        draft tokens for those that should draft (0 or absent: only fill the head's K/V).
        Returns {id(request): drafts}."""
        seqs, self._seqs = self._seqs, []
        if self._hidden is None:
            return {}
        rows, ids, live, starts = [], [], [], []  # starts: each live sequence's first row in the head's batch
        start = packed = 0
        for s in seqs:
            req = s.request
            if not req.finished and req.slot is not None:
                live.append(s)
                rows.append((start, s.num_tokens))
                starts.append(packed)
                packed += s.num_tokens
                known = max(min(s.num_tokens, req.num_tokens - s.context - 1), 0)
                ids.append(req.tokens(s.context + 1, known) + [0] * (s.num_tokens - known))
            start += s.num_tokens
        if not live:
            self._hidden = None
            return {}
        # the row of the last kept position: its next token is the request's last token
        drafting = [(s.request, Drafting(starts[i] + s.request.num_tokens - 2 - s.context, budgets[id(s.request)],
                                         s.request.num_tokens, s.request.slot, s.request.blocks,
                                         s.request.media.delta if s.request.media else 0))
                    for i, s in enumerate(live) if budgets.get(id(s.request), 0) > 0]
        # the rows keep the step's positions; a row whose next token is a media placeholder embeds its media row
        inputs = DraftInputs(None if len(live) == len(seqs) else rows, ids, [s.context for s in live],
                             [s.request.slot for s in live], [s.request.blocks for s in live],
                             self.runner.media_step([(s.request, s.context, s.num_tokens) for s in live], shift=1),
                             [d for _, d in drafting])
        drafts = self.runner.run("draft", inputs)
        return {id(req): d for (req, _), d in zip(drafting, drafts)}

    def run_draft(self, d: DraftInputs) -> list[list[int]]:
        """Every rank: the head over `d`'s rows, then the chained steps; the drafts of each `d.drafting`."""
        model, cache, builder = self.runner.model, self.runner.cache, self.runner.builder
        hidden, self._hidden = self._hidden, None
        if d.rows is None:
            h = hidden
        else:
            idx = torch.cat([torch.arange(a, a + n) for a, n in d.rows]).to(hidden.device)
            h = hidden[idx]
        media = d.media
        batch = builder.build(d.ids, d.contexts, d.slots, d.blocks, rope_offsets=media and media.rope_offsets,
                              mrope=media and media.mrope)
        embeds = media.inputs_embeds(model, batch.input_ids) if media else None
        out = model.draft(batch.input_ids, h, batch, cache, 0, embeds)
        if not d.drafting:
            return []
        h = out[torch.tensor([x.row for x in d.drafting], device=out.device)]
        chains = d.drafting
        drafts: list[list[int]] = [[] for _ in chains]
        active = list(range(len(chains)))
        for step in range(max(x.budget for x in chains)):
            tok = model.argmax(h, self.head, self.vocab_ids)
            for j, t in zip(active, tok.tolist()):
                drafts[j].append(t)
            more = [i for i, j in enumerate(active) if chains[j].budget > step + 1]
            if not more:
                break
            if len(more) < len(active):
                sel = torch.tensor(more, device=h.device)
                h, tok, active = h[sel], tok[sel], [active[i] for i in more]
            # chained step: the draft just made sits at position num_tokens + step
            now = [chains[j] for j in active]
            batch = builder.build([[t] for t in tok.tolist()], [x.num_tokens - 1 + step for x in now],
                                  [x.slot for x in now], [x.blocks for x in now],
                                  rope_offsets=[x.rope_offset for x in now])
            h = model.draft(batch.input_ids, h, batch, cache, step + 1)
        return drafts
