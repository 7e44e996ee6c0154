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

import math

import torch
import torch.nn.functional as F

from . import native
from .pool import write_rows

# 32 was ~7% faster on this function inside a 1k-token prefill (2 threads), 128 ~1.5x slower; 64 is FLA's
# choice and close enough not to change numerics for it.
CHUNK = 64
# Decays below exp(-60) ~ 1e-26 are set to exactly 0: far below fp32 resolution of the O(1) terms they
# scale, and it keeps denormal floats out of the matmuls, which otherwise run >10x slower on CPUs.
_LOG_CUTOFF = -60.0
_CUTOFF = math.exp(_LOG_CUTOFF)
# Tokens whose chunk terms are computed at once (a whole number of chunks). Measured on 2 threads, 16 heads of
# 128: spans of 256-512 tokens beat whole 2048-token calls by ~1.4x, as their buffers (a few MB) stay in cache
# and are reused by the allocator instead of page-faulting fresh memory; it also bounds the working memory of
# a very long call to that of one span.
_SPAN_TOKENS = 256


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
    chunk: int | None = None,
) -> torch.Tensor:
    """WY/UT-transform chunked form (docs/MODEL.md §3), same maths as the recurrent form.

    q, k: [B, T, H, dk]; v: [B, T, H, dv]; g, beta: [B, T, H]; state: [B, H, dk, dv], updated in place.
    chunk: tokens per chunk; by default `CHUNK`, or `train_chunk(T)` when autograd goes through.
    Returns o: [B, T, H, dv].

    Per chunk of C tokens (local positions r, s), with G the in-chunk cumulative log-decay:
        Γ[r, s] = exp(G_r - G_s) for s <= r;  A = (β K K^T) ⊙ Γ;  P = (Q K^T) ⊙ Γ
        [U | W] = (I + strict_lower(A))^-1 [β V | β exp(G) K]
        V' = U - W S;  O = (exp(G) Q) S + P V';  S = exp(G_C) S + (exp(G_C - G) K)^T V'
    As flash-linear-attention's chunk algorithm does, every term that does not involve S is computed for all
    chunks of a span at once (batched over [chunks, B*H]); the loop over chunks runs only the recurrence (V' and
    the next S: 3 ops a chunk), keeping each chunk's starting S, so that O is one batched product afterwards.
    T is padded to whole chunks with g = beta = 0 and q = k = v = 0: those rows leave the state untouched and
    keep the last real G as G_C. Spans of `_SPAN_TOKENS` tokens are processed one after the other.
    """
    B, T, H, dk = k.shape
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, g, beta)):
        # the pool row `state` is overwritten below, so the recurrence starts from a copy
        o, final = chunked_gated_delta_rule_train(q, k, v, g, beta, state.clone(), chunk)
        state.copy_(final.detach())
        return o
    chunk = chunk or CHUNK
    out = q.new_empty(B, T, H, v.shape[-1])
    S = state.reshape(B * H, dk, v.shape[-1])
    span = max(1, _SPAN_TOKENS // chunk) * chunk
    for t0 in range(0, T, span):
        t1 = min(T, t0 + span)
        S = _chunk_span(*(x[:, t0:t1] for x in (q, k, v, g, beta)), S, out[:, t0:t1], chunk)
    state.copy_(S.view_as(state))
    return out


def _chunk_span(q, k, v, g, beta, S, out, chunk):
    """`chunked_gated_delta_rule` over one span, from state S ([B*H, dk, dv]); writes out, returns the final S.

    Every per-chunk tensor is laid out [N, B*H, C, ...] (chunk-major), so that chunk n is one contiguous block
    for the recurrence's in-place products (a batch-strided one makes baddbmm_ 2x slower). Intermediates are
    updated in place where they can be: an elementwise pass over a tensor in cache costs little.
    """
    C = chunk
    q, k, v, g, beta = (_to_chunks(x, C) for x in (q, k, v, g, beta))  # [N, BH, C, d] / [N, BH, C]
    N, BH = g.shape[:2]
    G = g.cumsum(-1)  # in-chunk cumulative log-decay; the zero-padded rows repeat the last real G
    G_exp = _decay(G).unsqueeze(-1)  # [N, BH, C, 1]
    # Γ = exp(G_r - G_s) on and below the diagonal, 0 above, flushed to 0 under exp(_LOG_CUTOFF) as `_decay`
    # does. Exponentiating first and zeroing after, in place, is ~5x faster here than masking the exponent
    # (bool masks over [N, BH, C, C]); the upper part may overflow to inf before tril_ zeroes it.
    gamma = (G.unsqueeze(-1) - G.unsqueeze(-2)).exp_()  # [N, BH, C, C]
    gamma = F.threshold_(gamma, _CUTOFF, 0.0).tril_()

    def bmm(a, b):  # [N, BH, m, k] @ [N, BH, k, n], batched over all chunks
        return torch.bmm(a.flatten(0, 1), b.flatten(0, 1)).view(N, BH, a.shape[-2], b.shape[-1])

    kt = k.transpose(-1, -2)
    P = bmm(q, kt).mul_(gamma)
    A = bmm(k, kt).mul_(gamma).mul_(beta.unsqueeze(-1))  # β K K^T ⊙ Γ; only its strict lower part is read
    # (I + strict_lower(A))^-1 explicitly, as FLA does: solving for the identity and then two matmuls is
    # ~1.5x faster than solve_triangular on the dv + dk right-hand sides
    eye = torch.eye(C, dtype=q.dtype, device=q.device).expand(N, BH, C, C)
    A_inv = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)
    U = bmm(A_inv, v.mul_(beta.unsqueeze(-1)))  # [N, BH, C, dv]; becomes V' in the loop
    decay_last = _decay(G[..., -1:]).unsqueeze(-1)  # [N, BH, 1, 1]: exp(G_C)
    k_decayed = k * _decay(G[..., -1:] - G).unsqueeze(-1)  # exp(G_C - G) K
    W = bmm(A_inv, k.mul_(beta.unsqueeze(-1) * G_exp))  # k is β exp(G) K from here on
    states = S.new_empty(N + 1, BH, *S.shape[1:])  # states[n]: S at the start of chunk n
    states[0] = S
    for n in range(N):  # the recurrence: only the products with S
        U[n].baddbmm_(W[n], states[n], alpha=-1)  # V' = U - W S
        torch.mul(states[n], decay_last[n], out=states[n + 1])
        states[n + 1].baddbmm_(k_decayed[n].transpose(-1, -2), U[n])  # S = exp(G_C) S + (exp(G_C - G) K)^T V'
    # O = exp(G) ⊙ (Q S) + P V': scaling O's rows equals scaling Q's and spares a copy of Q
    o = bmm(q, states[:N]).mul_(G_exp).view(N * BH, C, -1).baddbmm_(P.flatten(0, 1), U.flatten(0, 1))
    _from_chunks(o.view(N, BH, C, -1), out)
    return states[N]


def train_chunk(T: int) -> int:
    """The training path's chunk for sequences of T tokens. Its cost is dominated by per-op overhead and the
    C x C terms, not by the recurrence: on the demo model's heads (4 of 40) forward and backward of 25 x 80
    tokens take 23 ms with chunks of 16 against 76 ms with 64; a 2048-token sequence 41 ms with 32 against 45
    with 64 and 55 with 16 (the loop over chunks grows). docs/LOG.md, 2026-12-03."""
    return 16 if T <= 512 else 32


def chunked_gated_delta_rule_train(q, k, v, g, beta, state, chunk: int | None = None):
    """`chunked_gated_delta_rule` for training: the same chunk maths as `_chunk_span` over the whole sequence,
    written out of place so that autograd can go through it (the inference path updates its buffers in place
    and writes with `out=`). As there, the loop over chunks runs only the recurrence (V' and the next S) and
    O is one batched product afterwards. The loop runs in native code where the build is there (`_Recurrence`,
    csrc/gdn_train.cpp), else as `_recurrence` writes it; both give the same bits, so a training run does not
    depend on the build. `state` [B, H, dk, dv] is only read, and may carry a gradient (a shared prefix's final
    state, model/shared_prefix.py). Returns (o [B, T, H, dv], the final state [B, H, dk, dv]), both in the
    graph. chunk: by default `train_chunk(T)`."""
    B, T, H, dk = k.shape
    C = chunk or train_chunk(T)
    q, k, v, g, beta = (_to_chunks(x, C) for x in (q, k, v, g, beta))  # [N, BH, C, d] / [N, BH, C]
    G = g.cumsum(-1)
    G_exp = _decay(G).unsqueeze(-1)
    below = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # Γ = exp(G_r - G_s) on and below the diagonal; the exponent is masked first so that nothing overflows
    gamma = _decay((G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~below, float("-inf")))
    kt = k.transpose(-1, -2)
    P = (q @ kt) * gamma
    A = (k @ kt) * gamma * beta.unsqueeze(-1)  # only its strict lower part is read (and gets a gradient)
    eye = torch.eye(C, dtype=q.dtype, device=q.device).expand_as(A)
    A_inv = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)
    U = A_inv @ (v * beta.unsqueeze(-1))
    W = A_inv @ (k * (beta.unsqueeze(-1) * G_exp))
    decay_last = _decay(G[..., -1:]).unsqueeze(-1)
    k_decayed_t = (k * _decay(G[..., -1:] - G).unsqueeze(-1)).transpose(-1, -2)
    S = state.reshape(B * H, dk, v.shape[-1])
    lib = native.ops() if q.device.type == "cpu" and q.dtype == torch.float32 else None
    if lib is not None:
        starts, v_new, S = _Recurrence.apply(U, W, decay_last, k_decayed_t, S, lib)
    else:
        states, v_new = _recurrence(U, W, decay_last, k_decayed_t, S)
        starts, v_new, S = torch.stack(states[:-1]), torch.stack(v_new), states[-1]
    o = (q @ starts) * G_exp + P @ v_new  # O = exp(G) (Q S) + P V'
    out = q.new_empty(B, T, H, v.shape[-1])
    _from_chunks(o, out)  # a copy into `out`, which autograd goes through
    return out, S.view(B, H, dk, -1)


def _recurrence(U, W, decay_last, k_decayed_t, S):
    """The training path's loop over chunks: V'_n = U_n - W_n S and S = exp(G_C) S + (exp(G_C - G) K)^T V'_n.
    Returns the list of states (at the start of every chunk, then the final one) and the list of V'_n."""
    states, v_new = [S], []
    # chunk n's slices by one unbind each: indexing [n] would give every slice its own backward, each writing
    # a zero tensor of the whole size (quadratic in the chunks)
    for U_n, W_n, decay_n, k_n in zip(U.unbind(0), W.unbind(0), decay_last.unbind(0), k_decayed_t.unbind(0)):
        v_new.append(U_n - W_n @ states[-1])  # V' = U - W S
        states.append(states[-1] * decay_n + k_n @ v_new[-1])  # S = exp(G_C) S + (exp(G_C - G) K)^T V'
    return states, v_new


class _Recurrence(torch.autograd.Function):
    """`_recurrence` and its backward in one native call each way (csrc/gdn_train.cpp): bit for bit what
    autograd gives through the loop (the same products, its order of summing a state's gradients), without
    recording ~25 ops and views a chunk, and with the elementwise steps fused. Returns (the states at the start
    of every chunk [N, BH, dk, dv], V' [N, BH, C, dv], the final state [BH, dk, dv])."""

    @staticmethod
    def forward(ctx, U, W, decay_last, k_decayed_t, S, lib):
        ctx.set_materialize_grads(False)
        W, decay_last = W.contiguous(), decay_last.contiguous()
        starts, v_new, final = lib.gdn_recurrence(U.contiguous(), W, decay_last, k_decayed_t, S.contiguous())
        ctx.save_for_backward(W, decay_last, k_decayed_t, starts, v_new)
        ctx.lib = lib
        return starts, v_new, final

    @staticmethod
    def backward(ctx, g_starts, g_v, g_final):
        W, decay_last, k_decayed_t, starts, v_new = ctx.saved_tensors
        grads = ctx.lib.gdn_recurrence_backward(g_starts, g_v, g_final, W, decay_last, k_decayed_t, starts, v_new,
                                                ctx.needs_input_grad[4])
        return (*grads, None)


def _to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, *d] -> a new [N, B*H, C, *d] tensor, chunk-major, zero rows past T."""
    B, T, H = x.shape[:3]
    N, full = -(-T // C), T // C * C
    buf = x.new_empty(N, B, H, C, *x.shape[3:])
    dst = buf.movedim((0, 3), (1, 2))  # a [B, N, C, H, *d] view of buf
    dst[:, :T // C].copy_(x[:, :full].unflatten(1, (T // C, C)))
    if full < T:  # the last, partial chunk; the rest of it is padding (g = beta = 0, q = k = v = 0)
        dst[:, -1, :T - full].copy_(x[:, full:])
        dst[:, -1, T - full:].zero_()
    return buf.flatten(1, 2)


def _from_chunks(o: torch.Tensor, out: torch.Tensor) -> None:
    """Inverse of `_to_chunks`: [N, B*H, C, d] into out [B, T, H, d], dropping the padding rows."""
    B, T, H = out.shape[:3]
    C = o.shape[2]
    src = o.unflatten(1, (B, H)).movedim((0, 3), (1, 2))  # [B, N, C, H, d]
    full = T // C * C
    out[:, :full].unflatten(1, (T // C, C)).copy_(src[:, :T // C])
    if full < T:
        out[:, full:].copy_(src[:, -1, :T - full])


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
