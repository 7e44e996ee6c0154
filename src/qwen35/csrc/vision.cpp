// Elementwise work of the vision tower (model/vision.py), fused so that a 4096-patch image does not spend a
// third of its encode time converting bf16 to fp32 and back around small ops.
//
// vision_rotary: the tower's 2-D rotary on q and k straight from the qkv projection's output. Rotate-half with
// cos = cat(c, c), sin = cat(s, s) (ops/vision.apply_rotary, the reference):
//   out[:half] = x1 c - x2 s,   out[half:] = x2 c + x1 s        (fp32, one rounding to the output dtype)
// reading x [T, N, H, d] through its strides (q and k are row slices of qkv) and writing [T, N, H, d]
// contiguous, the layout SDPA reads.
//
// bias_gelu_tanh_: fc1's bias and the tanh GELU on fc1's output in place (fc1 then runs without bias, which
// spares the matmul its copy of the bias into the output). As torch's F.gelu(x + b, approximate="tanh"):
// x + b is rounded to the activations' dtype, then GELU in fp32, rounded once. GELU is evaluated as
//   0.5 x (1 + tanh(u)) = x sigmoid(2u) = x / (1 + exp(-2u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
// which needs one exp and one division, and no 1 + tanh(u) that cancels for negative x.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "isa.h"
#include "simd.h"

namespace qwen35 {
namespace {

inline float load(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
inline float load(const float* p, int64_t i) { return p[i]; }
inline void put(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }
inline void put(float* p, int64_t i, float v) { p[i] = v; }

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluC = 0.044715f;
// GELU is 0 below this: exact |gelu(-10)| < 2e-37, and torch's 0.5 x (1 + tanh(u)) is already exactly -0 there.
// Cutting it off keeps exp's argument -2u below 88 (where exp is still finite) and out of x^3's overflow.
constexpr float kGeluZeroBelow = -10.0f;

// exp(x) in plain C++ (the baseline path and the AVX2 path's last values): the same Cody-Waite reduction and
// degree-7 polynomial as exp512, 2^n built from its exponent bits. x is clamped to [-87, 88], where 2^n is a
// normal float.
inline __attribute__((always_inline)) float exp_portable(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest: + 1.5 * 2^23
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline __attribute__((always_inline)) float gelu_tanh(float x) {
  const float u = kGeluK * (x + kGeluC * x * x * x);
  const float y = x / (1.0f + exp_portable(-2.0f * u));
  return x <= kGeluZeroBelow ? 0.0f : y;  // NaN is not <= and stays NaN
}

// ---------------------------------------------------------------------------------------------------------
// Rotary. x(t, n, h, i) = x[t * st + n * sn + h * sh + i]; out is [T, N, H, d] contiguous; c, s: [N, half]
// rows ld_cs apart.

struct RotaryArgs {
  int64_t T, N, H, d, st, sn, sh, ld_cs;
  const float *cos, *sin;
};

template <typename T>
inline __attribute__((always_inline)) void rotary_rows(const T* x, T* out, RotaryArgs a, int64_t n0, int64_t n1) {
  const int64_t half = a.d / 2;
  for (int64_t n = n0; n < n1; ++n) {
    const float* c = a.cos + n * a.ld_cs;
    const float* s = a.sin + n * a.ld_cs;
    for (int64_t t = 0; t < a.T; ++t) {
      for (int64_t h = 0; h < a.H; ++h) {
        const T* x1 = x + t * a.st + n * a.sn + h * a.sh;
        const T* x2 = x1 + half;
        T* o = out + ((t * a.N + n) * a.H + h) * a.d;
        for (int64_t i = 0; i < half; ++i) {
          const float v1 = load(x1, i), v2 = load(x2, i);
          put(o, i, v1 * c[i] - v2 * s[i]);
          put(o, half + i, v2 * c[i] + v1 * s[i]);
        }
      }
    }
  }
}

template <typename T>
QWEN35_AVX512 void rotary_rows_vec(const T* x, T* out, RotaryArgs a, int64_t n0, int64_t n1) {
  const int64_t half = a.d / 2;
  for (int64_t n = n0; n < n1; ++n) {
    const float* c = a.cos + n * a.ld_cs;
    const float* s = a.sin + n * a.ld_cs;
    for (int64_t t = 0; t < a.T; ++t) {
      for (int64_t h = 0; h < a.H; ++h) {
        const T* x1 = x + t * a.st + n * a.sn + h * a.sh;
        const T* x2 = x1 + half;
        T* o = out + ((t * a.N + n) * a.H + h) * a.d;
        for (int64_t i = 0; i < half; i += 16) {
          const __mmask16 m = tail_mask(half - i);
          const __m512 vc = _mm512_maskz_loadu_ps(m, c + i), vs = _mm512_maskz_loadu_ps(m, s + i);
          const __m512 v1 = load16(x1 + i, m), v2 = load16(x2 + i, m);
          store16(o + i, _mm512_fmsub_ps(v1, vc, _mm512_mul_ps(v2, vs)), m);
          store16(o + half + i, _mm512_fmadd_ps(v2, vc, _mm512_mul_ps(v1, vs)), m);
        }
      }
    }
  }
}

QWEN35_DISPATCH3(rotary_rows_isa, rotary_rows)

// ---------------------------------------------------------------------------------------------------------
// Bias + tanh GELU over rows of I values, in place: x[r * ld + i] = gelu(round(x + b[i])).

template <typename T>
inline __attribute__((always_inline)) void bias_gelu_rows(T* x, int64_t ld, const T* b, int64_t I, int64_t r0,
                                                          int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    T* xr = x + r * ld;
    for (int64_t i = 0; i < I; ++i) {
      T sum;
      put(&sum, 0, load(xr, i) + load(b, i));  // torch's x + b is a bf16 tensor
      put(xr, i, gelu_tanh(load(&sum, 0)));
    }
  }
}

template <typename T>
QWEN35_AVX512 void bias_gelu_rows_vec(T* x, int64_t ld, const T* b, int64_t I, int64_t r0, int64_t r1) {
  const __m512 c = _mm512_set1_ps(kGeluC), one = _mm512_set1_ps(1.f);
  const __m512 minus2k = _mm512_set1_ps(-2.f * kGeluK), lowest = _mm512_set1_ps(-87.f);
  const __m512 zero_below = _mm512_set1_ps(kGeluZeroBelow);
  for (int64_t r = r0; r < r1; ++r) {
    T* xr = x + r * ld;
    for (int64_t i = 0; i < I; i += 16) {
      const __mmask16 m = tail_mask(I - i);
      const __m512 v = round16(_mm512_add_ps(load16(xr + i, m), load16(b + i, m)), (T*)nullptr);
      const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(c, v), _mm512_mul_ps(v, v), v);  // x + 0.044715 x^3
      // exp(-2u), its argument kept above -87 so that x^3 = inf for huge x gives x, not inf - inf = NaN
      const __m512 e = exp512(_mm512_max_ps(_mm512_mul_ps(minus2k, inner), lowest));
      const __mmask16 nonzero = _mm512_cmp_ps_mask(v, zero_below, _CMP_NLE_UQ);  // NaN included
      store16(xr + i, _mm512_maskz_div_ps(nonzero, v, _mm512_add_ps(one, e)), m);
    }
  }
}

// AVX2 (GCC does not vectorise the portable loop: the clamps and the bf16 rounding are control flow to it).
template <typename T>
QWEN35_AVX2 void bias_gelu_rows_avx2(T* x, int64_t ld, const T* b, int64_t I, int64_t r0, int64_t r1) {
  const __m256 c = _mm256_set1_ps(kGeluC), one = _mm256_set1_ps(1.f);
  const __m256 minus2k = _mm256_set1_ps(-2.f * kGeluK), zero_below = _mm256_set1_ps(kGeluZeroBelow);
  const int64_t I8 = I / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    T* xr = x + r * ld;
    for (int64_t i = 0; i < I8; i += 8) {
      const __m256 v = round8(_mm256_add_ps(load8(xr + i), load8(b + i)), (T*)nullptr);
      const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(c, v), _mm256_mul_ps(v, v), v);
      const __m256 y = _mm256_div_ps(v, _mm256_add_ps(one, exp256(_mm256_mul_ps(minus2k, inner))));
      const __m256 nonzero = _mm256_cmp_ps(v, zero_below, _CMP_NLE_UQ);  // NaN included
      store8(xr + i, _mm256_and_ps(y, nonzero));
    }
    bias_gelu_rows<T>(xr + I8, 0, b + I8, I - I8, 0, 1);  // the last I % 8 values
  }
}

// Rows of at least this many values per parallel task.
constexpr int64_t kGrainValues = 16384;

bool is_act(const at::Tensor& x) {
  return x.device().is_cpu() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat);
}

at::Tensor vision_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(is_act(x) && x.dim() == 4 && x.stride(3) == 1,
              "vision_rotary: x must be a bf16 or fp32 CPU tensor [T, N, H, d] with unit stride along d");
  const int64_t T = x.size(0), N = x.size(1), H = x.size(2), d = x.size(3), half = d / 2;
  TORCH_CHECK(d % 2 == 0, "vision_rotary: head dim ", d, " is odd");
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 2 && t->size(0) == N &&
                    t->size(1) == half && t->stride(1) == 1 && t->stride(0) == cos.stride(0),
                "vision_rotary: cos and sin must be fp32 CPU rows [N, d/2] = [", N, ", ", half,
                "] with equal strides");
  at::Tensor out = at::empty({T, N, H, d}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const RotaryArgs a{T, N, H, d, x.stride(0), x.stride(1), x.stride(2), cos.stride(0),
                     cos.data_ptr<float>(), sin.data_ptr<float>()};
  at::parallel_for(0, N, std::max<int64_t>(1, kGrainValues / (T * H * d)), [&](int64_t n0, int64_t n1) {
    const bool vec = current_isa() == Isa::kAvx512Bf16;
    if (x.scalar_type() == at::kBFloat16) {
      auto xp = (const uint16_t*)x.data_ptr();
      auto op = (uint16_t*)out.data_ptr();
      vec ? rotary_rows_vec<uint16_t>(xp, op, a, n0, n1) : rotary_rows_isa<uint16_t>(xp, op, a, n0, n1);
    } else {
      auto xp = (const float*)x.data_ptr();
      auto op = (float*)out.data_ptr();
      vec ? rotary_rows_vec<float>(xp, op, a, n0, n1) : rotary_rows_isa<float>(xp, op, a, n0, n1);
    }
  });
  return out;
}

at::Tensor bias_gelu_tanh_(at::Tensor x, const at::Tensor& bias) {
  TORCH_CHECK(is_act(x) && x.dim() == 2 && (x.stride(1) == 1 || x.size(1) <= 1),
              "bias_gelu_tanh_: x must be bf16 or fp32 CPU rows [N, I] with unit column stride");
  const int64_t N = x.size(0), I = x.size(1), ld = x.stride(0);
  TORCH_CHECK(bias.device().is_cpu() && bias.scalar_type() == x.scalar_type() && bias.dim() == 1 &&
                  bias.size(0) == I && bias.is_contiguous(),
              "bias_gelu_tanh_: bias must be a contiguous [", I, "] tensor of x's dtype");
  if (x.numel() == 0) return x;
  auto rows = [&](auto* xp, const auto* bp, int64_t r0, int64_t r1) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(bp)>>;
    switch (current_isa()) {
      case Isa::kAvx512Bf16: bias_gelu_rows_vec<T>(xp, ld, bp, I, r0, r1); break;
      case Isa::kAvx2: bias_gelu_rows_avx2<T>(xp, ld, bp, I, r0, r1); break;
      default: bias_gelu_rows<T>(xp, ld, bp, I, r0, r1); break;
    }
  };
  at::parallel_for(0, N, std::max<int64_t>(1, kGrainValues / I), [&](int64_t r0, int64_t r1) {
    if (x.scalar_type() == at::kBFloat16)
      rows((uint16_t*)x.data_ptr(), (const uint16_t*)bias.data_ptr(), r0, r1);
    else
      rows((float*)x.data_ptr(), (const float*)bias.data_ptr(), r0, r1);
  });
  return x;
}

}  // namespace
}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("vision_rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("bias_gelu_tanh_(Tensor(a!) x, Tensor bias) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) {
  m.impl("vision_rotary", &qwen35::vision_rotary);
  m.impl("bias_gelu_tanh_", &qwen35::bias_gelu_tanh_);
}
