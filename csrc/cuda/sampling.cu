// CUDA backend of the sampling family: the same draws as the CPU backend.
//
// sample: exact draw by inversion with one uniform per row, u =
// philox::uniform53(seed, offset); CPU, CUDA and softdec.reference.sample_exact
// pick the same token because the order of every sum is fixed (csrc/cpu/
// sampling_kernels.h, "inverse-CDF draw (sample)"). Masses draw_mass =
// 2^((x - max) * (1/T) log2 e) (filter::fexp2, explicit FMAs), 0 if not kept.
//   1. prepare (one block per row): max / argmax / validity; greedy (T = 0) and
//      invalid rows are done; top-k rows with 0 < k < V, k <= 2048 are drawn
//      here by the candidate rule (count radix selection of the k-th token,
//      ordered compaction of the candidates into shared memory, bitonic sort
//      for top-p, then a sequential double walk in vocabulary order); the other
//      rows get the cut of include/softdec/filter.h (block-parallel radix
//      selection for k > 2048 and top-p, 256-bucket shared-memory histograms
//      of counts and fixed-point masses: 32-bit integer atomics, exact sums,
//      the CPU's cut bit for bit; no floating-point atomics).
//   2. block masses (grid rows x splits, 128 threads): every thread loads and
//      computes masses (16-byte loads) into shared memory, 8 x 1024 tokens per
//      step; 16 lanes per 1024-token block add them in float in token order,
//      then in double in lane order -> a [B, ceil(V/1024)] double scratch.
//   3. draw (one block per row): thread 0 walks the block sums, the block
//      recomputes the chosen block's masses, thread 0 walks them.
// gumbel_softmax: one block per row, online max / sum then a second pass that
// recomputes the noise and writes the probabilities.
// Filter ops: one block per row with the same radix selection.
#include "block_argmax.cuh"
#include "cuda_common.cuh"
#include "fixed_hist.cuh"
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

// Arg, arg_take, block_argmax: csrc/cuda/block_argmax.cuh (shared with distributed.cu).
using block_arg::Arg;
using block_arg::arg_take;
__device__ __forceinline__ Arg block_argmax(Arg a) { return block_arg::block_argmax<kWarps>(a); }

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

// hist_add: csrc/cuda/fixed_hist.cuh (warp-aggregated integer histograms of counts and
// fixed-point masses; shared with distributed.cu).
using fixed_hist::hist_add;

// filter::detail::select_nth, block-parallel: the first token of the order (within the
// prefix (cv, ci)) at which the running count reaches n, or the running mass reaches target.
// Mass mode: mass_of(x) is the fixed-point mass (filter.h "top-p masses in fixed point"),
// target = filter::fixed_target(top_p, total); histograms of exact integer sums, so the
// cut is the CPU's (filter::detail::select_nth / top_p_cut) bit for bit.
// kMass: mass mode (a template parameter: the count-mode callers carry no mass code).
template <bool kMass, class Load, class MassOf>
__device__ void select_nth_block(const Load& load, int64_t V, float cv, int64_t ci, int64_t n, uint64_t target,
                                 const MassOf& mass_of, float* out_v, int64_t* out_i) {
  constexpr bool mass_mode = kMass;
  __shared__ int hc[256];
  __shared__ uint32_t hlo[256], hhi[256];
  __shared__ uint32_t s_prefix, s_mask;
  __shared__ int64_t s_rem, s_found, s_seen, s_need;
  __shared__ uint64_t s_macc;
  __shared__ int s_fail, s_warp;
  __shared__ int wc[kWarps];
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_mask = 0;
    s_rem = n;
    s_macc = 0;
    s_fail = 0;
  }
  __syncthreads();
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      hc[b] = 0;
      hlo[b] = 0;
      hhi[b] = 0;
    }
    __syncthreads();
    const uint32_t prefix = s_prefix, mask = s_mask;
    // the same trip count for every thread (hist_add is warp-collective)
    for (int64_t base = 0; base < V; base += blockDim.x) {
      const int64_t i = base + threadIdx.x;
      int b = -1;
      uint64_t q = 0;
      if (i < V) {
        const float x = load(i);
        if (x > ninf() && in_prefix(x, i, cv, ci)) {
          const uint32_t k = filter::order_key(x);
          if ((k & mask) == prefix) {
            b = static_cast<int>((k >> shift) & 0xffu);
            if (mass_mode) q = static_cast<uint64_t>(mass_of(x));
          }
        }
      }
      hist_add(b, q, mass_mode, hc, hlo, hhi);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int chosen = -1, last = -1;
      uint64_t macc = s_macc;
      int64_t rem = s_rem;
      for (int b = 255; b >= 0; --b) {
        if (hc[b] == 0) continue;
        last = b;
        if (mass_mode) {
          const uint64_t hm = (static_cast<uint64_t>(hhi[b]) << 32) | hlo[b];
          if (macc + hm >= target) {
            chosen = b;
            break;
          }
          macc += hm;
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
        if (mass_mode) macc -= (static_cast<uint64_t>(hhi[chosen]) << 32) | hlo[chosen];
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
    const uint64_t e = static_cast<uint64_t>(mass_of(value));
    take = ties;
    if (e > 0) {
      const uint64_t t = filter::fixed_take(target, s_macc, e);
      take = t < static_cast<uint64_t>(ties) ? static_cast<int64_t>(t) : ties;
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
// Inverse-CDF draw with one uniform per row (the CPU's rule, csrc/cpu/
// sampling_kernels.h "inverse-CDF draw (sample)"; the order of every sum is part
// of the definition). Every float op of a mass or a sum is an explicitly rounded
// intrinsic (__fsub_rn / __fmul_rn / __fadd_rn, __dadd_rn / __dmul_rn / __dsub_rn),
// so nvcc cannot contract anything into an FMA that the CPU does not have.

constexpr int kSmallK = 2048;      // top-k candidate rule up to this k (the CPU's kSmallK)
constexpr int64_t kCdfBlock = 1024;  // tokens per block of the block rule
constexpr int kMassThreads = 128;  // block-mass kernel (kMassGroup 1024-token blocks per step)
constexpr int kDrawThreads = 256;

struct Plan {
  int32_t mode;   // 1: block rule over the kept set below; 2: done (id, valid)
  int32_t valid;
  float cv;       // kept(i) = x > -inf && (x > cv || (x == cv && i <= ci)) && (x - m) * it >= lmp
  float m;        // row max
  float it;       // 1/T
  float lmp;      // log(min_p), -inf when off
  int64_t ci;
  int64_t id;     // mode 2: the drawn id (0 if invalid); mode 1: the argmax (fallback)
};

// filter::draw_mass with the subtraction and the product rounded separately.
__device__ __forceinline__ float draw_mass_rn(float x, float m, float c) {
  return filter::fexp2(__fmul_rn(__fsub_rn(x, m), c));
}

// The min-p test of filter.h: (x - m) * (1/T) >= log(min_p), float ops as on CPU.
__device__ __forceinline__ bool min_p_ok(float x, float m, float it, float lmp) {
  return __fmul_rn(__fsub_rn(x, m), it) >= lmp;
}

__device__ __forceinline__ bool plan_kept(const Plan& p, float x, int64_t i) {
  return x > ninf() && in_prefix(x, i, p.cv, p.ci) && min_p_ok(x, p.m, p.it, p.lmp);
}

// sampling_kernels.h's pick_in: the first j with mass[j] > 0 whose running
// double sum (in j order) exceeds target; else the last j with mass; -1 if none.
template <class M>
__device__ int64_t pick_in_seq(const M* mass, int64_t n, double target) {
  double run = 0.0;
  int64_t last = -1;
  for (int64_t j = 0; j < n; ++j) {
    const M v = mass[j];
    if (!(v > M(0))) continue;
    run = __dadd_rn(run, static_cast<double>(v));
    last = j;
    if (run > target) return j;
  }
  return last;
}

// The top-k candidate rule of one row (block-wide; every thread returns the id):
// the row's first min(k, finite) tokens of the filter order, gathered in
// vocabulary order; top-p on them in the filter order (filter::top_p_prefix on
// token_mass, as the CPU), then min-p; the draw masses of the kept ones in
// vocabulary order, target = u * (their sequential double sum), pick_in.
template <class T>
__device__ int64_t topk_draw(const T* row, int64_t rs, int64_t V, int64_t k, long long finite, float m,
                             int64_t argmax, float it, float tp, float mp, double u) {
  __shared__ float c_val[kSmallK];    // candidates in vocabulary order
  __shared__ int64_t c_idx[kSmallK];
  __shared__ float s_val[kSmallK];    // sorted values, then token masses, then draw masses
  __shared__ uint16_t s_pos[kSmallK];  // candidate position of sorted entry j
  __shared__ int s_count, s_n;
  __shared__ int s_wc[kWarps];
  __shared__ int64_t s_id;
  auto load = [row](int64_t i) { return ld(row, i); };
  auto no_mass = [](float) -> uint64_t { return 0; };
  float cv = ninf();
  int64_t ci = kNoKeep;
  if (k < finite) select_nth_block<false>(load, V, cv, ci, k, 0, no_mass, &cv, &ci);
  // Ordered compaction: thread t takes tokens [4g, 4g + 4), g = base / 4 + t;
  // slots follow thread order, then token order (= vocabulary order).
  if (threadIdx.x == 0) s_count = 0;
  __syncthreads();
  const bool aligned = row_aligned(row, rs);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t groups = (V + 3) / 4;
  for (int64_t g0 = 0; g0 < groups; g0 += blockDim.x) {
    const int64_t g = g0 + threadIdx.x;
    float v[4] = {ninf(), ninf(), ninf(), ninf()};
    unsigned fm = 0;
    int cnt = 0;
    if (g < groups) {
      load4(row, g, V, aligned, v);
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        const int64_t i = 4 * g + l;
        if (i < V && v[l] > ninf() && in_prefix(v[l], i, cv, ci)) {
          fm |= 1u << l;
          ++cnt;
        }
      }
    }
    int inc = cnt;  // warp inclusive scan of the counts
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, inc, o);
      if (lane >= o) inc += y;
    }
    if (lane == 31) s_wc[w] = inc;
    __syncthreads();
    int slot = s_count, total = s_count;
    for (int j = 0; j < kWarps; ++j) {
      if (j < w) slot += s_wc[j];
      total += s_wc[j];
    }
    slot += inc - cnt;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      if (!((fm >> l) & 1u)) continue;
      if (slot < kSmallK) {
        c_val[slot] = v[l];
        c_idx[slot] = 4 * g + l;
      }
      ++slot;
    }
    __syncthreads();
    if (threadIdx.x == 0) s_count = total;
    __syncthreads();
  }
  const int nc = s_count < kSmallK ? s_count : kSmallK;
  const float c = filter::draw_scale(it);
  const float lmp = filter::log_min_p_of(mp);
  if (tp < 1.0f) {
    // filter order: value descending, then index ascending (= position ascending)
    int P = 1;
    while (P < nc) P <<= 1;
    for (int j = threadIdx.x; j < P; j += blockDim.x) {
      s_val[j] = j < nc ? c_val[j] : ninf();
      s_pos[j] = static_cast<uint16_t>(j < nc ? j : 0xffff);
    }
    __syncthreads();
    for (int size = 2; size <= P; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int t = threadIdx.x; t < P / 2; t += blockDim.x) {
          const int lo = 2 * t - (t & (stride - 1));
          const int hi = lo + stride;
          const bool desc = (lo & size) == 0;
          const bool hi_first = filter::before(s_val[hi], s_pos[hi], s_val[lo], s_pos[lo]);
          if (hi_first == desc) {
            const float tv = s_val[lo];
            s_val[lo] = s_val[hi];
            s_val[hi] = tv;
            const uint16_t tq = s_pos[lo];
            s_pos[lo] = s_pos[hi];
            s_pos[hi] = tq;
          }
        }
        __syncthreads();
      }
    }
    for (int j = threadIdx.x; j < nc; j += blockDim.x) s_val[j] = filter::token_mass(s_val[j], m, it);
    __syncthreads();
    if (threadIdx.x == 0) s_n = static_cast<int>(filter::top_p_prefix(s_val, nc, tp));
    __syncthreads();
    const int n = s_n;
    // draw masses by candidate position: kept = within the top-p prefix and min-p
    for (int j = threadIdx.x; j < nc; j += blockDim.x) {
      const int pos = s_pos[j];
      const float x = c_val[pos];
      s_val[pos] = (j < n && min_p_ok(x, m, it, lmp)) ? draw_mass_rn(x, m, c) : 0.0f;
    }
  } else {
    for (int j = threadIdx.x; j < nc; j += blockDim.x) {
      const float x = c_val[j];
      s_val[j] = min_p_ok(x, m, it, lmp) ? draw_mass_rn(x, m, c) : 0.0f;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int j = 0; j < nc; ++j) total = __dadd_rn(total, static_cast<double>(s_val[j]));
    const int64_t j = pick_in_seq(s_val, nc, __dmul_rn(u, total));
    s_id = j >= 0 ? c_idx[j] : argmax;  // no kept mass: the max token (cannot happen)
  }
  __syncthreads();
  return s_id;
}

// Kernel 1, one block per row: validity, max / argmax; greedy and invalid rows
// are done; top-k rows with k <= kSmallK are drawn here (candidate rule); the
// others get the cut of filter.h (radix selection for k > kSmallK and top-p).
template <class T>
__global__ void __launch_bounds__(kThreads) prepare_kernel(const T* __restrict__ logits, int64_t rs, int64_t V,
                                                           const float* __restrict__ temps,
                                                           const int64_t* __restrict__ topk,
                                                           const float* __restrict__ topp,
                                                           const float* __restrict__ minp,
                                                           const int64_t* __restrict__ seeds,
                                                           const int64_t* __restrict__ offsets, Plan* plans) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * rs;
  const float t = temps[r];
  const int64_t k = topk[r];
  const float tp = topp[r], mp = minp[r];
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
      p.id = valid ? a.idx : 0;
      plans[r] = p;
    }
    return;
  }
  const float m = a.key, it = 1.0f / t;
  if (k > 0 && k < V && k <= kSmallK) {
    const double u = philox::uniform53(static_cast<uint64_t>(seeds[r]), static_cast<uint64_t>(offsets[r]));
    const int64_t id = topk_draw(row, rs, V, k, finite, m, a.idx, it, tp, mp, u);
    if (threadIdx.x == 0) {
      Plan p{};
      p.mode = 2;
      p.valid = 1;
      p.id = id;
      plans[r] = p;
    }
    return;
  }
  auto load = [row](int64_t i) { return ld(row, i); };
  // fixed-point masses (filter.h): exact integer sums, the CPU's cut bit for bit
  const int sh = filter::mass_shift(V, static_cast<double>(filter::token_mass(m, m, it)));
  auto mass_of = [m, it, sh](float x) -> uint64_t {
    return filter::to_fixed(static_cast<double>(filter::token_mass(x, m, it)), sh);
  };
  float cv = ninf();
  int64_t ci = kNoKeep;
  if (k > 0 && k < finite) select_nth_block<false>(load, V, cv, ci, k, 0, mass_of, &cv, &ci);
  if (tp < 1.0f) {
    unsigned long long tot = 0;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const float x = ld(row, i);
      if (x > ninf() && in_prefix(x, i, cv, ci)) tot += mass_of(x);
    }
    tot = block_sum<unsigned long long>(tot);
    const uint64_t target = filter::fixed_target(tp, tot);
    if (target == 0) {
      cv = m;
      ci = a.idx;
    } else {
      select_nth_block<true>(load, V, cv, ci, 0, target, mass_of, &cv, &ci);
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
    p.id = a.idx;
    plans[r] = p;
  }
}

// Kernel 2, grid (rows, splits) x kMassThreads: the block masses of mode-1 rows.
// Split s owns the 1024-token blocks [b0, b1) and walks them kMassGroup at a time:
//   1. every thread of the block: 16-byte loads of 4 tokens (consecutive threads,
//      consecutive tokens), their draw masses (0 if not kept) into shared memory
//      e[block j][token o] (row pitch kMassPitch);
//   2. thread (j, l) = (t / 16, t % 16) adds lane l of block j in float in token
//      order (e[j][16 i + l], i = 0..63, __fadd_rn), then the 16 lane sums of the
//      block (one half-warp) are added in double in lane order by shuffles.
// This is sampling_kernels.h's lane rule, operation for operation, so blk[b] is
// the CPU's bit for bit; it no longer depends on which thread adds what. At
// B = 1 each split holds one 1024-token block: all 128 threads load and compute
// its masses, 16 of them add the lanes.
constexpr int kCdfLanes = 16;                              // lanes of the CPU's lane rule
constexpr int kMassGroup = kMassThreads / kCdfLanes;       // 1024-token blocks per step (8)
constexpr int kMassPitch = static_cast<int>(kCdfBlock) + 16;  // padded: lanes l, l + 16 of a warp on distinct banks
constexpr int kMassLoads = kMassGroup * static_cast<int>(kCdfBlock) / 4 / kMassThreads;  // 4-token loads per thread per step (16)
static_assert(kMassThreads % 32 == 0 && kCdfLanes == 16, "half-warp lane groups");
template <class T>
__global__ void __launch_bounds__(kMassThreads) block_mass_kernel(const T* __restrict__ logits, int64_t rs,
                                                                  int64_t V, const Plan* __restrict__ plans,
                                                                  int splits, double* __restrict__ blk) {
  __shared__ __align__(16) float e[kMassGroup * kMassPitch];
  const int64_t r = blockIdx.x;
  const int s = blockIdx.y;
  const Plan p = plans[r];
  if (p.mode != 1) return;
  const T* row = logits + r * rs;
  const bool aligned = row_aligned(row, rs);
  const int64_t nb = (V + kCdfBlock - 1) / kCdfBlock;
  const int64_t b0 = nb * s / splits, b1 = nb * (s + 1) / splits;
  const float c = filter::draw_scale(p.it);
  const int lane = threadIdx.x & 31;
  const int gj = threadIdx.x / kCdfLanes, gl = threadIdx.x % kCdfLanes;
  constexpr int kGroupsPerBlock = static_cast<int>(kCdfBlock) / 4;
  double* out = blk + r * nb;
  for (int64_t bb = b0; bb < b1; bb += kMassGroup) {  // the same trip count for every thread
    const int nblk = static_cast<int>(b1 - bb < kMassGroup ? b1 - bb : kMassGroup);
    const int ngroups = nblk * kGroupsPerBlock;
    // all kMassLoads loads of a thread are independent (fully unrolled, predicated): in flight together
    float v[kMassLoads][4];
#pragma unroll
    for (int u = 0; u < kMassLoads; ++u) {
      const int g = threadIdx.x + u * kMassThreads;
      const int j = g / kGroupsPerBlock, o = 4 * (g % kGroupsPerBlock);
      const int64_t t0 = (bb + j) * kCdfBlock + o;
      if (g < ngroups) load4(row, t0 >> 2, V, aligned, v[u]);  // -inf past V: not kept, mass 0
    }
#pragma unroll
    for (int u = 0; u < kMassLoads; ++u) {
      const int g = threadIdx.x + u * kMassThreads;
      if (g >= ngroups) continue;
      const int j = g / kGroupsPerBlock, o = 4 * (g % kGroupsPerBlock);
      const int64_t t0 = (bb + j) * kCdfBlock + o;
      const float* vu = v[u];
      float4 w;
      w.x = plan_kept(p, vu[0], t0) ? draw_mass_rn(vu[0], p.m, c) : 0.0f;
      w.y = plan_kept(p, vu[1], t0 + 1) ? draw_mass_rn(vu[1], p.m, c) : 0.0f;
      w.z = plan_kept(p, vu[2], t0 + 2) ? draw_mass_rn(vu[2], p.m, c) : 0.0f;
      w.w = plan_kept(p, vu[3], t0 + 3) ? draw_mass_rn(vu[3], p.m, c) : 0.0f;
      *reinterpret_cast<float4*>(&e[j * kMassPitch + o]) = w;
    }
    __syncthreads();
    // adding a 0 (a token not kept, or past V) leaves a lane sum unchanged (sums are >= +0)
    float acc = 0.0f;
    if (gj < nblk) {
      const float* ej = e + gj * kMassPitch + gl;
#pragma unroll 16
      for (int i = 0; i < static_cast<int>(kCdfBlock) / kCdfLanes; ++i) acc = __fadd_rn(acc, ej[kCdfLanes * i]);
    }
    double sum = 0.0;
    const int hb = lane & 16;  // this half-warp's first lane = lane 0 of block gj
#pragma unroll
    for (int l = 0; l < kCdfLanes; ++l)
      sum = __dadd_rn(sum, static_cast<double>(__shfl_sync(0xffffffffu, acc, hb + l)));
    if (gl == 0 && gj < nblk) out[bb + gj] = sum;
    __syncthreads();  // e is rewritten by the next step
  }
}

// Kernel 3, one block per row: ids / valid. Mode-1 rows: thread 0 walks the
// block masses (total, target = u * total, the block, the sum before it), the
// block recomputes the 1024 masses of the chosen block into shared memory and
// thread 0 walks them in vocabulary order.
template <class T>
__global__ void __launch_bounds__(kDrawThreads) draw_kernel(const T* __restrict__ logits, int64_t rs, int64_t V,
                                                            const Plan* __restrict__ plans,
                                                            const int64_t* __restrict__ seeds,
                                                            const int64_t* __restrict__ offsets,
                                                            const double* __restrict__ blk,
                                                            int64_t* __restrict__ ids, bool* __restrict__ valid) {
  __shared__ float e[kCdfBlock];
  __shared__ int64_t s_b;
  __shared__ double s_target;
  const int64_t r = blockIdx.x;
  const Plan p = plans[r];
  if (p.mode != 1) {
    if (threadIdx.x == 0) {
      ids[r] = (p.valid && p.id >= 0 && p.id < V) ? p.id : 0;
      valid[r] = p.valid != 0;
    }
    return;
  }
  const int64_t nb = (V + kCdfBlock - 1) / kCdfBlock;
  const double* rb = blk + r * nb;
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int64_t b = 0; b < nb; ++b) total = __dadd_rn(total, rb[b]);
    int64_t b = -1;
    double target = 0.0;
    if (total > 0.0) {
      target = __dmul_rn(philox::uniform53(static_cast<uint64_t>(seeds[r]), static_cast<uint64_t>(offsets[r])),
                         total);
      b = pick_in_seq(rb, nb, target);
      double before = 0.0;
      for (int64_t j = 0; j < b; ++j) before = __dadd_rn(before, rb[j]);
      target = __dsub_rn(target, before);
    }
    s_b = b;
    s_target = target;
  }
  __syncthreads();
  const int64_t b = s_b;
  int64_t id = p.id;  // no kept mass: the max token
  if (b >= 0) {
    const T* row = logits + r * rs;
    const int64_t b0 = b * kCdfBlock;
    const int n = static_cast<int>(V - b0 < kCdfBlock ? V - b0 : kCdfBlock);
    const float c = filter::draw_scale(p.it);
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      const float x = ld(row, b0 + j);
      e[j] = plan_kept(p, x, b0 + j) ? draw_mass_rn(x, p.m, c) : 0.0f;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int64_t j = pick_in_seq(e, n, s_target);
      if (j >= 0) id = b0 + j;
    }
  }
  if (threadIdx.x == 0) {
    ids[r] = (id >= 0 && id < V) ? id : 0;
    valid[r] = true;
  }
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
  const int64_t nb = (V + kCdfBlock - 1) / kCdfBlock;
  // enough blocks for two waves of the SMs, at most one per 1024-token block
  const int64_t want = (2 * static_cast<int64_t>(sm_count(logits.get_device())) + B - 1) / B;
  const int splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, nb)));
  Tensor plans = new_empty(logits, {B * static_cast<int64_t>(sizeof(Plan))}, ScalarType::Byte);
  Tensor blk = new_empty(logits, {B * nb}, ScalarType::Double);
  cudaStream_t stream = current_stream(logits);
  Plan* pl = reinterpret_cast<Plan*>(plans.mutable_data_ptr());
  const int64_t rs = logits.stride(0);
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const int64_t* of = offset.const_data_ptr<int64_t>();
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    prepare_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        x, rs, V, temperature.const_data_ptr<float>(), top_k.const_data_ptr<int64_t>(),
        top_p.const_data_ptr<float>(), min_p.const_data_ptr<float>(), sd, of, pl);
    SOFTDEC_CUDA_LAUNCH_CHECK();
    block_mass_kernel<scalar_t>
        <<<dim3(static_cast<unsigned>(B), static_cast<unsigned>(splits)), kMassThreads, 0, stream>>>(
            x, rs, V, pl, splits, blk.mutable_data_ptr<double>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
    draw_kernel<scalar_t><<<static_cast<unsigned>(B), kDrawThreads, 0, stream>>>(
        x, rs, V, pl, sd, of, blk.const_data_ptr<double>(), ids.mutable_data_ptr<int64_t>(),
        valid.mutable_data_ptr<bool>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
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
  auto no_mass = [](float) -> uint64_t { return 0; };
  if (k < finite) select_nth_block<false>(pert, V, cv, ci, k, 0, no_mass, &cv, &ci);
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
  int nan = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = ld(row, i);
    nan |= x != x ? 1 : 0;
    cand += x > ninf() ? 1 : 0;
  }
  cand = block_sum<long long>(cand);
  // a row with a NaN is invalid: all -inf (what a row with no valid entry gives)
  if (block_or(nan)) {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) orow[i] = static_cast<T>(ninf());
    return;
  }
  float cv = ninf();
  int64_t ci = kNoKeep;
  auto no_mass = [](float) -> uint64_t { return 0; };
  if (k > 0 && k < cand) select_nth_block<false>(load, V, cv, ci, k, 0, no_mass, &cv, &ci);
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
    const int sh = filter::mass_shift(V, static_cast<double>(a.key));
    auto mass_of = [sh](float x) -> uint64_t { return filter::to_fixed(static_cast<double>(x), sh); };
    if (kTopP) {
      const float tp = param[r];
      if (tp < 1.0f) {
        unsigned long long tot = 0;
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
          const float x = load(i);
          if (x > ninf()) tot += mass_of(x);
        }
        tot = block_sum<unsigned long long>(tot);
        const uint64_t target = filter::fixed_target(tp, tot);
        if (target == 0) {
          cv = a.key;
          ci = a.idx;
        } else {
          select_nth_block<true>(load, V, cv, ci, 0, target, mass_of, &cv, &ci);
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
  float pre = 1.0f, scale = 0.0f;
  if (valid && norm > 0.0) filter::renorm_scale(norm, &pre, &scale);
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = ld(row, i);
    const bool keep = valid && x > 0.0f && in_prefix(x, i, cv, ci) && x >= min_prob;
    orow[i] = static_cast<T>(keep ? (x * pre) * scale : 0.0f);
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
