"""Weight-only int8 and int4: the formats, quantisers, references and the matmul dispatch.

int8: `q: int8 [..., N, K]`, `scale: fp32 [..., N]`; W = q * scale (symmetric, per output row).
int4: `q: uint8 [..., N, K/2]`, `scale: fp16 [..., N, K/G]`, optional `zeros: uint8` shaped like the scales
(absent: 8); W[n, k] = (u[n, k] - zero[n, k // G]) * scale[n, k // G]. In each block of 64 inputs k0..k0+63,
byte k0/2 + j holds input k0+j in its low nibble and k0+32+j in its high nibble (the kernels unpack a block
with one mask and one shift). Our quantiser (`quantize_int4`) is llama.cpp's Q4_0 rule with G = 32: the
value of largest magnitude maps to -8, zero point 8, so it uses all 16 levels at 4.5 bits per weight.
Converted GPTQ/AWQ checkpoints (loading/gptq.py) carry their own group size (often 128) and uint8 zeros.

`quantize(fmt, w)` quantises a weight of any leading shape in row chunks (bounded fp32 temporaries: the
loader quantises 248k-row embeddings and [E, 2I, H] expert stacks with it); `matmul` takes [N, K] weights,
contiguous slices of stacked ones (`q[e]`) included.
"""

from __future__ import annotations

import torch

from . import native
from .linear import plain_linear

INT4_GROUP = 32
FORMATS = ("int8", "int4")
_CHUNK_ELEMS = 1 << 22  # rows per quantiser call: about 16 MB of fp32 temporaries


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [..., N, K] float -> (q int8, scale fp32 [..., N]); absmax / 127 per row."""
    w = w.float()
    scale = w.abs().amax(-1) / 127.0
    q = torch.round(w / scale.clamp(min=1e-30).unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.unsqueeze(-1)).to(dtype)


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


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    *lead, N, half = q.shape
    ng = scale.shape[-1]
    u = unpack_int4(q).float().view(*lead, N, ng, 2 * half // ng)  # groups as a dimension: broadcasting
    z = 8.0 if zeros is None else zeros.float().unsqueeze(-1)
    return ((u - z) * scale.float().unsqueeze(-1)).view(*lead, N, 2 * half).to(dtype)


def dequantize(fmt: str, q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return dequantize_int8(q, scale, dtype) if fmt == "int8" else dequantize_int4(q, scale, zeros, dtype)


def dequantize_rows(fmt: str, q: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor | None, ids: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` of W, dequantised: [*ids.shape, K] (an embedding lookup in a quantised table)."""
    flat = ids.reshape(-1)
    w = dequantize(fmt, q[flat], scale[flat], zeros[flat] if zeros is not None else None, dtype)
    return w.view(*ids.shape, w.shape[-1])


def quantizable(fmt: str, K: int, group: int = INT4_GROUP) -> bool:
    """Whether a weight with K inputs can be stored in `fmt` (int4: K % 64 == 0 and the group divides K)."""
    return fmt == "int8" or (K % 64 == 0 and K % group == 0)


def quantize(fmt: str, w: torch.Tensor, group: int = INT4_GROUP
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """w: [..., N, K] -> (q, scale, zeros=None) in `fmt`, computed a few MB of rows at a time so the fp32
    temporaries stay small whatever the size of w. Same values as `quantize_int8` / `quantize_int4`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {FORMATS}")
    *lead, N, K = w.shape
    if fmt == "int4" and not quantizable(fmt, K, group):
        raise ValueError(f"int4 needs K % 64 == 0 and a group size (multiple of 32) dividing K; got K={K}, "
                         f"group={group}")
    flat = w.reshape(-1, K)
    R = flat.shape[0]
    if fmt == "int8":
        q = torch.empty(R, K, dtype=torch.int8, device=w.device)
        scale = torch.empty(R, dtype=torch.float32, device=w.device)
    else:
        q = torch.empty(R, K // 2, dtype=torch.uint8, device=w.device)
        scale = torch.empty(R, K // group, dtype=torch.float16, device=w.device)
    step = max(1, _CHUNK_ELEMS // max(K, 1))
    for r in range(0, R, step):
        part = flat[r:r + step]
        q[r:r + step], scale[r:r + step] = quantize_int8(part) if fmt == "int8" else quantize_int4(part, group)
    return q.view(*lead, N, *q.shape[1:]), scale.view(*lead, N, *scale.shape[1:]), None


# From this many rows on, dequantise the weight once and run oneDNN's GEMM. Chosen against the first
# (vdpbf16ps) int8 kernel: 7168 x 1024 at 512 rows took 150 ms there against 57 ms dequantise + F.linear. With
# the VNNI kernels (same Xeon, 2 threads) the kernel is 5.1 vs 17.6 ms (int8) and 8.3 vs 29.6 ms (int4) at
# 128 rows, 10.1 vs 11.1 and 16.8 vs 29.6 ms at 256, 20.7 vs 13.3 and 34.4 vs 32.1 ms at 512: the crossover has
# moved to about 256 (int8) and 512 (int4) rows; not yet changed here (docs/LOG.md).
PREFILL_ROWS = 128


def int4_group(q: torch.Tensor, scale: torch.Tensor) -> int:
    """The group size of an int4 weight: K (two inputs per byte of q) over the scales per row."""
    return 2 * q.shape[-1] // scale.shape[-1]


_int4_isa_chosen = False
INT4_SWITCH_MARGIN = 1.2  # the AVX2 int4 kernel replaces the VNNI one only when this much faster


def choose_int4_isa() -> None:
    """Once per process, on a CPU with AVX512-BF16 (the loader calls it for a model with int4 weights, beside
    the other layout measurements): time the int4 kernel's VNNI and AVX2 paths on one decode row of 4096 x 1024
    weights (random bytes, as many copies as twice the last-level cache holds, so they stream from memory) and
    keep AVX2 for int4 where it is `INT4_SWITCH_MARGIN` faster. On an AMD EPYC (Zen 4) the VNNI blocks read int4
    at 11-18 GB/s and the AVX2 ones at 20-36 (2026-12-07); Intel hosts measured the VNNI blocks fast. Both paths
    agree to rounding (tests/ops/test_native.py). Skipped while a test forces an ISA."""
    global _int4_isa_chosen
    lib = native.ops()
    if _int4_isa_chosen or lib is None or native._forced or lib.isa() != "avx512_bf16":
        return
    _int4_isa_chosen = True
    from .linear import _cache_flush_bytes, _time

    rows, k = 4096, 1024
    copies = max(2, _cache_flush_bytes() // (rows * k // 2))
    g = torch.Generator().manual_seed(0)
    q_all = torch.randint(0, 256, (copies * rows, k // 2), dtype=torch.uint8, generator=g)
    s_all = (torch.rand(copies * rows, k // 32, generator=g) / 64).half()
    x = torch.randn(1, k, generator=g).bfloat16()
    turn = iter(range(1 << 30))

    def run():
        c = next(turn) % copies
        lib.gemm_int4(x, q_all[c * rows:(c + 1) * rows], s_all[c * rows:(c + 1) * rows], None, 32)

    lib.set_int4_isa("")
    vnni = _time(run, repeats=8)
    lib.set_int4_isa("avx2")
    avx2 = _time(run, repeats=8)
    lib.set_int4_isa("avx2" if avx2 * INT4_SWITCH_MARGIN <= vnni else "")


def matmul(x: torch.Tensor, fmt: str, q: torch.Tensor, scale: torch.Tensor,
           zeros: torch.Tensor | None = None) -> torch.Tensor:
    """x: [M, K] -> x W^T: [M, N] in x's dtype. q/scale/zeros: [N, ...], contiguous (a slice `q[e]` of a
    stacked weight is). Our CPU kernels for bf16 inputs up to PREFILL_ROWS rows; otherwise (long prefills,
    other dtypes, CUDA, no build) dequantise, then F.linear (`plain_linear`)."""
    lib = native.ops() if x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.shape[0] < PREFILL_ROWS \
        else None
    if lib is not None:
        x = x if x.stride(-1) == 1 else x.contiguous()
        if fmt == "int8":
            return lib.gemm_int8(x, q, scale)
        return lib.gemm_int4(x, q, scale, zeros, int4_group(q, scale))
    return plain_linear(x, dequantize(fmt, q, scale, zeros, x.dtype))


def matmul_ref(x: torch.Tensor, fmt: str, q: torch.Tensor, scale: torch.Tensor,
               zeros: torch.Tensor | None = None, q8_inputs: bool = False) -> torch.Tensor:
    """Reference: fp32 matmul with the dequantised weight, cast to x's dtype. `q8_inputs`: with x rounded
    as the AVX512 and AVX2 kernels round it (`q8_activations`)."""
    xf = q8_activations(x) if q8_inputs else x.float()
    return (xf @ dequantize(fmt, q, scale, zeros).T).to(x.dtype)


def q8_activations(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] (K % 32 == 0) as the AVX512 and AVX2 int8/int4 kernels see it: int8 per block of 32 inputs with
    scale max|x| / 127 (llama.cpp's Q8_0 rule for activations), back in fp32. Their integer multiply-adds
    (vpdpbusd, vpmaddubsw) go where widened weights and FMAs made decode compute-bound (docs/KERNELS.md)."""
    b = x.float().reshape(*x.shape[:-1], -1, 32)
    d = b.abs().amax(-1, keepdim=True) / 127.0
    q = torch.where(d > 0, torch.round(b / torch.where(d > 0, d, 1.0)), 0.0)
    return (q * d).reshape(x.shape)
