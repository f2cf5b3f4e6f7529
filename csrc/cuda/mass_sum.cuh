// The block-wide sum of a filter::MassSum (include/softdec/filter.h, "the kept mass Z, exactly"):
// the normaliser Z of a filtered target by the exact rule, on a CUDA block. Used by verify.cu
// (pass 2 and the whole-vocabulary mass of method "soft"), verify_tree.cu (pass 2) and
// distributed.cu (shard_kept_mass).
//
// Each thread adds the digits of its own kept masses into the three uint64 of a MassSum
// (MassSum::add); the block then adds the threads' digit sums as integers: a butterfly of
// 64-bit __shfl_xor_sync within each warp, lane 0 of every warp writes its three sums to shared
// memory, and every thread adds the warps' sums. Integer addition is associative and the sums
// cannot overflow (each digit < 2^32 + 1, fewer than 2^31 tokens: S_k < 2^63), so the result is
// the same three integers -- hence the same Z = MassSum::value() -- for any thread layout, any
// order and any split of the vocabulary: bit-identical to the CPU's (cpu::MassLanes) and to
// filter::compute_row_filter / finish_from_sorted's serial sums. No atomics.
//
// Optionally a float64 value h per thread (the entropy's sum of mass * scaled logit) is summed
// alongside, in a fixed order for a given block size (lane butterfly, then the warps in order):
// deterministic, but not the CPU's rounding (the entropy is a tolerance-level quantity).
//
// Invariants: every thread of the block calls block_mass_sum (converged, block-uniform control
// flow) with the same W = blockDim.x / 32; every thread gets the block's sums; `red` may be reused
// as soon as the call returns (it ends with a barrier).
#pragma once

#include <cstdint>

#include "softdec/filter.h"

namespace softdec {
namespace block_mass {

// Shared scratch (W = warps of the block): the warps' digit sums and h sums.
template <int W>
struct MassRed {
  unsigned long long d[3][W];
  double h[W];
};

template <int W, bool kWithH>
__device__ __forceinline__ filter::MassSum block_mass_sum_impl(filter::MassSum z, double* h, MassRed<W>& red) {
  static_assert(W >= 1 && W <= 32, "one to 32 warps");
  unsigned long long s0 = z.d[0], s1 = z.d[1], s2 = z.d[2];
  double hv = kWithH ? *h : 0.0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {  // integer adds: exact in any order
    s0 += __shfl_xor_sync(0xffffffffu, s0, o);
    s1 += __shfl_xor_sync(0xffffffffu, s1, o);
    s2 += __shfl_xor_sync(0xffffffffu, s2, o);
    if (kWithH) hv += __shfl_xor_sync(0xffffffffu, hv, o);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    red.d[0][warp] = s0;
    red.d[1][warp] = s1;
    red.d[2][warp] = s2;
    if (kWithH) red.h[warp] = hv;
  }
  __syncthreads();
  filter::MassSum t;
  t.d[0] = 0, t.d[1] = 0, t.d[2] = 0;
  double ht = 0.0;
#pragma unroll
  for (int w = 0; w < W; ++w) {  // shared-memory broadcasts; the warps in order (h: fixed order)
    t.d[0] += red.d[0][w];
    t.d[1] += red.d[1][w];
    t.d[2] += red.d[2][w];
    if (kWithH) ht += red.h[w];
  }
  __syncthreads();  // red is free again
  if (kWithH) *h = ht;
  return t;
}

// The block's MassSum (every thread gets it).
template <int W>
__device__ __forceinline__ filter::MassSum block_mass_sum(filter::MassSum z, MassRed<W>& red) {
  return block_mass_sum_impl<W, false>(z, nullptr, red);
}

// The same, and *h <- the block's sum of the threads' *h (float64, fixed order; see above).
template <int W>
__device__ __forceinline__ filter::MassSum block_mass_sum(filter::MassSum z, double& h, MassRed<W>& red) {
  return block_mass_sum_impl<W, true>(z, &h, red);
}

}  // namespace block_mass
}  // namespace softdec
