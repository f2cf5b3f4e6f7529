// Device building blocks of the verification kernels (loads, block reductions):
// used by verify.cu and verify_tree.cu.
#pragma once

#include <cuda_fp16.h>

#include <type_traits>

#include "cuda_common.cuh"
#include "softdec/filter.h"

namespace softdec {
namespace vcuda {

// Threads per block of the verification kernels (__launch_bounds__ and launch).
constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

struct F32 {};
struct BF16 {};
struct FP16 {};
template <typename T> struct Tag;
template <> struct Tag<float> { using type = F32; };
template <> struct Tag<bf16> { using type = BF16; };
template <> struct Tag<fp16> { using type = FP16; };

__device__ __forceinline__ float to_f(const float* p, int64_t i) { return __ldg(p + i); }
__device__ __forceinline__ float to_f(const bf16* p, int64_t i) {
  const uint16_t h = __ldg(reinterpret_cast<const unsigned short*>(p) + i);
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}
__device__ __forceinline__ float to_f(const fp16* p, int64_t i) {
  const unsigned short h = __ldg(reinterpret_cast<const unsigned short*>(p) + i);
  return __half2float(__ushort_as_half(h));
}

// Four consecutive entries [4 blk, 4 blk + 4) of a row, 16-byte (float) or
// 8-byte (half types) loads when the row is aligned; entries past V read as -inf.
template <typename T>
__device__ __forceinline__ void load4(const T* p, int64_t blk, int64_t V, bool vec, float fill,
                                      float out[4]) {
  const int64_t i0 = 4 * blk;
  if (vec && i0 + 4 <= V) {
    if constexpr (sizeof(T) == 4) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(p) + blk);
      out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    } else {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p) + blk);
      const unsigned short h[4] = {static_cast<unsigned short>(v.x & 0xffffu), static_cast<unsigned short>(v.x >> 16),
                                   static_cast<unsigned short>(v.y & 0xffffu), static_cast<unsigned short>(v.y >> 16)};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if constexpr (std::is_same_v<T, bf16>) {
          out[e] = __uint_as_float(static_cast<uint32_t>(h[e]) << 16);
        } else {
          out[e] = __half2float(__ushort_as_half(h[e]));
        }
      }
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) out[e] = i0 + e < V ? to_f(p, i0 + e) : fill;
}

// ------------------------------------------------------------------ block reductions

struct KI {
  float k;
  int64_t i;  // -1: none
};

// Larger value wins, lower index on ties; i < 0 never wins.
__device__ __forceinline__ bool ki_better(const KI& a, const KI& b) {
  if (a.i < 0) return false;
  if (b.i < 0) return true;
  return a.k > b.k || (a.k == b.k && a.i < b.i);
}

// W: warps of the launching block (the kernel's threads / 32).
template <int W = kWarps>
__device__ KI block_best(KI v, KI* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    KI w;
    w.k = __shfl_xor_sync(0xffffffffu, v.k, o);
    w.i = __shfl_xor_sync(0xffffffffu, v.i, o);
    if (ki_better(w, v)) v = w;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < W ? red[lane] : KI{0.0f, -1};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      KI w;
      w.k = __shfl_xor_sync(0xffffffffu, v.k, o);
      w.i = __shfl_xor_sync(0xffffffffu, v.i, o);
      if (ki_better(w, v)) v = w;
    }
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  const KI r = red[0];
  __syncthreads();
  return r;
}

template <int W = kWarps>
__device__ double2 block_sum2(double2 v, double2* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
    v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < W ? red[lane] : make_double2(0.0, 0.0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      v.x += __shfl_xor_sync(0xffffffffu, v.x, o);
      v.y += __shfl_xor_sync(0xffffffffu, v.y, o);
    }
    if (lane == 0) red[0] = v;
  }
  __syncthreads();
  const double2 r = red[0];
  __syncthreads();
  return r;
}

}  // namespace vcuda
}  // namespace softdec
