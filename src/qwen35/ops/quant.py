"""Weight-only int8 and int4: the formats, quantisers, references and the matmul dispatch.

int8: `q: int8 [..., N, K]`, `scale: fp32 [..., N]`; W = q * scale (symmetric, per output row).
int4: `q: uint8 [..., N, K/2]`, `scale: fp16 [..., N, K/G]`, optional `zeros: uint8` shaped like the scales
(absent: 8); W[n, k] = (u[n, k] - zero[n, k // G]) * scale[n, k // G]. In each block of 64 inputs k0..k0+63,
byte k0/2 + j holds input k0+j in its low nibble and k0+32+j in its high nibble (the kernels unpack a block
with one mask and one shift). Our quantiser (`quantize_int4`) is llama.cpp's Q4_0 rule with G = 32: the
value of largest magnitude maps to -8, zero point 8, so it uses all 16 levels at 4.5 bits per weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import native

INT4_GROUP = 32


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [..., N, K] float -> (q int8, scale fp32 [..., N]); absmax / 127 per row."""
    w = w.float()
    scale = w.abs().amax(-1) / 127.0
    q = torch.round(w / scale.clamp(min=1e-30).unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.unsqueeze(-1)


def quantize_int4(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [..., N, K] float (K % 64 == 0, K % group == 0) -> (packed uint8 [..., N, K/2], scale fp16 [..., N, K/G]).
    Per group, d = m / -8 where m is the value of largest magnitude; u = clamp(round(w / d) + 8, 0, 15)."""
    *lead, N, K = w.shape
    if K % 64 or K % group or group % 32:
        raise ValueError(f"int4 needs K % 64 == 0 and a group size (multiple of 32) dividing K; got K={K}, "
                         f"group={group}")
    g = w.float().reshape(*lead, N, K // group, group)
    idx = g.abs().argmax(-1, keepdim=True)
    d = (g.gather(-1, idx) / -8.0).half().float()  # the scale as stored, so rounding uses what kernels see
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    u = (torch.round(g * inv) + 8).clamp_(0, 15).to(torch.uint8).reshape(*lead, N, K)
    return pack_int4(u), d.squeeze(-1).half()


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """u: uint8 values 0..15, [..., N, K] -> [..., N, K/2] in the block-of-64 nibble layout."""
    *lead, N, K = u.shape
    b = u.reshape(*lead, N, K // 64, 2, 32)
    return (b[..., 0, :] | (b[..., 1, :] << 4)).reshape(*lead, N, K // 2)


def unpack_int4(q: torch.Tensor) -> torch.Tensor:
    """[..., N, K/2] packed -> uint8 values [..., N, K]."""
    *lead, N, half = q.shape
    b = q.reshape(*lead, N, half // 32, 32)
    return torch.stack([b & 15, b >> 4], -2).reshape(*lead, N, 2 * half)


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor | None = None) -> torch.Tensor:
    u = unpack_int4(q).float()
    K = u.shape[-1]
    G = K // scale.shape[-1]
    z = 8.0 if zeros is None else zeros.float().repeat_interleave(G, -1)
    return (u - z) * scale.float().repeat_interleave(G, -1)


def dequantize(fmt: str, q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor | None = None) -> torch.Tensor:
    return dequantize_int8(q, scale) if fmt == "int8" else dequantize_int4(q, scale, zeros)


def matmul(x: torch.Tensor, fmt: str, q: torch.Tensor, scale: torch.Tensor,
           zeros: torch.Tensor | None = None) -> torch.Tensor:
    """x: [M, K] -> x W^T: [M, N] in x's dtype. Our CPU kernels for bf16 inputs; otherwise (other dtypes,
    CUDA, no build) the reference: dequantise, then F.linear."""
    lib = native.ops() if x.device.type == "cpu" and x.dtype == torch.bfloat16 else None
    if lib is not None:
        x = x if x.stride(-1) == 1 else x.contiguous()
        if fmt == "int8":
            return lib.gemm_int8(x, q, scale)
        return lib.gemm_int4(x, q, scale, zeros, 2 * q.shape[-1] // scale.shape[-1])
    return F.linear(x, dequantize(fmt, q, scale, zeros).to(x.dtype))


def matmul_ref(x: torch.Tensor, fmt: str, q: torch.Tensor, scale: torch.Tensor,
               zeros: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: fp32 matmul with the dequantised weight, cast to x's dtype."""
    return (x.float() @ dequantize(fmt, q, scale, zeros).T).to(x.dtype)
