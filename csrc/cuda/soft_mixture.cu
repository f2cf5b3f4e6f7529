// CUDA backend of softdec.soft_mixture (forward): the same semantics and the
// same Philox stream as the CPU backend (the per-row math is shared through
// include/softdec/soft_mixture.h).
//
// 1. scan_kernel, grid (slices, rows), 256 threads: 16-byte loads of the row
//    slice (4 per thread in flight, float64: 2); each thread keeps an online softmax
//    state (max, sum-exp, entropy term) and appends values above the block's current
//    kc-th value to a shared-memory candidate buffer (warp-aggregated slots). Once
//    more than kc candidates are in (normally after the first tile) a block radix
//    select (soft_select.cuh: 8-bit digits of an order-preserving key, then the ids of
//    the ties) keeps exactly the kc best (value desc, id asc) and sets the threshold;
//    it runs again only if another tile might not fit. The <= 256 survivors are ranked
//    without barriers (each thread counts the entries before its own). No sorts.
//    Warp-shuffle merge of the softmax states. A row is split into fixed 16-tile
//    slices (one block each), independent of B.
// 2. finalize_kernel, one block per row: the kc best of the slices' lists by a block
//    radix select over all of them (the scan's select), a compaction and a rank sort
//    into shared memory (no per-thread list, no insertion merge), then thread 0 merges
//    the slice states in slice order and runs soft::finalize_row (filters, noise,
//    final order; O(kc)).
// 3. gather_kernel, grid (rows, D / 2048): each thread owns 8 columns
//    (16-byte loads of bf16/fp16 rows), fp32 accumulation over the kept tokens.
// 4. backward: one block per row for the logits gradient; the embedding
//    gradient: the kept (row, slot) pairs sorted by token id (stable LSD radix sort), each
//    id's segment summed in flat order by one block per column chunk (deterministic, O(B k D)).
#include "cuda_common.cuh"
#include "../dispatch.h"
#include "../soft_mixture_checks.h"
#include "softdec/soft_mixture.h"
#include "soft_select.cuh"

#include <cfloat>
#include <cstdint>
#include <type_traits>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <limits>
#include <tuple>
#include <utility>

namespace softdec {
namespace {

constexpr int kThreads = 256;  // scan, finalize, gather, backward, embedding backward
// Grid y/z dimensions are at most 65535: launches over rows in y go in chunks of this many.
constexpr int64_t kMaxGridY = 65535;
// Width of a scan slice in tiles (16384 float32 / 32768 16-bit logits).
constexpr int64_t kSliceTiles = 16;

// Store an accumulator value in the output type (no float detour for float64).
template <typename T, typename A>
__device__ __forceinline__ T cast_out(A v) {
  if constexpr (std::is_same_v<T, double>) {
    return static_cast<double>(v);
  } else {
    return from_float<T>(static_cast<float>(v));
  }
}

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Elements per 16-byte load, the tile (one load per thread), the tiles whose loads a thread
// keeps in flight at once, and the candidate buffer size.
template <typename scalar_t>
struct ScanCfg {
  static constexpr int kVec = 16 / sizeof(scalar_t);
  static constexpr int kTile = kThreads * kVec;
  // 16-byte loads issued before the first use (float64: 1; more spill around the calls of
  // its double-precision softmax on sm_80 -- float64 logits are the tests' / gradcheck's path)
  static constexpr int kLoads = sizeof(scalar_t) == 8 ? 1 : 4;
  static constexpr int kCap = 2 * kTile;  // a compacted buffer (<= kMaxTopK) + one more tile
  static_assert(kCap - kTile >= soft::kMaxTopK, "the buffer must hold kc survivors and a tile");
  static_assert(kThreads >= soft::kMaxTopK, "the final rank sort gives each candidate a thread");
};

template <typename acc_t>
__device__ __forceinline__ void state_merge_shfl(soft::SoftmaxState<acc_t>& st, acc_t t) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    soft::SoftmaxState<acc_t> other{__shfl_xor_sync(0xffffffffu, st.m, o),
                                    __shfl_xor_sync(0xffffffffu, st.s, o),
                                    __shfl_xor_sync(0xffffffffu, st.a, o)};
    soft::softmax_merge(st, other, t);
  }
}

// Append (v, id) to the candidate buffer when pred, at slot offset + (a count from *cnt):
// one shared atomic per warp (ballot + popc); every lane of the warp must call it. Slots are
// unique; their order is not fixed (the buffer is a set: the compaction and the final rank
// sort order by the unique (value, id) key, so the result does not depend on it).
template <typename acc_t>
__device__ __forceinline__ void warp_append(bool pred, acc_t v, int32_t id, int* cnt, int offset,
                                            acc_t* cand_v, int32_t* cand_i) {
  const unsigned m = __ballot_sync(0xffffffffu, pred);
  if (m == 0u) return;
  const int lane = threadIdx.x % 32;
  const int leader = __ffs(m) - 1;
  int base = 0;
  if (lane == leader) base = atomicAdd(cnt, __popc(m));
  base = __shfl_sync(0xffffffffu, base, leader);
  if (pred) {
    const int slot = offset + base + __popc(m & ((1u << lane) - 1u));
    cand_v[slot] = v;
    cand_i[slot] = id;
  }
}

// Shared scratch of the block-wide radix select.
struct SelectScratch {
  int hist[soft_select::kBuckets];
  int warp_sum[kThreads / 32];
  int digit, above, count;  // the pass's decision
  int new_cnt;              // the compaction's output counter
};

// Block-wide radix select (8-bit digits, most significant first) over the buffer entries
// i < cnt for which key_of(i, &key) is true: the need-th largest key (need in [1, number of
// participants]). On return (uniform over the block): the key; *rest = how many entries equal
// to it are among the need largest (>= 1); *equal = how many entries equal it.
// Per pass: the histogram (shared int atomics: counts, order-free), a descending suffix scan of
// the 256 buckets (thread t owns bucket 255 - t: warp shuffle scan + the warps' totals) and
// the one thread whose bucket holds the need-th entry publishes it. 4 barriers per pass.
// The same passes as soft_select::radix_select_seq (host-tested).
template <typename K, typename KeyFn>
__device__ __forceinline__ K block_radix_select(int cnt, int need, KeyFn key_of, SelectScratch& sh, int* rest,
                                int* equal) {
  constexpr int kBits = 8 * sizeof(K);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  static_assert(kThreads == soft_select::kBuckets, "one bucket per thread");
  K prefix = 0;
  int count = 0;
#pragma unroll 1
  for (int shift = kBits - soft_select::kRadixBits; shift >= 0; shift -= soft_select::kRadixBits) {
    sh.hist[tid] = 0;
    __syncthreads();  // (a) zeroed; the previous pass's decision read by every thread
    for (int i = tid; i < cnt; i += kThreads) {
      K key;
      if (key_of(i, &key) && soft_select::in_prefix(key, prefix, shift))
        atomicAdd(&sh.hist[soft_select::digit_of(key, shift)], 1);
    }
    __syncthreads();  // (b) histogram complete
    const int d = soft_select::kBuckets - 1 - tid;
    const int c = sh.hist[d];
    int incl = c;  // entries in buckets d' >= d of this warp's range
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int x = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += x;
    }
    if (lane == 31) sh.warp_sum[warp] = incl;
    __syncthreads();  // (c) the warps' totals
    for (int w2 = 0; w2 < warp; ++w2) incl += sh.warp_sum[w2];
    const int excl = incl - c;
    if (excl < need && need <= incl) {  // exactly one thread (need <= participants)
      sh.digit = d;
      sh.above = excl;
      sh.count = c;
    }
    __syncthreads();  // (d) the decision
    prefix |= static_cast<K>(sh.digit) << shift;
    need -= sh.above;
    count = sh.count;
  }
  *rest = need;
  *equal = count;
  return prefix;
}

// Keep exactly the kc best (value, id) of the cnt > kc buffer entries (soft::ranks_before
// order), moved to slots [0, kc) in no fixed order; *thr_sh = the kc-th best value (a later
// element of the slice, with a larger id than every entry, is a candidate iff its value is
// above it). Returns kc (uniform). Entries are non-NaN, > -inf, with distinct ids.
template <typename acc_t>
__device__ __forceinline__ int select_compact(acc_t* cand_v, int32_t* cand_i, int cnt, int kc, acc_t* thr_sh,
                              SelectScratch& sh) {
  using K = typename soft_select::KeyOf<acc_t>::type;
  int rest = 0, equal = 0;
  const K kth = block_radix_select<K>(
      cnt, kc,
      [&](int i, K* key) {
        *key = soft_select::order_key(cand_v[i]);
        return true;
      },
      sh, &rest, &equal);
  // The entries above kth number kc - rest; of the `equal` entries at kth, keep the `rest`
  // smallest ids (a second select over the ties' ids, only when some tie must go).
  const bool all_ties = rest == equal;
  int32_t id_max = INT32_MAX;
  if (!all_ties) {
    int r2 = 0, e2 = 0;
    const uint32_t ik = block_radix_select<uint32_t>(
        cnt, rest,
        [&](int i, uint32_t* key) {
          *key = soft_select::id_key(cand_i[i]);
          return soft_select::order_key(cand_v[i]) == kth;
        },
        sh, &r2, &e2);
    id_max = soft_select::key_id(ik);  // ids are distinct: r2 == e2 == 1
  }
  if (threadIdx.x == 0) sh.new_cnt = 0;
  // Round 0 reads slots [0, kThreads) before anyone writes; the kept entries go to slots
  // < kc <= kThreads, so later rounds (reading slots >= kThreads) never see a moved entry.
  const int tid = threadIdx.x;
  acc_t v = 0;
  int32_t id = 0;
  bool keep = false;
  if (tid < cnt) {
    v = cand_v[tid];
    id = cand_i[tid];
    keep = soft_select::keep_entry(soft_select::order_key(v), id, kth, all_ties, id_max);
  }
  __syncthreads();
  warp_append(keep, v, id, &sh.new_cnt, 0, cand_v, cand_i);
  const int rounds = (cnt + kThreads - 1) / kThreads;
  for (int r = 1; r < rounds; ++r) {  // uniform trip count: warp_append needs whole warps
    const int i = r * kThreads + tid;
    keep = false;
    if (i < cnt) {
      v = cand_v[i];
      id = cand_i[i];
      keep = soft_select::keep_entry(soft_select::order_key(v), id, kth, all_ties, id_max);
    }
    warp_append(keep, v, id, &sh.new_cnt, 0, cand_v, cand_i);
  }
  if (threadIdx.x == 0) *thr_sh = soft_select::key_value(kth);
  __syncthreads();
  return sh.new_cnt;  // == kc by construction
}

// Phase 1 for one (row, slice). Candidates: the invariant is that the buffer holds every
// element seen so far that can still be among the slice's kc best:
// - before the first threshold (thr = -inf) every element > -inf is appended;
// - as soon as the buffer holds more than kc entries (normally after the first tile), a
//   block radix select keeps exactly the kc best and sets thr = the kc-th best value; a later
//   element (larger id than every kept one) can only enter the kc best with a value > thr;
// - the buffer is compacted again when another tile might not fit (rare once thr is set:
//   about kc * ln(tiles) further candidates per slice for exchangeable logits).
// At the end the <= kThreads survivors (else one more select) are ranked (each thread counts
// the entries ranking before its own: O(cnt) per thread, no barriers) and written in order.
// Softmax sums: each thread pushes its elements in the same order as one load per tile did
// (tile by tile, kVec each), so the sums do not depend on kLoads.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    scan_kernel(const scalar_t* __restrict__ logits, int64_t sL, int64_t V, int64_t slice,
                int64_t row0, const double* __restrict__ temperature, int k, acc_t* __restrict__ part_state,
                int32_t* __restrict__ part_bad, int32_t* __restrict__ part_n,
                acc_t* __restrict__ part_v, int64_t* __restrict__ part_i) {
  using Cfg = ScanCfg<scalar_t>;
  __shared__ acc_t cand_v[Cfg::kCap];
  __shared__ int32_t cand_i[Cfg::kCap];
  // Per-tile append counters, tile n uses tile_cnt[n % 3]: after tile n's barrier every
  // thread reads tile_cnt[n % 3] (its total: cnt = cnt_before + that), and tile n + 1's
  // appends may start at once, so they go to another counter, which thread 0 zeroed during
  // tile n (its last reader, tile n - 2, read it before tile n - 1's barrier). One barrier per
  // tile.
  __shared__ int tile_cnt[3];
  __shared__ acc_t thr_sh;
  __shared__ acc_t red[3][kThreads / 32];
  __shared__ SelectScratch sel;
  const int64_t b = row0 + blockIdx.y, c = blockIdx.x, C = gridDim.x;
  const int64_t v0 = c * slice, v1 = min(V, v0 + slice);
  const scalar_t* row = logits + b * sL;
  const double T = temperature[b];
  // T = 0: the sums are of softmax(logits) (entropy / max prob at T = 1, DESIGN); the
  // candidates are by raw logit whatever T
  const acc_t t = T == 0.0 ? acc_t(1) : soft::inv_temperature<acc_t>(T);
  const acc_t big = std::numeric_limits<acc_t>::max();
  const acc_t ninf = -static_cast<acc_t>(INFINITY);
  if (threadIdx.x == 0) {
    tile_cnt[0] = tile_cnt[1] = tile_cnt[2] = 0;
    thr_sh = ninf;
  }
  __syncthreads();
  soft::SoftmaxState<acc_t> st{std::numeric_limits<acc_t>::lowest(), acc_t(0), acc_t(0)};
  int bad = 0;
  int cnt = 0;            // buffer entries (uniform: read after a barrier)
  bool have_thr = false;  // uniform
  int tile = 0;           // tiles done (uniform)
  const bool aligned = (reinterpret_cast<uintptr_t>(row) % 16 == 0) && (v0 % Cfg::kVec == 0);
  for (int64_t base = v0; base < v1; base += Cfg::kLoads * Cfg::kTile) {
    // kLoads tiles' loads in flight before any is used (out of range: -inf, never used)
    scalar_t vals[Cfg::kLoads][Cfg::kVec];
#pragma unroll
    for (int u = 0; u < Cfg::kLoads; ++u) {
      const int64_t e0 = base + u * Cfg::kTile + static_cast<int64_t>(threadIdx.x) * Cfg::kVec;
      if (aligned && e0 + Cfg::kVec <= v1) {
        *reinterpret_cast<uint4*>(vals[u]) = __ldg(reinterpret_cast<const uint4*>(row + e0));
      } else {
#pragma unroll
        for (int j = 0; j < Cfg::kVec; ++j)
          vals[u][j] = e0 + j < v1 ? row[e0 + j] : from_float<scalar_t>(-INFINITY);
      }
    }
#pragma unroll
    for (int u = 0; u < Cfg::kLoads; ++u) {
      if (base + u * Cfg::kTile >= v1) continue;  // uniform: past the slice (no break: full unroll)
      const acc_t thr = thr_sh;
      int* const tc = &tile_cnt[tile % 3];
      if (threadIdx.x == 0) tile_cnt[(tile + 1) % 3] = 0;  // the next tile's counter
      const int64_t e0 = base + u * Cfg::kTile + static_cast<int64_t>(threadIdx.x) * Cfg::kVec;
#pragma unroll
      for (int j = 0; j < Cfg::kVec; ++j) {
        const acc_t l = static_cast<acc_t>(to_float(vals[u][j]));
        bad |= (!(l <= big) && l != ninf);
        // l > thr: never NaN, never -inf
        warp_append(l > thr, l, static_cast<int32_t>(e0 + j), tc, cnt, cand_v, cand_i);
        soft::softmax_push(st, l, t);
      }
      __syncthreads();  // the tile's appends are in
      cnt += *tc;
      ++tile;
      // the first threshold as soon as there are more than kc candidates (normally after the
      // first tile); later only to make room (invariant: cnt <= kCap - kTile before a tile);
      // after the slice's last tile, to leave at most kThreads for the rank sort (one call
      // site: the select is inlined once)
      const bool last = base + (u + 1) * Cfg::kTile >= v1;
      if (cnt > k && (!have_thr || cnt > Cfg::kCap - Cfg::kTile || (last && cnt > kThreads))) {
        cnt = select_compact(cand_v, cand_i, cnt, k, &thr_sh, sel);
        have_thr = true;
      }
    }
  }
  // rank sort of the cnt <= kThreads survivors, the k best written best first
  const int64_t w = b * C + c;
  if (static_cast<int>(threadIdx.x) < cnt) {
    const acc_t v = cand_v[threadIdx.x];
    const int32_t id = cand_i[threadIdx.x];
    int r = 0;
    for (int j = 0; j < cnt; ++j) r += soft::ranks_before(cand_v[j], static_cast<int64_t>(cand_i[j]), v,
                                                          static_cast<int64_t>(id));
    if (r < k) {
      part_v[w * k + r] = v;
      part_i[w * k + r] = id;
    }
  }
  cnt = cnt < k ? cnt : k;
  bad = __syncthreads_or(bad);
  state_merge_shfl(st, t);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    red[0][warp] = st.m;
    red[1][warp] = st.s;
    red[2][warp] = st.a;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    soft::SoftmaxState<acc_t> tot{red[0][0], red[1][0], red[2][0]};
    for (int i = 1; i < kThreads / 32; ++i)
      soft::softmax_merge(tot, soft::SoftmaxState<acc_t>{red[0][i], red[1][i], red[2][i]}, t);
    part_state[w * 3 + 0] = tot.m;
    part_state[w * 3 + 1] = tot.s;
    part_state[w * 3 + 2] = tot.a;
    part_bad[w] = bad;
    part_n[w] = cnt;
  }
}

// Phase 2, one block (kThreads) per row: the kc best of the union of the row's C slice lists,
// sorted, then the merged softmax state and soft::finalize_row (thread 0).
// The merged list is the one a sequential soft::topk_insert of every slice list into slice 0's
// gives -- the kc best (value, id) of the union under soft::ranks_before (ids are distinct: the
// slices partition the row), best first -- found block-parallel without moving data in place:
//  * the live slots of the C * kc flat buffer (soft_select::slice_slot_live) are the candidates;
//  * when there are more than kc, block_radix_select (the scan's select: 8-bit digits of
//    order_key, integer histograms, then the ids of the ties) finds the kc-th best, and
//    keep_entry keeps exactly the kc best (warp_append into shared memory, order not fixed);
//  * a rank sort (each of the <= kc <= kThreads threads counts the kept entries ranking before
//    its own: soft_select::rank_among) writes them best first.
// Same list, bit for bit, as the former one-thread merge, so finalize_row sees identical input.
// The slice states merge in slice order on thread 0 (O(C), as before: the sums' order is fixed).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    finalize_kernel(int64_t C, int k, int kc, const acc_t* __restrict__ part_state,
                    const int32_t* __restrict__ part_bad, const int32_t* __restrict__ part_n,
                    const acc_t* __restrict__ part_v, const int64_t* __restrict__ part_i,
                    const double* __restrict__ T, const int64_t* __restrict__ K,
                    const double* __restrict__ TP, const double* __restrict__ MP,
                    const int64_t* __restrict__ FK, const int64_t* __restrict__ S, const int64_t* __restrict__ O,
                    int noise, double tau, double noise_scale, double alpha, double glo,
                    double ghi, double geps,
                    int64_t* __restrict__ ids, acc_t* __restrict__ w,
                    acc_t* __restrict__ h, acc_t* __restrict__ mp, bool* __restrict__ ok,
                    acc_t* __restrict__ y, acc_t* __restrict__ lse,
                    int64_t* __restrict__ nkept) {
  using K_t = typename soft_select::KeyOf<acc_t>::type;
  static_assert(kThreads >= soft::kMaxTopK, "the rank sort gives each kept entry a thread");
  __shared__ acc_t kv[soft::kMaxTopK];       // the kept entries, unordered
  __shared__ int32_t ki[soft::kMaxTopK];
  __shared__ acc_t mv[soft::kMaxTopK];       // the merged list, best first
  __shared__ int64_t mi[soft::kMaxTopK];
  __shared__ int total_sh;
  __shared__ SelectScratch sel;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const acc_t* fv = part_v + b * C * kc;     // the row's flat buffer: C * kc slots
  const int64_t* fi = part_i + b * C * kc;
  const int32_t* rn = part_n + b * C;
  const int nflat = static_cast<int>(C * kc);  // < 2^31: V < 2^31, kc <= 256, >= 4096 per slice
  // live candidates: integer sum (order-free)
  int mine = 0;
  for (int64_t c = tid; c < C; c += kThreads) mine += rn[c];
  if (tid == 0) total_sh = 0;
  __syncthreads();
  if (mine) atomicAdd(&total_sh, mine);
  __syncthreads();
  auto live = [&](int i) { return soft_select::slice_slot_live(i, kc, rn); };
  K_t kth = 0;
  bool all_ties = true;
  int32_t id_max = INT32_MAX;
  // (total_sh is read from shared memory where needed, not held across the select: held in a
  // register, ptxas spilled it on sm_90a)
  if (total_sh > kc) {  // uniform
    int rest = 0, equal = 0;
    kth = block_radix_select<K_t>(
        nflat, kc,
        [&](int i, K_t* key) {
          if (!live(i)) return false;
          *key = soft_select::order_key(fv[i]);
          return true;
        },
        sel, &rest, &equal);
    all_ties = rest == equal;
    if (!all_ties) {
      int r2 = 0, e2 = 0;
      const uint32_t ik = block_radix_select<uint32_t>(
          nflat, rest,
          [&](int i, uint32_t* key) {
            if (!live(i) || soft_select::order_key(fv[i]) != kth) return false;
            *key = soft_select::id_key(static_cast<int32_t>(fi[i]));
            return true;
          },
          sel, &r2, &e2);
      id_max = soft_select::key_id(ik);  // ids are distinct: r2 == e2 == 1
    }
  }
  if (tid == 0) sel.new_cnt = 0;
  __syncthreads();
  // compaction into kv / ki (uniform trip count: warp_append needs whole warps)
  for (int base = 0; base < nflat; base += kThreads) {
    const int i = base + tid;
    bool keep = false;
    acc_t v = 0;
    int32_t id = 0;
    if (i < nflat && live(i)) {
      v = fv[i];
      id = static_cast<int32_t>(fi[i]);
      keep = total_sh <= kc || soft_select::keep_entry(soft_select::order_key(v), id, kth, all_ties, id_max);
    }
    warp_append(keep, v, id, &sel.new_cnt, 0, kv, ki);
  }
  __syncthreads();
  const int n = sel.new_cnt;  // == min(kc, total) by construction
  if (tid < n) {
    const acc_t v = kv[tid];
    const int32_t id = ki[tid];
    const int r = soft_select::rank_among(kv, ki, n, v, id);
    mv[r] = v;
    mi[r] = id;
  }
  __syncthreads();
  if (tid != 0) return;
  const acc_t t = T[b] == 0.0 ? acc_t(1) : soft::inv_temperature<acc_t>(T[b]);
  soft::SoftmaxState<acc_t> st{part_state[b * C * 3], part_state[b * C * 3 + 1], part_state[b * C * 3 + 2]};
  bool bad = part_bad[b * C] != 0;
  for (int64_t c = 1; c < C; ++c) {
    const int64_t p = b * C + c;
    soft::softmax_merge(st, soft::SoftmaxState<acc_t>{part_state[p * 3], part_state[p * 3 + 1],
                                                        part_state[p * 3 + 2]},
                        t);
    bad |= part_bad[p] != 0;
  }
  const bool valid = !bad && n > 0;
  ok[b] = valid;
  if (!valid) {
    h[b] = mp[b] = lse[b] = acc_t(0);
    nkept[b] = 0;
    for (int i = 0; i < k; ++i) {
      ids[b * k + i] = 0;
      w[b * k + i] = acc_t(0);
      y[b * k + i] = -static_cast<acc_t>(INFINITY);
    }
    return;
  }
  soft::row_stats<acc_t>(st, t, false, h + b, mp + b, lse + b);
  soft::RowParams rp{T[b], K[b], FK[b], static_cast<double>(st.s), TP[b], MP[b], static_cast<uint64_t>(S[b]),
                     static_cast<uint64_t>(O[b]), noise, tau, noise_scale, alpha, glo, ghi, geps};
  nkept[b] = soft::finalize_row<acc_t>(mv, mi, n, k, rp, ids + b * k, w + b * k, y + b * k);
}

// out[b, d] = scale * sum_i w[b, i] * E[ids[b, i], d]; each thread owns kVec
// consecutive columns (one 16-byte load per kept row when aligned).
template <typename emb_t, typename w_t>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const emb_t* __restrict__ E, int64_t sE, int64_t D, int k,
                  const int64_t* __restrict__ ids, const w_t* __restrict__ w,
                  const int64_t* __restrict__ nkept, double scale, int64_t row0, emb_t* __restrict__ out) {
  constexpr int kVec = 16 / sizeof(emb_t);
  using acc_t = std::conditional_t<std::is_same_v<emb_t, double> || std::is_same_v<w_t, double>,
                                   double, float>;
  const int64_t b = row0 + blockIdx.y;
  const int64_t d0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (d0 >= D) return;
  const int kept = static_cast<int>(nkept[b]);
  acc_t acc[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) acc[j] = 0;
  const bool vec = (d0 + kVec <= D) && (sE % kVec == 0) &&
                   (reinterpret_cast<uintptr_t>(E) % 16 == 0);
  for (int i = 0; i < kept; ++i) {
    const acc_t wi = static_cast<acc_t>(w[b * k + i]);
    const emb_t* r = E + ids[b * k + i] * sE + d0;
    if (vec) {
      emb_t v[kVec];
      *reinterpret_cast<uint4*>(v) = __ldg(reinterpret_cast<const uint4*>(r));
#pragma unroll
      for (int j = 0; j < kVec; ++j) acc[j] += wi * static_cast<acc_t>(to_float(v[j]));
    } else {
      for (int j = 0; j < kVec && d0 + j < D; ++j) acc[j] += wi * static_cast<acc_t>(to_float(r[j]));
    }
  }
  emb_t* o = out + b * D + d0;
  for (int j = 0; j < kVec && d0 + j < D; ++j) {
    if constexpr (std::is_same_v<emb_t, double>) {
      o[j] = acc[j] * scale;
    } else {
      o[j] = from_float<emb_t>(static_cast<float>(acc[j] * static_cast<acc_t>(scale)));
    }
  }
}

// Gaussian noise on the mixed embedding: embeds[b, d] += std * eps_d(seed[b], offset[b])
// for valid rows (soft::embed_normal), in the embedding's dtype; grid (D / kThreads, rows).
template <typename emb_t>
__global__ void __launch_bounds__(kThreads)
    embed_noise_kernel(int64_t D, const int64_t* __restrict__ S, const int64_t* __restrict__ O,
                       const bool* __restrict__ ok, double sd, int64_t row0, emb_t* __restrict__ out) {
  const int64_t b = row0 + blockIdx.y;
  const int64_t d = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (d >= D || !ok[b]) return;
  const float e = soft::embed_normal(static_cast<uint64_t>(S[b]), static_cast<uint64_t>(O[b]),
                                     static_cast<uint64_t>(d));
  emb_t* o = out + b * D + d;
  if constexpr (std::is_same_v<emb_t, double>) {
    *o = *o + sd * static_cast<double>(e);
  } else {
    *o = from_float<emb_t>(to_float(*o) + static_cast<float>(sd) * e);
  }
}

using Out9 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

Out9 soft_mixture_cuda(Tensor logits, Tensor embedding, Tensor temperature, Tensor top_k,
                       Tensor top_p, Tensor min_p, Tensor seed, Tensor offset, int64_t k,
                       int64_t noise, double tau, double noise_scale, double dirichlet_alpha,
                       double embed_scale, Tensor filter_top_k, int64_t kc, double gumbel_lo,
                       double gumbel_hi, double gumbel_eps, double embed_noise_std) {
  soft_mixture_checks::check_forward_inputs(logits, embedding, temperature, top_k, top_p, min_p, seed,
                                            offset, k, noise, tau, dirichlet_alpha, filter_top_k, kc,
                                            gumbel_lo, gumbel_hi, gumbel_eps, embed_noise_std,
                                            soft_mixture_checks::Backend::kCuda);
  const int64_t B = logits.size(0), V = logits.size(1), D = embedding.size(1);
  // Per-row values (top_k in [1, k], top_p in (0, 1], ...) are checked by the
  // Python wrapper; reading them here would synchronise the stream.
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  const bool f64 = logits.scalar_type() == ScalarType::Double;
  Tensor embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept;
  std::tie(embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept) =
      soft_mixture_checks::allocate_forward_outputs(logits, embedding, k);
  const ScalarType acc = weights.scalar_type();
  if (B == 0) return {embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept};
  cudaStream_t stream = current_stream(logits);
  auto run_scan = [&](auto tag) {
    using scalar_t = decltype(tag);
    using cs_t = typename CudaNative<scalar_t>::type;
    using acc_t = typename AccOf<scalar_t>::type;
    using Cfg = ScanCfg<cs_t>;
    // slices per row: a fixed partition of the row into kSliceTiles tiles, the
    // same for every B and device (merged in slice order by finalize_kernel),
    // so a row's result does not depend on the batch it is in (DESIGN)
    const int64_t slice = kSliceTiles * Cfg::kTile;
    const int64_t Cr = std::max<int64_t>(1, (V + slice - 1) / slice);
    Tensor pstate = new_empty(logits, {B * Cr * 3}, acc);
    Tensor pbad = new_empty(logits, {B * Cr}, ScalarType::Int);
    Tensor pn = new_empty(logits, {B * Cr}, ScalarType::Int);
    Tensor pv = new_empty(logits, {B * Cr * kc}, acc);  // kc candidates per slice
    Tensor pi = new_empty(logits, {B * Cr * kc}, ScalarType::Long);
    for (int64_t row0 = 0; row0 < B; row0 += kMaxGridY) {  // grid y <= 65535 rows per launch
      const int64_t rows = std::min<int64_t>(kMaxGridY, B - row0);
      scan_kernel<cs_t, acc_t><<<dim3(static_cast<unsigned>(Cr), static_cast<unsigned>(rows)), kThreads,
                                 0, stream>>>(
          reinterpret_cast<const cs_t*>(logits.const_data_ptr<scalar_t>()), logits.stride(0), V,
          slice, row0, temperature.const_data_ptr<double>(), static_cast<int>(kc),
          pstate.mutable_data_ptr<acc_t>(), pbad.mutable_data_ptr<int32_t>(),
          pn.mutable_data_ptr<int32_t>(), pv.mutable_data_ptr<acc_t>(),
          pi.mutable_data_ptr<int64_t>());
      SOFTDEC_CUDA_LAUNCH_CHECK();
    }
    finalize_kernel<acc_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        Cr, static_cast<int>(k), static_cast<int>(kc), pstate.const_data_ptr<acc_t>(), pbad.const_data_ptr<int32_t>(),
        pn.const_data_ptr<int32_t>(), pv.const_data_ptr<acc_t>(), pi.const_data_ptr<int64_t>(),
        temperature.const_data_ptr<double>(), top_k.const_data_ptr<int64_t>(),
        top_p.const_data_ptr<double>(), min_p.const_data_ptr<double>(),
        filter_top_k.const_data_ptr<int64_t>(), seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(), static_cast<int>(noise),
        tau, noise_scale, dirichlet_alpha, gumbel_lo, gumbel_hi, gumbel_eps, ids.mutable_data_ptr<int64_t>(),
        weights.mutable_data_ptr<acc_t>(), entropy.mutable_data_ptr<acc_t>(),
        max_prob.mutable_data_ptr<acc_t>(), valid.mutable_data_ptr<bool>(),
        noisy.mutable_data_ptr<acc_t>(), lse.mutable_data_ptr<acc_t>(),
        nkept.mutable_data_ptr<int64_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  };
  switch (logits.scalar_type()) {
    case ScalarType::Float: run_scan(float{}); break;
    case ScalarType::Double: run_scan(double{}); break;
    case ScalarType::BFloat16: run_scan(bf16{}); break;
    case ScalarType::Half: run_scan(fp16{}); break;
    default: SOFTDEC_CHECK(false, "logits must be float32, bfloat16, float16 or float64, got ",
                           dtype_name(logits.scalar_type()));
  }
  if (D == 0) return {embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept};
  auto run_gather = [&](auto etag, auto wtag) {
    using scalar_t = decltype(etag);
    using w_t = decltype(wtag);
    using cs_t = typename CudaNative<scalar_t>::type;
    constexpr int kVec = 16 / sizeof(cs_t);
    const int64_t per_block = static_cast<int64_t>(kThreads) * kVec;
    for (int64_t row0 = 0; row0 < B; row0 += kMaxGridY) {  // grid y <= 65535 rows per launch
      const int64_t rows = std::min<int64_t>(kMaxGridY, B - row0);
      const dim3 grid(static_cast<unsigned>((D + per_block - 1) / per_block), static_cast<unsigned>(rows));
      gather_kernel<cs_t, w_t><<<grid, kThreads, 0, stream>>>(
          reinterpret_cast<const cs_t*>(embedding.const_data_ptr<scalar_t>()), embedding.stride(0), D,
          static_cast<int>(k), ids.const_data_ptr<int64_t>(), weights.const_data_ptr<w_t>(),
          nkept.const_data_ptr<int64_t>(), embed_scale, row0,
          reinterpret_cast<cs_t*>(embeds.mutable_data_ptr<scalar_t>()));
      SOFTDEC_CUDA_LAUNCH_CHECK();
    }
  };
  auto with_w = [&](auto etag) {
    if (f64)
      run_gather(etag, double{});
    else
      run_gather(etag, float{});
  };
  switch (embedding.scalar_type()) {
    case ScalarType::Float: with_w(float{}); break;
    case ScalarType::Double: with_w(double{}); break;
    case ScalarType::BFloat16: with_w(bf16{}); break;
    case ScalarType::Half: with_w(fp16{}); break;
    default: SOFTDEC_CHECK(false, "embedding must be float32, bfloat16, float16 or float64, got ",
                           dtype_name(embedding.scalar_type()));
  }
  if (embed_noise_std != 0.0) {
    auto run_noise = [&](auto etag) {
      using scalar_t = decltype(etag);
      using cs_t = typename CudaNative<scalar_t>::type;
      for (int64_t row0 = 0; row0 < B; row0 += kMaxGridY) {
        const int64_t rows = std::min<int64_t>(kMaxGridY, B - row0);
        const dim3 grid(static_cast<unsigned>((D + kThreads - 1) / kThreads), static_cast<unsigned>(rows));
        embed_noise_kernel<cs_t><<<grid, kThreads, 0, stream>>>(
            D, seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(), valid.const_data_ptr<bool>(),
            embed_noise_std, row0, reinterpret_cast<cs_t*>(embeds.mutable_data_ptr<scalar_t>()));
        SOFTDEC_CUDA_LAUNCH_CHECK();
      }
    };
    switch (embedding.scalar_type()) {
      case ScalarType::Float: run_noise(float{}); break;
      case ScalarType::Double: run_noise(double{}); break;
      case ScalarType::BFloat16: run_noise(bf16{}); break;
      case ScalarType::Half: run_noise(fp16{}); break;
      default: break;
    }
  }
  return {embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept};
}

// ------------------------------------------------------------------ backward
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* sh /* [kThreads / 32] */) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t tot = 0;
  for (int i = 0; i < kThreads / 32; ++i) tot += sh[i];
  return tot;
}

template <typename acc_t>
__device__ acc_t block_max(acc_t v, acc_t* sh /* [kThreads / 32] */) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = soft::sm_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t r = sh[0];
  for (int i = 1; i < kThreads / 32; ++i) r = soft::sm_max(r, sh[i]);
  return r;
}

// One block per row: dense entropy / max-prob terms over V, then the sparse
// terms of the kept weights (the same formulas as the CPU backward).
template <typename scalar_t, typename emb_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const acc_t* __restrict__ gE, const acc_t* __restrict__ gW,
                    const acc_t* __restrict__ gH, const acc_t* __restrict__ gM,
                    const acc_t* __restrict__ gY, const scalar_t* __restrict__ L, int64_t sL,
                    const emb_t* __restrict__ E, int64_t sE, const double* __restrict__ T,
                    const int64_t* __restrict__ ids, const acc_t* __restrict__ W,
                    const acc_t* __restrict__ lse, const acc_t* __restrict__ H,
                    const acc_t* __restrict__ MPr, const bool* __restrict__ valid,
                    const int64_t* __restrict__ nkept, int64_t V, int64_t D, int k, int noise,
                    double tau, double embed_scale, double gumbel_eps, scalar_t* __restrict__ out) {
  __shared__ acc_t red[kThreads / 32];
  __shared__ acc_t g[soft::kMaxTopK];     // g_i, then dx_i (thread 0 alone works on both)
  __shared__ acc_t wpre[soft::kMaxTopK];  // softmax(l / T) of the kept tokens (noise)
  const int64_t b = blockIdx.x;
  scalar_t* o = out + b * V;
  const scalar_t* l = L + b * sL;
  if (!valid[b]) {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) o[j] = from_float<scalar_t>(0.0f);
    return;
  }
  // T = 0: one-hot weights (no gradient); entropy / max prob are of T = 1
  const bool cold = T[b] == 0.0;
  const acc_t t = cold ? acc_t(1) : soft::inv_temperature<acc_t>(T[b]);
  const int kept = static_cast<int>(nkept[b]);
  const int64_t* id = ids + b * k;
  const acc_t* w = W + b * k;
  // Dense terms from the shifted log-probabilities lp_j = (l_j - m) t - log S,
  // m the row max, S = sum exp((l_j - m) t), with H and max p recomputed from
  // the same sums (the saved lse = m t + log S loses log S next to a huge m t;
  // see the CPU backward). lse, H and MPr are not read.
  const acc_t gh = gH[b], gm = gM[b];
  acc_t m = -static_cast<acc_t>(INFINITY);
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) m = soft::sm_max(m, static_cast<acc_t>(to_float(l[j])));
  m = block_max(m, red);
  acc_t s_ = 0, a_ = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const acc_t z = (static_cast<acc_t>(to_float(l[j])) - m) * t;
    const acc_t e = soft::sm_exp(z);
    if (e > acc_t(0)) {
      s_ += e;
      a_ += e * z;
    }
  }
  s_ = block_sum(s_, red);
  a_ = block_sum(a_, red);
  const acc_t logS = soft::sm_log(s_), h = logS - a_ / s_, pm = acc_t(1) / s_;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const acc_t lp = (static_cast<acc_t>(to_float(l[j])) - m) * t - logS;
    const acc_t p = soft::sm_exp(lp);
    const acc_t d = p > acc_t(0) ? -gh * p * (lp + h) - gm * pm * p : acc_t(0);
    o[j] = cast_out<scalar_t>(d * t);
  }
  // g_i = grad_w_i + embed_scale <grad_embeds, E[id_i]>
  for (int i = 0; i < kept; ++i) {
    acc_t dot = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      dot += gE[b * D + d] * static_cast<acc_t>(to_float(E[id[i] * sE + d]));
    dot = block_sum(dot, red);
    if (threadIdx.x == 0) g[i] = gW[b * k + i] + static_cast<acc_t>(embed_scale) * dot;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  int am = 0;  // argmax: the kept token with the largest logit, lowest id
  for (int i = 1; i < kept; ++i) {
    const acc_t li = static_cast<acc_t>(to_float(l[id[i]]));
    const acc_t la = static_cast<acc_t>(to_float(l[id[am]]));
    if (soft::ranks_before(li, id[i], la, id[am])) am = i;
  }
  if (gh != acc_t(0) || gm != acc_t(0)) {
    o[id[am]] = cast_out<scalar_t>(static_cast<acc_t>(to_float(o[id[am]])) + gm * pm * t);
  }
  if (cold || noise == soft::kDirichlet) return;  // the Dirichlet draw is a stop-gradient
  acc_t sbar = 0;
  for (int i = 0; i < kept; ++i) sbar += w[i] * g[i];
  acc_t* dx = g;  // dx_i overwrites g_i, which only dx_i reads
  if (noise == soft::kNoNoise) {
    for (int i = 0; i < kept; ++i) dx[i] = w[i] * (g[i] - sbar);
  } else {
    acc_t xm = -static_cast<acc_t>(INFINITY), z = 0, sdy = 0;
    for (int i = 0; i < kept; ++i) xm = soft::sm_max(xm, static_cast<acc_t>(to_float(l[id[i]])));
    for (int i = 0; i < kept; ++i) {
      // (l - max l) t: no l t overflow for huge logits / small temperatures
      wpre[i] = soft::sm_exp((static_cast<acc_t>(to_float(l[id[i]])) - xm) * t);
      z += wpre[i];
    }
    const acc_t itau = static_cast<acc_t>(1.0 / tau);
    for (int i = 0; i < kept; ++i) {
      dx[i] = w[i] * (g[i] - sbar) * itau + gY[b * k + i];
      // y = log(w_pre + eps): dy/dw_pre = 1 / (w_pre + eps)
      if (gumbel_eps > 0) dx[i] *= wpre[i] / (wpre[i] + static_cast<acc_t>(gumbel_eps) * z);
      sdy += dx[i];
    }
    for (int i = 0; i < kept; ++i) dx[i] -= wpre[i] / z * sdy;
  }
  for (int i = 0; i < kept; ++i)
    o[id[i]] = cast_out<scalar_t>(static_cast<acc_t>(to_float(o[id[i]])) + dx[i] * t);
}

// Embedding gradient, deterministic and O(B k D): the (row, slot) pairs are sorted by token id
// once (a stable LSD radix sort: within an id, pairs keep their flat order p = b * k + i), then
// the first pair of each id's segment sums the segment in that order and writes the whole
// output row: out[id] = sum_p (w_p * scale) * grad_embeds[row_p] -- the CPU kernel's order and
// formula. No atomics on floats; untouched rows are zeroed by a memset first.
// emb_pairs_kernel: key = the token id of a kept pair, Ve (sorted last, skipped) for the
// dropped slots i >= nkept[b] and for ids outside [0, Ve); value = the flat index p.
__global__ void __launch_bounds__(kThreads)
    emb_pairs_kernel(const int64_t* __restrict__ ids, const int64_t* __restrict__ nkept, int32_t N,
                     int32_t k, int64_t Ve, uint32_t* __restrict__ keys, int32_t* __restrict__ vals) {
  const int32_t p = static_cast<int32_t>(blockIdx.x) * kThreads + static_cast<int32_t>(threadIdx.x);
  if (p >= N) return;
  const int32_t row = p / k, slot = p - row * k;  // 32-bit, once per pair
  const int64_t id = ids[p];
  const bool kept = slot < nkept[row] && id >= 0 && id < Ve;
  keys[p] = static_cast<uint32_t>(kept ? id : Ve);
  vals[p] = p;
}

// One pass of the LSD radix sort (8-bit digit at `shift`), in tiles of kThreads items:
// lsd_hist_kernel writes the tile's digit counts digit-major (hist[d * tiles + tile]), so that
// an exclusive scan of hist gives every (digit, tile) its first output slot; lsd_scatter_kernel
// places each item at that slot + the number of earlier items of its tile with the same digit
// (stable: tiles in order, items in order within a tile).
constexpr int kScanThreads = 1024;  // the single-block exclusive scan of the counts

__global__ void __launch_bounds__(kThreads)
    lsd_hist_kernel(const uint32_t* __restrict__ keys, int32_t N, int shift, int32_t tiles,
                    int32_t* __restrict__ hist) {
  __shared__ int h[soft_select::kBuckets];
  static_assert(kThreads == soft_select::kBuckets, "one digit per thread");
  h[threadIdx.x] = 0;
  __syncthreads();
  const int32_t i = static_cast<int32_t>(blockIdx.x) * kThreads + static_cast<int32_t>(threadIdx.x);
  if (i < N) atomicAdd(&h[(keys[i] >> shift) & 0xffu], 1);  // int counts: order-free
  __syncthreads();
  hist[static_cast<int64_t>(threadIdx.x) * tiles + blockIdx.x] = h[threadIdx.x];
}

// In-place exclusive scan of a[0, M) by one block: each thread sums a contiguous chunk, a block
// scan of the chunk sums (warp shuffles + the warps' totals), then each thread rewrites its chunk.
__global__ void __launch_bounds__(kScanThreads) exclusive_scan_kernel(int32_t* __restrict__ a, int64_t M) {
  __shared__ int32_t wsum[kScanThreads / 32];
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t per = (M + kScanThreads - 1) / kScanThreads;
  const int64_t lo = min(M, tid * per), hi = min(M, lo + per);
  int32_t s = 0;
  for (int64_t i = lo; i < hi; ++i) s += a[i];
  int32_t incl = s;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int32_t x = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += x;
  }
  if (lane == 31) wsum[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int32_t w = wsum[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t x = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += x;
    }
    wsum[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  int32_t run = incl - s + (warp > 0 ? wsum[warp - 1] : 0);
  for (int64_t i = lo; i < hi; ++i) {
    const int32_t x = a[i];
    a[i] = run;
    run += x;
  }
}

__global__ void __launch_bounds__(kThreads)
    lsd_scatter_kernel(const uint32_t* __restrict__ kin, const int32_t* __restrict__ vin, int32_t N,
                       int shift, int32_t tiles, const int32_t* __restrict__ off,
                       uint32_t* __restrict__ kout, int32_t* __restrict__ vout) {
  __shared__ int dg[kThreads];
  const int32_t i = static_cast<int32_t>(blockIdx.x) * kThreads + static_cast<int32_t>(threadIdx.x);
  const uint32_t key = i < N ? kin[i] : 0u;
  const int d = i < N ? static_cast<int>((key >> shift) & 0xffu) : -1;
  dg[threadIdx.x] = d;
  __syncthreads();
  if (i >= N) return;
  int r = 0;  // earlier items of this tile with the same digit
  for (int j = 0; j < static_cast<int>(threadIdx.x); ++j) r += dg[j] == d;
  const int32_t pos = off[static_cast<int64_t>(d) * tiles + blockIdx.x] + r;
  kout[pos] = key;
  vout[pos] = vin[i];
}

// grid (N, column chunks): block j works only if sorted position j starts a segment of a kept
// id; each thread owns kVec consecutive columns (16-byte loads of grad_embeds when aligned).
template <typename emb_t, typename w_t>
__global__ void __launch_bounds__(kThreads)
    emb_segments_kernel(const w_t* __restrict__ gE, const uint32_t* __restrict__ keys,
                        const int32_t* __restrict__ pairs, const w_t* __restrict__ W, int32_t N,
                        int32_t k, int64_t D, int64_t Ve, double scale, emb_t* __restrict__ out) {
  constexpr int kVec = 16 / sizeof(w_t);
  const int32_t j = static_cast<int32_t>(blockIdx.x);
  const uint32_t key = keys[j];
  if (key >= static_cast<uint64_t>(Ve) || (j > 0 && keys[j - 1] == key)) return;  // uniform
  const int64_t d0 = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * kVec;
  if (d0 >= D) return;
  const bool vec = d0 + kVec <= D && D % kVec == 0 && reinterpret_cast<uintptr_t>(gE) % 16 == 0;
  w_t acc[kVec];
#pragma unroll
  for (int c = 0; c < kVec; ++c) acc[c] = w_t(0);
  for (int32_t q = j; q < N && keys[q] == key; ++q) {  // ascending p (stable sort)
    const int32_t p = pairs[q];
    const int32_t row = p / k;  // 32-bit, once per pair
    const w_t wi = W[p] * static_cast<w_t>(scale);
    const w_t* g = gE + static_cast<int64_t>(row) * D + d0;
    if (vec) {
      w_t gv[kVec];
      *reinterpret_cast<uint4*>(gv) = __ldg(reinterpret_cast<const uint4*>(g));
#pragma unroll
      for (int c = 0; c < kVec; ++c) acc[c] += wi * gv[c];
    } else {
#pragma unroll
      for (int c = 0; c < kVec; ++c)
        if (d0 + c < D) acc[c] += wi * g[c];
    }
  }
  emb_t* o = out + static_cast<int64_t>(key) * D + d0;
#pragma unroll
  for (int c = 0; c < kVec; ++c) {
    if (d0 + c < D) {
      if constexpr (std::is_same_v<emb_t, double>) {
        o[c] = static_cast<double>(acc[c]);
      } else {
        o[c] = from_float<emb_t>(static_cast<float>(acc[c]));
      }
    }
  }
}

template <typename F>
void dispatch_cuda_float(ScalarType t, const char* name, F&& f) {
  switch (t) {
    case ScalarType::Float: f(float{}); break;
    case ScalarType::Double: f(double{}); break;
    case ScalarType::BFloat16: f(bf16{}); break;
    case ScalarType::Half: f(fp16{}); break;
    default: SOFTDEC_CHECK(false, name, " must be float32, bfloat16, float16 or float64, got ",
                           dtype_name(t));
  }
}

Tensor soft_mixture_backward_cuda(Tensor grad_embeds, Tensor grad_weights, Tensor grad_entropy,
                                  Tensor grad_max_prob, Tensor grad_noisy, Tensor logits,
                                  Tensor embedding, Tensor temperature, Tensor ids, Tensor weights,
                                  Tensor lse, Tensor entropy, Tensor max_prob, Tensor valid,
                                  Tensor nkept, int64_t noise, double tau, double embed_scale,
                                  double gumbel_eps) {
  soft_mixture_checks::check_backward_inputs(logits, embedding);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  const int64_t B = logits.size(0), V = logits.size(1), D = embedding.size(1), k = ids.size(1);
  Tensor out = new_empty(logits, {B, V}, logits.scalar_type());
  if (B == 0) return out;
  cudaStream_t stream = current_stream(logits);
  dispatch_cuda_float(logits.scalar_type(), "logits", [&](auto ltag) {
    dispatch_cuda_float(embedding.scalar_type(), "embedding", [&](auto etag) {
      using scalar_t = decltype(ltag);
      using emb_t = decltype(etag);
      using cs_t = typename CudaNative<scalar_t>::type;
      using ce_t = typename CudaNative<emb_t>::type;
      using acc_t = typename AccOf<scalar_t>::type;
      backward_kernel<cs_t, ce_t, acc_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
          grad_embeds.const_data_ptr<acc_t>(), grad_weights.const_data_ptr<acc_t>(),
          grad_entropy.const_data_ptr<acc_t>(), grad_max_prob.const_data_ptr<acc_t>(),
          grad_noisy.const_data_ptr<acc_t>(),
          reinterpret_cast<const cs_t*>(logits.const_data_ptr<scalar_t>()), logits.stride(0),
          reinterpret_cast<const ce_t*>(embedding.const_data_ptr<emb_t>()), embedding.stride(0),
          temperature.const_data_ptr<double>(), ids.const_data_ptr<int64_t>(),
          weights.const_data_ptr<acc_t>(), lse.const_data_ptr<acc_t>(),
          entropy.const_data_ptr<acc_t>(), max_prob.const_data_ptr<acc_t>(),
          valid.const_data_ptr<bool>(), nkept.const_data_ptr<int64_t>(), V, D,
          static_cast<int>(k), static_cast<int>(noise), tau, embed_scale, gumbel_eps,
          reinterpret_cast<cs_t*>(out.mutable_data_ptr<scalar_t>()));
      SOFTDEC_CUDA_LAUNCH_CHECK();
    });
  });
  return out;
}

Tensor soft_mixture_embedding_backward_cuda(Tensor grad_embeds, Tensor embedding, Tensor ids,
                                            Tensor weights, Tensor nkept, double embed_scale) {
  check_dim(embedding, "embedding", 2, "(vocab, dim)");
  torch::stable::accelerator::DeviceGuard guard(embedding.get_device_index());
  const int64_t Ve = embedding.size(0), D = embedding.size(1);
  const int64_t B = ids.size(0), k = ids.size(1);
  Tensor out = new_empty(embedding, {Ve, D}, embedding.scalar_type());
  cudaStream_t stream = current_stream(embedding);
  SOFTDEC_CUDA_CHECK(cudaMemsetAsync(out.data_ptr(), 0,
                                     static_cast<size_t>(Ve * D) * out.element_size(), stream));
  if (B * k == 0 || D == 0) return out;
  SOFTDEC_CHECK(B * k <= INT32_MAX, "soft_mixture backward: B * k must be < 2^31, got ", B * k);
  SOFTDEC_CHECK(Ve < INT32_MAX, "soft_mixture backward: the vocabulary must be < 2^31 - 1, got ", Ve);
  const int32_t N = static_cast<int32_t>(B * k);
  const int32_t tiles = static_cast<int32_t>((N + kThreads - 1) / kThreads);
  // sort keys: ids in [0, Ve) and the sentinel Ve: end_bit bits, 8 per pass
  int end_bit = 1;
  while (end_bit < 32 && (static_cast<uint32_t>(Ve) >> end_bit) != 0u) ++end_bit;
  Tensor keys_a = new_empty(embedding, {N}, ScalarType::Int);
  Tensor keys_b = new_empty(embedding, {N}, ScalarType::Int);
  Tensor vals_a = new_empty(embedding, {N}, ScalarType::Int);
  Tensor vals_b = new_empty(embedding, {N}, ScalarType::Int);
  Tensor hist = new_empty(embedding, {static_cast<int64_t>(soft_select::kBuckets) * tiles}, ScalarType::Int);
  auto* kin = reinterpret_cast<uint32_t*>(keys_a.mutable_data_ptr<int32_t>());
  auto* kout = reinterpret_cast<uint32_t*>(keys_b.mutable_data_ptr<int32_t>());
  int32_t* vin = vals_a.mutable_data_ptr<int32_t>();
  int32_t* vout = vals_b.mutable_data_ptr<int32_t>();
  int32_t* hp = hist.mutable_data_ptr<int32_t>();
  emb_pairs_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(
      ids.const_data_ptr<int64_t>(), nkept.const_data_ptr<int64_t>(), N, static_cast<int32_t>(k), Ve,
      kin, vin);
  SOFTDEC_CUDA_LAUNCH_CHECK();
  for (int shift = 0; shift < end_bit; shift += soft_select::kRadixBits) {
    lsd_hist_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(kin, N, shift, tiles, hp);
    SOFTDEC_CUDA_LAUNCH_CHECK();
    exclusive_scan_kernel<<<1, kScanThreads, 0, stream>>>(hp, static_cast<int64_t>(soft_select::kBuckets) * tiles);
    SOFTDEC_CUDA_LAUNCH_CHECK();
    lsd_scatter_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(kin, vin, N, shift, tiles, hp,
                                                                              kout, vout);
    SOFTDEC_CUDA_LAUNCH_CHECK();
    std::swap(kin, kout);
    std::swap(vin, vout);
  }
  // sorted: (kin, vin)
  dispatch_cuda_float(embedding.scalar_type(), "embedding", [&](auto etag) {
    using emb_t = decltype(etag);
    using ce_t = typename CudaNative<emb_t>::type;
    auto launch = [&](auto wtag) {
      using w_t = decltype(wtag);
      constexpr int kVec = 16 / sizeof(w_t);
      const int64_t per_block = static_cast<int64_t>(kThreads) * kVec;
      const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>((D + per_block - 1) / per_block));
      emb_segments_kernel<ce_t, w_t><<<grid, kThreads, 0, stream>>>(
          grad_embeds.const_data_ptr<w_t>(), kin, vin, weights.const_data_ptr<w_t>(), N,
          static_cast<int32_t>(k), D, Ve, embed_scale,
          reinterpret_cast<ce_t*>(out.mutable_data_ptr<emb_t>()));
      SOFTDEC_CUDA_LAUNCH_CHECK();
    };
    if (weights.scalar_type() == ScalarType::Double)
      launch(double{});
    else
      launch(float{});
  });
  return out;
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("soft_mixture", TORCH_BOX(&softdec::soft_mixture_cuda));
  m.impl("soft_mixture_backward", TORCH_BOX(&softdec::soft_mixture_backward_cuda));
  m.impl("soft_mixture_embedding_backward", TORCH_BOX(&softdec::soft_mixture_embedding_backward_cuda));
}
