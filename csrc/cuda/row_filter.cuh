// Block-wide row filter of the verification kernels (verify.cu, verify_tree.cu):
// include/softdec/filter.h's top-k / top-p / min-p cut of one row of logits,
// computed by every thread of the block (no serial pass over the vocabulary).
//
// The kept set is the one the CPU backend decides (csrc/cpu/verify.cpp
// target_at, csrc/cpu/sampling_kernels.h fast_row_filter), by the same two rules:
//
//  * candidate rule (top-k on, 0 < k < V, k <= kFilterCand): the first
//    n = min(k, finite) tokens of the filter order (value descending, lower index
//    first) are found by a block radix selection of the k-th token (exact: integer
//    counts), gathered into shared memory and sorted (bitonic, packed 64-bit keys,
//    all distinct). One thread then runs filter::top_p_prefix_by and
//    filter::finish_from_sorted_by on the sorted list -- the very functions the CPU
//    calls on its sorted candidates, so the top-p prefix, the min-p cut, num_kept and
//    the normaliser norm = Z (filter::MassSum, the exact rule of filter.h) are
//    bit-identical to the CPU's. That walk is O(k) (k <= 1024), not O(V).
//  * radix rule (top-p without top-k, or k > kFilterCand): filter::detail::generic_cut
//    block-parallel. Counts are integers (shared atomics: exact, order-free). Masses
//    (top-p) are filter.h's fixed-point masses (to_fixed at mass_shift(V, max mass),
//    uint64, "top-p masses in fixed point"): each thread adds its tokens into 16
//    per-bucket uint64 register accumulators (4-bit radix digits, 8 rounds), warps
//    reduce them by shuffles, thread 0 adds the warps. Integer sums are exact in any
//    order, so the total, the target fixed_target(top_p, total), every bucket's mass and
//    the tie count fixed_take are the CPU generic_cut's, bit for bit: the kept set is
//    the CPU's. norm = Z is then the caller's pass over the kept set by the same exact
//    rule (per-thread MassSum digits, block_mass::block_mass_sum: integer sums, exact
//    in any order), so it too is bit-identical to the CPU's.
//
// Invariants: every function here is called by all threads of the block with the
// same arguments (block-uniform control flow); results are returned to every thread.
#pragma once

#include <cstdint>

#include "verify_common.cuh"
#include "row_filter_keys.cuh"
#include "softdec/filter.h"

namespace softdec {
namespace vcuda {

// Largest top-k handled by the candidate rule (the CPU verify / verify_tree's cpu::kVerifyCandK, csrc/cpu/sampling_kernels.h).
constexpr int kFilterCand = 1024;
constexpr int kMassDigits = 16;  // 4-bit radix digits in mass mode

// Shared scratch of the block filter (static __shared__ in the kernel; W = warps).
template <int W>
struct FilterScratch {
  int hc[256];                           // count histogram of the current digit
  unsigned long long wm[W][kMassDigits]; // per-warp fixed-point mass partials (mass mode)
  unsigned long long cand[kFilterCand];  // packed candidate keys (candidate rule)
  int n_cand;
  int wcnt[W];                           // per-warp tie counts
  uint32_t prefix, mask;
  int64_t rem, found;
  unsigned long long macc;
  int fail;
  // result (thread 0 writes, all read); raw storage: RowFilter has default member
  // initialisers, which a __shared__ variable cannot run
  __align__(16) unsigned char f_raw[sizeof(filter::RowFilter)];
  __device__ __forceinline__ filter::RowFilter& f() { return *reinterpret_cast<filter::RowFilter*>(f_raw); }
};

// The n-th (count mode) token, or the token at which the running mass first reaches
// `target` (mass mode), of the filter order among the finite tokens in the prefix
// (cv, ci): filter::detail::select_nth, block-parallel. Count mode: 8-bit digits,
// 4 rounds; mass mode: 4-bit digits, 8 rounds (same selected token; the digit width
// only changes how the search is split). `finite_out` (count mode, may be null):
// the number of finite tokens in the prefix (the first round's total); when n >= that
// number the selection stops there and returns (cv, ci) (the caller applies no cut).
template <int W, typename T, class MassOf>
__device__ void block_select(const T* x, int64_t V, bool vec, float cv, int64_t ci, bool mass_mode, int64_t n,
                             uint64_t target, const MassOf& mass_of, FilterScratch<W>& s, float* out_v,
                             int64_t* out_i, int64_t* finite_out) {
  constexpr int kThr = W * 32;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t nblk = (V + 3) / 4;
  const int bits = mass_mode ? 4 : 8;
  const int nb = 1 << bits;
  if (tid == 0) {
    s.prefix = 0;
    s.mask = 0;
    s.rem = n;
    s.macc = 0ull;
    s.fail = 0;
  }
  __syncthreads();
  for (int shift = 32 - bits; shift >= 0; shift -= bits) {
    for (int bkt = tid; bkt < nb; bkt += kThr) s.hc[bkt] = 0;
    __syncthreads();
    const uint32_t prefix = s.prefix, mask = s.mask;
    unsigned long long acc[kMassDigits];
#pragma unroll
    for (int d = 0; d < kMassDigits; ++d) acc[d] = 0ull;
    for (int64_t blk = tid; blk < nblk; blk += kThr) {
      float v[4];
      load4(x, blk, V, vec, -filter::inf_f(), v);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (!in_cut(v[e], 4 * blk + e, cv, ci)) continue;
        const uint32_t k = filter::order_key(v[e]);
        if ((k & mask) != prefix) continue;
        const int d = static_cast<int>((k >> shift) & static_cast<uint32_t>(nb - 1));
        atomicAdd(&s.hc[d], 1);  // integer: exact whatever the order
        if (mass_mode) {
          const unsigned long long m = static_cast<unsigned long long>(mass_of(v[e]));
          // register accumulators: no dynamic indexing
#pragma unroll
          for (int dd = 0; dd < kMassDigits; ++dd) acc[dd] += dd == d ? m : 0ull;
        }
      }
    }
    if (mass_mode) {
      // exact integer reduction: shuffle tree, then warps (thread 0)
#pragma unroll
      for (int dd = 0; dd < kMassDigits; ++dd) {
        unsigned long long a = acc[dd];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) a += __shfl_down_sync(0xffffffffu, a, o);
        if (lane == 0) s.wm[warp][dd] = a;
      }
    }
    __syncthreads();
    if (tid == 0) {
      if (finite_out != nullptr && shift == 32 - bits) {
        int64_t tot = 0;
        for (int d = 0; d < nb; ++d) tot += s.hc[d];
        *finite_out = tot;
        if (n >= tot) s.fail = 1;  // no cut: the caller keeps every finite token
      }
      // filter::detail::select_nth's digit scan, highest digit first (<= 256 steps)
      int chosen = -1, last = -1;
      unsigned long long macc = s.macc;
      int64_t rem = s.rem;
      for (int d = nb - 1; d >= 0; --d) {
        if (s.hc[d] == 0) continue;
        last = d;
        if (mass_mode) {
          unsigned long long md = 0ull;
          for (int w = 0; w < W; ++w) md += s.wm[w][d];
          if (macc + md >= target) {
            chosen = d;
            break;
          }
          macc += md;
        } else {
          if (s.hc[d] >= rem) {
            chosen = d;
            break;
          }
          rem -= s.hc[d];
        }
      }
      if (chosen < 0 && last >= 0) {  // rounding left the target out of reach: the last digit
        chosen = last;
        if (mass_mode) {
          unsigned long long md = 0ull;
          for (int w = 0; w < W; ++w) md += s.wm[w][chosen];
          macc -= md;
        } else {
          rem += s.hc[chosen];
        }
      }
      if (chosen < 0) {
        s.fail = 1;
      } else if (!s.fail) {
        s.prefix |= static_cast<uint32_t>(chosen) << shift;
        s.mask |= static_cast<uint32_t>(nb - 1) << shift;
        s.macc = macc;
        s.rem = rem;
      }
    }
    __syncthreads();
    if (s.fail) {
      *out_v = cv;
      *out_i = ci;
      __syncthreads();
      return;
    }
  }
  const float value = filter::key_float(s.prefix);
  // Tokens tied at `value`, in index order: warp w owns the contiguous segment
  // [w * seg, (w + 1) * seg) and scans it 32 tokens at a time (ballots).
  const int64_t seg = (V + W - 1) / W;
  const int64_t lo = warp * seg, hi = lo + seg < V ? lo + seg : V;
  int cnt = 0;
  for (int64_t base = lo; base < hi; base += 32) {
    const int64_t i = base + lane;
    bool t = false;
    if (i < hi) {
      const float xv = to_f(x, i);
      t = xv == value && in_cut(xv, i, cv, ci);
    }
    cnt += __popc(__ballot_sync(0xffffffffu, t));
  }
  if (lane == 0) s.wcnt[warp] = cnt;
  if (tid == 0) s.found = -1;
  __syncthreads();
  int64_t ties = 0;
  for (int w = 0; w < W; ++w) ties += s.wcnt[w];
  int64_t take;
  if (mass_mode) {
    // filter::detail::select_nth's tie count: ceil((target - macc) / e), capped at ties
    const uint64_t e = static_cast<uint64_t>(mass_of(value));
    take = ties;
    if (e > 0) {
      const uint64_t t = filter::fixed_take(target, s.macc, e);
      take = t < static_cast<uint64_t>(ties) ? static_cast<int64_t>(t) : ties;
    }
  } else {
    take = s.rem;
  }
  if (take < 1) take = 1;
  if (take > ties) take = ties;
  int64_t before = 0;
  for (int w = 0; w < warp; ++w) before += s.wcnt[w];
  if (take > before && take <= before + s.wcnt[warp]) {  // this warp holds the take-th tie
    int64_t need = take - before;
    for (int64_t base = lo; base < hi; base += 32) {
      const int64_t i = base + lane;
      bool t = false;
      if (i < hi) {
        const float xv = to_f(x, i);
        t = xv == value && in_cut(xv, i, cv, ci);
      }
      unsigned bal = __ballot_sync(0xffffffffu, t);
      const int c = __popc(bal);
      if (need <= c) {
        for (int64_t j = 1; j < need; ++j) bal &= bal - 1;
        if (lane == 0) s.found = base + (__ffs(bal) - 1);
        break;
      }
      need -= c;
    }
  }
  __syncthreads();
  *out_v = value;
  *out_i = s.found >= 0 ? s.found : ci;
  __syncthreads();
}

// Bitonic sort of s.cand[0, n) descending (keys distinct; padding with 0 sorts last).
template <int W>
__device__ void block_sort_desc(FilterScratch<W>& s, int n) {
  constexpr int kThr = W * 32;
  int np = 1;
  while (np < n) np <<= 1;
  for (int i = n + threadIdx.x; i < np; i += kThr) s.cand[i] = 0ull;
  __syncthreads();
  for (int k = 2; k <= np; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < np; i += kThr) {
        const int l = i ^ j;
        if (l > i) {
          const unsigned long long a = s.cand[i], b = s.cand[l];
          const bool desc = (i & k) == 0;
          if (desc ? a < b : a > b) {
            s.cand[i] = b;
            s.cand[l] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Gathers the tokens of the prefix (cv, ci) of the filter order (in_cut: finite, value above
// cv or equal with index <= ci) as packed keys into s.cand and sorts them best first. The
// caller guarantees the prefix holds at most kFilterCand tokens (a count selection made it);
// returns their number (uniform).
template <int W, typename T>
__device__ int block_gather_sorted(const T* x, int64_t V, bool vec, float cv, int64_t ci, FilterScratch<W>& s) {
  const int tid = threadIdx.x;
  if (tid == 0) s.n_cand = 0;
  __syncthreads();
  const int64_t nblk = (V + 3) / 4;
  for (int64_t blk = tid; blk < nblk; blk += W * 32) {
    float v[4];
    load4(x, blk, V, vec, -filter::inf_f(), v);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (!in_cut(v[e], 4 * blk + e, cv, ci)) continue;
      const int slot = atomicAdd(&s.n_cand, 1);  // integer slot; order irrelevant: sorted below
      if (slot < kFilterCand) s.cand[slot] = pack_key(v[e], 4 * blk + e);
    }
  }
  __syncthreads();
  const int n = s.n_cand < kFilterCand ? s.n_cand : kFilterCand;
  block_sort_desc<W>(s, n);
  return n;
}

// The first min(n, finite) tokens of a row in the filter order (value descending, lower index
// first; -inf never), n in [1, kFilterCand]: a block count selection of the n-th token
// (block_select; skipped when n >= the finite count: every finite token), then
// block_gather_sorted. On return s.cand[0, count) holds their packed keys best first (the
// CPU's topk_scan order: keys are distinct); returns count (uniform).
template <int W, typename T>
__device__ int block_top_candidates(const T* x, int64_t V, bool vec, int64_t n, FilterScratch<W>& s) {
  float cv;
  int64_t ci;
  __shared__ int64_t s_fin;
  auto no_mass = [](float) -> uint64_t { return 0; };  // count mode: masses unused
  block_select<W>(x, V, vec, -filter::inf_f(), V, false, n, 0, no_mass, s, &cv, &ci,
                  threadIdx.x == 0 ? &s_fin : nullptr);
  return block_gather_sorted<W>(x, V, vec, cv, ci, s);
}

// The filter of a valid row at T > 0 (max_logit / argmax from the caller's pass):
// writes s.f() (cut, log_min_p, and -- candidate rule only -- num_kept / norm / log_norm).
// Returns true when s.f().norm / log_norm are final (candidate rule); false when the
// caller must set them from its exact mass pass over the kept set (mass_sum.cuh).
template <int W, typename T>
__device__ bool block_row_filter(const T* x, int64_t V, bool vec, float temp, int64_t top_k, float top_p,
                                 float min_p, float max_logit, int64_t argmax, FilterScratch<W>& s) {
  const int tid = threadIdx.x;
  const float m = max_logit, it = 1.0f / temp;
  // filter::compute_row_filter's fixed-point masses (same shift, same conversion)
  const int sh = filter::mass_shift(V, static_cast<double>(filter::token_mass(m, m, it)));
  auto mass_of = [m, it, sh](float v) -> uint64_t {
    return filter::to_fixed(static_cast<double>(filter::token_mass(v, m, it)), sh);
  };
  const bool topk_on = top_k > 0 && top_k < V, topp_on = top_p < 1.0f;
  const bool cand_rule = topk_on && top_k <= kFilterCand && V <= 0xffffffffLL;
  float cv = -filter::inf_f();
  int64_t ci = V;  // the whole row
  int64_t finite = 0;
  bool limited = false;
  if (topk_on) {
    // top-k: the k-th token of the order (skipped when k >= finite: every finite token)
    float sv;
    int64_t si;
    __shared__ int64_t s_finite;
    block_select<W>(x, V, vec, cv, ci, false, top_k, 0, mass_of, s, &sv, &si, tid == 0 ? &s_finite : nullptr);
    __syncthreads();
    finite = s_finite;
    __syncthreads();
    if (top_k < finite) {
      cv = sv;
      ci = si;
      limited = true;
    }
  }
  if (cand_rule) {
    // gather the min(k, finite) prefix tokens, sort them, then the CPU's walk (thread 0)
    const int n = block_gather_sorted<W>(x, V, vec, cv, ci, s);  // == min(k, finite)
    if (tid == 0) {
      filter::RowFilter f;
      f.valid = 1;
      f.max_logit = m;
      f.argmax = argmax;
      f.inv_temp = it;
      const unsigned long long* c = s.cand;
      auto mass_at = [c, m, it](int64_t j) { return filter::token_mass(key_value(c[j]), m, it); };
      auto value_at = [c](int64_t j) { return key_value(c[j]); };
      auto index_at = [c](int64_t j) { return key_index(c[j]); };
      const int64_t keep = filter::top_p_prefix_by(mass_at, n, top_p);
      filter::finish_from_sorted_by(f, value_at, index_at, keep, min_p);
      s.f() = f;
    }
    __syncthreads();
    return true;
  }
  if (topp_on) {
    // top-p on the (top-k limited) row: total fixed-point mass (exact integer block
    // sum), then the token at which the running mass reaches fixed_target(top_p, total)
    unsigned long long tot = 0ull;
    const int64_t nblk = (V + 3) / 4;
    for (int64_t blk = tid; blk < nblk; blk += W * 32) {
      float v[4];
      load4(x, blk, V, vec, -filter::inf_f(), v);
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (in_cut(v[e], 4 * blk + e, limited ? cv : -filter::inf_f(), limited ? ci : V)) tot += static_cast<unsigned long long>(mass_of(v[e]));
    }
    __shared__ unsigned long long red[W];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) tot += __shfl_down_sync(0xffffffffu, tot, o);
    if ((tid & 31) == 0) red[tid >> 5] = tot;
    __syncthreads();
    unsigned long long total = 0ull;
    for (int w = 0; w < W; ++w) total += red[w];
    __syncthreads();
    const uint64_t target = filter::fixed_target(top_p, static_cast<uint64_t>(total));
    if (target == 0) {
      cv = m;  // top_p = 0: the top token
      ci = argmax;
    } else {
      block_select<W>(x, V, vec, cv, ci, true, 0, target, mass_of, s, &cv, &ci, static_cast<int64_t*>(nullptr));
    }
    limited = true;
  }
  if (!limited) {
    cv = -filter::inf_f();
    ci = V;
  }
  if (tid == 0) {
    filter::RowFilter f;
    f.valid = 1;
    f.max_logit = m;
    f.argmax = argmax;
    f.inv_temp = it;
    f.cut_value = cv;
    f.cut_index = ci;
    f.log_min_p = filter::log_min_p_of(min_p);
    s.f() = f;
  }
  __syncthreads();
  return false;
}

}  // namespace vcuda
}  // namespace softdec
