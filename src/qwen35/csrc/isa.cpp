// The ISA choice and the two ops that report or force it (tests run every path on one machine).
#include <torch/library.h>

#include <stdexcept>

#include "isa.h"

namespace qwen35 {
namespace {

Isa best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni"))
    return Isa::kAvx512Bf16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa g_isa = best_isa();
Isa g_int4_cap = Isa::kAvx512Bf16;  // the most the int4 kernels use (set_int4_isa)

std::string isa_op() { return isa_name(g_isa); }

std::string set_isa_op(const std::string& name) {
  Isa best = best_isa();
  Isa want = best;
  if (name == "scalar") want = Isa::kScalar;
  else if (name == "avx2") want = Isa::kAvx2;
  else if (name == "avx512_bf16") want = Isa::kAvx512Bf16;
  else if (!name.empty()) throw std::invalid_argument("unknown ISA '" + name + "' (avx512_bf16, avx2, scalar)");
  if (int(want) > int(best))
    throw std::invalid_argument(std::string("this CPU cannot run ") + isa_name(want));
  g_isa = want;
  g_int4_cap = Isa::kAvx512Bf16;  // a forced ISA is what every kernel runs
  return isa_name(g_isa);
}

std::string int4_isa_op() { return isa_name(int4_isa()); }

std::string set_int4_isa_op(const std::string& name) {
  if (name == "avx2") g_int4_cap = Isa::kAvx2;
  else if (name.empty() || name == "avx512_bf16") g_int4_cap = Isa::kAvx512Bf16;
  else throw std::invalid_argument("int4 kernels: unknown ISA '" + name + "' (avx512_bf16, avx2)");
  return isa_name(int4_isa());
}

}  // namespace

Isa current_isa() { return g_isa; }

Isa int4_isa() { return int(g_int4_cap) < int(g_isa) ? g_int4_cap : g_isa; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("isa() -> str", &qwen35::isa_op);
  m.def("set_isa(str name) -> str", &qwen35::set_isa_op);
  m.def("set_int4_isa(str name) -> str", &qwen35::set_int4_isa_op);
  m.def("int4_isa() -> str", &qwen35::int4_isa_op);
}
