"""Gated DeltaNet mixer (docs/MODEL.md §3): projections, causal conv1d with state, q/k l2norm,
fp32 gates, the gated delta rule over the slot's recurrent state, gated RMSNorm, output projection.

State snapshots for speculative decoding: when the step metadata carries `snapshot_slots: [B, k+1]` int64
(read with getattr, so metadata without the field works), slot `snapshot_slots[b, i]` receives this layer's
conv and recurrent state as it was after new token `T_b - (k+1) + i` of sequence b (T_b = its new tokens):
the last k+1 tokens, the last one being the sequence's own slot state. A -1 entry, or one for a token that
does not exist (T_b < k+1), writes nothing there. Snapshot slots must differ from every state slot of the
step; the last column may be -1, since the sequence's own slot ends up holding that state anyway. Without
the field (or with None) the forward is unchanged. Cost: k+1 extra state writes per sequence and layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TextConfig
from ..ops.batch import ForwardBatch
from ..ops import fused
from ..ops.conv1d import causal_conv1d, causal_conv1d_step, causal_conv1d_train
from ..ops.gdn import chunked_gated_delta_rule_train, gated_delta_rule, gated_delta_rule_with_snapshots, l2norm
from .cache import ModelCache
from .cache_spec import layer_cache_id
from .linear import Linear, fuse_linears
from .norm import GatedRMSNorm


class GatedDeltaNet(nn.Module):
    def __init__(self, cfg: TextConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.cache_id = layer_cache_id(layer)
        self.hk, self.hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.dk, self.dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        h, kd, vd, cd = cfg.hidden_size, cfg.linear_key_dim, cfg.linear_value_dim, cfg.linear_conv_dim
        self.in_proj_qkv = Linear(h, cd)  # columns: q (Hk*dk) | k (Hk*dk) | v (Hv*dv)
        self.in_proj_z = Linear(h, vd)
        self.in_proj_b = Linear(h, self.hv)
        self.in_proj_a = Linear(h, self.hv)
        self.conv1d = nn.Module()
        self.conv1d.weight = nn.Parameter(torch.empty(cd, 1, cfg.linear_conv_kernel_dim))
        self.A_log = nn.Parameter(torch.empty(self.hv, dtype=torch.float32))
        self.dt_bias = nn.Parameter(torch.empty(self.hv, dtype=torch.float32))
        self.norm = GatedRMSNorm(self.dv, cfg.rms_norm_eps)
        self.out_proj = Linear(vd, h)
        self.split = (kd, kd, vd)
        self.in_proj: Linear | None = None  # qkv | z | b | a in one matmul, after fuse()

    def fuse(self) -> None:
        """Merge the four input projections into one (inference only; the originals are dropped)."""
        fused = fuse_linears([self.in_proj_qkv, self.in_proj_z, self.in_proj_b, self.in_proj_a])
        if fused is not None:
            self.in_proj = fused
            del self.in_proj_qkv, self.in_proj_z, self.in_proj_b, self.in_proj_a

    def _fp32_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-exp(A_log), dt_bias, the conv weight and the gated norm's weight in fp32, computed once per loaded
        weights."""
        key = (self.A_log, self.dt_bias, self.conv1d.weight, self.norm.weight)
        if self.A_log.requires_grad:  # training: computed afresh, so that the gradients flow
            return -self.A_log.float().exp(), self.dt_bias.float(), self.conv1d.weight.float(), self.norm.weight.float()
        cached = getattr(self, "_fp32", None)
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            self._fp32 = (key, (-self.A_log.detach().float().exp(), self.dt_bias.detach().float(),
                                self.conv1d.weight.detach().float().contiguous(),
                                self.norm.weight.detach().float().contiguous()))
        return self._fp32[1]

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.in_proj is not None:
            return self.in_proj(x).split((sum(self.split), self.hv * self.dv, self.hv, self.hv), -1)
        return self.in_proj_qkv(x), self.in_proj_z(x), self.in_proj_b(x), self.in_proj_a(x)

    def forward(self, x: torch.Tensor, batch: ForwardBatch, cache: ModelCache) -> torch.Tensor:
        """x: [N, H] -> [N, H]."""
        N = x.shape[0]
        mixed, z, b, a = self._project(x)  # [N, C], [N, Dv], [N, Hv], [N, Hv]
        neg_a, dt_bias, conv_w, norm_w = self._fp32_params()
        lib = fused.lib_for(x) if batch.is_decode and getattr(batch, "snapshot_slots", None) is None else None
        if lib is not None and fused.rows_ok(mixed, z, b, a):
            # one C++ call from the projections to out_proj's input, state pools updated in place
            conv_pool, ssm_pool = cache.state(self.cache_id)
            o = lib.gdn_decode(mixed, z, b, a, conv_w, conv_pool, ssm_pool, batch.state_slots, neg_a, dt_bias,
                               norm_w, self.norm.eps)
            return self.out_proj(o)
        z = z.reshape(N, self.hv, self.dv)
        beta = torch.sigmoid(b.float())
        g = neg_a * F.softplus(a.float() + dt_bias)

        conv_pool, ssm_pool = cache.state(self.cache_id)
        shared = batch.shared_prefix
        if shared is not None:  # training over shared prefixes (shared_prefix.py): the states carry gradients
            conv_state, state = shared.gdn_start(self.cache_id, batch.num_seqs, conv_pool, ssm_pool)
        elif batch.slot_range is not None:  # contiguous slots: work on the pool in place
            conv_state = conv_pool[batch.slot_range[0]:batch.slot_range[1]]
            state = ssm_pool[batch.slot_range[0]:batch.slot_range[1]]
        else:
            conv_state, state = conv_pool[batch.state_slots], ssm_pool[batch.state_slots]
        snap = _snapshot_rows(batch)  # [B, k+1] or None

        conv_snaps = None if snap is None else (conv_pool, snap)
        if shared is not None:
            mixed, conv_end = causal_conv1d_train(batch.to_padded(mixed), batch.query_lens, self.conv1d.weight,
                                                  conv_state)
        elif batch.is_decode:
            mixed = causal_conv1d_step(mixed, conv_w, conv_state, conv_snaps).unsqueeze(1)  # [B, 1, C]
        else:
            mixed = causal_conv1d(batch.to_padded(mixed), batch.query_lens, self.conv1d.weight, conv_state,
                                  conv_snaps)
        B, T = mixed.shape[:2]
        q, k, v = mixed.split(self.split, -1)
        r = self.hv // self.hk  # V head j reads QK head j // r
        q = l2norm(q.view(B, T, self.hk, self.dk)) * self.dk ** -0.5  # conv output is fp32 already
        k = l2norm(k.view(B, T, self.hk, self.dk))
        if r > 1:
            q, k = q.repeat_interleave(r, 2), k.repeat_interleave(r, 2)
        v = v.view(B, T, self.hv, self.dv)
        # padding rows get beta = g = 0 from to_padded, so they leave the state untouched
        if shared is not None:
            o, state_end = chunked_gated_delta_rule_train(q, k, v, batch.to_padded(g), batch.to_padded(beta), state)
            shared.gdn_end(self.cache_id, conv_end, state_end)
        elif snap is None:
            o = gated_delta_rule(q, k, v, batch.to_padded(g), batch.to_padded(beta), state)  # [B, T, Hv, dv]
        else:
            o = gated_delta_rule_with_snapshots(q, k, v, batch.to_padded(g), batch.to_padded(beta), state,
                                                batch.query_lens, ssm_pool, snap)

        if shared is None and batch.slot_range is None:
            conv_pool.index_copy_(0, batch.state_slots, conv_state)
            ssm_pool.index_copy_(0, batch.state_slots, state)
        o = self.norm(batch.to_packed(o), z)  # [N, Hv, dv] -> gated norm per head
        return self.out_proj(o.reshape(N, -1))


def _snapshot_rows(batch: ForwardBatch) -> torch.Tensor | None:
    """`snapshot_slots` with every entry that writes nothing (-1, or a token the sequence does not have)
    pointed at the sequence's own state slot: the ops may write garbage there, and the step's final state
    overwrites it. No host sync, no boolean indexing."""
    slots = getattr(batch, "snapshot_slots", None)
    if slots is None:
        return None
    S = slots.shape[1]
    missing = batch.query_lens.view(-1, 1) - S + torch.arange(S, device=slots.device) < 0
    return torch.where(missing | (slots < 0), batch.state_slots.view(-1, 1), slots)
