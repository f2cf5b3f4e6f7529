// Device helpers shared by the token-sparse attention CUDA files
// (sparse_attention.cu: summaries + decode; sparse_attention_prefill.cu).
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <limits>
#include <string>

#include "attn_checks.h"
#include "cuda_common.cuh"
#include "../dispatch.h"
#include "softdec/attn_sparse.h"

namespace softdec {
namespace attn_cuda {

using namespace attn_checks;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float nan_to_neginf(float s) { return s != s ? kNegInf : s; }

// Order-preserving key of a float (larger float -> larger key); NaN -> key of -inf.
__device__ __forceinline__ uint32_t order_key(float f) {
  f = nan_to_neginf(f);
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Elements of T in 16 bytes.
template <typename T>
constexpr int kVec = 16 / sizeof(T);

// Lane-partial dot products of `G` fp32 query rows (shared memory, stride dq)
// with one key row of T: lanes take 16-byte vectors (when `vec`) or single
// elements, strided by 32. Returns the lane partials in part[0:G].
template <typename T, int MAXG>
__device__ __forceinline__ void lane_dots(const float* __restrict__ q, int dq, int G, const T* __restrict__ k,
                                          int d, bool vec, int lane, float* part) {
#pragma unroll
  for (int h = 0; h < MAXG; ++h) part[h] = 0.f;
  if (vec) {
    const int nv = d / kVec<T>;
    for (int c = lane; c < nv; c += 32) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(k) + c);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < kVec<T>; ++j) {
        const float kv = to_float(e[j]);
        const int i = c * kVec<T> + j;
#pragma unroll
        for (int h = 0; h < MAXG; ++h)
          if (h < G) part[h] += q[h * dq + i] * kv;
      }
    }
  } else {
    for (int i = lane; i < d; i += 32) {
      const float kv = to_float(k[i]);
#pragma unroll
      for (int h = 0; h < MAXG; ++h)
        if (h < G) part[h] += q[h * dq + i] * kv;
    }
  }
}

constexpr int kMaxG = 16;  // query heads per KV head handled in registers (CUDA backend limit)

// Threads of the block-wide selection kernels (decode select, prefill select). With
// __launch_bounds__(kSelThreads) ptxas keeps them within 65536 / kSelThreads registers: unbounded at
// 1024 threads they needed ~90 and every launch failed; bounded to 1024 (64 registers) the decode
// select spills ~600 B on sm_90a, so 512 (<= 128 registers, no spills).
constexpr int kSelThreads = 512;
// The decode vote (softmax sums over the tokens) needs ~32 registers: it keeps 1024 threads.
constexpr int kVoteThreads = 1024;

// Grid y and z dimensions are at most 65535: launches put the batch in y or z and go over it
// in chunks of this many rows (the kernels take the first row, b0); heads in y are checked.
constexpr int64_t kMaxGridYZ = 65535;

// Dynamic shared memory of `kernel` for one launch: above the 48 KB default a kernel must
// opt in (cudaFuncAttributeMaxDynamicSharedMemorySize), up to the device's opt-in maximum
// (227 KB on sm_90, 163 KB on sm_80); more than that is a user error, reported by `what`.
// Both limits count the kernel's static shared memory too (the fused decode kernels have some, at most
// kMaxStaticSmem: below 48 KB - kMaxStaticSmem of dynamic memory no runtime call is made).
constexpr size_t kMaxStaticSmem = 8 * 1024;
template <typename Kernel>
inline void set_dynamic_smem(Kernel kernel, size_t bytes, const std::string& what) {
  if (bytes + kMaxStaticSmem <= 48 * 1024) return;
  cudaFuncAttributes fa{};
  SOFTDEC_CUDA_CHECK(cudaFuncGetAttributes(&fa, kernel));
  const size_t total = bytes + fa.sharedSizeBytes;
  if (total <= 48 * 1024) return;
  int dev = 0, optin = 0;
  SOFTDEC_CUDA_CHECK(cudaGetDevice(&dev));
  SOFTDEC_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  SOFTDEC_CHECK(total <= static_cast<size_t>(optin), what, " needs ", total,
                " bytes of shared memory per block on CUDA, more than this device allows (", optin, ")");
  SOFTDEC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
}

// ------------------------------------------------------------------ block radix select
// The `k`-th element (1-based) of keys[0:n] in descending order when `largest`,
// ascending otherwise. Returns the key; *n_before = elements strictly before it.
template <int THREADS, typename KeyFn>
__device__ uint32_t block_radix_select(int64_t n, int64_t k, bool largest, KeyFn key_of, int64_t* n_before,
                                       uint32_t* hist /* [256] shared */, uint32_t* shared_word,
                                       int64_t* shared_count) {
  uint32_t prefix = 0, mask = 0;
  int64_t before = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += THREADS) hist[i] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += THREADS) {
      uint32_t key = key_of(i);
      if (!largest) key = ~key;
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xff], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t acc = before;
      int bin = 255;
      for (; bin > 0; --bin) {
        if (acc + hist[bin] >= k) break;
        acc += hist[bin];
      }
      *shared_word = static_cast<uint32_t>(bin);
      *shared_count = acc;
    }
    __syncthreads();
    prefix |= (*shared_word) << shift;
    mask |= 0xffu << shift;
    before = *shared_count;
    __syncthreads();
  }
  *n_before = before;
  return largest ? prefix : ~prefix;
}

inline bool vec_ok(const Tensor& t, int64_t d, int64_t esz) {
  const int64_t e = 16 / esz;
  if (d % e) return false;
  for (int i = 0; i < 3; ++i)
    if (t.stride(i) % e) return false;
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

}  // namespace attn_cuda
}  // namespace softdec
