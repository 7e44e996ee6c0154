"""The gated delta rule: recurrent form (decode, short spans) and chunked form (prefill).

One state layout everywhere: `S: [B, Hv, dk, dv]` fp32 (transformers' layout; vLLM/FLA store the transpose).
All inputs are fp32, with q/k already expanded to the V heads, l2-normalised, and q scaled by dk^-1/2.

Per V head and token t (architecture.md §2.4.5):
    S   = exp(g_t) * S                       # decay
    e   = beta_t * (v_t - S^T k_t)           # delta-rule error
    S   = S + k_t e^T                        # rank-1 update
    o_t = S^T q_t                            # read after the update

Padding convention: rows with beta = 0 and g = 0 leave the state untouched, so right-padded batches
of different lengths give exact final states.
"""

from __future__ import annotations

import torch

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
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """Token-by-token form, for decode and short spans.

    q, k: [B, T, H, dk]; v: [B, T, H, dv]; g, beta: [B, T, H]; state: [B, H, dk, dv], updated in place.
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
    return torch.stack(outs, 1)


def chunked_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor,
    chunk: int = CHUNK,
) -> torch.Tensor:
    """WY/UT-transform chunked form (architecture.md §2.4.7), same maths as the recurrent form.

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
