"""`Sampler`: pick the next token for every request of one engine step, batched.

Pipeline, in vLLM's order, over logits [B, V] fp32 (B = rows sampled this step, V = vocab):

0. logit_bias added; ids outside `allowed_token_ids`, and the last token of a bad word whose other tokens
   end the output, get -inf;
1. penalties: repetition (tokens of prompt + output: positive logits divided, negative ones
   multiplied), presence (minus `presence_penalty` for tokens in the output) and frequency
   (minus `frequency_penalty * count in the output`);
2. min_tokens: the ids in `PenaltyState.min_tokens_ids` (EOS and stop_token_ids) get -inf while
   fewer than `min_tokens` tokens have been generated;
3. greedy rows (temperature 0) take the argmax here and ignore everything below (and the seed);
4. temperature, top_k, top_p, min_p, then one draw by inverse transform: with u ~ U[0, 1), the first
   token (in vocabulary order) whose running sum of exp(logit - max) exceeds u times the total.

Every filter is one tensor op for all rows, driven by per-row parameter tensors; a row that
switches a filter off gets a no-op threshold. The only Python loops are O(B) (building the
parameter tensors, and drawing the uniforms of seeded rows). Penalties touch only the distinct
(row, token) pairs of the histories, which `PenaltyState` keeps incrementally. A full sort of
[B, V] happens only when some row uses top_p without top_k; otherwise top_k and top_p work on
`topk(max k)`. Thresholds keep ties: every token whose logit equals the k-th (top_k) or the
last kept (top_p) logit survives. top_p without top_k cuts against the whole row's mass.

On CPU, when every row has a top_k up to 1,024 (the Qwen presets' 20) or a top_p alone whose nucleus
lies within its top 1,024 logits, the filters and the draw run over those candidates only
(`_candidates`). The thinking preset on a 248k vocabulary then takes 0.9 ms a row against 3.7, and top_p
alone 2.2 against 26 (a full sort). The token is the one the whole row gives: the same cut, and the same
weights drawn in the same order. Checking that the candidates hold every survivor reads a value on the
host; elsewhere nothing does (no sync).

Reproducibility: a row whose request has its own `torch.Generator` draws its uniform (one per
sampled step) from that generator only, and its weights and running sums do not depend on the
other rows, so a seeded request yields the same tokens whatever else is in the batch. Unseeded
rows draw from the sampler's shared generator. For `n > 1` the engine expands a request into n
sub-requests; sub-request i gets seed `seed + i` (as vLLM does) and its own
`torch.Generator(device).manual_seed(seed + i)`, created once at admission and kept for the whole
request.

Logprobs follow vLLM's default `logprobs_mode="raw_logprobs"`: `log_softmax` of the model's raw
logits, before penalties, temperature and filtering. `Sampler(logprobs_mode="penalized")` reports
them after penalties and min_tokens masking instead, still before temperature and filtering.

Totality: every row gets a token id in [0, V), whatever the logits hold. NaN logits (a broken
checkpoint) count as -inf and +inf as the largest float, on entry and again after the penalties and
the temperature (a tiny repetition_penalty or temperature can overflow); the top_p cut always keeps
the top token; a row left with no finite logit (all NaN, or everything masked) falls back to token 0.

`logits` is used as scratch space and modified in place (the caller's buffer is not preserved).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from qwen35.engine.sampling_params import SamplingParams
from qwen35.ops.fused import argmax

LOGPROBS_MODES = ("raw", "penalized")
FLOAT_MAX = torch.finfo(torch.float32).max
CANDIDATES_MAX = 1024  # rows with a top_k up to this sample from their top candidates (`_candidates`)
TOP_P_CANDIDATES = 1024  # and rows with top_p alone from their top this many, when their nucleus lies there
WEIGHT_COLUMNS = 64  # `_weights` computes exp over rows padded to a multiple of this (two AVX-512 vectors, unrolled)


def _sanitize_(x: torch.Tensor) -> torch.Tensor:
    """In place: NaN -> -inf (never chosen), +inf -> the largest float (so softmax stays defined)."""
    return x.nan_to_num_(nan=-math.inf, posinf=FLOAT_MAX, neginf=-math.inf)


def min_tokens_stop_ids(params: SamplingParams, eos_token_ids: Iterable[int]) -> tuple[int, ...]:
    """The ids to mask until `params.min_tokens` are generated: EOS (unless ignore_eos) + stop ids."""
    eos = () if params.ignore_eos else tuple(eos_token_ids)
    return tuple(dict.fromkeys((*eos, *params.stop_token_ids)))


class PenaltyState:
    """One request's token history, kept by the engine and updated with `append` after each step.

    It keeps `prompt_ids` and `output_ids` plus, incrementally, the distinct ids seen in prompt or
    output and each one's count in the output, in flat int64 arrays. `append` is O(1) and a
    sampler step reads the arrays as zero-copy tensors, so nothing recounts the history.
    """

    def __init__(self, prompt_ids: Sequence[int], min_tokens_ids: Iterable[int] = ()) -> None:
        self.prompt_ids = list(prompt_ids)
        self.output_ids: list[int] = []
        self.min_tokens_ids = tuple(min_tokens_ids)
        if any(t < 0 for t in self.min_tokens_ids):
            raise ValueError(f"min_tokens_ids must be non-negative token ids, got {self.min_tokens_ids}")
        distinct = list(dict.fromkeys(self.prompt_ids))
        if distinct and min(distinct) < 0:
            raise ValueError(f"prompt_ids must be non-negative token ids, got {min(distinct)}")
        self._slot = {t: i for i, t in enumerate(distinct)}  # token id -> index into _ids/_counts
        self._ids = array("q", distinct)  # distinct ids of prompt + output
        self._counts = array("q", bytes(8 * len(distinct)))  # occurrences in the output (0: prompt only)

    def append(self, token_id: int) -> None:
        """Record one generated token."""
        if token_id < 0:
            raise ValueError(f"token_id must be non-negative, got {token_id}")
        self.output_ids.append(token_id)
        slot = self._slot.get(token_id)
        if slot is None:
            self._slot[token_id] = len(self._ids)
            self._ids.append(token_id)
            self._counts.append(1)
        else:
            self._counts[slot] += 1

    def copy(self) -> "PenaltyState":
        """An independent copy (speculative verification extends copies with draft tokens)."""
        new = PenaltyState.__new__(PenaltyState)
        new.prompt_ids, new.output_ids, new.min_tokens_ids = self.prompt_ids, list(self.output_ids), self.min_tokens_ids
        new._slot, new._ids, new._counts = dict(self._slot), self._ids[:], self._counts[:]
        return new

    @property
    def num_distinct(self) -> int:
        return len(self._ids)

    def id_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [N] int64, output counts [N] int64) as zero-copy CPU views, N = num_distinct >= 1.

        Copy or drop them before the next `append` (an array cannot grow while viewed).
        """
        return torch.frombuffer(self._ids, dtype=torch.int64), torch.frombuffer(self._counts, dtype=torch.int64)


@dataclass
class SamplerOutput:
    """Results of one step; tensors stay on the logits' device (copy them back asynchronously).

    token_ids:    [B] int64
    logprobs:     [B] fp32, the chosen token's logprob (NaN in rows that did not ask), or None
    top_ids:      [B, N] int64, N = max requested `logprobs`, by descending logprob (-1 padding), or None
    top_logprobs: [B, N] fp32 matching top_ids (NaN padding); row i's first params[i].logprobs are its own
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


class Sampler:
    """Batched sampler for one engine step; see the module docstring for the pipeline."""

    def __init__(self, *, logprobs_mode: str = "raw", generator: torch.Generator | None = None) -> None:
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
        self.logprobs_mode = logprobs_mode
        self.generator = generator  # for unseeded rows; None: torch's default generator

    def __call__(self, logits: torch.Tensor, params: list[SamplingParams], histories: list[PenaltyState],
                 generators: list[torch.Generator | None]) -> SamplerOutput:
        """logits: [B, V] fp32 (modified in place); params/histories/generators: one per row."""
        logits = self._check(logits, params, histories, generators)
        B, V = logits.shape
        dev = logits.device
        if B == 0:
            return SamplerOutput(torch.empty(0, dtype=torch.int64, device=dev))

        _sanitize_(logits)
        lp_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        lp = None
        if lp_rows and self.logprobs_mode == "raw":
            lp = torch.log_softmax(_take_rows(logits, lp_rows), -1)  # [L, V]
        _apply_logit_bias(logits, params)
        _apply_bans(logits, params, histories)
        _apply_penalties(logits, params, histories)
        _apply_min_tokens(logits, params, histories)
        if lp_rows and self.logprobs_mode == "penalized":
            lp = torch.log_softmax(_take_rows(logits, lp_rows), -1)

        greedy = [i for i, p in enumerate(params) if p.greedy]
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if not sampled:
            tokens = argmax(logits)
        else:
            picks = _sample(_take_rows(logits, sampled), [params[i] for i in sampled],
                            [generators[i] for i in sampled], self.generator)
            if not greedy:
                tokens = picks
            else:
                tokens = torch.empty(B, dtype=torch.int64, device=dev)
                tokens[_index(sampled, dev)] = picks
                tokens[_index(greedy, dev)] = argmax(_take_rows(logits, greedy))
        out = SamplerOutput(tokens)
        if lp is not None:
            _fill_logprobs(out, lp, lp_rows, [params[i].logprobs for i in lp_rows])
        return out

    @staticmethod
    def _check(logits, params, histories, generators) -> torch.Tensor:
        if logits.dim() != 2 or logits.dtype != torch.float32:
            raise ValueError(f"logits must be [B, V] float32, got {tuple(logits.shape)} {logits.dtype}")
        B = logits.shape[0]
        if not (len(params) == len(histories) == len(generators) == B):
            raise ValueError(f"need one params/history/generator per logits row: B={B}, got "
                             f"{len(params)} params, {len(histories)} histories, {len(generators)} generators")
        for i, g in enumerate(generators):
            if g is not None and g.device.type != logits.device.type:
                raise ValueError(f"generator of row {i} is on {g.device}, logits on {logits.device}")
        return logits if logits.is_contiguous() else logits.contiguous()


# ---- pipeline stages (module functions so tests and benchmarks can call them alone) ----------

def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64, device=device)


def _take_rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """x[rows] without a copy when rows is all of x."""
    return x if len(rows) == x.shape[0] else x[_index(rows, x.device)]


def _apply_logit_bias(logits: torch.Tensor, params: list[SamplingParams]) -> None:
    """OpenAI's logit_bias: add each request's per-token bias (ids past the vocabulary are ignored)."""
    V = logits.shape[1]
    rows, ids, vals = [], [], []
    for i, p in enumerate(params):
        for tok, bias in (p.logit_bias or {}).items():
            if tok < V:
                rows.append(i)
                ids.append(tok)
                vals.append(float(bias))
    if rows:
        dev = logits.device
        logits.index_put_((torch.tensor(rows, device=dev), torch.tensor(ids, device=dev)),
                          torch.tensor(vals, device=dev), accumulate=True)


def _apply_bans(logits: torch.Tensor, params: list[SamplingParams], histories: list[PenaltyState]) -> None:
    """-inf for every id outside a row's `allowed_token_ids`, and for a bad word's last token where the output
    ends with the word's other tokens (a one-token word: always), as vLLM does."""
    V, dev = logits.shape[1], logits.device
    allowed = [(i, _allowed_index(p, dev)) for i, p in enumerate(params) if p.allowed_token_ids is not None]
    if allowed:
        rows = torch.cat([torch.full_like(ids, i) for i, ids in allowed])
        ids = torch.cat([ids for _, ids in allowed])
        kept = logits[rows, ids]
        logits.index_fill_(0, _index([i for i, _ in allowed], dev), -math.inf)
        logits[rows, ids] = kept
    rows, ids = [], []
    for i, p in enumerate(params):
        output = histories[i].output_ids
        for word in p.bad_words_token_ids or ():
            n = len(word) - 1
            if n <= len(output) and (n == 0 or output[-n:] == word[:-1]):
                rows.append(i)
                ids.append(word[-1])
    if rows:
        logits[torch.tensor(rows, device=dev), torch.tensor(ids, device=dev)] = -math.inf


def _allowed_index(p: SamplingParams, device: torch.device) -> torch.Tensor:
    """`p.allowed_token_ids` as an index tensor, built once per request (a list can hold the whole vocabulary)."""
    cached = getattr(p, "_allowed_index", None)
    if cached is None or cached.device != device or cached.numel() != len(p.allowed_token_ids):
        cached = torch.tensor(p.allowed_token_ids, dtype=torch.int64, device=device)
        object.__setattr__(p, "_allowed_index", cached)
    return cached


def _apply_penalties(logits: torch.Tensor, params: list[SamplingParams], histories: list[PenaltyState]) -> None:
    """In place on logits [B, V]; touches only the N distinct (row, token) pairs of the histories."""
    rows = [i for i, p in enumerate(params) if histories[i].num_distinct and (
        p.repetition_penalty != 1 or p.presence_penalty != 0 or p.frequency_penalty != 0)]
    if not rows:
        return
    V, dev = logits.shape[1], logits.device
    pairs = [histories[i].id_counts() for i in rows]
    ids = torch.cat([p[0] for p in pairs])  # [N] int64, copied out of the views
    counts = torch.cat([p[1] for p in pairs])  # [N]
    del pairs
    if int(ids.max()) >= V:
        raise ValueError(f"history token id {int(ids.max())} is outside the vocabulary (V={V})")
    # local[n]: which penalised row pair n belongs to
    local = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([histories[i].num_distinct for i in rows]))
    coef = torch.tensor([[params[i].repetition_penalty, params[i].presence_penalty, params[i].frequency_penalty]
                         for i in rows])[local].to(dev)  # [N, 3]
    rep, pres, freq = coef.unbind(1)
    flat = (torch.tensor(rows)[local] * V + ids).to(dev)  # [N] into logits.view(-1); unique, so writing back is safe
    counts = counts.to(dev, torch.float32)
    flat_logits = logits.view(-1)
    vals = flat_logits[flat]
    vals = torch.where(vals > 0, vals / rep, vals * rep)
    vals = vals - freq * counts - pres * (counts > 0)
    flat_logits[flat] = _sanitize_(vals)  # a tiny repetition_penalty divides to +inf


def _apply_min_tokens(logits: torch.Tensor, params: list[SamplingParams], histories: list[PenaltyState]) -> None:
    """In place: -inf on each row's min_tokens_ids while it has fewer than min_tokens outputs."""
    rows = [i for i, p in enumerate(params)
            if histories[i].min_tokens_ids and len(histories[i].output_ids) < p.min_tokens]
    if not rows:
        return
    V = logits.shape[1]
    flat = [i * V + t for i in rows for t in histories[i].min_tokens_ids if t < V]
    logits.view(-1)[_index(flat, logits.device)] = float("-inf")


def _sample(x: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
            shared: torch.Generator | None) -> torch.Tensor:
    """x: [S, V] fp32 logits of non-greedy rows (modified in place) -> token ids [S] int64."""
    u = _uniforms(len(params), x.device, generators, shared)
    _temperature_(x, params)
    return _draw(*_survivors(x, params), u)


def _survivors(x: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each row's weights after top_k / top_p / min_p, x [S, V] being its logits after temperature: over its
    top candidates where every row allows it (`_candidates`: (w, ids)), else over the whole vocabulary (x
    filtered in place; (w, None))."""
    cand = _candidates(x, params)
    if cand is not None:
        return cand
    _filter_(x, params)
    return _weights(x), None


def _draw(w: torch.Tensor, ids: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    """Token ids [S]: each row's draw from weights w [S, W] (`_inverse_cdf` with uniforms u [S, 1]), whose
    columns are token ids (whole rows, ids None) or `_candidates`' ids. A row without mass (no finite logit)
    gets token 0 explicitly, not whatever the search gives."""
    picks = _inverse_cdf(w, u)
    if ids is not None:
        picks = torch.where(picks < 0, picks, ids.gather(1, picks.clamp(min=0)[:, None])[:, 0])
    return picks.masked_fill_(picks < 0, 0)


def _candidates(x: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each row's surviving tokens and their weights, in vocabulary order, from its top logits only (on CPU):
    (w [S, W], ids [S, W]), ids V and w 0 past a row's survivors. x: the logits after temperature, left as
    they are. It applies when every row has a top_k up to CANDIDATES_MAX (the Qwen presets' 20) or a top_p
    without top_k whose nucleus lies within its top TOP_P_CANDIDATES. The filters cut the candidates exactly
    as they cut the whole row (the same sorted prefix; top_p alone against the whole row's mass), and the
    weights are those `_weights` gives the whole row, so a draw over them picks the token the whole row
    gives. None (use the whole row) otherwise, or when some row's survivors may run past its candidates (a
    tie at the k-th logit, a nucleus wider than the candidates): that check reads a value on the host, hence
    CPU only."""
    V = x.shape[1]
    top_k = [min(p.top_k, V) for p in params]
    if x.device.type != "cpu" or not all(0 < k <= CANDIDATES_MAX or (k == 0 and p.top_p < 1)
                                         for k, p in zip(top_k, params)):
        return None
    width = -(-(max(k or TOP_P_CANDIDATES for k in top_k) + 1) // WEIGHT_COLUMNS) * WEIGHT_COLUMNS
    if width > V:
        return None
    masses = _masses(x) if not all(top_k) else None
    vals, ids = x.topk(width, -1)  # sorted, largest first
    _filter_(vals, params, masses)
    if bool((vals[:, -1] > -math.inf).any()):  # survivors may run past the last candidate
        return None
    ids = ids.masked_fill_(vals == -math.inf, V)  # the survivors in vocabulary order, the rest after them
    order = ids.argsort(-1)
    return _weights(vals.gather(1, order)), ids.gather(1, order)


def _weights(x: torch.Tensor) -> torch.Tensor:
    """exp(x - max) per row of filtered logits x [S, W] (-inf: weight 0), in place when W is a multiple of
    WEIGHT_COLUMNS. Each value's exp comes from torch's vectorised exp whatever its column, W, or the batch
    (a row of W % WEIGHT_COLUMNS values would leave the last few to the scalar exp, whose last bit can
    differ), so a row weighs the same alone or in any batch."""
    S, W = x.shape
    pad = -W % WEIGHT_COLUMNS
    if pad:
        x = torch.cat([x, x.new_full((S, pad), -math.inf)], 1)
    return x.sub_(x.amax(-1, keepdim=True)).exp_()[:, :W]


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Column j of each row of weights w [S, W] (>= 0) with probability w_j / sum(w), by inverse transform
    with one uniform u [S, 1] in [0, 1) per row: the first j whose running sum exceeds u * sum(w). The running
    sums (torch's sequential cumsum) of a row do not depend on the batch, and zero weights between the
    survivors add nothing, so any layout of the same survivors in the same order picks the same one. -1 for
    a row without mass (NaN weights: no finite logit)."""
    c = w.cumsum(-1)
    total = c[:, -1:]
    picks = torch.searchsorted(c, u * total, right=True).clamp_(max=w.shape[1] - 1)[:, 0]
    return picks.masked_fill_(~(total[:, 0] > 0), -1)


def _uniforms(S: int, device: torch.device, generators: list[torch.Generator | None],
              shared: torch.Generator | None) -> torch.Tensor:
    """u: [S, 1] ~ U[0, 1): row i from generators[i] when given (one draw per sampled step), else from
    `shared`."""
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if len(unseeded) == S:
        return torch.rand(S, 1, generator=shared, device=device)
    u = torch.empty(S, 1, device=device)
    for i, g in enumerate(generators):  # the one per-row loop: a seeded row owns its stream
        if g is not None:
            u[i] = torch.rand(1, generator=g, device=device)
    if unseeded:
        u[_index(unseeded, device)] = torch.rand(len(unseeded), 1, generator=shared, device=device)
    return u


def _warp(x: torch.Tensor, params: list[SamplingParams]) -> None:
    """In place on x: [S, V]: temperature, then top_k, top_p, min_p as -inf (temperature > 0)."""
    _temperature_(x, params)
    _filter_(x, params)


def _temperature_(x: torch.Tensor, params: list[SamplingParams]) -> None:
    x.div_(torch.tensor([p.temperature for p in params], device=x.device)[:, None])
    _sanitize_(x)  # huge logits / small temperature overflow to +inf; -inf / inf (huge temperature) is NaN


def _filter_(x: torch.Tensor, params: list[SamplingParams], masses: torch.Tensor | None = None) -> None:
    """In place on x [S, W] (temperature applied): top_k, top_p, min_p as -inf. x is each row's whole
    vocabulary, or its top W logits in order with `masses` [S, 1] its whole row's (`_masses`)."""
    top_k = [min(p.top_k, x.shape[1]) for p in params]  # 0: off
    top_p = [p.top_p for p in params]
    if any(top_k) or any(p < 1 for p in top_p):
        _top_k_top_p(x, top_k, top_p, masses)
    if any(p.min_p > 0 for p in params):
        # p < min_p * p_max  <=>  logit < max_logit + log(min_p); min_p = 0 gives -inf, a no-op
        log_min_p = torch.tensor([math.log(p.min_p) if p.min_p > 0 else -math.inf for p in params], device=x.device)
        x.masked_fill_(x < x.amax(-1, keepdim=True) + log_min_p[:, None], float("-inf"))


def _masses(x: torch.Tensor) -> torch.Tensor:
    """[S, 1]: each row's sum of exp(x - max) over its whole vocabulary, summed in vocabulary order (a
    sequential cumsum: the same bits whatever the batch). top_p without top_k cuts at this fraction of it."""
    return _weights(x.clone()).cumsum(-1)[:, -1:]


def _top_k_top_p(x: torch.Tensor, top_k: list[int], top_p: list[float], masses: torch.Tensor | None = None) -> None:
    """In place: top_k, then top_p renormalised over the top-k survivors, or over the whole row without top_k
    (`_masses`, given when x holds only each row's top logits). x: [S, V]; k = 0 / p = 1: off.

    Works on the logits sorted in descending order: all of them when a top_p row has no top_k
    (one full sort), else only the first max(top_k), which hold every survivor. Ties at the k-th
    logit are kept but, in that second case, count once in top_p's renormalisation.
    """
    dev = x.device
    use_p = [p < 1 for p in top_p]
    if any(p and k == 0 for p, k in zip(use_p, top_k)):
        srt = x.sort(-1, descending=True).values  # [S, V]
    else:
        srt = x.topk(max(top_k), -1).values  # [S, K], sorted
    if any(top_k):
        k = torch.tensor(top_k, device=dev)
        kth = srt.gather(1, (k.clamp_min(1) - 1)[:, None]).masked_fill_(k[:, None] == 0, float("-inf"))  # [S, 1]
        srt.masked_fill_(srt < kth, float("-inf"))
        x.masked_fill_(x < kth, float("-inf"))
    if not any(use_p):
        return
    # Unnormalised masses and a running sum: the first k sums do not depend on how many -inf
    # (zero-mass) entries follow, so both paths (and any batch) give the same cut.
    mass = (srt - srt[:, :1]).exp_()  # [S, K or V]
    cum = mass.cumsum(-1)
    p_limit = torch.tensor(top_p, device=dev)[:, None]
    total = cum[:, -1:]
    if any(p and k == 0 for p, k in zip(use_p, top_k)):  # top_p alone: over the whole row, whose tail x may lack
        alone = torch.tensor([p and k == 0 for p, k in zip(use_p, top_k)], device=dev)[:, None]
        total = torch.where(alone, _masses(x) if masses is None else masses, total)
    # drop a token once the mass strictly before it reaches top_p (the top token always stays)
    keep = (cum - mass) < p_limit * total  # a prefix of each row
    # at least the top token: top_p * mass underflows to 0 for tiny top_p, and rows without a finite
    # logit have NaN masses (no token passes)
    last_kept = srt.gather(1, keep.sum(-1, keepdim=True).clamp_min_(1) - 1)  # [S, 1]
    # rows with top_p = 1 keep everything: cumsum rounding must not cut their tail
    last_kept.masked_fill_(p_limit >= 1, float("-inf"))
    x.masked_fill_(x < last_kept, float("-inf"))


def _fill_logprobs(out: SamplerOutput, lp: torch.Tensor, rows: list[int], nums: list[int]) -> None:
    """lp: [L, V] log-probs of `rows`; fills out.logprobs [B] and, if any num > 0, top_* [B, max num]."""
    B, dev = out.token_ids.shape[0], lp.device
    idx = _index(rows, dev)
    chosen = lp.gather(1, out.token_ids[idx][:, None]).squeeze(1)  # [L]
    out.logprobs = torch.full((B,), float("nan"), device=dev).index_copy_(0, idx, chosen)
    n = max(nums)
    if n > 0:
        vals, ids = lp.topk(n, -1)  # [L, n], sorted descending
        out.top_logprobs = torch.full((B, n), float("nan"), device=dev).index_copy_(0, idx, vals)
        out.top_ids = torch.full((B, n), -1, dtype=torch.int64, device=dev).index_copy_(0, idx, ids)
