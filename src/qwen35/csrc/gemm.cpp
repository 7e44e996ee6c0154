// Decode-shaped matmuls (see gemm.h), three ways:
// - AVX512 (BF16 + VNNI): bf16 weights in blocks of 4-8 rows x up to 4 input rows (3 rows x up to 8 for five
//   or more inputs) held in zmm accumulators, straight into vdpbf16ps, or for one input row and in_order the
//   rows one after another (bf16_in_order_avx512); int8 and int4 weights against the inputs rounded to int8 per
//   32 values, with vpdpbusd (block_vnni); int8 rows whose K is not a multiple of 64 are widened to bf16 instead.
// - AVX2: bf16 weights in blocks of 8 rows (one input row) or 4 rows x 2 input rows, widened to fp32 in
//   registers straight into FMAs with the fp32 inputs (bf16_block_avx2); int8 and int4 against the inputs
//   rounded to int8 as for VNNI, with vpmaddubsw + vpmaddwd (int8_block_avx2,
//   int4_block_avx2: 8 rows reduced into one vector, so the float work is shared).
// - Plain C++ (and AVX2's int8 when K is not a multiple of 64): each weight row is dequantised to fp32 once and
//   dotted with the fp32 inputs (the same source, compiled twice: once for AVX2+FMA, once for the baseline).
// Every path streams each weight byte once per call: decode reads weights at the memory bandwidth.
#include "gemm.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "isa.h"
#include "simd.h"

namespace qwen35 {
namespace {

// ---------------------------------------------------------------------------------------------------------
// AVX512-BF16

QWEN35_AVX512 inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

QWEN35_AVX512 inline __m512bh load_bh(const uint16_t* p, int64_t left) {
  if (left >= 32) return (__m512bh)_mm512_loadu_si512(p);
  return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1ull << left) - 1), p);
}

// 32 int8 weights -> 32 bf16 (exact: every int8 fits bf16's 8-bit significand).
QWEN35_AVX512 inline __m512bh int8_to_bh(const int8_t* p, int64_t left) {
  __m256i b = left >= 32 ? _mm256_loadu_si256((const __m256i*)p)
                         : _mm256_maskz_loadu_epi8((__mmask32)((1ull << left) - 1), p);
  __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
  __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
  return _mm512_cvtne2ps_pbh(hi, lo);
}

// NB weight rows (bf16, or int8 widened to bf16) x MB input rows, K a multiple of 32 or not. `next` (or null):
// the first of the NB rows the next block reads, `row_bytes` apart; each step prefetches their lines at this
// step's place (on an AMD Zen 4, 8 input rows then read bf16 weights 7-30% faster, one row no slower).
template <Fmt F, int NB, int MB>
QWEN35_AVX512 void block_bf16_int8(const uint8_t* const* wr, const uint16_t* const* xr, int64_t K,
                                    float out[NB][MB], const char* next = nullptr, int64_t row_bytes = 0) {
  __m512 acc[NB][MB];
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const int64_t left = K - k;  // >= 32 except in the last step of a K that is not a multiple of 32
    __m512bh xv[MB];
    if (next != nullptr)  // bf16 rows only (2 bytes an input); the int8 callers pass none
#pragma GCC unroll 16
      for (int i = 0; i < NB; ++i) _mm_prefetch(next + i * row_bytes + 2 * k, _MM_HINT_T0);
#pragma GCC unroll 16
    for (int j = 0; j < MB; ++j) xv[j] = load_bh(xr[j] + k, left);
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) {
      __m512bh wv = F == Fmt::kBf16 ? load_bh((const uint16_t*)wr[i] + k, left)
                                    : int8_to_bh((const int8_t*)wr[i] + k, left);
#pragma GCC unroll 16
      for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[j], wv);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < MB; ++j) out[i][j] = hsum(acc[i][j]);
}

// sum_g scale[g] * zero[g] * c[g] over one row's groups (c: the input's per-group sums, scaled): the zero
// point the kernel's dot products with the stored nibbles leave in.
QWEN35_AVX512 inline float int4_zero_offset(const Weight& w, int64_t n, const float* c) {
  const int64_t G = w.groups();
  const uint16_t* s = w.scale16 + n * G;
  const uint8_t* z = w.zeros ? w.zeros + n * G : nullptr;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; g += 16) {
    const __mmask16 mask = tail_mask(G - g);
    __m512 sv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, s + g));
    __m512 zv = z ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, z + g))) : _mm512_set1_ps(8.0f);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(sv, zv), _mm512_maskz_loadu_ps(mask, c + g), acc);
  }
  return hsum(acc);
}

// Int8 rows n..n+NB-1 of w as bf16 into dst [NB, K] (exact; the row scale comes after the dot).
template <int NB>
QWEN35_AVX512 void widen_block(const Weight& w, int64_t n, uint16_t* dst) {
  const int64_t K = w.K;
  for (int i = 0; i < NB; ++i) {
    uint16_t* d = dst + i * K;
    const int8_t* r = (const int8_t*)w.row(n + i);
    for (int64_t k = 0; k < K; k += 32) {
      __m512bh v = int8_to_bh(r + k, K - k);
      if (K - k >= 32) _mm512_storeu_si512(d + k, (__m512i)v);
      else _mm512_mask_storeu_epi16(d + k, (__mmask32)((1ull << (K - k)) - 1), (__m512i)v);
    }
  }
}

inline void store(const Out& o, int64_t m, int64_t n, float v) {
  if (o.bf16) ((uint16_t*)o.y)[m * o.ldy + n] = float_to_bf16(v);
  else ((float*)o.y)[m * o.ldy + n] = v;
}

template <Fmt F, int NB, int MB>
QWEN35_AVX512 void run_block(const uint8_t* const* wr, const Rows& x, int64_t m, int64_t K, const float* scale,
                             int64_t n, const Out& o, const char* next, int64_t row_bytes) {
  const uint16_t* xr[MB];
  for (int j = 0; j < MB; ++j) xr[j] = x.x + (m + j) * x.ldx;
  float r[NB][MB];
  block_bf16_int8<F, NB, MB>(wr, xr, K, r, next, row_bytes);
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) store(o, m + j, n + i, scale ? r[i][j] * scale[i] : r[i][j]);
}

// run_block for the `rows` (1..MB) input rows from m: the block of that many inputs.
template <Fmt F, int NB, int MB>
QWEN35_AVX512 void run_rows(int64_t rows, const uint8_t* const* wr, const Rows& x, int64_t m, int64_t K,
                            const float* scale, int64_t n, const Out& o, const char* next, int64_t row_bytes) {
  if constexpr (MB > 1)
    if (rows < MB) return run_rows<F, NB, MB - 1>(rows, wr, x, m, K, scale, n, o, next, row_bytes);
  run_block<F, NB, MB>(wr, x, m, K, scale, n, o, next, row_bytes);
}

// All input rows against weight rows n..n+NB-1 held at wr (bf16 or int8), CHUNK input rows at a time; the
// first chunk prefetches the next block's rows where `next` is given (see block_bf16_int8).
template <Fmt F, int NB, int CHUNK = 4>
QWEN35_AVX512 void sweep(const uint8_t* const* wr, const Rows& x, int64_t K, const float* scale, int64_t n,
                         const Out& o, const char* next = nullptr, int64_t row_bytes = 0) {
  for (int64_t m = 0; m < x.M; m += CHUNK)
    run_rows<F, NB, CHUNK>(std::min<int64_t>(CHUNK, x.M - m), wr, x, m, K, scale, n, o, m == 0 ? next : nullptr,
                           row_bytes);
}

// int8 and int4 rows with AVX512-VNNI: the inputs are quantised to int8 per block of 32 (scale = max|x| / 127,
// llama.cpp's Q8_0 rule for activations), and vpdpbusd does 64 multiply-adds per instruction. On the Intel
// Xeon of docs/LOG.md, where 512-bit FMAs and vdpbf16ps issue every other cycle, widening the weights to
// bf16 or fp32 instead made int8/int4 compute-bound at 9-15 GB/s.
// dpbusd multiplies unsigned by signed bytes: int8 weights are flipped to u8 (w + 128, the extra 128 * sum(xq)
// is a per-row constant), int4 nibbles are already u8 (the zero point comes off per group).
template <Fmt F, int NB, int MB>
QWEN35_AVX512 void block_vnni(const Weight& w, int64_t n, const Rows& x, int64_t m, float out[NB][MB]) {
  __m512 acc[NB][MB];
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t K = w.K, G = w.group, ng = w.groups();
  const uint8_t* wr[NB];
  const uint16_t* sr[NB];
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i) wr[i] = w.row(n + i), sr[i] = w.scale16 + (n + i) * ng;
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const __m256i low = _mm256_set1_epi8(0x0f);
  // int4, G == 32: the scales of 16 groups (8 blocks of 64) are widened once per row; each block picks its two
  // with one permute (lanes 0-7: group 2j, lanes 8-15: group 2j+1) instead of two scalar loads and a blend
  __m512 s16[NB];
  const __m512i pair = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  for (int64_t k0 = 0; k0 < K; k0 += 64) {
    __m512i xv[MB];
    __m512 sv[MB];
#pragma GCC unroll 16
    for (int j = 0; j < MB; ++j) {
      xv[j] = _mm512_loadu_si512(x.xq + (m + j) * K + k0);
      sv[j] = _mm512_loadu_ps(x.xscale + (m + j) * (K / 4) + k0 / 4);
    }
    const int64_t blk = (k0 / 64) % 8;
    if (F == Fmt::kInt4 && G == 32 && blk == 0) {
      const int64_t g0 = k0 / 32;
      const __mmask16 mask = tail_mask(ng - g0);
#pragma GCC unroll 16
      for (int i = 0; i < NB; ++i) s16[i] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, sr[i] + g0));
    }
    const __m512i pick = _mm512_add_epi32(pair, _mm512_set1_epi32(int(2 * blk)));
#pragma GCC unroll 16
    for (int i = 0; i < NB; ++i) {
      if constexpr (F == Fmt::kInt8) {
        const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(wr[i] + k0), flip);
#pragma GCC unroll 16
        for (int j = 0; j < MB; ++j)
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv[j])),
                                      sv[j], acc[i][j]);
      } else {
        const __m256i b = _mm256_loadu_si256((const __m256i*)(wr[i] + k0 / 2));
        const __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, low)),
                                              _mm256_and_si256(_mm256_srli_epi16(b, 4), low), 1);
        // lanes 0-7 hold inputs k0..k0+31, lanes 8-15 inputs k0+32..k0+63: two groups when G == 32, and when
        // an odd multiple of 32 (96, 160, ...) ends a group at k0 + 32
        const __m512 sw = G == 32       ? _mm512_permutexvar_ps(pick, s16[i])
                          : G % 64 == 0 ? _mm512_set1_ps(_cvtsh_ss(sr[i][k0 / G]))
                                        : _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(_cvtsh_ss(sr[i][k0 / G])),
                                                               _mm512_set1_ps(_cvtsh_ss(sr[i][(k0 + 32) / G])));
#pragma GCC unroll 16
        for (int j = 0; j < MB; ++j)
          acc[i][j] = _mm512_fmadd_ps(
              _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv[j])), sv[j]), sw,
              acc[i][j]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < MB; ++j)
      out[i][j] = F == Fmt::kInt8 ? (hsum(acc[i][j]) - x.xcorr[m + j]) * w.scale[n + i]
                                  : hsum(acc[i][j]) - int4_zero_offset(w, n + i, x.xcorr + (m + j) * ng);
}

template <int NB, int MB>
QWEN35_AVX512 void run_vnni(const Weight& w, int64_t n, const Rows& x, int64_t m, const Out& o) {
  float r[NB][MB];
  if (w.fmt == Fmt::kInt8) block_vnni<Fmt::kInt8, NB, MB>(w, n, x, m, r);
  else block_vnni<Fmt::kInt4, NB, MB>(w, n, x, m, r);
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) store(o, m + j, n + i, r[i][j]);
}

template <int NB>
QWEN35_AVX512 void quant_vnni(const Weight& w, int64_t n, const Rows& x, const Out& o) {
  for (int64_t m = 0; m < x.M; m += 4) {
    switch (std::min<int64_t>(4, x.M - m)) {
      case 1: run_vnni<NB, 1>(w, n, x, m, o); break;
      case 2: run_vnni<NB, 2>(w, n, x, m, o); break;
      case 3: run_vnni<NB, 3>(w, n, x, m, o); break;
      default: run_vnni<NB, 4>(w, n, x, m, o); break;
    }
  }
}

// int8 weights whose K is not a multiple of 64 (no VNNI path): up to this many input rows read them directly;
// more rows widen each block of weight rows to bf16 once (into a buffer that stays in L1/L2) and run the bf16
// kernel over all input rows.
constexpr int64_t kInt8DirectRows = 4;

// bf16 weight rows n..n+NB-1 against all input rows, 8 at a time (NB x 8 accumulators): the weights stream
// from memory once per 8 inputs, not once per 4 (see matmul_rows_avx512).
template <int NB>
QWEN35_AVX512 void bf16_wide_avx512(const Weight& w, int64_t n, const Rows& x, const Out& o) {
  const uint8_t* wr[NB];
  for (int i = 0; i < NB; ++i) wr[i] = w.row(n + i);
  sweep<Fmt::kBf16, NB, 8>(wr, x, w.K, nullptr, n, o, (const char*)w.row(n + NB), w.row_bytes);
}

template <int NB>
QWEN35_AVX512 void rows_block_avx512(const Weight& w, int64_t n, const Rows& x, const Out& o, uint16_t* scratch) {
  const uint8_t* wr[NB];
  if (w.fmt == Fmt::kBf16) {
    for (int i = 0; i < NB; ++i) wr[i] = w.row(n + i);
    // the next block's rows to prefetch: past the last block they lie beyond the weight, which a prefetch
    // may name (it never faults)
    sweep<Fmt::kBf16, NB>(wr, x, w.K, nullptr, n, o, (const char*)w.row(n + NB), w.row_bytes);
  } else if (w.fmt != Fmt::kBf16 && x.xq) {
    quant_vnni<NB>(w, n, x, o);
  } else if (w.fmt == Fmt::kInt8 && x.M <= kInt8DirectRows) {
    for (int i = 0; i < NB; ++i) wr[i] = w.row(n + i);
    sweep<Fmt::kInt8, NB>(wr, x, w.K, w.scale + n, n, o);
  } else {
    widen_block<NB>(w, n, scratch);
    for (int i = 0; i < NB; ++i) wr[i] = (const uint8_t*)(scratch + i * w.K);
    sweep<Fmt::kBf16, NB>(wr, x, w.K, w.scale + n, n, o);
  }
}

QWEN35_AVX512 void matmul_rows_avx512(const Weight& w, int64_t n0, int64_t n1, const Rows& x, const Out& o) {
  std::vector<uint16_t> scratch(w.fmt == Fmt::kInt8 && !x.xq ? 8 * w.K : 0);  // only widen_block needs it
  int64_t n = n0;
  if ((x.M == 1 && w.fmt != Fmt::kInt4) || (x.M == 2 && w.fmt == Fmt::kBf16))  // 8 or 16 accumulators
    for (; n + 8 <= n1; n += 8) rows_block_avx512<8>(w, n, x, o, scratch.data());
  // bf16 for 5 or more inputs: 3 rows x 8 inputs (24 accumulators) read the weights once per 8 inputs; on an
  // AMD Zen 4, 8 inputs read them 11-18% faster than 4-row blocks swept twice (12: 4-9%, 5 and 16: the same)
  if (x.M >= 5 && w.fmt == Fmt::kBf16)
    for (; n + 3 <= n1; n += 3) bf16_wide_avx512<3>(w, n, x, o);
  for (; n + 4 <= n1; n += 4) rows_block_avx512<4>(w, n, x, o, scratch.data());
  for (; n < n1; ++n) rows_block_avx512<1>(w, n, x, o, scratch.data());
}

// One input row against bf16 rows [n0, n1) read one after another, a single stream through memory, 4
// accumulators a row: on an AMD Zen 4 rows of 2 KB (K = 1,024) read 18-47% faster than in blocks of 8 rows,
// longer ones no faster. Not every CPU gains, so callers measure it (`gemm_bf16`'s in_order, ops/linear.py).
QWEN35_AVX512 void bf16_in_order_avx512(const Weight& w, int64_t n0, int64_t n1, const uint16_t* x, const Out& o) {
  const int64_t K = w.K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* r = (const uint16_t*)w.row(n);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 128 <= K; k += 128) {
      a0 = _mm512_dpbf16_ps(a0, load_bh(x + k, 32), load_bh(r + k, 32));
      a1 = _mm512_dpbf16_ps(a1, load_bh(x + k + 32, 32), load_bh(r + k + 32, 32));
      a2 = _mm512_dpbf16_ps(a2, load_bh(x + k + 64, 32), load_bh(r + k + 64, 32));
      a3 = _mm512_dpbf16_ps(a3, load_bh(x + k + 96, 32), load_bh(r + k + 96, 32));
    }
    for (; k < K; k += 32) a0 = _mm512_dpbf16_ps(a0, load_bh(x + k, K - k), load_bh(r + k, K - k));
    store(o, 0, n, hsum(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))));
  }
}

// ---------------------------------------------------------------------------------------------------------
// AVX2 and plain C++: dequantise a row to fp32, then dot it with each fp32 input row.

inline __attribute__((always_inline)) void dequant_row(const Weight& w, int64_t n, float* dst) {
  const int64_t K = w.K;
  if (w.fmt == Fmt::kBf16) {
    const uint16_t* r = (const uint16_t*)w.row(n);
    for (int64_t k = 0; k < K; ++k) dst[k] = bf16_to_float(r[k]);
  } else if (w.fmt == Fmt::kInt8) {
    const int8_t* r = (const int8_t*)w.row(n);
    const float s = w.scale[n];
    for (int64_t k = 0; k < K; ++k) dst[k] = float(r[k]) * s;
  } else {
    const uint8_t* r = w.row(n);
    const int64_t ng = w.groups();
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
      for (int h = 0; h < 2; ++h) {
        const int64_t g = (k0 + 32 * h) / w.group;
        const float s = half_to_float(w.scale16[n * ng + g]);
        const float z = w.zeros ? float(w.zeros[n * ng + g]) : 8.0f;
        for (int j = 0; j < 32; ++j) dst[k0 + 32 * h + j] = (float((r[k0 / 2 + j] >> (4 * h)) & 15) - z) * s;
      }
    }
  }
}

inline __attribute__((always_inline)) float dot(const float* a, const float* b, int64_t K) {
  float acc[16] = {};
  int64_t k = 0;
  for (; k + 16 <= K; k += 16)
    for (int l = 0; l < 16; ++l) acc[l] += a[k + l] * b[k + l];
  float s = 0.f;
  for (int l = 0; l < 16; ++l) s += acc[l];
  for (; k < K; ++k) s += a[k] * b[k];
  return s;
}

inline __attribute__((always_inline)) void matmul_rows_portable(const Weight& w, int64_t n0, int64_t n1,
                                                                const Rows& x, const Out& o) {
  std::vector<float> row(w.K);
  for (int64_t n = n0; n < n1; ++n) {
    dequant_row(w, n, row.data());
    for (int64_t m = 0; m < x.M; ++m) store(o, m, n, dot(row.data(), x.x32 + m * w.K, w.K));
  }
}

// bf16 weights on AVX2: blocks of weight rows widened to fp32 in registers, 8 lanes a load, straight into FMAs
// with the fp32 inputs (no row buffer). The portable path above read bf16 weights at under half the memory
// bandwidth for one input row, compute-bound (docs/KERNELS.md).
// Output rows [n, n + NB) for input rows [m, m + MB): each block of weights is widened once per 8 columns and
// used for MB inputs. Every output is the same sum in the same order whatever NB, MB and the batch are.
template <int NB, int MB>
QWEN35_AVX2 void bf16_block_avx2(const Weight& w, int64_t n, const Rows& x, int64_t m, const Out& o) {
  const int64_t K = w.K, K8 = K & ~int64_t(7);
  const uint16_t* r[NB];
  for (int i = 0; i < NB; ++i) r[i] = (const uint16_t*)w.row(n + i);
  const float* xm[MB];
  for (int j = 0; j < MB; ++j) xm[j] = x.x32 + (m + j) * K;
  __m256 acc[NB][MB];
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K8; k += 8) {
    __m256 wv[NB];
    if ((k & 31) == 0)  // once a cache line: the rows the next block reads (see quant_block_avx2)
      for (int i = 0; i < NB; ++i) _mm_prefetch((const char*)(r[i] + NB * K + k), _MM_HINT_T0);
    for (int i = 0; i < NB; ++i) wv[i] = load8(r[i] + k);
    for (int j = 0; j < MB; ++j) {
      const __m256 xv = _mm256_loadu_ps(xm[j] + k);
      for (int i = 0; i < NB; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  for (int i = 0; i < NB; ++i)
    for (int j = 0; j < MB; ++j) {
      float v = sum8(acc[i][j]);
      for (int64_t k = K8; k < K; ++k) v += bf16_to_float(r[i][k]) * xm[j][k];
      store(o, m + j, n + i, v);
    }
}

// All input rows for output rows [n, n + NB): pairs of inputs (NB x 2 accumulators), then the odd one.
template <int NB>
QWEN35_AVX2 void bf16_rows_avx2(const Weight& w, int64_t n, const Rows& x, const Out& o) {
  int64_t m = 0;
  for (; m + 2 <= x.M; m += 2) bf16_block_avx2<NB, 2>(w, n, x, m, o);
  if (m < x.M) bf16_block_avx2<NB, 1>(w, n, x, m, o);
}

// int8 and int4 rows on AVX2 (K a multiple of 64), against the inputs rounded to int8 per block of 32 as for
// VNNI (quantize_rows). vpmaddubsw multiplies unsigned by signed bytes into 16-bit pair sums and vpmaddwd with
// ones adds pairs into 32-bit lanes of 4 products, what one vpdpbusd lane holds; the integer sums are exact.
// int8 weights go in as |w| with w's sign moved onto x (|w| <= 128, |x| <= 127: no pair sum saturates, where
// VNNI's w + 128 would); int4 nibbles are unsigned already and their zero point comes off per group, as on
// AVX512. Widening the weights to fp32 instead (the plain path) ran at 0.5 (int8) and 0.16 (int4) of the memory
// bandwidth for one input row. Each output is one sum in one order whatever NB, MB and the batch are.
QWEN35_AVX2 inline __m256 dot32(__m256i u, __m256i s) {
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

// int4 on AVX2: 8 weight rows at a time, one fp32 lane per row. The float work per group (a conversion, the
// input block's scale, the group scale, an FMA) is then one instruction each for 8 rows instead of one per row,
// which made the old row-at-a-time loop compute-bound at ~18 G weights a second a core (0.6 of the bandwidth of
// two cores). Per half block of 32 inputs vpmaddubsw gives each row 16 pair sums (|.| <= 2 * 15 * 127); two
// rows' vectors are interleaved and added in 16 bits (|.| <= 7620), vpmaddwd with ones widens them, and two
// more interleave-and-add steps leave one vector of the 8 rows' exact integer sums. Each lane (row) then takes
// acc = fma(float(sum) * input scale, group scale, acc) per half block in order, and finally its zero point
// off: the same arithmetic for every lane, so an output does not depend on the batch or on its place.

// v[t] <- column t of the 8 x 8 matrix whose rows were v[0..7].
QWEN35_AVX2 inline void transpose8(__m256* v) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// The fp32 group scales of weight rows r[0..7] by group, s[g * 8 + i], and scale x zero point (8 without
// zeros) in z alike: a block of 8 groups is widened per row and transposed.
QWEN35_AVX2 void int4_scales_avx2(const Weight& w, const int64_t* rows, float* s, float* z) {
  const int64_t ng = w.groups();
  int64_t g = 0;
  for (; g + 8 <= ng; g += 8) {
    __m256 v[8], vz[8];
    for (int i = 0; i < 8; ++i) {
      v[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(w.scale16 + rows[i] * ng + g)));
      const __m256 zp = w.zeros ? _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                      _mm_loadl_epi64((const __m128i*)(w.zeros + rows[i] * ng + g))))
                                : _mm256_set1_ps(8.0f);
      vz[i] = _mm256_mul_ps(v[i], zp);
    }
    transpose8(v);
    transpose8(vz);
    for (int t = 0; t < 8; ++t) {
      _mm256_storeu_ps(s + (g + t) * 8, v[t]);
      _mm256_storeu_ps(z + (g + t) * 8, vz[t]);
    }
  }
  for (; g < ng; ++g)
    for (int i = 0; i < 8; ++i) {
      s[g * 8 + i] = _cvtsh_ss(w.scale16[rows[i] * ng + g]);
      z[g * 8 + i] = s[g * 8 + i] * (w.zeros ? float(w.zeros[rows[i] * ng + g]) : 8.0f);
    }
}

// Two rows' 16 pair sums (16-bit) -> 8 lanes of 32-bit sums: [a, b, a, b | a, b, a, b].
QWEN35_AVX2 inline __m256i pair_rows(__m256i a, __m256i b) {
  return _mm256_madd_epi16(_mm256_add_epi16(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b)),
                           _mm256_set1_epi16(1));
}

// Four pair_rows results (rows 0-1, 2-3, 4-5, 6-7) -> each row's total in lane i.
QWEN35_AVX2 inline __m256i rows_total(const __m256i* p) {
  const __m256i a = _mm256_add_epi32(_mm256_unpacklo_epi64(p[0], p[1]), _mm256_unpackhi_epi64(p[0], p[1]));
  const __m256i b = _mm256_add_epi32(_mm256_unpacklo_epi64(p[2], p[3]), _mm256_unpackhi_epi64(p[2], p[3]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

// Output rows rows[0..7] (repeats allowed: a tail) for input rows [m, m + MB); s, z: int4_scales_avx2.
template <int MB>
QWEN35_AVX2 void int4_block_avx2(const Weight& w, const int64_t* rows, int64_t live, const Rows& x, int64_t m,
                                 const float* s, const float* z, const Out& o) {
  const int64_t K = w.K, G = w.group, ng = w.groups();
  const uint8_t* r[8];
  for (int i = 0; i < 8; ++i) r[i] = w.row(rows[i]);
  __m256 acc[MB];
  for (int j = 0; j < MB; ++j) acc[j] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(0x0f);
  int64_t g = 0, left = G / 32;  // the group of the next half block of 32 inputs, and its halves left
  for (int64_t k0 = 0; k0 < K; k0 += 64) {
    // the next block's bytes in order, 256 a step (8 rows of K / 2 bytes over K / 64 steps; see int8_block_avx2):
    // prefetching the same place 8 rows on instead read at ~19 GB/s, in order at 24-27 (AVX2-only AMD EPYC)
    const char* ahead = (const char*)r[0] + 8 * w.row_bytes + 4 * k0;
    for (int c = 0; c < 256; c += 64) _mm_prefetch(ahead + c, _MM_HINT_T0);
    // and its scales (and zero points), 64 bytes a step: int4_scales_avx2 reads them all before its first
    // step, and rows of 2-3.5 KB read 5-40% faster so (1,024 x 3,584: 14-15 against 11-14 GB/s, AMD Zen 4)
    if (k0 < 16 * ng) _mm_prefetch((const char*)(w.scale16 + (rows[0] + 8) * ng) + k0, _MM_HINT_T0);
    if (w.zeros && k0 < 8 * ng) _mm_prefetch((const char*)(w.zeros + (rows[0] + 8) * ng) + k0, _MM_HINT_T0);
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const int64_t k = k0 + 32 * h;
      __m256i xv[MB], p[MB][4];
#pragma GCC unroll 4
      for (int j = 0; j < MB; ++j) xv[j] = _mm256_loadu_si256((const __m256i*)(x.xq + (m + j) * K + k));
#pragma GCC unroll 4
      for (int i = 0; i < 8; i += 2) {
        __m256i u[2];
#pragma GCC unroll 2
        for (int t = 0; t < 2; ++t) {
          const __m256i b = _mm256_loadu_si256((const __m256i*)(r[i + t] + k0 / 2));
          u[t] = _mm256_and_si256(h ? _mm256_srli_epi16(b, 4) : b, low);
        }
#pragma GCC unroll 4
        for (int j = 0; j < MB; ++j)
          p[j][i / 2] = pair_rows(_mm256_maddubs_epi16(u[0], xv[j]), _mm256_maddubs_epi16(u[1], xv[j]));
      }
      const __m256 sg = _mm256_loadu_ps(s + g * 8);
#pragma GCC unroll 4
      for (int j = 0; j < MB; ++j) {
        const __m256 d = _mm256_broadcast_ss(x.xscale + (m + j) * (K / 4) + k / 4);  // the block's scale
        acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(rows_total(p[j])), d), sg, acc[j]);
      }
      if (--left == 0) ++g, left = G / 32;
    }
  }
  for (int j = 0; j < MB; ++j) {
    const float* c = x.xcorr + (m + j) * ng;  // the input's sums per group, scaled: the zero points' share
    __m256 off = _mm256_setzero_ps();
    for (int64_t q = 0; q < ng; ++q) off = _mm256_fmadd_ps(_mm256_loadu_ps(z + q * 8), _mm256_broadcast_ss(c + q), off);
    alignas(32) float v[8];
    _mm256_store_ps(v, _mm256_sub_ps(acc[j], off));
    for (int i = 0; i < live; ++i) store(o, m + j, rows[i], v[i]);
  }
}

// Output rows [n, n1) (at most 8; fewer repeat the last) for all input rows: pairs, then the odd one.
QWEN35_AVX2 void int4_rows_avx2(const Weight& w, int64_t n, int64_t n1, const Rows& x, float* s, float* z,
                                const Out& o) {
  int64_t rows[8];
  const int64_t live = std::min<int64_t>(8, n1 - n);
  for (int i = 0; i < 8; ++i) rows[i] = n + std::min<int64_t>(i, live - 1);
  int4_scales_avx2(w, rows, s, z);
  int64_t m = 0;
  for (; m + 2 <= x.M; m += 2) int4_block_avx2<2>(w, rows, live, x, m, s, z, o);
  if (m < x.M) int4_block_avx2<1>(w, rows, live, x, m, s, z, o);
}

// int8: output rows [n, n + NB) for input rows [m, m + MB).
template <int NB, int MB>
QWEN35_AVX2 void int8_block_avx2(const Weight& w, int64_t n, const Rows& x, int64_t m, const Out& o) {
  const int64_t K = w.K;
  const bool sequential = NB * w.row_bytes <= 16384;
  const char* next = (const char*)w.row(n + NB);
  __m256 acc[NB][MB];
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t k0 = 0; k0 < K; k0 += 64) {
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) {
      const uint8_t* r = w.row(n + i);
      // what the next block reads: without a prefetch int4 read at 0.4 of bf16's bytes a second from memory,
      // int8 at 0.8, and bf16 (bf16_block_avx2) the lm_head at 20 GB/s, not 24 (AVX2-only AMD EPYC): the hardware
      // prefetcher alone does not keep 8 streams ahead. A block of up to 16 KB is fetched in order, NB lines a
      // step (rows n + NB... follow this block's in memory), larger ones row by row at this block's place: in
      // order, int8 read at 27-30 GB/s against 21-23 with K = 1,024 and at 26 against 28 with K = 3,584.
      if (sequential) _mm_prefetch(next + NB * k0 + 64 * i, _MM_HINT_T0);
      else _mm_prefetch((const char*)(r + NB * w.row_bytes + k0), _MM_HINT_T0);
      __m256i wv[2], uv[2];  // the 64 weights as signed and as the unsigned multiplicand
#pragma GCC unroll 8
      for (int h = 0; h < 2; ++h) {
        wv[h] = _mm256_loadu_si256((const __m256i*)(r + k0 + 32 * h));
        uv[h] = _mm256_abs_epi8(wv[h]);
      }
#pragma GCC unroll 8
      for (int j = 0; j < MB; ++j)
#pragma GCC unroll 8
        for (int h = 0; h < 2; ++h) {
          const int64_t k = k0 + 32 * h;
          const __m256i xv = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i*)(x.xq + (m + j) * K + k)), wv[h]);
          const __m256 d = _mm256_loadu_ps(x.xscale + (m + j) * (K / 4) + k / 4);  // the block's scale x 8
          acc[i][j] = _mm256_fmadd_ps(dot32(uv[h], xv), d, acc[i][j]);
        }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < NB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) store(o, m + j, n + i, sum8(acc[i][j]) * w.scale[n + i]);
}

// int8: all input rows for output rows [n, n + NB): pairs of inputs, then the odd one.
template <int NB>
QWEN35_AVX2 void int8_rows_avx2(const Weight& w, int64_t n, const Rows& x, const Out& o) {
  int64_t m = 0;
  for (; m + 2 <= x.M; m += 2) int8_block_avx2<NB, 2>(w, n, x, m, o);
  if (m < x.M) int8_block_avx2<NB, 1>(w, n, x, m, o);
}

QWEN35_AVX2 void matmul_quant_avx2(const Weight& w, int64_t n0, int64_t n1, const Rows& x, const Out& o) {
  int64_t n = n0;
  if (w.fmt == Fmt::kInt4) {
    std::vector<float> s(16 * w.groups());
    for (; n < n1; n += 8) int4_rows_avx2(w, n, n1, x, s.data(), s.data() + 8 * w.groups(), o);
    return;
  }
  if (x.M == 1)
    for (; n + 8 <= n1; n += 8) int8_rows_avx2<8>(w, n, x, o);
  for (; n + 4 <= n1; n += 4) int8_rows_avx2<4>(w, n, x, o);
  for (; n < n1; ++n) int8_rows_avx2<1>(w, n, x, o);
}

QWEN35_AVX2 __attribute__((flatten)) void matmul_rows_avx2(const Weight& w, int64_t n0, int64_t n1,
                                                           const Rows& x, const Out& o) {
  if (w.fmt != Fmt::kBf16 && x.xq)
    return matmul_quant_avx2(w, n0, n1, x, o);
  if (w.fmt != Fmt::kBf16) return matmul_rows_portable(w, n0, n1, x, o);
  int64_t n = n0;
  if (x.M == 1) {  // 8 FMA chains
    for (; n + 8 <= n1; n += 8) bf16_rows_avx2<8>(w, n, x, o);
  } else {  // 4 rows x 2 inputs: 8 chains, 8 + 4 + 1 of the 16 vector registers
    for (; n + 4 <= n1; n += 4) bf16_rows_avx2<4>(w, n, x, o);
  }
  for (; n < n1; ++n) bf16_rows_avx2<1>(w, n, x, o);
}

__attribute__((flatten)) void matmul_rows_scalar(const Weight& w, int64_t n0, int64_t n1, const Rows& x,
                                                  const Out& o) {
  matmul_rows_portable(w, n0, n1, x, o);
}

void check(bool ok, const std::string& what) { TORCH_CHECK(ok, what); }

}  // namespace

void matmul_rows(const Weight& w, int64_t n0, int64_t n1, const Rows& x, const Out& out) {
  switch (w.fmt == Fmt::kInt4 ? int4_isa() : current_isa()) {
    case Isa::kAvx512Bf16: matmul_rows_avx512(w, n0, n1, x, out); break;
    case Isa::kAvx2: matmul_rows_avx2(w, n0, n1, x, out); break;
    default: matmul_rows_scalar(w, n0, n1, x, out); break;
  }
}

Weight weight_view(const at::Tensor& w, const c10::optional<at::Tensor>& scale,
                   const c10::optional<at::Tensor>& zeros, int64_t group) {
  check(w.device().is_cpu() && w.is_contiguous(), "weight must be a contiguous CPU tensor");
  Weight v;
  v.data = (const uint8_t*)w.data_ptr();
  v.N = w.size(-2);
  const int64_t cols = w.size(-1);
  if (w.scalar_type() == at::kBFloat16) {
    v.fmt = Fmt::kBf16;
    v.K = cols;
    v.row_bytes = 2 * cols;
  } else if (w.scalar_type() == at::kChar) {
    v.fmt = Fmt::kInt8;
    v.K = cols;
    v.row_bytes = cols;
    check(scale.has_value() && scale->scalar_type() == at::kFloat && scale->is_contiguous() &&
              scale->numel() == w.numel() / cols,
          "int8 weight needs an fp32 scale per output row");
    v.scale = scale->data_ptr<float>();
  } else if (w.scalar_type() == at::kByte) {
    v.fmt = Fmt::kInt4;
    v.K = 2 * cols;
    v.row_bytes = cols;
    v.group = group;
    check(group >= 32 && group % 32 == 0 && v.K % 64 == 0 && v.K % group == 0,
          "int4 weight needs K % 64 == 0 and a group size that is a multiple of 32 dividing K (K=" +
              std::to_string(v.K) + ", group=" + std::to_string(group) + ")");
    check(scale.has_value() && scale->scalar_type() == at::kHalf && scale->is_contiguous() &&
              scale->numel() == (w.numel() / cols) * (v.K / group),
          "int4 weight needs fp16 scales [N, K / group]");
    v.scale16 = (const uint16_t*)scale->data_ptr();
    if (zeros.has_value()) {
      check(zeros->scalar_type() == at::kByte && zeros->is_contiguous() && zeros->numel() == scale->numel(),
            "int4 zeros must be uint8 shaped like the scales");
      v.zeros = zeros->data_ptr<uint8_t>();
    }
  } else {
    check(false, "unsupported weight dtype " + std::string(c10::toString(w.scalar_type())));
  }
  return v;
}

// One block of 32 bf16 inputs as int8: q = round-to-nearest-even(x * 127 / max|x|) (the scalar nearbyint, as
// _mm256_cvtps_epi32 rounds under the default MXCSR); returns the block's scale max|x| / 127 and sets sum(q).
// Every CPU that runs these kernels has AVX2; a scalar nearbyint loop took ~3 us for 1,024 inputs.
static QWEN35_AVX2 float quantize_block_avx2(const uint16_t* src, int8_t* dst, int* sum) {
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int i = 0; i < 4; ++i) {
    v[i] = load8(src + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], magnitude));
  }
  float a = 0.f;
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, amax);
  for (float l : lanes) a = std::max(a, l);
  const __m256 inv = _mm256_set1_ps(a > 0.f ? 127.f / a : 0.f);
  __m256i q[4], total = _mm256_setzero_si256();
  for (int i = 0; i < 4; ++i) {
    q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
    total = _mm256_add_epi32(total, q[i]);
  }
  // packs interleave the 128-bit lanes: dwords 0,4,1,5,2,6,3,7 put the 32 bytes back in order
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
  _mm256_storeu_si256((__m256i*)dst, _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  alignas(32) int32_t parts[8];
  _mm256_store_si256((__m256i*)parts, total);
  *sum = parts[0] + parts[1] + parts[2] + parts[3] + parts[4] + parts[5] + parts[6] + parts[7];
  return a / 127.f;
}

// The inputs as int8 per block of 32 for the VNNI and AVX2 int8/int4 kernels: xq, the block scale repeated for
// each 4-input lane, and the offsets the kernels subtract (int8 on AVX512: 128 * sum_b scale_b * sum(xq_b) per
// row; int4: per weight group, sum over its blocks of scale_b * sum(xq_b)).
void quantize_rows(const Weight& w, Rows& r, RowsStorage& keep) {
  const int64_t M = r.M, K = w.K, nb = K / 32, ng = w.fmt == Fmt::kInt4 ? w.groups() : 1;
  int8_t* xq = keep.xq.get(M * K);
  float* xs = keep.xscale.get(M * (K / 4));
  float* xc = keep.xcorr.get(M * ng);
  std::fill(xc, xc + M * ng, 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      int sum = 0;
      const float d = quantize_block_avx2(r.x + m * r.ldx + 32 * b, xq + m * K + 32 * b, &sum);
      for (int t = 0; t < 8; ++t) xs[m * (K / 4) + 8 * b + t] = d;
      if (w.fmt == Fmt::kInt8) xc[m] += 128.f * d * float(sum);
      else xc[m * ng + 32 * b / w.group] += d * float(sum);
    }
  r.xq = xq;
  r.xscale = xs;
  r.xcorr = xc;
}

Rows prepare_rows(const at::Tensor& x, const Weight& w, RowsStorage& keep) {
  check(x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.stride(1) == 1, "x must be [M, K] bf16 rows");
  check(x.size(1) == w.K, "x has " + std::to_string(x.size(1)) + " columns, weight expects " + std::to_string(w.K));
  Rows r{(const uint16_t*)x.data_ptr(), x.size(0), x.stride(0)};
  if (current_isa() != Isa::kScalar && w.fmt != Fmt::kBf16 && w.K % 64 == 0) {  // always int4 (weight_view)
    quantize_rows(w, r, keep);
  } else if (current_isa() != Isa::kAvx512Bf16) {  // widened here: x.to(kFloat) cost ~7 us of dispatch a call
    const int64_t M = r.M, K = w.K;
    float* d = keep.x32.get(M * K);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) d[m * K + k] = bf16_to_float(r.x[m * r.ldx + k]);
    r.x32 = d;
  }
  return r;
}

namespace {

at::Tensor matmul(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& scale,
                  const c10::optional<at::Tensor>& zeros, int64_t group, bool in_order = false) {
  Weight wv = weight_view(w, scale, zeros, group);
  RowsStorage keep;
  Rows rows = prepare_rows(x, wv, keep);
  at::Tensor y = at::empty({x.size(0), wv.N}, x.options());
  Out out{y.data_ptr(), wv.N, true};
  in_order = in_order && rows.M == 1 && wv.fmt == Fmt::kBf16 && current_isa() == Isa::kAvx512Bf16;
  // 4-row blocks per thread; every thread streams one contiguous range of weight rows
  const int64_t blocks = (wv.N + 3) / 4;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    if (in_order) bf16_in_order_avx512(wv, 4 * b0, std::min(wv.N, 4 * b1), rows.x, out);
    else matmul_rows(wv, 4 * b0, std::min(wv.N, 4 * b1), rows, out);
  });
  return y;
}

// in_order: one input row reads the weight rows one after another (bf16_in_order_avx512) on an AVX512-BF16
// CPU; elsewhere, or for more rows, the same as without.
at::Tensor gemm_bf16(const at::Tensor& x, const at::Tensor& w, bool in_order) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16, "gemm_bf16 needs a bf16 weight");
  return matmul(x, w, c10::nullopt, c10::nullopt, 0, in_order);
}

at::Tensor gemm_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(w.scalar_type() == at::kChar, "gemm_int8 needs an int8 weight");
  return matmul(x, w, scale, c10::nullopt, 0);
}

at::Tensor gemm_int4(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                     const c10::optional<at::Tensor>& zeros, int64_t group) {
  TORCH_CHECK(w.scalar_type() == at::kByte, "gemm_int4 needs a uint8 weight of packed nibbles");
  return matmul(x, w, scale, zeros, group);
}

}  // namespace
}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("gemm_bf16(Tensor x, Tensor w, bool in_order=False) -> Tensor");
  m.def("gemm_int8(Tensor x, Tensor w, Tensor scale) -> Tensor");
  m.def("gemm_int4(Tensor x, Tensor w, Tensor scale, Tensor? zeros, int group) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) {
  m.impl("gemm_bf16", &qwen35::gemm_bf16);
  m.impl("gemm_int8", &qwen35::gemm_int8);
  m.impl("gemm_int4", &qwen35::gemm_int4);
}
