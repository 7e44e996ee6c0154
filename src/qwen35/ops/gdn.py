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
    Returns o: [B, T, H, dv]. T is right-padded to a multiple of `chunk` with beta = g = 0 rows.
    """
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    pad = (-T) % chunk
    # -> [B, H, T, d]
    q, k, v = (torch.nn.functional.pad(x.transpose(1, 2), (0, 0, 0, pad)) for x in (q, k, v))
    g, beta = (torch.nn.functional.pad(x.transpose(1, 2), (0, pad)) for x in (g, beta))
    n = (T + pad) // chunk
    q, k, v = (x.reshape(B, H, n, chunk, -1) for x in (q, k, v))
    g, beta = g.reshape(B, H, n, chunk), beta.reshape(B, H, n, chunk)

    G = g.cumsum(-1)  # in-chunk cumulative log-decay
    upper = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    decay = _decay((G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(upper, float("-inf")))  # Γ[r, s]
    k_beta = k * beta.unsqueeze(-1)
    A = (k_beta @ k.transpose(-1, -2)) * decay
    P = (q @ k.transpose(-1, -2)) * decay  # intra-chunk attention, diagonal included
    # (I + strict_lower(A))^-1 applied to [beta*V | beta*exp(G)*K] in one triangular solve
    G_exp = _decay(G)
    rhs = torch.empty(B, H, n, chunk, dv + dk, dtype=q.dtype, device=q.device)
    torch.mul(v, beta.unsqueeze(-1), out=rhs[..., :dv])
    torch.mul(k_beta, G_exp.unsqueeze(-1), out=rhs[..., dv:])
    sol = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    U, W = sol[..., :dv], sol[..., dv:]
    q_dec = q * G_exp.unsqueeze(-1)
    k_dec = k * _decay(G[..., -1:] - G).unsqueeze(-1)
    gamma = G_exp[..., -1, None, None]  # [B, H, n, 1, 1]

    out = torch.empty(B, H, n, chunk, dv, dtype=q.dtype, device=q.device)
    S = state
    for i in range(n):  # sequential over chunks only
        v_new = U[:, :, i] - W[:, :, i] @ S
        out[:, :, i] = q_dec[:, :, i] @ S + P[:, :, i] @ v_new
        S = S * gamma[:, :, i] + k_dec[:, :, i].transpose(-1, -2) @ v_new
    state.copy_(S)
    return out.reshape(B, H, n * chunk, dv)[:, :, :T].transpose(1, 2)


def gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """Dispatch: recurrent for short spans (decode, speculative verify), chunked otherwise."""
    if q.shape[1] <= 16:
        return recurrent_gated_delta_rule(q, k, v, g, beta, state)
    return chunked_gated_delta_rule(q, k, v, g, beta, state)
