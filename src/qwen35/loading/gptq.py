"""GPTQ and AWQ 4-bit checkpoints, converted at load into our int4 format (ops/quant.py).

A quantised module `X` is stored as `X.qweight`, `X.qzeros`, `X.scales` (and `X.g_idx`, GPTQ) instead of
`X.weight`; the dequantised weight is W[n, k] = (u[n, k] - zero[n, g]) * scale[n, g] with g = k // G.

GPTQ (AutoGPTQ / GPTQModel, `checkpoint_format` "gptq", the v1 layout): `qweight` int32 [K/8, N], input k in
nibble k % 8 (bits 4(k % 8)..) of row k // 8; `qzeros` int32 [K/G, N/8], output n in nibble n % 8 of column
n // 8, storing zero - 1 ("gptq_v2" stores the zero itself); `scales` fp16 [K/G, N]; `g_idx` int32 [K] the
group of each input, k // G unless the checkpoint was quantised with act-order (`desc_act`), which needs a
permutation we do not implement (refused, naming the tensor).
AWQ (AutoAWQ GEMM): `qweight` int32 [K, N/8] packed along outputs with AWQ's interleave: nibble j of column c
holds output 8c + [0, 2, 4, 6, 1, 3, 5, 7][j]; `qzeros` int32 [K/G, N/8] packed the same way, the zero itself;
`scales` fp16 [K/G, N].
Both become our packed uint8 [N, K/2] + fp16 scales [N, K/G] + uint8 zeros [N, K/G] (dropped when every zero
is 8, the symmetric case, so the kernels use their default).
"""

from __future__ import annotations

import torch

from ..ops import quant

PARTS = ("qweight", "qzeros", "scales", "g_idx")
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble j of a packed word holds output 8c + AWQ_ORDER[j]
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


class GPTQError(ValueError):
    pass


def unpack_nibbles(t: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> uint8 nibbles along `dim` (8 per word, nibble j = bits 4j..4j+3 comes j-th)."""
    t = t.movedim(dim, -1)
    u = ((t.unsqueeze(-1) >> _SHIFTS.to(t.device)) & 15).to(torch.uint8).flatten(-2)
    return u.movedim(-1, dim)


def split_name(key: str) -> tuple[str, str] | None:
    """`X.qweight` -> (`X`, "qweight") for the four GPTQ/AWQ tensor kinds, else None."""
    stem, _, part = key.rpartition(".")
    return (stem, part) if stem and part in PARTS else None


def to_int4(method: str, parts: dict[str, torch.Tensor], group: int, name: str,
            zero_offset: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u uint8 [N, K] nibble values, scale fp16 [N, K/G], zeros uint8 [N, K/G]) from a module's GPTQ/AWQ
    tensors. `group`: the config's group_size (-1: one group per row). `zero_offset`: what GPTQ v1 stores
    less than the zero (1; 0 for gptq_v2). `name`: the module, for errors."""
    for need in ("qweight", "qzeros", "scales"):
        if need not in parts:
            raise GPTQError(f"{name}.{need} is missing ({method} checkpoint)")
    qweight, qzeros, scales = parts["qweight"], parts["qzeros"], parts["scales"]
    for part in ("qweight", "qzeros"):
        if parts[part].dtype != torch.int32 or parts[part].dim() != 2:
            raise GPTQError(f"{name}.{part} must be a 2-D int32 tensor, got {parts[part].dtype} "
                            f"{tuple(parts[part].shape)}")
    if method == "gptq":
        K, N = 8 * qweight.shape[0], qweight.shape[1]
        u = unpack_nibbles(qweight, 0).T  # [N, K]
    else:
        K, N = qweight.shape[0], 8 * qweight.shape[1]
        u = _awq_columns(unpack_nibbles(qweight, 1)).T
    G = K if group == -1 else group
    if G <= 0 or K % G:
        raise GPTQError(f"{name}.qweight: group_size {group} does not divide its {K} inputs")
    ng = K // G
    if tuple(scales.shape) != (ng, N):
        raise GPTQError(f"{name}.scales has shape {tuple(scales.shape)}, expected {(ng, N)} for qweight "
                        f"{tuple(qweight.shape)} with group_size {group}")
    if tuple(qzeros.shape) != (ng, N // 8):
        raise GPTQError(f"{name}.qzeros has shape {tuple(qzeros.shape)}, expected {(ng, N // 8)}")
    z = unpack_nibbles(qzeros, 1)
    if method == "gptq":
        z = z + zero_offset  # v1 stores zero - 1 (a stored 15 means 16: uint8 holds it)
        g_idx = parts.get("g_idx")
        if g_idx is not None:
            trivial = torch.arange(K, device=g_idx.device) // G
            if g_idx.shape != (K,) or not torch.equal(g_idx.long(), trivial):
                raise GPTQError(f"{name}.g_idx is not k // group_size: this checkpoint was quantised with "
                                "act-order (desc_act) and a permutation, which is not supported")
    else:
        z = _awq_columns(z)
    return u.contiguous(), scales.T.to(torch.float16).contiguous(), z.T.contiguous()


def _awq_columns(packed_order: torch.Tensor) -> torch.Tensor:
    """[R, N] nibbles in AWQ's packing order -> natural output order."""
    R, N = packed_order.shape
    inverse = [AWQ_ORDER.index(m) for m in range(8)]  # natural column m sits at nibble inverse[m]
    return packed_order.view(R, N // 8, 8)[:, :, inverse].reshape(R, N)


def to_ours(u: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Our int4 buffers (q, scale, zeros or None when all are 8); needs quant.quantizable("int4", K, G)."""
    return quant.pack_int4(u), scale, (None if bool((zeros == 8).all()) else zeros)


def dequantize(u: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The plain weight [N, K] (for shapes our int4 layout cannot hold: K % 64 != 0, odd group sizes)."""
    N, K = u.shape
    G = K // scale.shape[-1]
    return ((u.float().view(N, -1, G) - zeros.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)).view(N, K).to(dtype)
