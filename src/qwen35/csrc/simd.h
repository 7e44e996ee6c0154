// Vector helpers shared by the kernels (fused.cpp, vision.cpp, gemm.cpp): AVX512 exp, bf16/fp32 loads of 8 and
// 16 lanes and stores of 16, and the macro that compiles a portable body three times (AVX512, AVX2+FMA, baseline).
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

// 8 floats, or 8 bf16 widened to fp32 (a shift of each 16-bit value), for the AVX2 paths
QWEN35_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
QWEN35_AVX2 inline __m256 load8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
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
