// The (key, index) maximum of a CUDA block: larger key wins, lower index on ties, index < 0
// = no entry. A total order on the entries, so the result does not depend on the order of
// the warp shuffles or of the warps (the same answer as any serial scan). Shared by
// sampling.cu (argmax, Gumbel / exponential races) and distributed.cu (shard_partials' max,
// shard_verify_race's race).
#pragma once

#include <cstdint>

namespace softdec {
namespace block_arg {

struct Arg {
  float key;
  int64_t idx;  // -1: no entry
};

// (host and device: tests/cuda_host/distributed_cut.cu checks it against verify::race_better's
// serial scan)
__host__ __device__ __forceinline__ void arg_take(Arg& a, float k, int64_t i) {
  if (i < 0) return;
  if (a.idx < 0 || k > a.key || (k == a.key && i < a.idx)) {
    a.key = k;
    a.idx = i;
  }
}

// Every thread of a CUDA block of kWarps warps calls this (converged); all get the block's max.
template <int kWarps>
__device__ Arg block_argmax(Arg a) {
  __shared__ float sk[kWarps];
  __shared__ int64_t si[kWarps];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o; o >>= 1) {
    const float k = __shfl_xor_sync(0xffffffffu, a.key, o);
    const long long i = __shfl_xor_sync(0xffffffffu, static_cast<long long>(a.idx), o);
    arg_take(a, k, i);
  }
  __syncthreads();
  if (lane == 0) {
    sk[w] = a.key;
    si[w] = a.idx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    Arg b{-__int_as_float(0x7f800000), -1};
    for (int j = 0; j < kWarps; ++j) arg_take(b, sk[j], si[j]);
    sk[0] = b.key;
    si[0] = b.idx;
  }
  __syncthreads();
  const Arg r{sk[0], si[0]};
  __syncthreads();
  return r;
}

}  // namespace block_arg
}  // namespace softdec
