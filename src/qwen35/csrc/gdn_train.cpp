// The training chunked gated delta rule's loop over chunks (ops/gdn.py `chunked_gated_delta_rule_train`) in one
// native call each way, giving the very bits that autograd through the written-out loop gives, so that a
// training run is the same with or without this build (the demo recipe is reproducible bit for bit,
// train/recipe.py). Per chunk n, with S the state at its start ([BH, dk, dv]):
//
//   V'_n = U_n - W_n S                  S_{n+1} = S * d_n + Kd_n V'_n
//
// U [N, BH, C, dv], W [N, BH, C, dk], d [N, BH, 1, 1] (exp of the chunk's last cumulative log-decay) and
// Kd [N, BH, dk, C] (the decayed keys, transposed; any strides) come from the batched chunk terms. The products
// are at::bmm on the very operands (and strides) autograd's matmuls and their backward pass to it, so they
// round alike; the elementwise parts are plain loops, each product and sum rounded once as torch's
// elementwise kernels round them (contraction into fused multiply-adds is off, so the instruction set the CPU
// picks for them changes nothing). What this saves is autograd's bookkeeping and passes over memory: ~25
// recorded ops and views a chunk become 2 products and 2 fused loops forward, 4 products, a sum and 3 loops
// backward.
//
// gdn_recurrence(U, W, d, Kd, S0) -> (starts [N, BH, dk, dv]: S at the start of every chunk, V' [N, BH, C, dv],
//   the final state [BH, dk, dv]).
// gdn_recurrence_backward(g_starts?, g_v?, g_final?, W, d, Kd, starts, V', need_s0) -> the gradients of
//   (U, W, d, Kd, S0): autograd's formulas (bmm: grad.bmm(b^T), a^T.bmm(grad); mul: grad * other, summed to
//   d's shape with at::sum_to) and its order of summing the gradients each state gets: its use as a chunk's
//   start first, then through the decay, then through W_n S. A missing gradient (a final state nobody uses)
//   is no term at all, as in autograd: the last chunk's d and Kd then get zeros.
#pragma GCC optimize("fp-contract=off")
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "isa.h"

#include <array>
#include <tuple>

namespace qwen35 {
namespace {

using at::Tensor;

void check_float(const Tensor& x, int64_t dim, const char* name) {
  TORCH_CHECK(x.dim() == dim && x.scalar_type() == at::kFloat, "gdn_recurrence: ", name, " must be a ", dim,
              "-d fp32 tensor, got ", x.sizes(), " ", x.scalar_type());
}

void check_contiguous(const Tensor& x, const char* name) {
  TORCH_CHECK(x.is_contiguous(), "gdn_recurrence: ", name, " must be contiguous");
}

// f(first, end) over the rows of `row` floats that make up n floats: whole rows, split across threads
template <typename F>
void rows(int64_t n, int64_t row, const F& f) {
  at::parallel_for(0, n / row, std::max<int64_t>(1, 16384 / row), [&](int64_t begin, int64_t end) {
    f(begin, end);
  });
}

// The elementwise loops are QWEN35_CLONES (isa.h): the same bits on each clone, one rounding per operation.

QWEN35_CLONES void sub(const float* a, const float* b, float* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = a[i] - b[i];
}

QWEN35_CLONES void scale_add(const float* s, float d, const float* y, float* o, int64_t n) {  // s * d + y
  for (int64_t i = 0; i < n; ++i) o[i] = s[i] * d + y[i];
}

QWEN35_CLONES void mul(const float* a, const float* b, float* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = a[i] * b[i];
}

// g = a + b (b absent: g = a) and ng = -g
QWEN35_CLONES void sum_and_negation(const float* a, const float* b, float* g, float* ng, int64_t n) {
  if (b) for (int64_t i = 0; i < n; ++i) { g[i] = a[i] + b[i]; ng[i] = -g[i]; }
  else for (int64_t i = 0; i < n; ++i) { g[i] = a[i]; ng[i] = -a[i]; }
}

// o = (a + g * d) + t, the terms that are present in this order (a or g may be absent)
QWEN35_CLONES void state_grad(const float* a, const float* g, float d, const float* t, float* o, int64_t n) {
  if (a && g) for (int64_t i = 0; i < n; ++i) o[i] = (a[i] + g[i] * d) + t[i];
  else if (a) for (int64_t i = 0; i < n; ++i) o[i] = a[i] + t[i];
  else if (g) for (int64_t i = 0; i < n; ++i) o[i] = g[i] * d + t[i];
  else for (int64_t i = 0; i < n; ++i) o[i] = t[i];
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> gdn_recurrence(const Tensor& U, const Tensor& W, const Tensor& d,
                                                  const Tensor& Kd, const Tensor& S0) {
  check_float(U, 4, "U"); check_float(W, 4, "W"); check_float(d, 4, "d"); check_float(Kd, 4, "Kd");
  check_float(S0, 3, "S0");
  check_contiguous(U, "U"); check_contiguous(W, "W"); check_contiguous(d, "d"); check_contiguous(S0, "S0");
  const int64_t N = U.size(0), BH = U.size(1), C = U.size(2), dv = U.size(3), dk = W.size(3);
  TORCH_CHECK(W.sizes() == at::IntArrayRef({N, BH, C, dk}) && d.sizes() == at::IntArrayRef({N, BH, 1, 1}) &&
              Kd.sizes() == at::IntArrayRef({N, BH, dk, C}) && S0.sizes() == at::IntArrayRef({BH, dk, dv}),
              "gdn_recurrence: shapes disagree: U ", U.sizes(), ", W ", W.sizes(), ", d ", d.sizes(), ", Kd ",
              Kd.sizes(), ", S0 ", S0.sizes());
  auto starts = at::empty({N, BH, dk, dv}, U.options());
  auto v_new = at::empty({N, BH, C, dv}, U.options());
  auto final_state = at::empty({BH, dk, dv}, U.options());
  if (N == 0) return {starts, v_new, final_state.copy_(S0)};
  starts[0].copy_(S0);
  auto X = at::empty({BH, C, dv}, U.options());
  auto Y = at::empty({BH, dk, dv}, U.options());
  const int64_t nv = BH * C * dv, ns = BH * dk * dv, per_head = dk * dv;
  for (int64_t n = 0; n < N; ++n) {
    const Tensor S = starts[n], V = v_new[n];  // (pointers below are offsets, not selects: ~2 us each)
    at::bmm_out(X, W[n], S);  // W_n S
    const float* u = U.data_ptr<float>() + n * nv;
    const float* x = X.data_ptr<float>();
    float* v = V.data_ptr<float>();
    rows(nv, C * dv, [&](int64_t h0, int64_t h1) {
      sub(u + h0 * C * dv, x + h0 * C * dv, v + h0 * C * dv, (h1 - h0) * C * dv);
    });
    at::bmm_out(Y, Kd[n], V);  // Kd_n V'_n
    const float* s = S.data_ptr<float>();
    const float* y = Y.data_ptr<float>();
    const float* dn = d.data_ptr<float>() + n * BH;
    float* o = n + 1 < N ? starts.data_ptr<float>() + (n + 1) * ns : final_state.data_ptr<float>();
    rows(ns, per_head, [&](int64_t h0, int64_t h1) {
      for (int64_t h = h0; h < h1; ++h)
        scale_add(s + h * per_head, dn[h], y + h * per_head, o + h * per_head, per_head);
    });
  }
  return {starts, v_new, final_state};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gdn_recurrence_backward(
    const c10::optional<Tensor>& g_starts_, const c10::optional<Tensor>& g_v_, const c10::optional<Tensor>& g_final_,
    const Tensor& W, const Tensor& d, const Tensor& Kd, const Tensor& starts, const Tensor& v_new, bool need_s0) {
  const int64_t N = v_new.size(0), BH = v_new.size(1), C = v_new.size(2), dv = v_new.size(3), dk = W.size(3);
  const Tensor g_starts = g_starts_.has_value() ? g_starts_->contiguous() : Tensor();
  const Tensor g_v = g_v_.has_value() ? g_v_->contiguous() : Tensor();
  Tensor g_next = g_final_.has_value() ? *g_final_ : Tensor();  // the gradient of S_{n+1}, as it comes
  TORCH_CHECK(!g_starts.defined() || g_starts.sizes() == starts.sizes(), "gdn_recurrence_backward: g_starts ",
              g_starts.sizes(), " for states ", starts.sizes());
  TORCH_CHECK(!g_v.defined() || g_v.sizes() == v_new.sizes(), "gdn_recurrence_backward: g_v ", g_v.sizes(),
              " for V' ", v_new.sizes());
  const auto opt = W.options();
  auto gU = at::empty({N, BH, C, dv}, opt), gW = at::empty({N, BH, C, dk}, opt);
  auto gd = at::empty({N, BH, 1, 1}, opt), gKd = at::empty({N, BH, dk, C}, opt);
  auto neg_gv = at::empty({BH, C, dv}, opt), through_v = at::empty({BH, C, dv}, opt);
  auto through_w = at::empty({BH, dk, dv}, opt), product = at::empty({BH, dk, dv}, opt);
  // S_n's gradient, written by chunk n while chunk n + 1's (g_next) is read: two buffers, taken in turn
  const std::array<Tensor, 2> g_state{at::empty({BH, dk, dv}, opt), at::empty({BH, dk, dv}, opt)};
  const int64_t nv = BH * C * dv, ns = BH * dk * dv, per_head = dk * dv;
  const std::array<int64_t, 3> d_shape{BH, 1, 1};
  for (int64_t n = N - 1; n >= 0; --n) {
    const Tensor S = starts[n], V = v_new[n];
    const float* s = S.data_ptr<float>();
    float* gu = gU.data_ptr<float>() + n * nv;
    const float* gvs = g_v.defined() ? g_v.data_ptr<float>() + n * nv : nullptr;
    const float* tv = through_v.data_ptr<float>();
    Tensor g_next_c;  // g_next in contiguous memory, for the loops
    if (g_next.defined()) {
      Tensor gkd = gKd[n];
      at::bmm_out(gkd, g_next, V.transpose(1, 2));  // Kd_n's: grad.bmm(V'^T)
      at::bmm_out(through_v, Kd[n].transpose(1, 2), g_next);  // V'_n's: Kd^T.bmm(grad)
      g_next_c = g_next.contiguous();
      const float* gn = g_next_c.data_ptr<float>();
      float* p = product.data_ptr<float>();
      rows(ns, per_head, [&](int64_t h0, int64_t h1) {
        mul(gn + h0 * per_head, s + h0 * per_head, p + h0 * per_head, (h1 - h0) * per_head);
      });
      gd[n].copy_(at::sum_to(product, at::IntArrayRef(d_shape)));  // d_n's: grad * S, summed to [BH, 1, 1]
    } else {  // the final state is unused: nothing flows through the last chunk's update
      gKd[n].zero_();
      gd[n].zero_();
    }
    // V'_n's gradient: its own use (in O), then through the update; U_n's is the same, W_n S's its negation
    float* ng = neg_gv.data_ptr<float>();
    TORCH_CHECK(gvs || g_next.defined(), "gdn_recurrence_backward: no gradient reaches V'");
    const float* first = gvs ? gvs : tv;
    const float* second = gvs && g_next.defined() ? tv : nullptr;
    rows(nv, C * dv, [&](int64_t h0, int64_t h1) {
      const int64_t i0 = h0 * C * dv;
      sum_and_negation(first + i0, second ? second + i0 : nullptr, gu + i0, ng + i0, (h1 - h0) * C * dv);
    });
    Tensor gw = gW[n];
    at::bmm_out(gw, neg_gv, S.transpose(1, 2));  // W_n's: grad.bmm(S^T)
    if (n == 0 && !need_s0) break;
    at::bmm_out(through_w, W[n].transpose(1, 2), neg_gv);  // S's: W^T.bmm(grad)
    // S_n's gradient: its use as chunk n's start, then through the decay, then through W_n S
    const Tensor& g_cur = g_state[n % 2];
    float* gc = g_cur.data_ptr<float>();
    const float* gs = g_starts.defined() ? g_starts.data_ptr<float>() + n * ns : nullptr;
    const float* tw = through_w.data_ptr<float>();
    const float* dn = d.data_ptr<float>() + n * BH;
    const float* gn = g_next.defined() ? g_next_c.data_ptr<float>() : nullptr;
    rows(ns, per_head, [&](int64_t h0, int64_t h1) {
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t i0 = h * per_head;
        state_grad(gs ? gs + i0 : nullptr, gn ? gn + i0 : nullptr, dn[h], tw + i0, gc + i0, per_head);
      }
    });
    g_next = g_cur;
  }
  return {gU, gW, gd, gKd, need_s0 ? g_next : Tensor()};
}

}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("gdn_recurrence(Tensor U, Tensor W, Tensor d, Tensor Kd, Tensor S0) -> (Tensor, Tensor, Tensor)");
  m.def("gdn_recurrence_backward(Tensor? g_starts, Tensor? g_v, Tensor? g_final, Tensor W, Tensor d, Tensor Kd, "
        "Tensor starts, Tensor v_new, bool need_s0) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) {
  m.impl("gdn_recurrence", &qwen35::gdn_recurrence);
  m.impl("gdn_recurrence_backward", &qwen35::gdn_recurrence_backward);
}
