// CUDA backend of the sampling family: the same draws as the CPU backend.
//
// sample: three kernels.
//   1. prepare (one block per row): skipped work for plain rows; otherwise the
//      row's max / argmax / validity and, for top-k / top-p, the cut of
//      include/softdec/filter.h by block-parallel radix selection (256-bucket
//      shared-memory histograms of order_key, count or mass mode).
//   2. noise (grid rows x splits): Gumbel-max over the kept tokens of a slice;
//      each thread takes 4-token groups = one Philox block (element i of the
//      (seed, offset) stream is lane i % 4 of block i / 4), 16-byte loads where
//      the row is aligned; keys fma(x, 1/T, -flog(-flog(u))) exactly as on CPU.
//   3. merge (one thread per row): partial argmax states -> ids, valid.
// gumbel_softmax: one block per row, online max / sum then a second pass that
// recomputes the noise and writes the probabilities.
// Filter ops: one block per row with the same radix selection.
#include "cuda_common.cuh"
#include "../dispatch.h"
#include "../sampling_checks.h"
#include "softdec/filter.h"
#include "softdec/philox.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace softdec {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kNoKeep = 0x7fffffffffffffffLL;

__device__ __forceinline__ float ninf() { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ float pinf() { return __int_as_float(0x7f800000); }

template <class T>
__device__ __forceinline__ float ld(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// Four consecutive tokens [4g, 4g + 4) of a row as floats (-inf past V).
template <class T>
__device__ __forceinline__ void load4(const T* row, int64_t g, int64_t V, bool aligned, float v[4]) {
  const int64_t i = 4 * g;
  if (aligned && i + 4 <= V) {
    if constexpr (sizeof(T) == 4) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(row + i));
      v[0] = q.x;
      v[1] = q.y;
      v[2] = q.z;
      v[3] = q.w;
    } else {
      const uint2 q = __ldg(reinterpret_cast<const uint2*>(row + i));
      const T* h = reinterpret_cast<const T*>(&q);
#pragma unroll
      for (int l = 0; l < 4; ++l) v[l] = static_cast<float>(h[l]);
    }
    return;
  }
#pragma unroll
  for (int l = 0; l < 4; ++l) v[l] = (i + l < V) ? static_cast<float>(row[i + l]) : ninf();
}

template <class T>
__host__ __device__ __forceinline__ bool row_aligned(const T* row, int64_t stride) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(row);
  const uintptr_t need = 4 * sizeof(T);
  return (a % need) == 0 && ((stride * sizeof(T)) % need) == 0;
}

// ------------------------------------------------------------------ block reductions

struct Arg {
  float key;
  int64_t idx;
};

__device__ __forceinline__ void arg_take(Arg& a, float k, int64_t i) {
  if (i < 0) return;
  if (a.idx < 0 || k > a.key || (k == a.key && i < a.idx)) {
    a.key = k;
    a.idx = i;
  }
}

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
    Arg b{ninf(), -1};
    for (int j = 0; j < kWarps; ++j) arg_take(b, sk[j], si[j]);
    sk[0] = b.key;
    si[0] = b.idx;
  }
  __syncthreads();
  const Arg r{sk[0], si[0]};
  __syncthreads();
  return r;
}

template <class V>
__device__ V block_sum(V v) {
  __shared__ V s[kWarps];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) s[w] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    V t = 0;
    for (int j = 0; j < kWarps; ++j) t += s[j];
    s[0] = t;
  }
  __syncthreads();
  const V r = s[0];
  __syncthreads();
  return r;
}

__device__ int block_or(int v) {
  v = __reduce_or_sync(0xffffffffu, static_cast<unsigned>(v));
  __shared__ int s[kWarps];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) s[w] = v;
  __syncthreads();
  int r = 0;
  for (int j = 0; j < kWarps; ++j) r |= s[j];
  __syncthreads();
  return r;
}

constexpr int kNan = 1, kPinf = 2, kFinite = 4;

__device__ __forceinline__ int flags_of(float x) {
  return (x != x ? kNan : 0) | (x == pinf() ? kPinf : 0) | ((x > ninf() && x < pinf()) ? kFinite : 0);
}
__device__ __forceinline__ bool flags_valid(int f) { return !(f & kNan) && !(f & kPinf) && (f & kFinite); }

// ------------------------------------------------------------------ block radix selection

__device__ __forceinline__ bool in_prefix(float x, int64_t i, float cv, int64_t ci) {
  return x > cv || (x == cv && i <= ci);
}

// filter::detail::select_nth, block-parallel: the first token of the order (within the
// prefix (cv, ci)) at which the running count reaches n, or the running mass reaches target.
template <class Load, class MassOf>
__device__ void select_nth_block(const Load& load, int64_t V, float cv, int64_t ci, bool mass_mode,
                                 int64_t n, double target, const MassOf& mass_of, float* out_v,
                                 int64_t* out_i) {
  __shared__ int hc[256];
  __shared__ double hm[256];
  __shared__ uint32_t s_prefix, s_mask;
  __shared__ int64_t s_rem, s_found, s_seen, s_need;
  __shared__ double s_macc;
  __shared__ int s_fail, s_warp;
  __shared__ int wc[kWarps];
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_mask = 0;
    s_rem = n;
    s_macc = 0.0;
    s_fail = 0;
  }
  __syncthreads();
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      hc[b] = 0;
      hm[b] = 0.0;
    }
    __syncthreads();
    const uint32_t prefix = s_prefix, mask = s_mask;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const float x = load(i);
      if (!(x > ninf()) || !in_prefix(x, i, cv, ci)) continue;
      const uint32_t k = filter::order_key(x);
      if ((k & mask) != prefix) continue;
      const int b = static_cast<int>((k >> shift) & 0xffu);
      atomicAdd(&hc[b], 1);
      if (mass_mode) atomicAdd(&hm[b], mass_of(x));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int chosen = -1, last = -1;
      double macc = s_macc;
      int64_t rem = s_rem;
      for (int b = 255; b >= 0; --b) {
        if (hc[b] == 0) continue;
        last = b;
        if (mass_mode) {
          if (macc + hm[b] >= target) {
            chosen = b;
            break;
          }
          macc += hm[b];
        } else {
          if (hc[b] >= rem) {
            chosen = b;
            break;
          }
          rem -= hc[b];
        }
      }
      if (chosen < 0 && last >= 0) {
        chosen = last;
        if (mass_mode) macc -= hm[chosen];
        else rem += hc[chosen];
      }
      if (chosen < 0) {
        s_fail = 1;
      } else {
        s_prefix |= static_cast<uint32_t>(chosen) << shift;
        s_mask |= 0xffu << shift;
        s_macc = macc;
        s_rem = rem;
      }
    }
    __syncthreads();
    if (s_fail) {
      *out_v = cv;
      *out_i = ci;
      return;
    }
  }
  const float value = filter::key_float(s_prefix);
  int64_t cnt = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = load(i);
    if (x > ninf() && x == value && in_prefix(x, i, cv, ci)) ++cnt;
  }
  const int64_t ties = block_sum<long long>(static_cast<long long>(cnt));
  int64_t take;
  if (mass_mode) {
    const double e = mass_of(value);
    take = ties;
    if (e > 0.0) {
      const double need = (target - s_macc) / e;
      int64_t t = static_cast<int64_t>(need);
      if (static_cast<double>(t) < need) ++t;
      take = t;
    }
  } else {
    take = s_rem;
  }
  if (take < 1) take = 1;
  if (take > ties) take = ties;
  if (threadIdx.x == 0) {
    s_found = -1;
    s_seen = 0;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  for (int64_t base = 0; base < V; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    bool f = false;
    if (i < V) {
      const float x = load(i);
      f = x > ninf() && x == value && in_prefix(x, i, cv, ci);
    }
    const unsigned bal = __ballot_sync(0xffffffffu, f);
    if (lane == 0) wc[w] = __popc(bal);
    __syncthreads();
    if (threadIdx.x == 0) {
      s_warp = -1;
      int64_t seen = s_seen;
      for (int j = 0; j < kWarps; ++j) {
        if (seen + wc[j] >= take) {
          s_warp = j;
          s_need = take - seen;
          break;
        }
        seen += wc[j];
      }
      s_seen = seen;
    }
    __syncthreads();
    if (s_warp == w && lane == 0) {
      unsigned b = bal;
      for (int64_t j = 1; j < s_need; ++j) b &= b - 1;
      s_found = base + 32 * w + (__ffs(b) - 1);
    }
    __syncthreads();
    if (s_found >= 0) break;
  }
  *out_v = value;
  *out_i = s_found >= 0 ? s_found : ci;
  __syncthreads();
}

// ------------------------------------------------------------------ sample

struct Plan {
  int32_t mode;   // 0 plain (validity from the noise pass), 1 filtered, 2 done
  int32_t valid;
  float cv;
  float m;
  float it;
  float lmp;
  int64_t ci;
  int64_t argmax;
};

template <class T>
__global__ void __launch_bounds__(kThreads) prepare_kernel(const T* __restrict__ logits, int64_t rs, int64_t V,
                                                           const float* __restrict__ temps,
                                                           const int64_t* __restrict__ topk,
                                                           const float* __restrict__ topp,
                                                           const float* __restrict__ minp, Plan* plans) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * rs;
  const float t = temps[r];
  const int64_t k = topk[r];
  const float tp = topp[r], mp = minp[r];
  const bool klim = k > 0 && k < V;
  if (t > 0.0f && !klim && !(tp < 1.0f) && !(mp > 0.0f)) {
    if (threadIdx.x == 0) {
      Plan p{};
      p.mode = 0;
      p.it = 1.0f / t;
      p.cv = ninf();
      p.ci = kNoKeep;
      p.m = 0.0f;
      p.lmp = ninf();
      plans[r] = p;
    }
    return;
  }
  // stats
  Arg a{ninf(), -1};
  int fl = 0;
  long long finite = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = ld(row, i);
    fl |= flags_of(x);
    if (x > ninf()) {
      arg_take(a, x, i);
      if (x < pinf()) ++finite;
    }
  }
  a = block_argmax(a);
  fl = block_or(fl);
  finite = block_sum<long long>(finite);
  const bool valid = flags_valid(fl) && a.idx >= 0 && t >= 0.0f;
  if (!valid || !(t > 0.0f)) {
    if (threadIdx.x == 0) {
      Plan p{};
      p.mode = 2;
      p.valid = valid ? 1 : 0;
      p.argmax = valid ? a.idx : 0;
      plans[r] = p;
    }
    return;
  }
  const float m = a.key, it = 1.0f / t;
  auto load = [row](int64_t i) { return ld(row, i); };
  auto mass_of = [m, it](float x) -> double { return static_cast<double>(filter::token_mass(x, m, it)); };
  float cv = ninf();
  int64_t ci = kNoKeep;
  if (k > 0 && k < finite) select_nth_block(load, V, cv, ci, false, k, 0.0, mass_of, &cv, &ci);
  if (tp < 1.0f) {
    double tot = 0.0;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const float x = ld(row, i);
      if (x > ninf() && in_prefix(x, i, cv, ci)) tot += mass_of(x);
    }
    tot = block_sum<double>(tot);
    const double target = static_cast<double>(tp) * tot;
    if (target <= 0.0) {
      cv = m;
      ci = a.idx;
    } else {
      select_nth_block(load, V, cv, ci, true, 0, target, mass_of, &cv, &ci);
    }
  }
  if (threadIdx.x == 0) {
    Plan p{};
    p.mode = 1;
    p.valid = 1;
    p.cv = cv;
    p.ci = ci;
    p.m = m;
    p.it = it;
    p.lmp = filter::log_min_p_of(mp);
    p.argmax = a.idx;
    plans[r] = p;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) noise_kernel(const T* __restrict__ logits, int64_t rs, int64_t V,
                                                         const Plan* __restrict__ plans,
                                                         const int64_t* __restrict__ seeds,
                                                         const int64_t* __restrict__ offsets, int splits,
                                                         float* __restrict__ pkey, int64_t* __restrict__ pidx,
                                                         int32_t* __restrict__ pflags) {
  const int64_t r = blockIdx.x;
  const int s = blockIdx.y;
  const Plan p = plans[r];
  const int64_t w = r * splits + s;
  if (p.mode == 2) {
    if (threadIdx.x == 0) {
      pkey[w] = ninf();
      pidx[w] = -1;
      pflags[w] = 0;
    }
    return;
  }
  const T* row = logits + r * rs;
  const bool aligned = row_aligned(row, rs);
  const uint64_t seed = static_cast<uint64_t>(seeds[r]), off = static_cast<uint64_t>(offsets[r]);
  const int64_t groups = (V + 3) / 4;
  const int64_t g0 = groups * s / splits, g1 = groups * (s + 1) / splits;
  const bool has_cut = p.cv > ninf();
  Arg best{ninf(), -1};
  int fl = 0;
  for (int64_t g = g0 + threadIdx.x; g < g1; g += blockDim.x) {
    float v[4];
    load4(row, g, V, aligned, v);
    bool keep[4];
    bool any = false;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t i = 4 * g + l;
      if (i < V) fl |= flags_of(v[l]);
      bool k = v[l] > ninf() && i < V;
      if (has_cut) k = k && in_prefix(v[l], i, p.cv, p.ci);
      k = k && (v[l] - p.m) * p.it >= p.lmp;
      keep[l] = k;
      any |= k;
    }
    if (!any) continue;
    const philox::U32x4 u = philox::block(seed, off, static_cast<uint64_t>(g));
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      if (!keep[l]) continue;
      const float gn = filter::gumbel(philox::to_unit_float(u.v[l]));
      arg_take(best, __fmaf_rn(v[l], p.it, gn), 4 * g + l);
    }
  }
  best = block_argmax(best);
  fl = block_or(fl);
  if (threadIdx.x == 0) {
    pkey[w] = best.key;
    pidx[w] = best.idx;
    pflags[w] = fl;
  }
}

__global__ void merge_kernel(const Plan* __restrict__ plans, int64_t B, int64_t V, int splits,
                             const float* __restrict__ pkey, const int64_t* __restrict__ pidx,
                             const int32_t* __restrict__ pflags, int64_t* __restrict__ ids,
                             bool* __restrict__ valid) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= B) return;
  const Plan p = plans[r];
  int64_t id = 0;
  bool ok = false;
  if (p.mode == 2) {
    ok = p.valid != 0;
    id = ok ? p.argmax : 0;
  } else {
    Arg b{ninf(), -1};
    int fl = 0;
    for (int s = 0; s < splits; ++s) {
      arg_take(b, pkey[r * splits + s], pidx[r * splits + s]);
      fl |= pflags[r * splits + s];
    }
    if (p.mode == 0) {
      ok = flags_valid(fl) && b.idx >= 0;
      id = ok ? b.idx : 0;
    } else {
      ok = true;
      id = b.idx >= 0 ? b.idx : p.argmax;
    }
  }
  ids[r] = (id >= 0 && id < V) ? id : 0;
  valid[r] = ok;
}

int sm_count(int device) {
  int n = 0;
  SOFTDEC_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n > 0 ? n : 1;
}

std::tuple<Tensor, Tensor> sample_cuda(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p,
                                       Tensor min_p, Tensor seed, Tensor offset) {
  sampling_checks::check_sample_args(logits, temperature, top_k, top_p, min_p, seed, offset);
  const int64_t B = logits.size(0), V = logits.size(1);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor ids = new_empty(logits, {B}, ScalarType::Long);
  Tensor valid = new_empty(logits, {B}, ScalarType::Bool);
  if (B == 0) return {ids, valid};
  const int64_t groups = (V + 3) / 4;
  const int64_t want = (2 * static_cast<int64_t>(sm_count(logits.get_device())) + B - 1) / B;
  const int splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, groups / kThreads + 1)));
  Tensor plans = new_empty(logits, {B * static_cast<int64_t>(sizeof(Plan))}, ScalarType::Byte);
  Tensor pkey = new_empty(logits, {B * splits}, ScalarType::Float);
  Tensor pidx = new_empty(logits, {B * splits}, ScalarType::Long);
  Tensor pfl = new_empty(logits, {B * splits}, ScalarType::Int);
  cudaStream_t stream = current_stream(logits);
  Plan* pl = reinterpret_cast<Plan*>(plans.mutable_data_ptr());
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    prepare_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        x, rs, V, temperature.const_data_ptr<float>(), top_k.const_data_ptr<int64_t>(),
        top_p.const_data_ptr<float>(), min_p.const_data_ptr<float>(), pl);
    SOFTDEC_CUDA_LAUNCH_CHECK();
    noise_kernel<scalar_t><<<dim3(static_cast<unsigned>(B), static_cast<unsigned>(splits)), kThreads, 0, stream>>>(
        x, rs, V, pl, seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(), splits,
        pkey.mutable_data_ptr<float>(), pidx.mutable_data_ptr<int64_t>(), pfl.mutable_data_ptr<int32_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  merge_kernel<<<static_cast<unsigned>((B + 255) / 256), 256, 0, stream>>>(
      pl, B, V, splits, pkey.const_data_ptr<float>(), pidx.const_data_ptr<int64_t>(),
      pfl.const_data_ptr<int32_t>(), ids.mutable_data_ptr<int64_t>(), valid.mutable_data_ptr<bool>());
  SOFTDEC_CUDA_LAUNCH_CHECK();
  return {ids, valid};
}

// ------------------------------------------------------------------ gumbel_softmax (dense)

struct MS {
  float m;   // max of s
  float s;   // sum exp((x - m) * it)
};


template <class T, class O>
__global__ void __launch_bounds__(kThreads) gumbel_softmax_kernel(const T* __restrict__ logits, int64_t rs,
                                                                  int64_t V, const float* __restrict__ taus,
                                                                  const int64_t* __restrict__ seeds,
                                                                  const int64_t* __restrict__ offsets,
                                                                  O* __restrict__ out,
                                                                  int64_t* __restrict__ am) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * rs;
  O* orow = out + r * V;
  const bool aligned = row_aligned(row, rs);
  const uint64_t seed = static_cast<uint64_t>(seeds[r]), off = static_cast<uint64_t>(offsets[r]);
  const float it = 1.0f / taus[r];
  const int64_t groups = (V + 3) / 4;
  MS acc{ninf(), 0.0f};
  Arg best{ninf(), -1};
  int fl = 0;
  for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
    float v[4];
    load4(row, g, V, aligned, v);
    const philox::U32x4 u = philox::block(seed, off, static_cast<uint64_t>(g));
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t i = 4 * g + l;
      if (i >= V) break;
      fl |= flags_of(v[l]);
      if (!(v[l] > ninf())) continue;
      const float s = v[l] + filter::gumbel(philox::to_unit_float(u.v[l]));
      arg_take(best, s, i);
      // online softmax sum, rescaled when the running max grows
      if (s > acc.m) {
        acc.s = (acc.m > ninf() ? acc.s * filter::fexp((acc.m - s) * it) : 0.0f) + 1.0f;
        acc.m = s;
      } else {
        acc.s += filter::fexp((s - acc.m) * it);
      }
    }
  }
  best = block_argmax(best);
  fl = block_or(fl);
  // block merge of (m, s): reduce the max first, then rescaled sums
  const float M = best.key;
  const float mine = acc.m > ninf() ? acc.s * filter::fexp((acc.m - M) * it) : 0.0f;
  const double tot = block_sum<double>(static_cast<double>(mine));
  const bool ok = flags_valid(fl) && best.idx >= 0;
  const float scale = ok ? static_cast<float>(1.0 / tot) : 0.0f;
  if (threadIdx.x == 0) am[r] = ok ? best.idx : 0;
  for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
    float v[4];
    load4(row, g, V, aligned, v);
    const philox::U32x4 u = philox::block(seed, off, static_cast<uint64_t>(g));
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t i = 4 * g + l;
      if (i >= V) break;
      float y = 0.0f;
      if (ok && v[l] > ninf()) {
        const float s = v[l] + filter::gumbel(philox::to_unit_float(u.v[l]));
        y = filter::fexp((s - M) * it) * scale;
      }
      orow[i] = static_cast<O>(y);
    }
  }
}

std::tuple<Tensor, Tensor> gumbel_softmax_cuda(Tensor logits, Tensor tau, Tensor seed, Tensor offset) {
  sampling_checks::check_gumbel_args(logits, tau, seed, offset);
  const int64_t B = logits.size(0), V = logits.size(1);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor out = new_empty(logits, {B, V}, logits.scalar_type());
  Tensor am = new_empty(logits, {B}, ScalarType::Long);
  if (B == 0 || V == 0) return {out, am};
  cudaStream_t stream = current_stream(logits);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    gumbel_softmax_kernel<scalar_t, scalar_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        reinterpret_cast<const scalar_t*>(logits.const_data_ptr()), logits.stride(0), V,
        tau.const_data_ptr<float>(), seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(),
        reinterpret_cast<scalar_t*>(out.mutable_data_ptr()), am.mutable_data_ptr<int64_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return {out, am};
}

// ------------------------------------------------------------------ gumbel_softmax (top-k sparse)

constexpr int kMaxSortK = 1024;

template <class T>
__global__ void __launch_bounds__(kThreads) gumbel_topk_kernel(const T* __restrict__ logits, int64_t rs, int64_t V,
                                                               int64_t k, const float* __restrict__ taus,
                                                               const int64_t* __restrict__ seeds,
                                                               const int64_t* __restrict__ offsets,
                                                               float* __restrict__ w, int64_t* __restrict__ ids) {
  __shared__ float sv[kMaxSortK];
  __shared__ int64_t si[kMaxSortK];
  __shared__ int s_n;
  const int64_t r = blockIdx.x;
  const T* row = logits + r * rs;
  const uint64_t seed = static_cast<uint64_t>(seeds[r]), off = static_cast<uint64_t>(offsets[r]);
  auto pert = [row, seed, off](int64_t i) -> float {
    const float x = ld(row, i);
    if (!(x > ninf())) return x;
    return x + filter::gumbel(philox::uniform(seed, off, static_cast<uint64_t>(i)));
  };
  int fl = 0;
  long long finite = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = ld(row, i);
    fl |= flags_of(x);
    finite += (x > ninf() && x < pinf()) ? 1 : 0;
  }
  fl = block_or(fl);
  finite = block_sum<long long>(finite);
  float* wr = w + r * k;
  int64_t* ir = ids + r * k;
  if (!flags_valid(fl)) {
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
      wr[j] = 0.0f;
      ir[j] = 0;
    }
    return;
  }
  float cv = ninf();
  int64_t ci = kNoKeep;
  auto no_mass = [](float) -> double { return 0.0; };
  if (k < finite) select_nth_block(pert, V, cv, ci, false, k, 0.0, no_mass, &cv, &ci);
  if (threadIdx.x == 0) s_n = 0;
  for (int j = threadIdx.x; j < kMaxSortK; j += blockDim.x) {
    sv[j] = ninf();
    si[j] = kNoKeep;
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float s = pert(i);
    if (s > ninf() && in_prefix(s, i, cv, ci)) {
      const int slot = atomicAdd(&s_n, 1);
      if (slot < kMaxSortK) {
        sv[slot] = s;
        si[slot] = i;
      }
    }
  }
  __syncthreads();
  // bitonic sort of kMaxSortK entries, order: value descending, index ascending
  for (int size = 2; size <= kMaxSortK; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < kMaxSortK / 2; t += blockDim.x) {
        const int lo = 2 * t - (t & (stride - 1));
        const int hi = lo + stride;
        const bool desc = (lo & size) == 0;
        const bool hi_first = filter::before(sv[hi], si[hi], sv[lo], si[lo]);
        if (hi_first == desc) {
          const float tv = sv[lo];
          sv[lo] = sv[hi];
          sv[hi] = tv;
          const int64_t ti = si[lo];
          si[lo] = si[hi];
          si[hi] = ti;
        }
      }
      __syncthreads();
    }
  }
  if (threadIdx.x == 0) {
    const int n = s_n < k ? s_n : static_cast<int>(k);
    const float it = 1.0f / taus[r];
    double tot = 0.0;
    for (int j = 0; j < n; ++j) tot += filter::fexp((sv[j] - sv[0]) * it);
    for (int64_t j = 0; j < k; ++j) {
      if (j < n) {
        ir[j] = si[j];
        wr[j] = static_cast<float>(filter::fexp((sv[j] - sv[0]) * it) / tot);
      } else {
        ir[j] = si[0];
        wr[j] = 0.0f;
      }
    }
  }
}

std::tuple<Tensor, Tensor> gumbel_softmax_topk_cuda(Tensor logits, Tensor tau, int64_t k, Tensor seed,
                                                    Tensor offset) {
  sampling_checks::check_gumbel_args(logits, tau, seed, offset);
  sampling_checks::check_gumbel_topk_k(logits, k);
  const int64_t B = logits.size(0), V = logits.size(1);
  SOFTDEC_CHECK(k <= kMaxSortK, "k must be <= ", kMaxSortK, " on CUDA, got ", k);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor w = new_empty(logits, {B, k}, ScalarType::Float);
  Tensor ids = new_empty(logits, {B, k}, ScalarType::Long);
  if (B == 0) return {w, ids};
  cudaStream_t stream = current_stream(logits);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    gumbel_topk_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        reinterpret_cast<const scalar_t*>(logits.const_data_ptr()), logits.stride(0), V, k,
        tau.const_data_ptr<float>(), seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(),
        w.mutable_data_ptr<float>(), ids.mutable_data_ptr<int64_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return {w, ids};
}

// ------------------------------------------------------------------ filter ops

template <class T>
__global__ void __launch_bounds__(kThreads) top_k_mask_kernel(const T* __restrict__ logits, int64_t rs, int64_t V,
                                                              const int64_t* __restrict__ topk, T* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * rs;
  T* orow = out + r * V;
  const int64_t k = topk[r];
  auto load = [row](int64_t i) -> float {
    const float x = ld(row, i);
    return x != x ? ninf() : x;
  };
  long long cand = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) cand += load(i) > ninf() ? 1 : 0;
  cand = block_sum<long long>(cand);
  float cv = ninf();
  int64_t ci = kNoKeep;
  auto no_mass = [](float) -> double { return 0.0; };
  if (k > 0 && k < cand) select_nth_block(load, V, cv, ci, false, k, 0.0, no_mass, &cv, &ci);
  const bool cut = k > 0 && k < V;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = ld(row, i);
    const bool keep = x == x && (!cut || cv == ninf() ? true : in_prefix(x, i, cv, ci));
    orow[i] = keep ? row[i] : static_cast<T>(ninf());
  }
}

template <class T, bool kTopP>
__global__ void __launch_bounds__(kThreads) renorm_kernel(const T* __restrict__ probs, int64_t rs, int64_t V,
                                                          const float* __restrict__ param, T* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const T* row = probs + r * rs;
  T* orow = out + r * V;
  int bad = 0;
  Arg a{ninf(), -1};
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = ld(row, i);
    if (!(x >= 0.0f) || !(x < pinf())) bad = 1;
    if (x > 0.0f) arg_take(a, x, i);
  }
  bad = block_or(bad);
  a = block_argmax(a);
  const bool valid = !bad && a.idx >= 0;
  float cv = ninf();
  int64_t ci = kNoKeep;
  float min_prob = 0.0f;
  if (valid) {
    auto load = [row](int64_t i) -> float {
      const float x = ld(row, i);
      return x > 0.0f ? x : ninf();
    };
    auto mass_of = [](float x) -> double { return static_cast<double>(x); };
    if (kTopP) {
      const float tp = param[r];
      if (tp < 1.0f) {
        double tot = 0.0;
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
          const float x = load(i);
          if (x > ninf()) tot += x;
        }
        tot = block_sum<double>(tot);
        const double target = static_cast<double>(tp) * tot;
        if (target <= 0.0) {
          cv = a.key;
          ci = a.idx;
        } else {
          select_nth_block(load, V, cv, ci, true, 0, target, mass_of, &cv, &ci);
        }
      }
    } else {
      min_prob = param[r] * a.key;
    }
  }
  double norm = 0.0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = ld(row, i);
    if (valid && x > 0.0f && in_prefix(x, i, cv, ci) && x >= min_prob) norm += x;
  }
  norm = block_sum<double>(norm);
  const float scale = (valid && norm > 0.0) ? static_cast<float>(1.0 / norm) : 0.0f;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = ld(row, i);
    const bool keep = valid && x > 0.0f && in_prefix(x, i, cv, ci) && x >= min_prob;
    orow[i] = static_cast<T>(keep ? x * scale : 0.0f);
  }
}

Tensor top_k_mask_logits_cuda(Tensor logits, Tensor top_k) {
  sampling_checks::check_top_k_mask_args(logits, top_k);
  const int64_t B = logits.size(0), V = logits.size(1);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor out = new_empty(logits, {B, V}, logits.scalar_type());
  if (B == 0 || V == 0) return out;
  cudaStream_t stream = current_stream(logits);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    top_k_mask_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        reinterpret_cast<const scalar_t*>(logits.const_data_ptr()), logits.stride(0), V,
        top_k.const_data_ptr<int64_t>(), reinterpret_cast<scalar_t*>(out.mutable_data_ptr()));
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

template <bool kTopP>
Tensor renorm_cuda(Tensor probs, Tensor param, const char* pname) {
  sampling_checks::check_renorm_args(probs, param, pname);
  const int64_t B = probs.size(0), V = probs.size(1);
  torch::stable::accelerator::DeviceGuard guard(probs.get_device_index());
  Tensor out = new_empty(probs, {B, V}, probs.scalar_type());
  if (B == 0 || V == 0) return out;
  cudaStream_t stream = current_stream(probs);
  SOFTDEC_DISPATCH_FLOAT(probs.scalar_type(), "probs", scalar_t, [&] {
    renorm_kernel<scalar_t, kTopP><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        reinterpret_cast<const scalar_t*>(probs.const_data_ptr()), probs.stride(0), V,
        param.const_data_ptr<float>(), reinterpret_cast<scalar_t*>(out.mutable_data_ptr()));
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

Tensor top_p_renorm_probs_cuda(Tensor probs, Tensor top_p) { return renorm_cuda<true>(probs, top_p, "top_p"); }
Tensor min_p_renorm_probs_cuda(Tensor probs, Tensor min_p) { return renorm_cuda<false>(probs, min_p, "min_p"); }

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("sample", TORCH_BOX(&softdec::sample_cuda));
  m.impl("gumbel_softmax", TORCH_BOX(&softdec::gumbel_softmax_cuda));
  m.impl("gumbel_softmax_topk", TORCH_BOX(&softdec::gumbel_softmax_topk_cuda));
  m.impl("top_k_mask_logits", TORCH_BOX(&softdec::top_k_mask_logits_cuda));
  m.impl("top_p_renorm_probs", TORCH_BOX(&softdec::top_p_renorm_probs_cuda));
  m.impl("min_p_renorm_probs", TORCH_BOX(&softdec::min_p_renorm_probs_cuda));
}
