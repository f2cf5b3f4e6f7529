// Warp-aggregated shared-memory radix histograms of counts and filter.h fixed-point masses
// (include/softdec/filter.h "top-p masses in fixed point"), shared by sampling.cu's block
// radix selection and distributed.cu's shard histograms (shard_partials, shard_radix_hist).
// Integer sums only (32-bit ATOMS.ADD, no CAS loop, no float atomic): a histogram does not
// depend on the order in which warps or lanes add.
#pragma once

#include <cstdint>

namespace softdec {
namespace fixed_hist {

// The high word after adding (lo, hi) to a 64-bit counter kept as two uint32 words whose low
// word was `old` before the add (an atomicAdd's return): hi plus the low add's carry. The
// words of every bucket end at the 64-bit sum whatever the order of the adds (host and
// device: tests/cuda_host/distributed_cut.cu).
__host__ __device__ __forceinline__ uint32_t hi_with_carry(uint32_t old, uint32_t lo, uint32_t hi) {
  return hi + (old + lo < old ? 1u : 0u);
}

// Every lane of a warp calls this together (converged code) with bucket b >= 0 to add one
// token of fixed-point mass q (< 2^63; used when mass_mode) to bucket b; b < 0 adds nothing.
// One leader per bucket does the shared-memory atomics: the count, and the 64-bit mass as a
// lo / hi pair of uint32 with the carry taken from the low add's old value.
__device__ __forceinline__ void hist_add(int b, uint64_t q, bool mass_mode, int* hc, uint32_t* hlo,
                                         uint32_t* hhi) {
  const int lane = threadIdx.x & 31;
  const unsigned grp = __match_any_sync(0xffffffffu, b);
  const bool leader = lane == __ffs(grp) - 1;
  if (mass_mode) {
    // q < 2^63 as three 21-bit limbs: a sum of 32 limbs fits in 32 bits
    const unsigned l0 = __reduce_add_sync(grp, static_cast<unsigned>(q & 0x1fffffu));
    const unsigned l1 = __reduce_add_sync(grp, static_cast<unsigned>((q >> 21) & 0x1fffffu));
    const unsigned l2 = __reduce_add_sync(grp, static_cast<unsigned>(q >> 42));
    const uint64_t sum = static_cast<uint64_t>(l0) + (static_cast<uint64_t>(l1) << 21) + (static_cast<uint64_t>(l2) << 42);
    if (leader && b >= 0 && sum != 0) {
      const uint32_t lo = static_cast<uint32_t>(sum), hi = static_cast<uint32_t>(sum >> 32);
      const uint32_t old = atomicAdd(&hlo[b], lo);
      atomicAdd(&hhi[b], hi_with_carry(old, lo, hi));
    }
  }
  if (leader && b >= 0) atomicAdd(&hc[b], __popc(grp));
}

}  // namespace fixed_hist
}  // namespace softdec
