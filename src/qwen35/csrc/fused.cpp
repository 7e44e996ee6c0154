// Fused decode kernels: the per-token small work of a layer in one call, so that a decode step is weight reads
// and not thousands of tiny torch ops.
//
// gdn_decode: one Gated DeltaNet decode step (one new token per sequence) from the input projection's outputs
// to the input of out_proj, reading and writing the layer's state pools in place at the sequences' slots:
//   beta = sigmoid(b), g = neg_A * softplus(a + dt_bias)                      (fp32)
//   conv: y = silu(sum_t w[c, t] * window[c, t]), window = (conv state, x)    (state shifts by one)
//   q = l2norm(q) * dk^-1/2, k = l2norm(k)   (x * rsqrt(sum x^2 + 1e-6)); V head j reads QK head j / (Hv/Hk)
//   S = decay(g) S; e = beta (v - S^T k); S += k e^T; o = S^T q              (S: [dk, dv] fp32 per V head)
//   out = o * rsqrt(mean(o^2) + eps) * norm_w * silu(z)                       (in z's dtype)
// The same maths as the torch path (model/gated_deltanet.py, ops/conv1d.py, ops/gdn.py, model/norm.py), which
// stays the reference. Work is split over (sequence, QK head): a task owns the conv channels of its q/k head
// and of the V heads that read it, so no two threads touch the same state. The state update runs in AVX512
// on CPUs with it (two passes over S: k^T S, then the rank-1 update fused with the read-out), else in plain
// C++ compiled twice (AVX2+FMA and baseline), as in gemm.cpp.
//
// rms_norm / add_rms_norm: the zero-centred RMSNorm (model/norm.py; `scale` is the fp32 1 + w), optionally
// after the residual add x + delta (rounded to the activations' dtype first, as the torch path's add is).
// silu_mul: silu(gate) * up from the fused gate|up projection (model/mlp.py), each product rounded like torch.
// attn_prep: gated attention's q/k norms, rotary and K/V cache writes (below).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "isa.h"
#include "simd.h"

namespace qwen35 {
namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr float kLogDecayCutoff = -60.0f;  // ops/gdn.py: decays below exp(-60) are exactly 0

inline float load(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
inline float load(const float* p, int64_t i) { return p[i]; }
inline void put(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }
inline void put(float* p, int64_t i, float v) { p[i] = v; }

inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }  // torch: beta 1, threshold 20

QWEN35_AVX512 inline void silu_inplace_avx512(float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, silu512(_mm512_maskz_loadu_ps(m, y + i)));
  }
}

// out[c] = o[c] * rs * w[c] * silu(z[c]) in T
template <typename T>
QWEN35_AVX512 inline void gated_out_avx512(const float* o, float rs, const float* w, const T* z, T* out, int64_t n) {
  const __m512 vr = _mm512_set1_ps(rs);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, o + i), vr), _mm512_maskz_loadu_ps(m, w + i));
    store16(out + i, _mm512_mul_ps(y, silu512(load16(z + i, m))), m);
  }
}

// The same two on AVX2: 8 lanes at a time, the last n % 8 values scalar.
QWEN35_AVX2 inline void silu_inplace_avx2(float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, silu256(_mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] = silu(y[i]);
}

template <typename T>
QWEN35_AVX2 inline void gated_out_avx2(const float* o, float rs, const float* w, const T* z, T* out, int64_t n) {
  const __m256 vr = _mm256_set1_ps(rs);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(o + i), vr), _mm256_loadu_ps(w + i));
    store8(out + i, _mm256_mul_ps(y, silu256(load8(z + i))));
  }
  for (; i < n; ++i) put(out, i, o[i] * rs * w[i] * silu(load(z, i)));
}

// Everything one call needs; activations are T (bf16 as uint16_t, or float), rows may be strided.
template <typename T>
struct GdnArgs {
  const T *mixed, *z, *b, *a;  // [B, C] (q | k | v), [B, Hv*dv], [B, Hv], [B, Hv]
  int64_t ld_mixed, ld_z, ld_b, ld_a;
  const float* conv_w;  // [C, K]
  T* conv_pool;         // [P, C, K-1]
  float* ssm_pool;      // [P, Hv, dk, dv]
  const int64_t* slots;  // [B]
  const float *neg_a, *dt_bias, *norm_w;  // [Hv], [Hv], [dv]
  T* out;  // [B, Hv*dv]
  int64_t Hk, Hv, dk, dv, C, K;
  float eps;
};

// One token of the causal conv for channels [c0, c0+n) of sequence row `st` (conv state [C, K-1]), into y
// (before the SiLU).
template <typename T>
inline __attribute__((always_inline)) void conv_step(const GdnArgs<T>& a, const T* x, T* st, int64_t c0, int64_t n,
                                                     float* y) {
  const int64_t K = a.K, W = K - 1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = c0 + i;
    T* s = st + c * W;
    const float* w = a.conv_w + c * K;
    const T xc = x[c];
    float acc = load(&xc, 0) * w[W];
    for (int64_t t = 0; t < W; ++t) acc += load(s, t) * w[t];
    for (int64_t t = 0; t + 1 < W; ++t) s[t] = s[t + 1];
    if (W > 0) s[W - 1] = xc;
    y[i] = acc;
  }
}

inline __attribute__((always_inline)) void l2norm(float* x, int64_t n, float scale) {
  float ss = 0.f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = scale / std::sqrt(ss + 1e-6f);
  for (int64_t i = 0; i < n; ++i) x[i] *= r;
}

// The delta rule for one V head, plain C++ (vectorised by the compiler along dv).
inline __attribute__((always_inline)) void delta_rule_portable(float* S, const float* q, const float* k,
                                                               const float* v, float beta, float decay,
                                                               int64_t dk, int64_t dv, float* o) {
  float e[kMaxHeadDim];
  for (int64_t c = 0; c < dv; ++c) e[c] = 0.f;
  for (int64_t i = 0; i < dk; ++i) {
    const float ki = k[i];
    const float* row = S + i * dv;
    for (int64_t c = 0; c < dv; ++c) e[c] += ki * row[c];
  }
  for (int64_t c = 0; c < dv; ++c) e[c] = beta * (v[c] - decay * e[c]), o[c] = 0.f;
  for (int64_t i = 0; i < dk; ++i) {
    const float ki = k[i], qi = q[i];
    float* row = S + i * dv;
    for (int64_t c = 0; c < dv; ++c) {
      const float s = decay * row[c] + ki * e[c];
      row[c] = s;
      o[c] += qi * s;
    }
  }
}

// Columns [c0, c0 + 16 NV) of the delta rule, with the k^T S and S^T q accumulators in registers.
template <int NV>
QWEN35_AVX512 inline void delta_rule_cols_avx512(float* S, const float* q, const float* k, const float* v,
                                                 float beta, float decay, int64_t dk, int64_t dv, int64_t c0,
                                                 float* o) {
  __m512 acc[NV];
#pragma GCC unroll 8
  for (int u = 0; u < NV; ++u) acc[u] = _mm512_setzero_ps();
  for (int64_t i = 0; i < dk; ++i) {
    const __m512 ki = _mm512_set1_ps(k[i]);
    const float* row = S + i * dv + c0;
#pragma GCC unroll 8
    for (int u = 0; u < NV; ++u) acc[u] = _mm512_fmadd_ps(ki, _mm512_loadu_ps(row + 16 * u), acc[u]);
  }
  const __m512 vb = _mm512_set1_ps(beta), vd = _mm512_set1_ps(decay);
  __m512 e[NV];
#pragma GCC unroll 8
  for (int u = 0; u < NV; ++u) {
    e[u] = _mm512_mul_ps(vb, _mm512_fnmadd_ps(vd, acc[u], _mm512_loadu_ps(v + c0 + 16 * u)));
    acc[u] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < dk; ++i) {
    const __m512 ki = _mm512_set1_ps(k[i]), qi = _mm512_set1_ps(q[i]);
    float* row = S + i * dv + c0;
#pragma GCC unroll 8
    for (int u = 0; u < NV; ++u) {
      const __m512 s = _mm512_fmadd_ps(vd, _mm512_loadu_ps(row + 16 * u), _mm512_mul_ps(ki, e[u]));
      _mm512_storeu_ps(row + 16 * u, s);
      acc[u] = _mm512_fmadd_ps(qi, s, acc[u]);
    }
  }
#pragma GCC unroll 8
  for (int u = 0; u < NV; ++u) _mm512_storeu_ps(o + c0 + 16 * u, acc[u]);
}

QWEN35_AVX512 inline void delta_rule_avx512(float* S, const float* q, const float* k, const float* v, float beta,
                                            float decay, int64_t dk, int64_t dv, float* o) {
  if (dv % 16) return delta_rule_portable(S, q, k, v, beta, decay, dk, dv, o);
  int64_t c0 = 0;
  for (; c0 + 128 <= dv; c0 += 128) delta_rule_cols_avx512<8>(S, q, k, v, beta, decay, dk, dv, c0, o);
  switch ((dv - c0) / 16) {
    case 1: delta_rule_cols_avx512<1>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    case 2: delta_rule_cols_avx512<2>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    case 3: delta_rule_cols_avx512<3>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    case 4: delta_rule_cols_avx512<4>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    case 5: delta_rule_cols_avx512<5>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    case 6: delta_rule_cols_avx512<6>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    case 7: delta_rule_cols_avx512<7>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    default: break;
  }
}

// Columns [c0, c0 + 8 NV) of the delta rule on AVX2, as delta_rule_cols_avx512 (16 registers hold NV = 4).
template <int NV>
QWEN35_AVX2 inline void delta_rule_cols_avx2(float* S, const float* q, const float* k, const float* v, float beta,
                                             float decay, int64_t dk, int64_t dv, int64_t c0, float* o) {
  __m256 acc[NV];
#pragma GCC unroll 4
  for (int u = 0; u < NV; ++u) acc[u] = _mm256_setzero_ps();
  for (int64_t i = 0; i < dk; ++i) {
    const __m256 ki = _mm256_set1_ps(k[i]);
    const float* row = S + i * dv + c0;
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) acc[u] = _mm256_fmadd_ps(ki, _mm256_loadu_ps(row + 8 * u), acc[u]);
  }
  const __m256 vb = _mm256_set1_ps(beta), vd = _mm256_set1_ps(decay);
  __m256 e[NV];
#pragma GCC unroll 4
  for (int u = 0; u < NV; ++u) {
    e[u] = _mm256_mul_ps(vb, _mm256_fnmadd_ps(vd, acc[u], _mm256_loadu_ps(v + c0 + 8 * u)));
    acc[u] = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < dk; ++i) {
    const __m256 ki = _mm256_set1_ps(k[i]), qi = _mm256_set1_ps(q[i]);
    float* row = S + i * dv + c0;
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) {
      const __m256 s = _mm256_fmadd_ps(vd, _mm256_loadu_ps(row + 8 * u), _mm256_mul_ps(ki, e[u]));
      _mm256_storeu_ps(row + 8 * u, s);
      acc[u] = _mm256_fmadd_ps(qi, s, acc[u]);
    }
  }
#pragma GCC unroll 4
  for (int u = 0; u < NV; ++u) _mm256_storeu_ps(o + c0 + 8 * u, acc[u]);
}

QWEN35_AVX2 inline void delta_rule_avx2(float* S, const float* q, const float* k, const float* v, float beta,
                                        float decay, int64_t dk, int64_t dv, float* o) {
  if (dv % 8) return delta_rule_portable(S, q, k, v, beta, decay, dk, dv, o);
  int64_t c0 = 0;
  for (; c0 + 32 <= dv; c0 += 32) delta_rule_cols_avx2<4>(S, q, k, v, beta, decay, dk, dv, c0, o);
  switch ((dv - c0) / 8) {
    case 1: delta_rule_cols_avx2<1>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    case 2: delta_rule_cols_avx2<2>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    case 3: delta_rule_cols_avx2<3>(S, q, k, v, beta, decay, dk, dv, c0, o); break;
    default: break;
  }
}

template <Isa kIsa>
inline __attribute__((always_inline)) void silu_inplace(float* y, int64_t n) {
  if constexpr (kIsa == Isa::kAvx512Bf16) silu_inplace_avx512(y, n);
  else if constexpr (kIsa == Isa::kAvx2) silu_inplace_avx2(y, n);
  else for (int64_t i = 0; i < n; ++i) y[i] = silu(y[i]);
}

// Tasks [t0, t1) of (sequence, QK head), on the calling thread.
template <typename T, Isa kIsa>
inline __attribute__((always_inline)) void gdn_tasks(const GdnArgs<T>& a, int64_t t0, int64_t t1) {
  const int64_t Hk = a.Hk, Hv = a.Hv, dk = a.dk, dv = a.dv, r = Hv / Hk;
  float q[kMaxHeadDim], k[kMaxHeadDim], v[kMaxHeadDim], o[kMaxHeadDim];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t bi = t / Hk, h = t % Hk, slot = a.slots[bi];
    const T* x = a.mixed + bi * a.ld_mixed;
    T* st = a.conv_pool + slot * a.C * (a.K - 1);
    conv_step(a, x, st, h * dk, dk, q);
    conv_step(a, x, st, Hk * dk + h * dk, dk, k);
    silu_inplace<kIsa>(q, dk);
    silu_inplace<kIsa>(k, dk);
    l2norm(q, dk, 1.0f / std::sqrt(float(dk)));
    l2norm(k, dk, 1.0f);
    for (int64_t j = h * r; j < (h + 1) * r; ++j) {
      conv_step(a, x, st, 2 * Hk * dk + j * dv, dv, v);
      silu_inplace<kIsa>(v, dv);
      const float beta = 1.0f / (1.0f + std::exp(-load(a.b + bi * a.ld_b, j)));
      const float g = a.neg_a[j] * softplus(load(a.a + bi * a.ld_a, j) + a.dt_bias[j]);
      const float decay = g < kLogDecayCutoff ? 0.0f : std::exp(g);
      float* S = a.ssm_pool + (slot * Hv + j) * dk * dv;
      if constexpr (kIsa == Isa::kAvx512Bf16) delta_rule_avx512(S, q, k, v, beta, decay, dk, dv, o);
      else if constexpr (kIsa == Isa::kAvx2) delta_rule_avx2(S, q, k, v, beta, decay, dk, dv, o);
      else delta_rule_portable(S, q, k, v, beta, decay, dk, dv, o);
      float ss = 0.f;
      for (int64_t c = 0; c < dv; ++c) ss += o[c] * o[c];
      const float rs = 1.0f / std::sqrt(ss / float(dv) + a.eps);
      const T* z = a.z + bi * a.ld_z + j * dv;
      T* y = a.out + bi * Hv * dv + j * dv;
      if constexpr (kIsa == Isa::kAvx512Bf16) gated_out_avx512(o, rs, a.norm_w, z, y, dv);
      else if constexpr (kIsa == Isa::kAvx2) gated_out_avx2(o, rs, a.norm_w, z, y, dv);
      else for (int64_t c = 0; c < dv; ++c) put(y, c, o[c] * rs * a.norm_w[c] * silu(load(z, c)));
    }
  }
}

template <typename T>
QWEN35_AVX512 __attribute__((flatten)) void gdn_tasks_avx512(const GdnArgs<T>& a, int64_t t0, int64_t t1) {
  gdn_tasks<T, Isa::kAvx512Bf16>(a, t0, t1);
}
template <typename T>
QWEN35_AVX2 __attribute__((flatten)) void gdn_tasks_avx2(const GdnArgs<T>& a, int64_t t0, int64_t t1) {
  gdn_tasks<T, Isa::kAvx2>(a, t0, t1);
}
template <typename T>
__attribute__((flatten)) void gdn_tasks_scalar(const GdnArgs<T>& a, int64_t t0, int64_t t1) {
  gdn_tasks<T, Isa::kScalar>(a, t0, t1);
}

void check_rows(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t B, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.size(0) == B && t.size(1) == cols && t.stride(1) == 1,
              "gdn_decode: ", name, " must be CPU rows [", B, ", ", cols, "] with unit column stride, got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "gdn_decode: ", name, " must be ", dtype, " like mixed, got ",
              t.scalar_type());
}

void check_f32(const at::Tensor& t, const char* name, int64_t numel, const char* op = "gdn_decode") {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel,
              op, ": ", name, " must be a contiguous fp32 CPU tensor of ", numel, " elements");
}

template <typename T>
void run_gdn(GdnArgs<T>& a, const at::Tensor& mixed, const at::Tensor& z, const at::Tensor& b,
             const at::Tensor& av, at::Tensor& conv_pool, at::Tensor& out) {
  a.mixed = (const T*)mixed.data_ptr();
  a.z = (const T*)z.data_ptr();
  a.b = (const T*)b.data_ptr();
  a.a = (const T*)av.data_ptr();
  a.ld_mixed = mixed.stride(0), a.ld_z = z.stride(0), a.ld_b = b.stride(0), a.ld_a = av.stride(0);
  a.conv_pool = (T*)conv_pool.data_ptr();
  a.out = (T*)out.data_ptr();
  const int64_t tasks = mixed.size(0) * a.Hk;
  const Isa isa = current_isa();
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    switch (isa) {
      case Isa::kAvx512Bf16: gdn_tasks_avx512<T>(a, t0, t1); break;
      case Isa::kAvx2: gdn_tasks_avx2<T>(a, t0, t1); break;
      default: gdn_tasks_scalar<T>(a, t0, t1); break;
    }
  });
}

at::Tensor gdn_decode(const at::Tensor& mixed, const at::Tensor& z, const at::Tensor& b, const at::Tensor& a,
                      const at::Tensor& conv_w, at::Tensor conv_pool, at::Tensor ssm_pool, const at::Tensor& slots,
                      const at::Tensor& neg_a, const at::Tensor& dt_bias, const at::Tensor& norm_w, double eps) {
  TORCH_CHECK(ssm_pool.device().is_cpu() && ssm_pool.scalar_type() == at::kFloat && ssm_pool.dim() == 4 &&
                  ssm_pool.is_contiguous(),
              "gdn_decode: ssm_pool must be a contiguous fp32 CPU tensor [P, Hv, dk, dv]");
  const int64_t P = ssm_pool.size(0), Hv = ssm_pool.size(1), dk = ssm_pool.size(2), dv = ssm_pool.size(3);
  TORCH_CHECK(dk <= kMaxHeadDim && dv <= kMaxHeadDim, "gdn_decode: head dims above ", kMaxHeadDim, " unsupported");
  TORCH_CHECK(mixed.dim() == 2, "gdn_decode: mixed must be [B, C]");
  const int64_t B = mixed.size(0), C = mixed.size(1), kd2 = C - Hv * dv;
  TORCH_CHECK(kd2 > 0 && kd2 % (2 * dk) == 0, "gdn_decode: mixed has ", C, " columns, not 2 Hk dk + Hv dv");
  const int64_t Hk = kd2 / (2 * dk);
  TORCH_CHECK(Hv % Hk == 0, "gdn_decode: ", Hv, " V heads do not share ", Hk, " QK heads evenly");
  const auto dtype = mixed.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat, "gdn_decode: activations must be bf16 or fp32");
  check_rows(mixed, "mixed", dtype, B, C);
  check_rows(z, "z", dtype, B, Hv * dv);
  check_rows(b, "b", dtype, B, Hv);
  check_rows(a, "a", dtype, B, Hv);
  TORCH_CHECK(conv_pool.device().is_cpu() && conv_pool.scalar_type() == dtype && conv_pool.dim() == 3 &&
                  conv_pool.is_contiguous() && conv_pool.size(0) == P && conv_pool.size(1) == C,
              "gdn_decode: conv_pool must be a contiguous [P, C, K-1] tensor in the activations' dtype");
  const int64_t K = conv_pool.size(2) + 1;
  check_f32(conv_w, "conv_w", C * K);
  check_f32(neg_a, "neg_a", Hv);
  check_f32(dt_bias, "dt_bias", Hv);
  check_f32(norm_w, "norm_w", dv);
  TORCH_CHECK(slots.device().is_cpu() && slots.scalar_type() == at::kLong && slots.dim() == 1 &&
                  slots.size(0) == B && slots.is_contiguous(),
              "gdn_decode: slots must be [B] int64");
  const int64_t* sl = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i) TORCH_CHECK(sl[i] >= 0 && sl[i] < P, "gdn_decode: slot ", sl[i], " outside the pool");

  at::Tensor out = at::empty({B, Hv * dv}, mixed.options().memory_format(at::MemoryFormat::Contiguous));
  if (B == 0) return out;
  auto fill = [&](auto& args) {
    args.conv_w = conv_w.data_ptr<float>();
    args.ssm_pool = ssm_pool.data_ptr<float>();
    args.slots = sl;
    args.neg_a = neg_a.data_ptr<float>();
    args.dt_bias = dt_bias.data_ptr<float>();
    args.norm_w = norm_w.data_ptr<float>();
    args.Hk = Hk, args.Hv = Hv, args.dk = dk, args.dv = dv, args.C = C, args.K = K;
    args.eps = float(eps);
  };
  if (dtype == at::kBFloat16) {
    GdnArgs<uint16_t> args{};
    fill(args);
    run_gdn(args, mixed, z, b, a, conv_pool, out);
  } else {
    GdnArgs<float> args{};
    fill(args);
    run_gdn(args, mixed, z, b, a, conv_pool, out);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// RMSNorm (with or without the residual add) and silu * mul, over rows of D values.

template <typename T>
inline __attribute__((always_inline)) void norm_rows(const T* x, int64_t n1, int64_t st0, int64_t st1,
                                                     const T* delta, int64_t ld_delta, T* sum_out,
                                                     const float* scale, float eps, int64_t D, T* out,
                                                     int64_t r0, int64_t r1) {
  float buf[8192];
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + (r / n1) * st0 + (r % n1) * st1;
    float ss = 0.f;
    if (delta) {
      const T* dr = delta + r * ld_delta;
      T* sr = sum_out + r * D;
      for (int64_t i = 0; i < D; ++i) {
        T v;
        put(&v, 0, load(xr, i) + load(dr, i));  // the residual stream is stored rounded
        sr[i] = v;
        buf[i] = load(&v, 0);
        ss += buf[i] * buf[i];
      }
    } else {
      for (int64_t i = 0; i < D; ++i) buf[i] = load(xr, i), ss += buf[i] * buf[i];
    }
    const float rs = 1.0f / std::sqrt(ss / float(D) + eps);
    T* o = out + r * D;
    for (int64_t i = 0; i < D; ++i) put(o, i, buf[i] * rs * scale[i]);
  }
}

template <typename T>
inline __attribute__((always_inline)) void silu_mul_rows(const T* x, int64_t ld, int64_t I, T* out, int64_t r0,
                                                         int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* g = x + r * ld;
    const T* u = g + I;
    T* o = out + r * I;
    for (int64_t i = 0; i < I; ++i) {
      T s;
      put(&s, 0, silu(load(g, i)));  // torch rounds silu's output before the product
      put(o, i, load(&s, 0) * load(u, i));
    }
  }
}

template <typename T>
QWEN35_AVX512 void silu_mul_rows_vec(const T* x, int64_t ld, int64_t I, T* out, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* g = x + r * ld;
    const T* u = g + I;
    T* o = out + r * I;
    for (int64_t i = 0; i < I; i += 16) {
      const __mmask16 m = tail_mask(I - i);
      const __m512 s = round16(silu512(load16(g + i, m)), (T*)nullptr);
      store16(o + i, _mm512_mul_ps(s, load16(u + i, m)), m);
    }
  }
}

template <typename T>
QWEN35_AVX2 void silu_mul_rows_avx2(const T* x, int64_t ld, int64_t I, T* out, int64_t r0, int64_t r1) {
  const int64_t I8 = I / 8 * 8;
  for (int64_t r = r0; r < r1; ++r) {
    const T* g = x + r * ld;
    const T* u = g + I;
    T* o = out + r * I;
    for (int64_t i = 0; i < I8; i += 8) {
      const __m256 s = round8(silu256(load8(g + i)), (T*)nullptr);
      store8(o + i, _mm256_mul_ps(s, load8(u + i)));
    }
    for (int64_t i = I8; i < I; ++i) {
      T s;
      put(&s, 0, silu(load(g, i)));
      put(o, i, load(&s, 0) * load(u, i));
    }
  }
}

QWEN35_DISPATCH3(norm_rows_isa, norm_rows)

// Rows of at least this many values per parallel task (a decode row of 1024 runs on the calling thread).
constexpr int64_t kGrainValues = 16384;

void check_act(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat),
              op, ": activations must be bf16 or fp32 CPU tensors");
  TORCH_CHECK(x.dim() >= 1 && x.stride(-1) == 1, op, ": the last dim must have unit stride");
}

std::tuple<at::Tensor, at::Tensor> norm_impl(const at::Tensor& x, const c10::optional<at::Tensor>& delta,
                                             const at::Tensor& scale, double eps, const char* op) {
  check_act(x, op);
  const int64_t D = x.size(-1);
  TORCH_CHECK(D <= 8192, op, ": rows above 8192 values unsupported");
  TORCH_CHECK(x.dim() <= 3, op, ": x must be [N, D] or [N, H, D]");
  check_f32(scale, "scale", D, op);
  const int64_t n1 = x.dim() == 3 ? x.size(1) : 1, st1 = x.dim() == 3 ? x.stride(1) : 0;
  const int64_t rows = x.numel() / std::max<int64_t>(D, 1), st0 = x.dim() >= 2 ? x.stride(0) : 0;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor sum;
  const uint8_t* dptr = nullptr;
  int64_t ld_delta = 0;
  if (delta.has_value()) {
    TORCH_CHECK(x.dim() == 2 && delta->dim() == 2 && delta->sizes() == x.sizes() && delta->stride(1) == 1 &&
                    delta->scalar_type() == x.scalar_type() && delta->device().is_cpu(),
                op, ": delta must be rows shaped and typed like x [N, D]");
    sum = at::empty(x.sizes(), out.options());
    dptr = (const uint8_t*)delta->data_ptr();
    ld_delta = delta->stride(0);
  }
  if (rows == 0) return {out, sum};
  const float* sc = scale.data_ptr<float>();
  const float e = float(eps);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainValues / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    if (x.scalar_type() == at::kBFloat16) {
      norm_rows_isa<uint16_t>((const uint16_t*)x.data_ptr(), n1, st0, st1, (const uint16_t*)dptr, ld_delta,
                              sum.defined() ? (uint16_t*)sum.data_ptr() : nullptr, sc, e, D,
                              (uint16_t*)out.data_ptr(), r0, r1);
    } else {
      norm_rows_isa<float>((const float*)x.data_ptr(), n1, st0, st1, (const float*)dptr, ld_delta,
                           sum.defined() ? (float*)sum.data_ptr() : nullptr, sc, e, D, (float*)out.data_ptr(),
                           r0, r1);
    }
  });
  return {out, sum};
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& scale, double eps) {
  return std::get<0>(norm_impl(x, c10::nullopt, scale, eps, "rms_norm"));
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                                const at::Tensor& scale, double eps) {
  auto r = norm_impl(x, delta, scale, eps, "add_rms_norm");
  return {std::get<1>(r), std::get<0>(r)};
}

template <typename T>
void silu_mul_isa(Isa isa, const T* x, int64_t ld, int64_t I, T* out, int64_t r0, int64_t r1) {
  switch (isa) {
    case Isa::kAvx512Bf16: silu_mul_rows_vec<T>(x, ld, I, out, r0, r1); break;
    case Isa::kAvx2: silu_mul_rows_avx2<T>(x, ld, I, out, r0, r1); break;
    default: silu_mul_rows<T>(x, ld, I, out, r0, r1); break;
  }
}

at::Tensor silu_mul(const at::Tensor& x) {
  check_act(x, "silu_mul");
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 2 == 0, "silu_mul: x must be [N, 2I] (gate | up)");
  const int64_t N = x.size(0), I = x.size(1) / 2, ld = x.stride(0);
  at::Tensor out = at::empty({N, I}, x.options().memory_format(at::MemoryFormat::Contiguous));
  at::parallel_for(0, N, std::max<int64_t>(1, kGrainValues / std::max<int64_t>(I, 1)), [&](int64_t r0, int64_t r1) {
    const Isa isa = current_isa();
    if (x.scalar_type() == at::kBFloat16) {
      silu_mul_isa(isa, (const uint16_t*)x.data_ptr(), ld, I, (uint16_t*)out.data_ptr(), r0, r1);
    } else {
      silu_mul_isa(isa, (const float*)x.data_ptr(), ld, I, (float*)out.data_ptr(), r0, r1);
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// argmax_rows: each fp32 row's first index of its largest value, NaN counting as largest (torch.argmax's rule).
// torch's argmax reduces a row without vectors: 0.24 ms for a 248k vocabulary, 13x its amax.

int64_t argmax_row_scalar(const float* x, int64_t V) {
  int64_t best = 0;
  for (int64_t i = 0; i < V; ++i) {
    if (std::isnan(x[i])) return i;
    if (x[i] > x[best]) best = i;
  }
  return best;
}

QWEN35_AVX2 int64_t argmax_row_avx2(const float* x, int64_t V) {
  const int64_t V8 = V / 8 * 8;
  __m256 mx = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  for (int64_t i = 0; i < V8; i += 8) {  // the largest value, and whether any value is NaN
    const __m256 v = _mm256_loadu_ps(x + i);
    mx = _mm256_max_ps(mx, v);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  if (_mm256_movemask_ps(nan)) return argmax_row_scalar(x, V);
  float m = -INFINITY;
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mx);
  for (float l : lanes) m = std::max(m, l);
  for (int64_t i = V8; i < V; ++i) {
    if (std::isnan(x[i])) return argmax_row_scalar(x, V);
    m = std::max(m, x[i]);
  }
  const __m256 vm = _mm256_set1_ps(m);
  for (int64_t i = 0; i < V8; i += 8) {  // its first place
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vm, _CMP_EQ_OQ));
    if (hit) return i + __builtin_ctz(hit);
  }
  for (int64_t i = V8; i < V; ++i)
    if (x[i] == m) return i;
  return 0;  // every value -inf
}

at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous() &&
                  x.size(1) > 0,
              "argmax_rows: x must be a contiguous non-empty fp32 CPU tensor [B, V]");
  const int64_t B = x.size(0), V = x.size(1);
  at::Tensor out = at::empty({B}, x.options().dtype(at::kLong));
  const float* xp = x.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  const bool avx2 = current_isa() != Isa::kScalar;
  at::parallel_for(0, B, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) op[r] = avx2 ? argmax_row_avx2(xp + r * V, V) : argmax_row_scalar(xp + r * V, V);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Gated attention's per-token work before the attention itself (model/attention.py): q and k RMSNorm per head,
// the rotary embedding on their first rd dims, and k, v into the paged cache at the tokens' slots. The torch
// path's values bit for bit: the norms are rms_norm's rows (norm_rows_isa), and the rotation rounds each
// product and the sum to the activations' dtype as torch's ops do, x * cos + rotate_half(x) * sin.

// Rows [r0, r1) of (token, head) pairs, each of D values already normed in out (rows of D): rotated in place.
// bf16: every rounding is explicit, none left to the compiler.
void rope_rows(uint16_t* out, const uint16_t* cos, const uint16_t* sin, int64_t heads, int64_t D, int64_t rd,
               int64_t r0, int64_t r1) {
  using T = uint16_t;
  float x[kMaxHeadDim];
  const int64_t half = rd / 2;
  for (int64_t r = r0; r < r1; ++r) {
    T* o = out + r * D;
    const T* c = cos + (r / heads) * rd;
    const T* s = sin + (r / heads) * rd;
    for (int64_t i = 0; i < rd; ++i) x[i] = load(o, i);
    for (int64_t i = 0; i < rd; ++i) {
      const float rot = i < half ? -x[i + half] : x[i - half];
      T a, b;
      put(&a, 0, x[i] * load(c, i));
      put(&b, 0, rot * load(s, i));
      put(o, i, load(&a, 0) + load(&b, 0));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> attn_prep(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                                             const at::Tensor& q_scale, const at::Tensor& k_scale, double eps,
                                             at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots,
                                             int64_t Hq, int64_t Hkv, int64_t D) {
  const char* op = "attn_prep";
  TORCH_CHECK(qkv.scalar_type() == at::kBFloat16, op, ": bf16 activations only");
  check_act(qkv, op);
  TORCH_CHECK(qkv.dim() == 2 && qkv.size(1) == (2 * Hq + 2 * Hkv) * D, op,
              ": qkv must be [N, (2 Hq + 2 Hkv) D] (q and its gate per head, then k, then v)");
  TORCH_CHECK(D > 0 && D <= kMaxHeadDim, op, ": head_dim above ", kMaxHeadDim, " unsupported");
  const int64_t N = qkv.size(0), rd = cos.size(-1), ld = qkv.stride(0);
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->dim() == 2 && t->size(0) == N && t->is_contiguous() && t->scalar_type() == qkv.scalar_type(),
                op, ": cos and sin must be contiguous [N, rotary_dim] in qkv's dtype");
  TORCH_CHECK(rd % 2 == 0 && rd <= D && sin.size(1) == rd, op, ": rotary_dim must be even and at most head_dim");
  check_f32(q_scale, "q_scale", D, op);
  check_f32(k_scale, "k_scale", D, op);
  for (const at::Tensor* t : {&k_cache, &v_cache})
    TORCH_CHECK(t->dim() == 3 && t->size(1) == Hkv && t->size(2) == D && t->is_contiguous() &&
                    t->scalar_type() == qkv.scalar_type() && t->device().is_cpu(),
                op, ": caches must be contiguous [rows, Hkv, D] in qkv's dtype");
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == N && slots.scalar_type() == at::kLong && slots.is_contiguous(),
              op, ": slots must be int64 [N]");
  const int64_t* sl = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < N; ++t)
    TORCH_CHECK(sl[t] >= 0 && sl[t] < k_cache.size(0), op, ": slot ", sl[t], " outside the cache");
  at::Tensor q = at::empty({N, Hq, D}, qkv.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor k = at::empty({N, Hkv, D}, q.options());
  const float e = float(eps);
  using T = uint16_t;
  const T* base = (const T*)qkv.data_ptr();
  T* qp = (T*)q.data_ptr();
  T* kp = (T*)k.data_ptr();
  norm_rows_isa<T>(base, Hq, ld, 2 * D, nullptr, 0, nullptr, q_scale.data_ptr<float>(), e, D, qp, 0, N * Hq);
  norm_rows_isa<T>(base + 2 * Hq * D, Hkv, ld, D, nullptr, 0, nullptr, k_scale.data_ptr<float>(), e, D, kp, 0,
                   N * Hkv);
  rope_rows(qp, (const T*)cos.data_ptr(), (const T*)sin.data_ptr(), Hq, D, rd, 0, N * Hq);
  rope_rows(kp, (const T*)cos.data_ptr(), (const T*)sin.data_ptr(), Hkv, D, rd, 0, N * Hkv);
  T* kc = (T*)k_cache.data_ptr();
  T* vc = (T*)v_cache.data_ptr();
  for (int64_t t = 0; t < N; ++t) {
    std::copy(kp + t * Hkv * D, kp + (t + 1) * Hkv * D, kc + sl[t] * Hkv * D);
    const T* v = base + t * ld + (2 * Hq + Hkv) * D;
    std::copy(v, v + Hkv * D, vc + sl[t] * Hkv * D);
  }
  return {q, k};
}

}  // namespace
}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("rms_norm(Tensor x, Tensor scale, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor delta, Tensor scale, float eps) -> (Tensor, Tensor)");
  m.def("silu_mul(Tensor x) -> Tensor");
  m.def("argmax_rows(Tensor x) -> Tensor");
  m.def(
      "attn_prep(Tensor qkv, Tensor cos, Tensor sin, Tensor q_scale, Tensor k_scale, float eps, Tensor(a!) k_cache, "
      "Tensor(b!) v_cache, Tensor slots, int Hq, int Hkv, int D) -> (Tensor, Tensor)");
  m.def(
      "gdn_decode(Tensor mixed, Tensor z, Tensor b, Tensor a, Tensor conv_w, Tensor(a!) conv_pool, "
      "Tensor(b!) ssm_pool, Tensor slots, Tensor neg_a, Tensor dt_bias, Tensor norm_w, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) {
  m.impl("gdn_decode", &qwen35::gdn_decode);
  m.impl("rms_norm", &qwen35::rms_norm);
  m.impl("add_rms_norm", &qwen35::add_rms_norm);
  m.impl("silu_mul", &qwen35::silu_mul);
  m.impl("argmax_rows", &qwen35::argmax_rows);
  m.impl("attn_prep", &qwen35::attn_prep);
}
