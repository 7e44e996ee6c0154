// One AdamW step over many fp32 tensors in one native call (train/adamw.py), giving the very bits that
// torch.optim.AdamW's single-tensor loop gives, so that a training run is the same with or without this build
// (the demo recipe is reproducible bit for bit, train/recipe.py). Torch's loop costs ~10 ms a demo step, nearly
// all of it ~10 dispatched ops for each of ~120 tensors; this is one pass over memory.
//
// Per element, in torch's order and roundings (the scalars are computed in double by the caller, as torch's
// Python computes them, and rounded to float here, as torch's kernels round a Python scalar):
//
//   p = p * decay                           param.mul_(1 - lr * weight_decay)      (skipped when decay is 1)
//   m = fma(w1, g - m, m)                   exp_avg.lerp_(grad, 1 - beta1): torch's vectorised lerp is a fused
//                                           multiply-add for weights under 0.5
//   v = v * beta2; v = fma(c2 * g, g, v)    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2): torch's
//                                           build contracts addcmul's `self + value * t1 * t2` into one too
//   den = sqrt(v) / bc2_sqrt + eps          (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps), with MKL's
//                                           root, as torch's (below)
//   p = p + (neg_step * m) / den            param.addcdiv_(exp_avg, denom, value=-step_size)
//
// Every other product and sum is rounded on its own (contraction into fused multiply-adds is off), so the
// instruction set the CPU picks for the loop changes nothing; tests/train/test_adamw.py compares the two
// bit for bit over sizes that exercise torch's vector loops, their scalar tails and our blocks.
//
// adamw_step(params, grads, exp_avgs, exp_avg_sqs, decay, w1, beta2, c2, bc2_sqrt, eps, neg_step): in place.
#pragma GCC optimize("fp-contract=off")
#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "isa.h"

#include <algorithm>
#include <cmath>

namespace qwen35 {
namespace {

using at::Tensor;

struct Scalars {
  float decay, w1, beta2, c2, bc2_sqrt, eps, neg_step;
};

// MKL's vector square root, which torch's `sqrt` calls on x86 builds (ATen/cpu/vml.h, in high-accuracy mode):
// it is not always the correctly rounded root, so matching torch's bits means calling it too. A weak symbol:
// torch builds without MKL use the exact root, std::sqrt.
extern "C" __attribute__((weak)) void vmsSqrt(int n, const float* a, float* r, long long mode);
constexpr long long kVmlMode = 0x2 | 0x140000 | 0x100;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE

// m and v in place, as the first two lines above
QWEN35_CLONES void moments(const float* g, float* m, float* v, int64_t n, Scalars s) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    m[i] = std::fma(s.w1, gi - m[i], m[i]);
    v[i] = std::fma(s.c2 * gi, gi, v[i] * s.beta2);
  }
}

// p in place from m and root = sqrt(v), as the last three lines above
QWEN35_CLONES void update(float* p, const float* m, const float* root, int64_t n, Scalars s) {
  const bool decay = s.decay != 1.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float pi = decay ? p[i] * s.decay : p[i];
    const float den = root[i] / s.bc2_sqrt + s.eps;
    p[i] = pi + (s.neg_step * m[i]) / den;
  }
}

void square_root(const float* v, float* root, int64_t n) {
  if (AT_MKL_ENABLED() && vmsSqrt) {
    vmsSqrt(static_cast<int>(n), v, root, kVmlMode);
  } else {
    for (int64_t i = 0; i < n; ++i) root[i] = std::sqrt(v[i]);
  }
}

constexpr int64_t kBlock = 2048;  // floats a thread updates at a time (its roots stay in L1)

void adamw_block(float* p, const float* g, float* m, float* v, int64_t n, Scalars s) {
  float root[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t k = std::min(kBlock, n - b);
    moments(g + b, m + b, v + b, k, s);
    square_root(v + b, root, k);
    update(p + b, m + b, root, k, s);
  }
}

void check(const Tensor& x, const Tensor& p, const char* name, size_t i) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.sizes() == p.sizes(), "adamw_step: ",
              name, "[", i, "] must be a contiguous fp32 tensor of its parameter's shape ", p.sizes(), ", got ",
              x.sizes(), " ", x.scalar_type());
}

}  // namespace

void adamw_step(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                double decay, double w1, double beta2, double c2, double bc2_sqrt, double eps, double neg_step) {
  TORCH_CHECK(grads.size() == params.size() && exp_avgs.size() == params.size() &&
              exp_avg_sqs.size() == params.size(), "adamw_step: ", params.size(), " params, ", grads.size(),
              " grads, ", exp_avgs.size(), " exp_avgs, ", exp_avg_sqs.size(), " exp_avg_sqs");
  for (size_t i = 0; i < params.size(); ++i) {
    check(params[i], params[i], "params", i); check(grads[i], params[i], "grads", i);
    check(exp_avgs[i], params[i], "exp_avgs", i); check(exp_avg_sqs[i], params[i], "exp_avg_sqs", i);
  }
  const Scalars s{static_cast<float>(decay), static_cast<float>(w1), static_cast<float>(beta2),
                  static_cast<float>(c2), static_cast<float>(bc2_sqrt), static_cast<float>(eps),
                  static_cast<float>(neg_step)};
  for (size_t i = 0; i < params.size(); ++i) {
    float* p = params[i].data_ptr<float>();
    const float* g = grads[i].data_ptr<float>();
    float* m = exp_avgs[i].data_ptr<float>();
    float* v = exp_avg_sqs[i].data_ptr<float>();
    at::parallel_for(0, params[i].numel(), 8 * kBlock, [&](int64_t b, int64_t e) {
      adamw_block(p + b, g + b, m + b, v + b, e - b, s);
    });
  }
}

}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("adamw_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "float decay, float w1, float beta2, float c2, float bc2_sqrt, float eps, float neg_step) -> ()");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) {
  m.impl("adamw_step", &qwen35::adamw_step);
}
