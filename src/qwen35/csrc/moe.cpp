// Routed experts for a few tokens: only the experts some token picked are read, each once per call.
//
// out[t] = sum_j weights[t, j] * down_e(silu(gate_e(x_t)) * up_e(x_t)), e = ids[t, j], with the experts
// stacked in the official fused layout: gate_up [E, 2I, H] (gate rows first), down [E, H, I], each bf16,
// int8 (+ fp32 scales [E, rows]) or int4 (+ fp16 group scales, optional zeros; see gemm.h).
// Tokens are grouped by expert; one parallel pass runs every active expert's gate_up rows (the work items are
// (expert, block of 4 weight rows) pairs, split evenly over the threads), then one pass runs the down rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "gemm.h"
#include "isa.h"
#include "simd.h"

namespace qwen35 {
namespace {

// One pair's silu(gate) * up in fp32, rounded once to bf16 (the down projection's input row).
QWEN35_AVX512 void silu_mul_row_avx512(const float* g, const float* u, uint16_t* out, int64_t I) {
  for (int64_t i = 0; i < I; i += 16) {
    const __mmask16 m = tail_mask(I - i);
    store16(out + i, _mm512_mul_ps(silu512(load16(g + i, m)), load16(u + i, m)), m);
  }
}

void silu_mul_row_scalar(const float* g, const float* u, uint16_t* out, int64_t I) {
  for (int64_t i = 0; i < I; ++i) out[i] = float_to_bf16(g[i] / (1.0f + std::exp(-g[i])) * u[i]);
}

QWEN35_AVX2 void silu_mul_row_avx2(const float* g, const float* u, uint16_t* out, int64_t I) {
  int64_t i = 0;
  for (; i + 8 <= I; i += 8) store8(out + i, _mm256_mul_ps(silu256(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
  silu_mul_row_scalar(g + i, u + i, out + i, I - i);
}

struct Stack {  // one stacked expert tensor and its quantisation
  at::Tensor w;
  c10::optional<at::Tensor> scale, zeros;
  int64_t group;

  Weight expert(int64_t e) const {
    return weight_view(w[e], scale ? c10::optional<at::Tensor>((*scale)[e]) : c10::nullopt,
                       zeros ? c10::optional<at::Tensor>((*zeros)[e]) : c10::nullopt, group);
  }
};

// For every active expert a: rows [off[a], off[a+1]) of x against expert ids[a]'s weight -> y rows.
void run_experts(const std::vector<Weight>& ws, const std::vector<int64_t>& off, const Rows& x, float* y,
                 int64_t ldy) {
  const int64_t A = int64_t(ws.size());
  const int64_t blocks_per = (ws[0].N + 3) / 4;
  at::parallel_for(0, A * blocks_per, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t a = i / blocks_per, b0 = i % blocks_per;
      const int64_t b1 = std::min(blocks_per, b0 + (i1 - i));
      const Weight& w = ws[a];
      Out o{y + off[a] * ldy, ldy, false};
      matmul_rows(w, 4 * b0, std::min(w.N, 4 * b1), x.slice(w, off[a], off[a + 1] - off[a]), o);
      i += b1 - b0;
    }
  });
}

at::Tensor moe_experts(const at::Tensor& x, const at::Tensor& ids, const at::Tensor& weights,
                       const at::Tensor& gate_up, const c10::optional<at::Tensor>& gate_up_scale,
                       const c10::optional<at::Tensor>& gate_up_zeros, const at::Tensor& down,
                       const c10::optional<at::Tensor>& down_scale, const c10::optional<at::Tensor>& down_zeros,
                       int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "x must be [T, H] bf16");
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == x.size(0) && weights.sizes() == ids.sizes(),
              "ids and weights must be [T, k] for the T rows of x");
  TORCH_CHECK(gate_up.dim() == 3 && down.dim() == 3 && gate_up.size(0) == down.size(0),
              "gate_up [E, 2I, H] and down [E, H, I] must be stacked over the same experts");
  const int64_t T = x.size(0), k = ids.size(1), E = gate_up.size(0), H = x.size(1);
  const Stack gu{gate_up.contiguous(), gate_up_scale, gate_up_zeros, group};
  const Stack dn{down.contiguous(), down_scale, down_zeros, group};

  // group the (token, slot) pairs by expert
  at::Tensor ids64 = ids.to(at::kLong).contiguous();
  at::Tensor wts = weights.to(at::kFloat).contiguous();
  const int64_t* id = ids64.data_ptr<int64_t>();
  // an id of -1 is a route to an expert held by another rank (expert parallelism): skipped
  std::vector<int64_t> count(E, 0);
  int64_t P = 0;
  for (int64_t i = 0; i < T * k; ++i) {
    TORCH_CHECK(id[i] >= -1 && id[i] < E, "expert id ", id[i], " out of range for ", E, " experts");
    if (id[i] >= 0) ++count[id[i]], ++P;
  }
  if (P == 0) return at::zeros({T, H}, x.options());
  std::vector<int64_t> active, off{0};
  std::vector<int64_t> start(E, 0);
  for (int64_t e = 0; e < E; ++e)
    if (count[e]) {
      start[e] = off.back();
      active.push_back(e);
      off.push_back(off.back() + count[e]);
    }
  std::vector<int64_t> pair_token(P), pair_slot(P), fill(start);
  for (int64_t i = 0; i < T * k; ++i) {
    if (id[i] < 0) continue;
    const int64_t r = fill[id[i]]++;
    pair_token[r] = i / k;
    pair_slot[r] = i;
  }
  std::vector<Weight> gws, dws;
  for (int64_t e : active) gws.push_back(gu.expert(e)), dws.push_back(dn.expert(e));
  TORCH_CHECK(gws[0].K == H && gws[0].N % 2 == 0 && dws[0].K == gws[0].N / 2 && dws[0].N == H,
              "expert shapes do not match: gate_up rows ", gws[0].N, " x ", gws[0].K, ", down rows ", dws[0].N,
              " x ", dws[0].K, ", hidden ", H);
  const int64_t I = gws[0].N / 2;

  // phase 1: gate_up for the gathered rows
  at::Tensor idx = at::from_blob(pair_token.data(), {P}, at::kLong).clone();
  at::Tensor xg = x.index_select(0, idx).contiguous();
  RowsStorage keep1;
  Rows r1 = prepare_rows(xg, gws[0], keep1);
  at::Tensor h = at::empty({P, 2 * I}, x.options().dtype(at::kFloat));
  run_experts(gws, off, r1, h.data_ptr<float>(), 2 * I);

  // silu(gate) * up, as bf16 input rows for the down projection
  at::Tensor act = at::empty({P, I}, x.options());
  {
    const float* hp = h.data_ptr<float>();
    uint16_t* ap = (uint16_t*)act.data_ptr();
    const Isa isa = current_isa();
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const float *g = hp + p * 2 * I, *u = g + I;
        switch (isa) {
          case Isa::kAvx512Bf16: silu_mul_row_avx512(g, u, ap + p * I, I); break;
          case Isa::kAvx2: silu_mul_row_avx2(g, u, ap + p * I, I); break;
          default: silu_mul_row_scalar(g, u, ap + p * I, I); break;
        }
      }
    });
  }

  // phase 2: down, then the weighted sum per token
  RowsStorage keep2;
  Rows r2 = prepare_rows(act, dws[0], keep2);
  at::Tensor y = at::empty({P, H}, x.options().dtype(at::kFloat));
  run_experts(dws, off, r2, y.data_ptr<float>(), H);

  at::Tensor out32 = at::zeros({T, H}, x.options().dtype(at::kFloat));
  const float* yp = y.data_ptr<float>();
  const float* wp = wts.data_ptr<float>();
  float* op = out32.data_ptr<float>();
  at::parallel_for(0, H, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t r = 0; r < P; ++r) {
      const float wt = wp[pair_slot[r]];
      float* dst = op + pair_token[r] * H;
      const float* src = yp + r * H;
      for (int64_t c = c0; c < c1; ++c) dst[c] += wt * src[c];
    }
  });
  return out32.to(x.scalar_type());
}

}  // namespace
}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def(
      "moe_experts(Tensor x, Tensor ids, Tensor weights, Tensor gate_up, Tensor? gate_up_scale, "
      "Tensor? gate_up_zeros, Tensor down, Tensor? down_scale, Tensor? down_zeros, int group) -> Tensor");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) { m.impl("moe_experts", &qwen35::moe_experts); }
