"""Speculative verification: which draft tokens to keep, so that the output follows the target model exactly.

A sequence that drafted d_1..d_k is run through the target model over [last token, d_1, ..., d_k] in one
forward; row i of its logits is the target's distribution p_i for the token after d_i (row 0: after the
last token). The rows go through the sampler's own pipeline (logit bias, penalties with the drafts before
the row counted as output, min_tokens, then temperature / top_k / top_p / min_p), so p_i is exactly the
distribution non-speculative sampling would use at that position. Then:

- greedy rows: d_{i+1} is kept while it equals argmax p_i; the first mismatch is replaced by argmax p_i, or,
  when every draft is kept, argmax p_k is added (the "bonus" token).
- sampled rows, rejection sampling (Leviathan et al. 2023; Chen et al. 2023) with the draft distribution q
  a point mass on d (drafts are the MTP head's argmax, as vLLM drafts): keep d_{i+1} with probability
  min(1, p_i(d)/q(d)) = p_i(d); at the first rejection sample from norm(max(p_i - q, 0)), which is p_i with
  d_{i+1} removed; if all k are kept, sample the bonus from p_k. Each emitted token is then distributed
  exactly as p at its position.

The rows' weights (exp(logit - max) over the survivors) come from their top candidates where every row
allows it (`sampler._candidates`: the Qwen presets' top_k of 20), else from the whole vocabulary; both give
the same weights (bench/bench_sampler.py times both).

Randomness: a seeded request draws k uniforms, then one more for the final token (the sampler's inverse
transform), from its own generator each step, so its output depends on its seed and its logits only.
"""

from __future__ import annotations

import torch

from ..ops.fused import argmax
from .sampler import (PenaltyState, SamplerOutput, _apply_bans, _apply_logit_bias, _apply_min_tokens, _apply_penalties,
                      _draw, _fill_logprobs, _index, _sanitize_, _survivors, _take_rows, _temperature_, _uniforms)
from .sampling_params import SamplingParams


def row_histories(history: PenaltyState, params: SamplingParams, drafts: list[int]) -> list[PenaltyState]:
    """The history each verification row of one sequence sees: row i has d_1..d_i as output too. Copies
    only when the request uses penalties, min_tokens or bad words of several tokens (otherwise every row shares
    `history`)."""
    k = len(drafts)
    needs = (params.repetition_penalty != 1 or params.presence_penalty != 0 or params.frequency_penalty != 0
             or (history.min_tokens_ids and len(history.output_ids) < params.min_tokens)
             or any(len(word) > 1 for word in params.bad_words_token_ids or ()))
    if not needs or k == 0:
        return [history] * (k + 1)
    rows = [history]
    for d in drafts:
        rows.append(rows[-1].copy())
        rows[-1].append(d)
    return rows


def verify(logits: torch.Tensor, params: list[SamplingParams], histories: list[PenaltyState],
           generators: list[torch.Generator | None], drafts: list[list[int]],
           shared: torch.Generator | None = None) -> tuple[SamplerOutput, list[int]]:
    """logits: [R, V] fp32 (modified in place), sequence b owning `len(drafts[b]) + 1` consecutive rows;
    params and histories: one per row (see `row_histories`); generators: one per sequence.

    Returns (out, accepted): accepted[b] drafts of sequence b are kept, and `out.token_ids[r]` is the token
    emitted at row r (the kept drafts, then the target's own token at row start_b + accepted[b]; later rows
    are meaningless). `out.logprobs` / `top_*` per row as the sampler reports them (raw logprobs)."""
    R, V = logits.shape
    dev = logits.device
    sizes = [len(d) + 1 for d in drafts]
    if sum(sizes) != R or len(params) != R or len(histories) != R or len(generators) != len(drafts):
        raise ValueError(f"verify: {R} logits rows for {len(drafts)} sequences of {sum(sizes)} rows, "
                         f"{len(params)} params, {len(histories)} histories, {len(generators)} generators")
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    _sanitize_(logits)
    lp_rows = [r for r, p in enumerate(params) if p.logprobs is not None]
    lp = torch.log_softmax(_take_rows(logits, lp_rows), -1) if lp_rows else None
    _apply_logit_bias(logits, params)
    _apply_bans(logits, params, histories)
    _apply_penalties(logits, params, histories)
    _apply_min_tokens(logits, params, histories)

    tokens = torch.zeros(R, dtype=torch.int64, device=dev)
    accepted = [0] * len(drafts)
    greedy = [b for b in range(len(drafts)) if params[starts[b]].greedy]
    sampled = [b for b in range(len(drafts)) if not params[starts[b]].greedy]
    if greedy:
        rows = [starts[b] + i for b in greedy for i in range(sizes[b])]
        top = argmax(_take_rows(logits, rows))
        tokens[_index(rows, dev)] = top
        top, j = top.tolist(), 0
        for b in greedy:
            n = 0
            while n < len(drafts[b]) and top[j + n] == drafts[b][n]:
                n += 1
            accepted[b], j = n, j + sizes[b]
    if sampled:
        _verify_sampled(logits, params, generators, drafts, starts, sampled, tokens, accepted, shared)
    out = SamplerOutput(tokens)
    if lp is not None:
        _fill_logprobs(out, lp, lp_rows, [params[r].logprobs for r in lp_rows])
    return out, accepted


def _verify_sampled(logits, params, generators, drafts, starts, seqs, tokens, accepted, shared) -> None:
    """Rejection sampling for the sampled sequences `seqs` (see the module docstring); fills tokens/accepted."""
    dev = logits.device
    rows = [starts[b] + i for b in seqs for i in range(len(drafts[b]) + 1)]
    x = _take_rows(logits, rows).clone()
    row_params = [params[r] for r in rows]
    _temperature_(x, row_params)
    # each row's weights, over its surviving candidates (vocabulary order, `ids`) or over the whole vocabulary
    w, ids = _survivors(x, row_params)
    first = [0]  # sequence seqs[j]'s rows start at row first[j]
    for b in seqs[:-1]:
        first.append(first[-1] + len(drafts[b]) + 1)
    # p_i(d_{i+1}) for every draft, in one gather and one host copy
    pairs = [(f + i, d) for f, b in zip(first, seqs) for i, d in enumerate(drafts[b])]
    p_draft = []
    if pairs:
        r, d = _index([r for r, _ in pairs], dev), _index([d for _, d in pairs], dev)
        col, present = _columns(None if ids is None else ids[r], d)
        wr = w[r]
        p_draft = (torch.where(present, wr.gather(1, col), 0.0)[:, 0] / wr.cumsum(-1)[:, -1]).tolist()
    final_rows, removed, kept_rows, kept_tokens = [], [], [], []
    q = 0
    for f, b in zip(first, seqs):
        k = len(drafts[b])
        gen = generators[b] if generators[b] is not None else shared
        u = torch.rand(k, generator=gen, device=dev).tolist() if k else []
        n = 0
        while n < k and u[n] < p_draft[q + n]:  # NaN probabilities (no finite logit) reject
            n += 1
        q += k
        accepted[b] = n
        final_rows.append(f + n)
        removed.append(drafts[b][n] if n < k else -1)
        kept_rows += range(starts[b], starts[b] + n)
        kept_tokens += drafts[b][:n]
    if kept_rows:
        tokens[_index(kept_rows, dev)] = _index(kept_tokens, dev)
    final = _index(final_rows, dev)
    dist, dist_ids = w[final], None if ids is None else ids[final]  # [S, W]
    gone = [(i, d) for i, d in enumerate(removed) if d >= 0]
    if gone:  # p with the rejected draft's weight taken out
        i, d = _index([i for i, _ in gone], dev), _index([d for _, d in gone], dev)
        col, present = _columns(None if dist_ids is None else dist_ids[i], d)
        dist[i[:, None], col] = torch.where(present, 0.0, dist[i[:, None], col])
    # no mass left (no finite logit, or p was all on the rejected draft: cannot happen for u < 1): token 0
    picks = _draw(dist, dist_ids, _uniforms(len(seqs), dev, [generators[b] for b in seqs], shared))
    tokens[_index([starts[b] + accepted[b] for b in seqs], dev)] = picks


def _columns(ids: torch.Tensor | None, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where token d[j] sits in row j of the weights: (col [J, 1], present [J, 1]). Whole rows (ids None): at
    column d. Candidates (ids [J, W], ascending): at its place among them, present only if it survived."""
    if ids is None:
        return d[:, None], torch.ones(len(d), 1, dtype=torch.bool, device=d.device)
    col = torch.searchsorted(ids, d[:, None]).clamp_(max=ids.shape[1] - 1)
    return col, ids.gather(1, col) == d[:, None]
