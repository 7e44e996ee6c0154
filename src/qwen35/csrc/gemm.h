// Decode-shaped matmuls: y[M, N] = x[M, K] W[N, K]^T for a few rows of bf16 activations, with W in bf16,
// int8 (one fp32 scale per row) or int4 (fp16 scale and optional zero point per group of G inputs).
//
// int4 layout (ours, docs/KERNELS.md): W is uint8 [N, K/2]; in each block of 64 inputs k0..k0+63 of a row,
// byte k0/2 + j holds input k0+j in its low nibble and input k0+32+j in its high nibble. A stored value u
// means (u - zero) * scale[n, k / G], with zero = 8 when no zeros are given.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace qwen35 {

enum class Fmt { kBf16, kInt8, kInt4 };

struct Weight {
  Fmt fmt;
  const uint8_t* data;
  int64_t N, K, row_bytes;
  const float* scale = nullptr;      // int8: [N]
  const uint16_t* scale16 = nullptr;  // int4: fp16 [N, K / group]
  const uint8_t* zeros = nullptr;     // int4: [N, K / group], or null: 8
  int64_t group = 0;

  const uint8_t* row(int64_t n) const { return data + n * row_bytes; }
  int64_t groups() const { return group ? K / group : 0; }
};

// A few rows of bf16 input, with what the kernels need precomputed once per call.
struct Rows {
  const uint16_t* x;  // [M, ldx] bf16
  int64_t M, ldx;
  const float* x32 = nullptr;   // [M, K] fp32 copy (AVX2 and scalar paths)
  // VNNI paths (quantised weights, K % 64 == 0): x as int8 per block of 32 (gemm.cpp: quantize_rows)
  const int8_t* xq = nullptr;
  const float* xscale = nullptr;
  const float* xcorr = nullptr;

  // Rows [m0, m0 + count) of these, prepared for weight w (the routed experts' share of a MoE batch).
  Rows slice(const Weight& w, int64_t m0, int64_t count) const {
    Rows r = *this;
    r.x = x + m0 * ldx;
    r.M = count;
    if (x32) r.x32 = x32 + m0 * w.K;
    if (xq) {
      r.xq = xq + m0 * w.K;
      r.xscale = xscale + m0 * (w.K / 4);
      r.xcorr = xcorr + m0 * (w.fmt == Fmt::kInt4 ? w.groups() : 1);
    }
    return r;
  }
};

// Output rows: fp32 or bf16, y[m * ldy + n].
struct Out {
  void* y;
  int64_t ldy;
  bool bf16;
};

// Rows [n0, n1) of y for all M rows, on the calling thread.
void matmul_rows(const Weight& w, int64_t n0, int64_t n1, const Rows& x, const Out& out);

// Scratch memory for one call: 64-byte aligned, uninitialised. Not tensors: at::empty costs ~1.5 us of dispatch
// (three per quantised matmul, ~100 matmuls a decode step).
template <class T>
struct Scratch {
  std::unique_ptr<T, void (*)(void*)> p{nullptr, std::free};
  T* get(int64_t n) {
    const size_t bytes = ((std::max<int64_t>(n, 1) * sizeof(T) + 63) / 64) * 64;
    p.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(p, "out of memory for a ", bytes, "-byte matmul scratch buffer");
    return p.get();
  }
};

// What a Rows needs besides x itself, kept alive by the caller.
struct RowsStorage {
  Scratch<float> x32, xscale, xcorr;
  Scratch<int8_t> xq;
};
Rows prepare_rows(const at::Tensor& x, const Weight& w, RowsStorage& keep);

Weight weight_view(const at::Tensor& w, const c10::optional<at::Tensor>& scale,
                   const c10::optional<at::Tensor>& zeros, int64_t group);

}  // namespace qwen35
