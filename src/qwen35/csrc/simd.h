// Vector helpers shared by the kernels (fused.cpp, vision.cpp, gemm.cpp, moe.cpp, decode_attention.cpp): exp and
// silu on 8 and 16 lanes, an 8-lane sum, bf16/fp32 loads, stores and rounding of 8 and 16 lanes, and the macro that compiles a portable body three times (AVX512,
// AVX2+FMA, baseline).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "isa.h"

namespace qwen35 {

// exp(x) for 16 floats: x = n ln2 + r (Cody-Waite), |r| <= ln2/2, exp(r) by its degree-7 Taylor polynomial
// (truncation < 6e-9), times 2^n by vscalefps (which also gives inf and 0 past the ends). Within 2 ulp.
QWEN35_AVX512 inline __m512 exp512(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

QWEN35_AVX512 inline __m512 silu512(__m512 x) {
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// exp(x) for 8 floats: exp512's polynomial with 2^n built from exponent bits, the argument clamped to
// [-87, 88] (so exp of a lower value gives ~1.6e-38, not 0, and of a higher one ~1.65e38, not inf).
QWEN35_AVX2 inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 5040);
  for (float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// x / (1 + exp(-x)); NaN stays NaN (the numerator)
QWEN35_AVX2 inline __m256 silu256(__m256 x) {
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.f), exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// The sum of 8 lanes (pairwise: halves, then quarters, then the last two)
QWEN35_AVX2 inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// 8 floats, or 8 bf16 widened to fp32 (a shift of each 16-bit value), for the AVX2 paths
QWEN35_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
QWEN35_AVX2 inline __m256 load8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

// fp32 -> the upper 16 bits rounded to nearest even (NaNs here come from bf16 inputs and stay NaN)
QWEN35_AVX2 inline __m256i bf16_bits8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
}
QWEN35_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
QWEN35_AVX2 inline void store8(uint16_t* p, __m256 v) {
  const __m256i b = bf16_bits8(v);
  _mm_storeu_si128((__m128i*)p, _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
}
// v rounded to T and back (bf16: round to nearest even; fp32: unchanged)
QWEN35_AVX2 inline __m256 round8(__m256 v, float*) { return v; }
QWEN35_AVX2 inline __m256 round8(__m256 v, uint16_t*) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits8(v), 16));
}

QWEN35_AVX512 inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
QWEN35_AVX512 inline __m512 load16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
QWEN35_AVX512 inline void store16(float* p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
QWEN35_AVX512 inline void store16(uint16_t* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(v));
}
// v rounded to T and back (bf16: round to nearest even; fp32: unchanged)
QWEN35_AVX512 inline __m512 round16(__m512 v, float*) { return v; }
QWEN35_AVX512 inline __m512 round16(__m512 v, uint16_t*) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

// A portable body compiled for each ISA and chosen at run time: NAME<T>(args) runs BODY<T>(args) built with
// AVX512, AVX2+FMA or baseline x86-64 code generation (the compiler vectorises the loops it can).
#define QWEN35_DISPATCH3(NAME, BODY)                                                              \
  template <typename T, typename... A>                                                           \
  QWEN35_AVX512 __attribute__((flatten)) void NAME##_avx512(A... a) { BODY<T>(a...); }           \
  template <typename T, typename... A>                                                           \
  QWEN35_AVX2 __attribute__((flatten)) void NAME##_avx2(A... a) { BODY<T>(a...); }               \
  template <typename T, typename... A>                                                           \
  __attribute__((flatten)) void NAME##_scalar(A... a) { BODY<T>(a...); }                         \
  template <typename T, typename... A>                                                           \
  void NAME(A... a) {                                                                            \
    switch (current_isa()) {                                                                     \
      case Isa::kAvx512Bf16: NAME##_avx512<T>(a...); break;                                      \
      case Isa::kAvx2: NAME##_avx2<T>(a...); break;                                              \
      default: NAME##_scalar<T>(a...); break;                                                    \
    }                                                                                            \
  }

}  // namespace qwen35
