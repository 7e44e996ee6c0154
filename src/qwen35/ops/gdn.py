"""The gated delta rule: recurrent form (decode, short spans) and chunked form (prefill).

One state layout everywhere: `S: [B, Hv, dk, dv]` fp32 (transformers' layout; vLLM/FLA store the transpose).
All inputs are fp32, with q/k already expanded to the V heads, l2-normalised, and q scaled by dk^-1/2.

Per V head and token t (docs/MODEL.md §3):
    S   = exp(g_t) * S                       # decay
    e   = beta_t * (v_t - S^T k_t)           # delta-rule error
    S   = S + k_t e^T                        # rank-1 update
    o_t = S^T q_t                            # read after the update

Padding convention: rows with beta = 0 and g = 0 leave the state untouched, so right-padded batches
of different lengths give exact final states.

Snapshots (speculative decoding): `gated_delta_rule_with_snapshots` also writes the state after each of the
last S tokens of every sequence into rows of a pool, so that verifying S-1 draft tokens becomes "accept n,
keep snapshot n". It runs the head of each sequence (all but its last S tokens) through the usual dispatch
with the tail masked out as padding, then the tail through the recurrent form, copying the state out after
every tail token (vLLM's verify kernel likewise writes the state after position t into slot t).
"""

from __future__ import annotations

import torch

from .pool import write_rows

CHUNK = 64
# Decays below exp(-60) ~ 1e-26 are set to exactly 0: far below fp32 resolution of the O(1) terms they
# scale, and it keeps denormal floats out of the matmuls, which otherwise run >10x slower on CPUs.
_LOG_CUTOFF = -60.0


def _decay(log_decay: torch.Tensor) -> torch.Tensor:
    return log_decay.masked_fill(log_decay < _LOG_CUTOFF, float("-inf")).exp()


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x * rsqrt(sum(x^2) + eps) over the last dim (FLA's convention: sum, eps inside)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def recurrent_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
    snapshots: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Token-by-token form, for decode and short spans.

    q, k: [B, T, H, dk]; v: [B, T, H, dv]; g, beta: [B, T, H]; state: [B, H, dk, dv], updated in place.
    snapshots: optional (pool: [P, H, dk, dv], index: [B, T] int64): after token t, row index[b, t] of
    pool receives the state of sequence b (see `pool.write_rows` for when `state` may be rows of `pool`).
    Returns o: [B, T, H, dv].
    """
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    s = state.view(B * H, dk, dv)
    outs = []
    for t in range(T):
        qt, kt, vt = q[:, t].reshape(B * H, dk), k[:, t].reshape(B * H, dk), v[:, t].reshape(B * H, dv)
        s.mul_(_decay(g[:, t]).reshape(B * H, 1, 1))
        err = (vt - torch.bmm(kt.unsqueeze(1), s).squeeze(1)) * beta[:, t].reshape(B * H, 1)
        s.baddbmm_(kt.unsqueeze(2), err.unsqueeze(1))
        outs.append(torch.bmm(qt.unsqueeze(1), s).view(B, H, dv))
        if snapshots is not None:
            write_rows(snapshots[0], snapshots[1][:, t], state)
    return torch.stack(outs, 1)


def chunked_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """WY/UT-transform chunked form (docs/MODEL.md §3), same maths as the recurrent form.

    q, k: [B, T, H, dk]; v: [B, T, H, dv]; g, beta: [B, T, H]; state: [B, H, dk, dv], updated in place.
    Returns o: [B, T, H, dv].

    Per chunk of C tokens (local positions r, s), with G the in-chunk cumulative log-decay:
        Γ[r, s] = exp(G_r - G_s) for s <= r;  A = (β K K^T) ⊙ Γ;  P = (Q K^T) ⊙ Γ
        [U | W] = (I + strict_lower(A))^-1 [β V | β exp(G) K]
        V' = U - W S;  O = (exp(G) Q) S + P V';  S = exp(G_C) S + (exp(G_C - G) K)^T V'
    The whole chunk is processed before the next one, so every intermediate stays in cache; the last chunk
    may be shorter (no padding needed).
    """
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    out = torch.empty(B, T, H, dv, dtype=q.dtype, device=q.device)
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    S = state
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        n = end - start
        qc, kc, vc = (x[:, start:end].transpose(1, 2) for x in (q, k, v))  # [B, H, n, d]
        bc = beta[:, start:end].transpose(1, 2).unsqueeze(-1)  # [B, H, n, 1]
        G = g[:, start:end].transpose(1, 2).cumsum(-1)  # [B, H, n]
        decay = _decay((G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(upper[:n, :n], float("-inf")))
        k_beta = kc * bc
        kt = kc.transpose(-1, -2)
        A = (k_beta @ kt) * decay
        G_exp = _decay(G).unsqueeze(-1)
        rhs = torch.cat([vc * bc, k_beta * G_exp], -1)
        sol = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
        v_new = sol[..., :dv] - sol[..., dv:] @ S
        o = (qc * G_exp) @ S + ((qc @ kt) * decay) @ v_new
        out[:, start:end] = o.transpose(1, 2)
        G_last = G[..., -1:]
        S = S * _decay(G_last).unsqueeze(-1) + (kc * _decay(G_last - G).unsqueeze(-1)).transpose(-1, -2) @ v_new
    state.copy_(S)
    return out


def gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """Dispatch: recurrent for short spans (decode, speculative verify), chunked otherwise."""
    if q.shape[1] <= 16:
        return recurrent_gated_delta_rule(q, k, v, g, beta, state)
    return chunked_gated_delta_rule(q, k, v, g, beta, state)


def gated_delta_rule_with_snapshots(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
    lens: torch.Tensor, pool: torch.Tensor, index: torch.Tensor,
) -> torch.Tensor:
    """`gated_delta_rule` that also keeps the state after each of the last S tokens of every sequence.

    q, k: [B, T, H, dk]; v: [B, T, H, dv]; g, beta: [B, T, H] (right-padded: rows past lens[b] have
    g = beta = 0); state: [B, H, dk, dv], updated in place; lens: [B] int64 real lengths (>= 1).
    pool: [P, H, dk, dv] fp32, written; index: [B, S] int64 rows of pool. Row index[b, i] receives the state
    after token lens[b] - S + i (i = S-1: the final state). Entries whose token does not exist
    (lens[b] - S + i < 0) are written with unspecified contents, before `state` is updated: point them at a
    row that is overwritten afterwards (e.g. the sequence's own slot) or that nobody reads.
    Returns o: [B, T, H, dv], the same outputs as `gated_delta_rule`.
    """
    B, T, H, dk = q.shape
    S = index.shape[1]
    dev = q.device
    if dev.type == "cpu" and T <= S and T <= 16 and int(lens.min()) == T:
        # every token is in the tail and none is padding (a batch of verifying sequences): run the recurrence
        # on `state` itself and copy it out after each token, row by row (no clone, gather or scatter)
        return recurrent_gated_delta_rule(q, k, v, g, beta, state, snapshots=(pool, index[:, S - T:]))
    pos = lens.view(B, 1) - S + torch.arange(S, device=dev)  # [B, S] token index of each tail row
    real = (pos >= 0).unsqueeze(-1)  # [B, S, 1]; sequences shorter than S get no-op rows in front
    if T > S:  # head: the tokens before each tail, with the tail turned into padding
        head = (torch.arange(T, device=dev) < (lens - S).view(B, 1)).unsqueeze(-1)  # [B, T, 1]
        o = gated_delta_rule(q, k, v, g * head, beta * head, state)
    else:
        o = q.new_empty(B, T, H, v.shape[-1])
    take = pos.clamp(min=0)

    def tail(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, ...] -> the rows at `take`: [B, S, H, ...]
        idx = take.view(B, S, *[1] * (x.dim() - 2)).expand(B, S, *x.shape[2:])
        return x.gather(1, idx)

    s = state.clone()  # the pool may hold `state` itself (in-place slots); index_copy_ needs disjoint memory
    o_tail = recurrent_gated_delta_rule(tail(q), tail(k), tail(v), tail(g) * real, tail(beta) * real, s,
                                        snapshots=(pool, index))
    state.copy_(s)
    # put the tail outputs back at their rows; rows of missing tokens go to a spare column T, then dropped
    where = torch.where(real.squeeze(-1), pos, T).view(B, S, 1, 1).expand_as(o_tail)
    o = torch.cat([o, o.new_empty(B, 1, H, o.shape[-1])], 1).scatter_(1, where, o_tail)
    return o[:, :T]
