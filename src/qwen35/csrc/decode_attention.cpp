// Paged attention for decode steps (one new token per sequence), reading K and V in place through the block
// table (ops/attention.py: paged_attention). The general path gathers each layer's K/V rows into a tile and runs
// PyTorch's CPU flash kernel, built for blocks of queries: for one query row per sequence it read K/V at 2-6 GB/s
// on an AVX2-only EPYC, this kernel at 6-18 (2.0-5.2x faster; bench/bench_decode_attention.py).
//
// A task is one (sequence, K/V head): its query heads (up to 4 at a time) against the sequence's keys in chunks
// of kChunk, an online softmax in fp32 (running max, running sum, rescaled accumulator), the output rounded to
// bf16 once. Within a chunk each key's bf16 row is widened in registers and used by every query head of the
// group; the chunk's K and V stay in L1 for the group after the first.
#include <ATen/ATen.h>
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

constexpr int64_t kChunk = 32;        // keys scored before their values are summed
constexpr int64_t kMaxDim = 512;      // head_dim
constexpr int64_t kMaxHeads = 64;     // query heads per K/V head

struct Decode {
  const uint16_t *q, *k, *v;  // q [B, Hq, D]; k, v [rows, Hkv, D]
  uint16_t* out;              // [B, Hq, D]
  const int64_t *tables, *lens;
  int64_t width, Hq, Hkv, D, bs;
  float scale;

  // rows[i]: the row of head h's key (or value) p0 + i of sequence b, i < n; one division per chunk, not per key
  void keys(const uint16_t* cache, int64_t b, int64_t h, int64_t p0, int64_t n, const uint16_t** rows) const {
    int64_t j = p0 / bs, off = p0 % bs;
    for (int64_t i = 0; i < n; ++i) {
      rows[i] = cache + ((tables[b * width + j] * bs + off) * Hkv + h) * D;
      if (++off == bs) off = 0, ++j;
    }
  }
};

// The running state of one query head: max, sum of exp, and the unnormalised output [D].
struct Running {
  float m, l;
  float acc[kMaxDim];
};

// Online-softmax step for one head given its chunk's scores s[0..n): the weights exp(s - max) replace the
// scores, the running max and sum move on, and s[kChunk] gets the factor the accumulator is rescaled by.
void softmax_step(Running& st, float* s, int64_t n) {
  float mc = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mc = std::max(mc, s[i]);
  const float M = std::max(st.m, mc);
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += (s[i] = std::exp(s[i] - M));
  s[kChunk] = std::exp(st.m - M);  // 0 on the first chunk (m = -inf)
  st.l = st.l * s[kChunk] + sum;
  st.m = M;
}

// Task (b, h) with its queries q [R, D] (fp32, times the scale) and its heads' states reset.
void task_scalar(const Decode& a, int64_t b, int64_t h, Running* st, const float* q) {
  const int64_t R = a.Hq / a.Hkv, D = a.D, L = a.lens[b];
  float s[kChunk + 1];
  const uint16_t *krows[kChunk], *vrows[kChunk];
  for (int64_t p0 = 0; p0 < L; p0 += kChunk) {
    const int64_t n = std::min(kChunk, L - p0);
    a.keys(a.k, b, h, p0, n, krows);
    a.keys(a.v, b, h, p0, n, vrows);
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t i = 0; i < n; ++i) {
        float dot = 0.f;
        for (int64_t d = 0; d < D; ++d) dot += q[r * D + d] * bf16_to_float(krows[i][d]);
        s[i] = dot;
      }
      softmax_step(st[r], s, n);
      for (int64_t d = 0; d < D; ++d) st[r].acc[d] *= s[kChunk];
      for (int64_t i = 0; i < n; ++i)
        for (int64_t d = 0; d < D; ++d) st[r].acc[d] += s[i] * bf16_to_float(vrows[i][d]);
    }
  }
}

// softmax_step with the exponentials 8 at a time.
QWEN35_AVX2 void softmax_step_avx2(Running& st, float* s, int64_t n) {
  float mc = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mc = std::max(mc, s[i]);
  const float M = std::max(st.m, mc);
  float sum = 0.f;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), _mm256_set1_ps(M)));
    _mm256_storeu_ps(s + i, e);
    sum += sum8(e);
  }
  for (; i < n; ++i) sum += (s[i] = std::exp(s[i] - M));
  s[kChunk] = std::exp(st.m - M);
  st.l = st.l * s[kChunk] + sum;
  st.m = M;
}

// Query heads [r0, r0 + RB) of task (b, h) over one chunk of n keys at p0. D a multiple of 8. Two keys at a
// time for the scores and two 8-column blocks at a time for the values: 2 RB independent FMA chains, and each
// query load or weight broadcast serves two FMAs.
template <int RB>
QWEN35_AVX2 void group_chunk_avx2(const Decode& a, int64_t b, int64_t h, int64_t r0, int64_t p0, int64_t n,
                                  const float* q, Running* st) {
  const int64_t D = a.D;
  alignas(32) float s[RB][kChunk + 1];
  const uint16_t* rows[kChunk + 1];
  a.keys(a.k, b, h, p0, n, rows);
  rows[n] = rows[n - 1];  // an odd chunk's last pair scores its last key twice
  for (int64_t i = 0; i < n; i += 2) {
    __m256 acc0[RB], acc1[RB];
    #pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 k0 = load8(rows[i] + d), k1 = load8(rows[i + 1] + d);
      #pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) {
        const __m256 qv = _mm256_loadu_ps(q + r * D + d);
        acc0[r] = _mm256_fmadd_ps(qv, k0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(qv, k1, acc1[r]);
      }
    }
    #pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      s[r][i] = sum8(acc0[r]);
      if (i + 1 < n) s[r][i + 1] = sum8(acc1[r]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < RB; ++r) softmax_step_avx2(st[r0 + r], s[r], n);
  a.keys(a.v, b, h, p0, n, rows);
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    __m256 acc0[RB], acc1[RB];
    #pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const __m256 c = _mm256_set1_ps(s[r][kChunk]);
      acc0[r] = _mm256_mul_ps(_mm256_loadu_ps(st[r0 + r].acc + d), c);
      acc1[r] = _mm256_mul_ps(_mm256_loadu_ps(st[r0 + r].acc + d + 8), c);
    }
    for (int64_t i = 0; i < n; ++i) {
      const __m256 v0 = load8(rows[i] + d), v1 = load8(rows[i] + d + 8);
      #pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) {
        const __m256 w = _mm256_broadcast_ss(&s[r][i]);
        acc0[r] = _mm256_fmadd_ps(w, v0, acc0[r]);
        acc1[r] = _mm256_fmadd_ps(w, v1, acc1[r]);
      }
    }
    #pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      _mm256_storeu_ps(st[r0 + r].acc + d, acc0[r]);
      _mm256_storeu_ps(st[r0 + r].acc + d + 8, acc1[r]);
    }
  }
  for (; d < D; d += 8) {
    __m256 acc[RB];
    #pragma GCC unroll 4
    for (int r = 0; r < RB; ++r)
      acc[r] = _mm256_mul_ps(_mm256_loadu_ps(st[r0 + r].acc + d), _mm256_set1_ps(s[r][kChunk]));
    for (int64_t i = 0; i < n; ++i) {
      const __m256 vv = load8(rows[i] + d);
      #pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&s[r][i]), vv, acc[r]);
    }
    #pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) _mm256_storeu_ps(st[r0 + r].acc + d, acc[r]);
  }
}

// task_scalar's contract, D a multiple of 8.
QWEN35_AVX2 void task_avx2(const Decode& a, int64_t b, int64_t h, Running* st, const float* q) {
  const int64_t R = a.Hq / a.Hkv, D = a.D, L = a.lens[b];
  for (int64_t p0 = 0; p0 < L; p0 += kChunk) {
    const int64_t n = std::min(kChunk, L - p0);
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
      const float* qg = q + r0 * D;
      switch (std::min<int64_t>(4, R - r0)) {
        case 1: group_chunk_avx2<1>(a, b, h, r0, p0, n, qg, st); break;
        case 2: group_chunk_avx2<2>(a, b, h, r0, p0, n, qg, st); break;
        case 3: group_chunk_avx2<3>(a, b, h, r0, p0, n, qg, st); break;
        default: group_chunk_avx2<4>(a, b, h, r0, p0, n, qg, st); break;
      }
    }
  }
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& block_tables, const at::Tensor& seq_lens, int64_t block_size,
                            double scale) {
  const char* op = "decode_attention";
  TORCH_CHECK(q.dim() == 3 && q.is_contiguous() && q.scalar_type() == at::kBFloat16 && q.device().is_cpu(), op,
              ": q must be a contiguous bf16 CPU tensor [B, Hq, D]");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2);
  for (const at::Tensor* c : {&k_cache, &v_cache})
    TORCH_CHECK(c->dim() == 3 && c->is_contiguous() && c->scalar_type() == at::kBFloat16 && c->device().is_cpu() &&
                    c->size(2) == D && c->sizes() == k_cache.sizes(),
                op, ": caches must be contiguous bf16 CPU tensors [rows, Hkv, D] like q's head_dim");
  const int64_t Hkv = k_cache.size(1);
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0 && Hq / Hkv <= kMaxHeads && D > 0 && D <= kMaxDim, op,
              ": unsupported heads or head_dim (Hq ", Hq, ", Hkv ", Hkv, ", D ", D, ")");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == B && block_tables.is_contiguous() &&
                  block_tables.scalar_type() == at::kLong && seq_lens.dim() == 1 && seq_lens.size(0) == B &&
                  seq_lens.is_contiguous() && seq_lens.scalar_type() == at::kLong,
              op, ": block_tables [B, W] and seq_lens [B] must be contiguous int64");
  TORCH_CHECK(block_size > 0 && k_cache.size(0) % block_size == 0, op, ": cache rows must be whole blocks");
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t W = block_tables.size(1), blocks = k_cache.size(0) / block_size;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lens[b] >= 1 && (lens[b] + block_size - 1) / block_size <= W, op, ": sequence ", b, " has ",
                lens[b], " keys, more than its block table holds");
    for (int64_t j = 0; j < (lens[b] + block_size - 1) / block_size; ++j)
      TORCH_CHECK(tables[b * W + j] >= 0 && tables[b * W + j] < blocks, op, ": block ", tables[b * W + j],
                  " outside the cache");
  }
  at::Tensor out = at::empty_like(q);
  Decode a{(const uint16_t*)q.data_ptr(), (const uint16_t*)k_cache.data_ptr(), (const uint16_t*)v_cache.data_ptr(),
           (uint16_t*)out.data_ptr(), tables, lens, W, Hq, Hkv, D, block_size, float(scale)};
  const bool avx2 = current_isa() != Isa::kScalar && D % 8 == 0;
  at::parallel_for(0, B * Hkv, 1, [&](int64_t t0, int64_t t1) {
    std::vector<Running> st(Hq / Hkv);
    std::vector<float> q32(Hq / Hkv * D);  // the task's queries in fp32, times the scale
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Hkv, h = t % Hkv, R = Hq / Hkv;
      for (int64_t r = 0; r < R; ++r) {
        const uint16_t* qr = a.q + (b * Hq + h * R + r) * D;
        for (int64_t d = 0; d < D; ++d) q32[r * D + d] = bf16_to_float(qr[d]) * a.scale;
        st[r].m = -INFINITY, st[r].l = 0.f;
        std::fill(st[r].acc, st[r].acc + D, 0.f);
      }
      avx2 ? task_avx2(a, b, h, st.data(), q32.data()) : task_scalar(a, b, h, st.data(), q32.data());
      for (int64_t r = 0; r < R; ++r) {
        uint16_t* o = a.out + (b * Hq + h * R + r) * D;
        const float inv = 1.f / st[r].l;
        for (int64_t d = 0; d < D; ++d) o[d] = float_to_bf16(st[r].acc[d] * inv);
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, "
        "int block_size, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) { m.impl("decode_attention", &qwen35::decode_attention); }
