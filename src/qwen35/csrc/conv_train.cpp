// The training convolution's K shifted multiply-adds (ops/conv1d.py `causal_conv1d_train`) in one pass each
// way, giving the very bits that autograd through the written-out taps gives, so that a training run is the
// same with or without this build (the demo recipe is reproducible bit for bit, train/recipe.py):
//
// conv_taps(full [B, T+K-1, C], w [C, K]) -> y [B, T, C], fp32:
//   y[b,t,c] = (((0 + f[t] w0) + f[t+1] w1) + ...) + f[t+K-1] w_{K-1}     each product rounded, in this order,
//   as Python's sum() of the K products `full[:, j:j+T] * w[:, j]` adds them.
// conv_taps_grad(g [B, T, C], w [C, K], init) -> the gradient of `full` [B, T+K-1, C]:
//   gf[b,s,c] = ((((init) + p_{K-1}) + p_{K-2}) + ...) + p_0,   p_j = g[s-j] w_j where 0 <= s-j < T, else +0,
//   the order in which autograd sums the gradients `full` gets: the new state's first (`init`, the gather's
//   gradient, when the state is used), then the K taps' zero-padded slices, the last tap's first. Without
//   `init` the sum starts at p_{K-1}.
// conv_taps_products(g [B, T, C], full [B, T+K-1, C]) -> [K, B, T, C]: g * full[:, j:j+T] for every tap j, the
//   products whose sum over (B, T) is tap j's gradient (torch sums them, to round as autograd does).
// Plain C++ for the baseline ISA, with contraction into fused multiply-adds off (it would round a product and
// sum once): every product and sum is rounded as torch's elementwise kernels round them.
#pragma GCC optimize("fp-contract=off")
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace qwen35 {
namespace {

void check(const at::Tensor& x, const at::Tensor& w, int64_t min_rows, const char* op) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.is_contiguous(), op,
              ": expected a contiguous fp32 [B, T, C] tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.size(0) == x.size(2), op,
              ": expected contiguous fp32 taps [C, K] with C = ", x.size(2), ", got ", w.sizes());
  TORCH_CHECK(x.size(1) >= min_rows, op, ": ", x.size(1), " time steps, need at least ", min_rows);
}

}  // namespace

at::Tensor conv_taps(const at::Tensor& full, const at::Tensor& w) {
  check(full, w, w.size(1), "conv_taps");
  const int64_t B = full.size(0), C = full.size(2), K = w.size(1), S = full.size(1), T = S - K + 1;
  auto y = at::empty({B, T, C}, full.options());
  const auto wt = w.t().contiguous();  // [K, C]: tap j's weights side by side, so the loops run along C
  const float* f = full.data_ptr<float>();
  const float* wp = wt.data_ptr<float>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, B * T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* src = f + ((r / T) * S + r % T) * C;
      float* dst = out + r * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = 0.f + src[c] * wp[c];
      for (int64_t j = 1; j < K; ++j) {
        const float* sj = src + j * C;
        const float* wj = wp + j * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = dst[c] + sj[c] * wj[c];
      }
    }
  });
  return y;
}

at::Tensor conv_taps_grad(const at::Tensor& g, const at::Tensor& w, const c10::optional<at::Tensor>& init) {
  check(g, w, 1, "conv_taps_grad");
  const int64_t B = g.size(0), T = g.size(1), C = g.size(2), K = w.size(1), S = T + K - 1;
  const bool start = init.has_value() && init->defined();
  if (start)
    TORCH_CHECK(init->scalar_type() == at::kFloat && init->sizes() == at::IntArrayRef({B, S, C}),
                "conv_taps_grad: init must be fp32 [", B, ", ", S, ", ", C, "], got ", init->sizes());
  auto gf = start ? init->clone(at::MemoryFormat::Contiguous) : at::empty({B, S, C}, g.options());
  const auto wt = w.t().contiguous();
  const float* gp = g.data_ptr<float>();
  const float* wp = wt.data_ptr<float>();
  float* out = gf.data_ptr<float>();
  at::parallel_for(0, B * S, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / S, s = r % S;
      float* dst = out + r * C;
      for (int64_t j = K - 1; j >= 0; --j) {
        const int64_t t = s - j;
        const bool first = !start && j == K - 1;  // autograd keeps the first gradient as it comes
        if (t < 0 || t >= T) {  // this tap's zero-padded gradient: +0, which turns a -0 sum into +0
          if (first) std::fill(dst, dst + C, 0.f);
          else for (int64_t c = 0; c < C; ++c) dst[c] = dst[c] + 0.f;
          continue;
        }
        const float* gt = gp + (b * T + t) * C;
        const float* wj = wp + j * C;
        if (first) for (int64_t c = 0; c < C; ++c) dst[c] = gt[c] * wj[c];
        else for (int64_t c = 0; c < C; ++c) dst[c] = dst[c] + gt[c] * wj[c];
      }
    }
  });
  return gf;
}

at::Tensor conv_taps_products(const at::Tensor& g, const at::Tensor& full) {
  TORCH_CHECK(g.dim() == 3 && full.dim() == 3 && g.scalar_type() == at::kFloat && full.scalar_type() == at::kFloat &&
              g.is_contiguous() && full.is_contiguous() && g.size(0) == full.size(0) && g.size(2) == full.size(2) &&
              full.size(1) >= g.size(1),
              "conv_taps_products: expected contiguous fp32 g [B, T, C] and full [B, T+K-1, C], got ", g.sizes(),
              " and ", full.sizes());
  const int64_t B = g.size(0), T = g.size(1), C = g.size(2), S = full.size(1), K = S - T + 1;
  auto out = at::empty({K, B, T, C}, g.options());
  const float* gp = g.data_ptr<float>();
  const float* f = full.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, B * T, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* gr = gp + r * C;
      const float* src = f + ((r / T) * S + r % T) * C;
      for (int64_t j = 0; j < K; ++j) {
        const float* sj = src + j * C;
        float* dst = o + (j * B * T + r) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = gr[c] * sj[c];
      }
    }
  });
  return out;
}

}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("conv_taps(Tensor full, Tensor w) -> Tensor");
  m.def("conv_taps_grad(Tensor g, Tensor w, Tensor? init) -> Tensor");
  m.def("conv_taps_products(Tensor g, Tensor full) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) {
  m.impl("conv_taps", &qwen35::conv_taps);
  m.impl("conv_taps_grad", &qwen35::conv_taps_grad);
  m.impl("conv_taps_products", &qwen35::conv_taps_products);
}
