// Run-time instruction-set choice shared by every kernel file.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace qwen35 {

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512Bf16 = 2 };

// The ISA kernels use now: the best this CPU supports, unless a test forced a lower one with set_isa.
Isa current_isa();
// The ISA of the int4 row kernels: current_isa(), or AVX2 where the machine measured the VNNI blocks slower
// (ops/quant.py `choose_int4_isa`: half the bandwidth on an AMD Zen 4); set_isa clears that choice.
Isa int4_isa();
const char* isa_name(Isa isa);

#define QWEN35_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,fma,f16c")))
#define QWEN35_AVX2 __attribute__((target("avx2,fma,f16c")))
// Plain loops compiled for AVX-512, AVX2 and the baseline, the clone picked by the CPU at load time. Files whose
// results must not depend on it (the training kernels) turn FMA contraction off, so every clone rounds alike.
#define QWEN35_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

// The lanes of a 16-lane vector that `left` remaining elements fill (all 16 when left >= 16).
inline uint16_t tail_mask(int64_t left) { return left >= 16 ? uint16_t(0xffff) : uint16_t((1u << left) - 1); }

// bf16 <-> fp32 for scalar code (round to nearest even, NaN kept quiet).
inline float bf16_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal half: renormalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; --exp; }
      u = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace qwen35
