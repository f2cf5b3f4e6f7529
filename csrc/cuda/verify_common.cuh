// Device building blocks of the verification kernels (loads, block reductions, a row's
// first pass and unfiltered RowFilter, p and sorted-list lookups): used by verify.cu and verify_tree.cu.
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

// ------------------------------------------------------------------ a row's first pass

// Pass 1 of a row (verify's positions, verify_tree's nodes): NaN check, max and argmax
// (the larger logit, the lower index on ties) over x[0, V), block-wide with W warps;
// every thread gets the same result. ok: the row can be verified (no NaN, some logit
// above -inf, max not +inf). verify.cu writes the same loop out (registers: see there).
struct RowMax {
  KI mx;
  bool ok;
};

template <int W, typename T>
__device__ __forceinline__ RowMax block_row_max(const T* x, int64_t V, bool vec, KI* red) {
  const int64_t nblk = (V + 3) / 4;
  KI best{-filter::inf_f(), -1};
  bool nan = false;
  for (int64_t blk = threadIdx.x; blk < nblk; blk += W * 32) {
    float v[4];
    load4(x, blk, V, vec, -filter::inf_f(), v);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (v[e] != v[e]) nan = true;
      else if (v[e] > best.k) best = KI{v[e], 4 * blk + e};
    }
  }
  nan = __syncthreads_or(nan);
  const KI mx = block_best<W>(best, red);
  return RowMax{mx, !nan && mx.i >= 0 && mx.k != filter::inf_f()};
}

// The RowFilter of a row that no block-wide top-k / top-p cut applies to (one thread):
// invalid (!r.ok); greedy when T = 0 or argmax_only (method "greedy": the kept set is
// not used, only f.argmax); else every finite logit at temperature temp (min-p by
// filter::kept through log_min_p).
__device__ __forceinline__ filter::RowFilter unfiltered_row(const RowMax& r, float temp, float min_p,
                                                            bool argmax_only, int64_t V) {
  filter::RowFilter f;
  f.valid = r.ok ? 1 : 0;
  f.max_logit = f.valid ? r.mx.k : 0.0f;
  f.argmax = f.valid ? r.mx.i : 0;
  f.log_min_p = filter::log_min_p_of(min_p);
  if (f.valid && (!(temp > 0.0f) || argmax_only)) {
    filter::set_greedy(f);
  } else if (f.valid) {
    f.inv_temp = 1.0f / temp;
    f.cut_value = -filter::inf_f();
    f.cut_index = V;
  }
  return f;
}

// ------------------------------------------------------------------ small lookups

// p(i) of the filtered target (inv_z: 1 / its mass): 0 off the kept set, 1 for greedy.
// Thread 0's finish of a target's mass pass (verify.cu, verify_tree.cu): Z from the block's exact
// digit sums (filter.h MassSum), norm / log_norm unless the candidate rule's finish_from_sorted set
// them already (the same Z), inv_z = float(1 / Z) (filter::inv_norm: the CPU's bits) and the
// entropy log Z - hs / Z (hs: the block's sum of mass * scaled logit; a tolerance quantity).
__device__ __forceinline__ void finish_target_norm(const filter::MassSum& tot, double hs, bool final_norm,
                                                   filter::RowFilter& f, float& inv_z, double& entropy) {
  const double Z = tot.value();
  if (!final_norm) {
    f.norm = Z;
    f.log_norm = ::log(Z);
  }
  inv_z = filter::inv_norm(f.norm);
  entropy = ::log(Z) - hs / Z;
}

template <typename T>
__device__ __forceinline__ float p_of(const T* x, const filter::RowFilter& f, float inv_z, int64_t i) {
  const float v = to_f(x, i);
  if (!filter::kept(f, v, i)) return 0.0f;
  if (f.greedy) return 1.0f;
  return filter::fexp((v - f.max_logit) * f.inv_temp) * inv_z;
}

// Whether x is in the sorted a[0, n) (binary search).
__device__ __forceinline__ bool in_sorted(const int64_t* a, int64_t n, int64_t x) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (a[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo < n && a[lo] == x;
}

}  // namespace vcuda
}  // namespace softdec
