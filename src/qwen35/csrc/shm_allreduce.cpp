// Sum (or gather) tensors over the tensor-parallel ranks of one machine through shared memory
// (parallel/group.py): gloo's loopback TCP costs 0.6-0.9 ms per collective, this a few microseconds plus the
// copies. `shm_exchange` is the copy and the barrier alone: the caller reads the slots (gather).
//
// The region (a /dev/shm file every rank maps): one cache line per rank holding its call counter, then two
// buffers of `world` slots of `slot_bytes`. Call `seq` of rank r copies x into slot r of buffer seq & 1,
// publishes seq (release), waits until every rank has published seq (acquire), then sums the slots in rank
// order in fp32: every rank computes the same bits. Two buffers make one barrier per call enough: a rank
// can be at most one call ahead, and the buffer it then writes is the one of the call every rank has left.
// A rank that never arrives is found by the rank watcher (parallel/launch.py), which ends the process.
#include <torch/extension.h>

#include <atomic>
#include <cstring>
#include <sched.h>

#include "isa.h"

namespace qwen35 {
namespace {

constexpr int64_t LINE = 64;

// out[i] = sum over ranks r in order of slot r's element i, in fp32
template <typename T, typename Load, typename Store>
void sum_slots(const char* slots, int64_t slot_bytes, int64_t world, int64_t n, T* out, Load load, Store store) {
  at::parallel_for(0, n, 4096, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      float acc = 0.f;
      for (int64_t r = 0; r < world; ++r) acc += load(slots + r * slot_bytes, i);
      out[i] = store(acc);
    }
  });
}

// Copy x into this rank's slot of call `seq`, publish it, wait for every rank's; returns the call's slots.
char* exchange(const at::Tensor& x, at::Tensor& region, int64_t rank, int64_t world, int64_t seq,
               int64_t slot_bytes) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "x must be a contiguous CPU tensor");
  const int64_t nbytes = x.numel() * x.element_size();
  TORCH_CHECK(nbytes <= slot_bytes, "x is larger than a shared-memory slot");
  TORCH_CHECK(region.numel() >= world * LINE + 2 * world * slot_bytes, "the shared region is too small");
  static_assert(std::atomic<int64_t>::is_always_lock_free, "needs lock-free 64-bit atomics across processes");
  char* base = static_cast<char*>(region.data_ptr());
  auto counter = [&](int64_t r) { return reinterpret_cast<std::atomic<int64_t>*>(base + r * LINE); };
  char* slots = base + world * LINE + (seq & 1) * world * slot_bytes;

  std::memcpy(slots + rank * slot_bytes, x.data_ptr(), nbytes);
  counter(rank)->store(seq, std::memory_order_release);
  for (int64_t r = 0; r < world; ++r) {
    int spins = 0;
    while (counter(r)->load(std::memory_order_acquire) < seq)
      if (++spins == 256) spins = 0, sched_yield();
  }
  return slots;
}

void shm_all_reduce(at::Tensor x, at::Tensor region, int64_t rank, int64_t world, int64_t seq,
                    int64_t slot_bytes) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, "x must be fp32, bf16 or fp16");
  const int64_t n = x.numel();
  const char* slots = exchange(x, region, rank, world, seq, slot_bytes);

  if (dtype == at::kFloat)
    sum_slots(slots, slot_bytes, world, n, static_cast<float*>(x.data_ptr()),
              [](const char* s, int64_t i) { return reinterpret_cast<const float*>(s)[i]; },
              [](float v) { return v; });
  else if (dtype == at::kBFloat16)
    sum_slots(slots, slot_bytes, world, n, static_cast<uint16_t*>(x.data_ptr()),
              [](const char* s, int64_t i) { return bf16_to_float(reinterpret_cast<const uint16_t*>(s)[i]); },
              [](float v) { return float_to_bf16(v); });
  else
    sum_slots(slots, slot_bytes, world, n, static_cast<at::Half*>(x.data_ptr()),
              [](const char* s, int64_t i) { return half_to_float(reinterpret_cast<const uint16_t*>(s)[i]); },
              [](float v) { return at::Half(v); });
}

}  // namespace
}  // namespace qwen35

TORCH_LIBRARY_FRAGMENT(qwen35, m) {
  m.def("shm_all_reduce(Tensor(a!) x, Tensor region, int rank, int world, int seq, int slot_bytes) -> ()");
  m.def("shm_exchange(Tensor x, Tensor region, int rank, int world, int seq, int slot_bytes) -> ()");
}

TORCH_LIBRARY_IMPL(qwen35, CPU, m) {
  m.impl("shm_all_reduce", &qwen35::shm_all_reduce);
  m.impl("shm_exchange", [](at::Tensor x, at::Tensor region, int64_t rank, int64_t world, int64_t seq,
                            int64_t slot_bytes) { qwen35::exchange(x, region, rank, world, seq, slot_bytes); });
}
