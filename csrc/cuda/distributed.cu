// CUDA backend of softdec.distributed's shard ops: the same numbers as the CPU
// ops of csrc/cpu/distributed.cpp (read its header first), on a CUDA shard.
//
// shard_block_masses (grid rows x splits, kMassThreads): the sums of the kept
//   draw masses of the 1024-token blocks lying entirely in the shard, by the
//   lane rule of csrc/cpu/sampling_kernels.h ("inverse-CDF draw (sample)") that
//   sampling.cu's block_mass_kernel also follows: lane l of global block b holds
//   tokens 1024 b + 16 j + l, j = 0..63, added in float in j order (__fadd_rn);
//   the block sum is the 16 lane sums added in double in lane order (__dadd_rn,
//   one half-warp, shuffles). Every block sum is therefore the CPU's bit for bit
//   and does not depend on which thread loads what. Masses are
//   filter::fexp2(__fmul_rn(__fsub_rn(x, m), c)), c = filter::draw_scale(1/T),
//   kept iff x > -inf and __fmul_rn(__fsub_rn(x, m), 1/T) >= log(min_p)
//   (explicitly rounded: nvcc cannot contract them into an FMA the CPU lacks).
// shard_block_pick (one CUDA block per row, kPickThreads = 256, 4 tokens a
//   thread): the chosen block's 1024 masses into shared memory, then one thread
//   walks them in vocabulary order with a running double sum (pick_in).
// block_draw_target (one warp per row): the block sums are staged in shared
//   memory by coalesced loads, one lane adds them in block order (the total),
//   target = uniform53 * total, then walks them again (pick_in) keeping the sum
//   of the blocks before the chosen one: draw_from_blocks' arithmetic.
// shard_partials (one CUDA block per row, kPartThreads): pass 1 gives the flags,
//   the max (lowest index among ties) and the count of tokens > -inf; if more
//   than c, a block radix selection (4 rounds of 8 bits of filter::order_key,
//   warp-aggregated integer histograms in shared memory) finds the c-th token's
//   value and how many of its ties are kept (the lowest ids); one ordered
//   compaction pass (two block scans per 2048 tokens) then writes the kept
//   tokens in id order. The first c tokens of the filter order (logit
//   descending, lower id first) is a set, so this is the CPU's output exactly.
// merge_partials (one CUDA block per row): thread 0 merges flags and max in rank
//   order as the CPU does; every candidate finds its place in the id-ordered
//   union by binary searches in the ranks' id-sorted lists (a stable merge by
//   (id, rank); ids are distinct when the shards tile the vocabulary).
//
// Loads: 4 consecutive tokens per load (16 bytes of float32, 8 of bf16 / fp16)
// where the address is aligned, scalar loads otherwise. No floating-point
// atomics; the only atomics are 32-bit integer adds into shared histograms.
// Per-row temperatures are not checked here (see csrc/distributed_checks.h).
#include "cuda_common.cuh"
#include "../dispatch.h"
#include "../distributed_checks.h"
#include "block_argmax.cuh"
#include "distributed_walk.cuh"
#include "fixed_hist.cuh"
#include "mass_sum.cuh"
#include "softdec/filter.h"
#include "softdec/philox.h"
#include "softdec/verify.h"

#include <cstdint>
#include <cuda_runtime.h>
#include <tuple>
#include <type_traits>
#include <utility>

namespace softdec {
namespace {

using distributed_checks::kHead;

constexpr int64_t kCdfBlock = 1024;  // tokens per block of the draw (sampling_kernels.h kCdfBlock)
constexpr int kCdfLanes = 16;        // float lanes per block (sampling_kernels.h kCdfLanes)
using dist_walk::kNoId;  // 2^62: id of an empty candidate slot (distributed.cpp)

constexpr int kMassThreads = 128;   // shard_block_masses: kMassGroup blocks per step
constexpr int kPickThreads = 256;   // shard_block_pick: 4 tokens of the chosen block per thread
constexpr int kTargetThreads = 32;  // block_draw_target: one warp per row
constexpr int kTargetChunk = 256;   // block sums staged per step
constexpr int kPartThreads = 512;   // shard_partials: one CUDA block per row
constexpr int kPartWarps = kPartThreads / 32;
constexpr int kMergeThreads = 256;  // merge_partials: one CUDA block per row
constexpr int kMergeWarps = kMergeThreads / 32;
constexpr int kHistThreads = 256;  // shard_radix_hist: grid (rows, splits)
constexpr int64_t kHistMinTokens = 8192;  // shard_radix_hist: tokens per CUDA block at least

constexpr int kMassGroup = kMassThreads / kCdfLanes;                                    // 8 blocks per step
constexpr int kMassPitch = static_cast<int>(kCdfBlock) + 16;                            // lanes l, l + 16: distinct banks
constexpr int kMassLoads = kMassGroup * static_cast<int>(kCdfBlock) / 4 / kMassThreads;  // 16 loads per thread
static_assert(kMassThreads % 32 == 0 && kCdfLanes == 16, "half-warp lane groups");
static_assert(kPickThreads * 4 == kCdfBlock, "one 4-token load per thread covers a block");
static_assert(kPartWarps <= 32 && kMergeWarps <= 32, "warp totals scanned by one warp");

constexpr int64_t kNoCut = 0x7fffffffffffffffLL;  // cut_index keeping every tie (python _IMAX)

__device__ __forceinline__ float ninf() { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ float pinf() { return __int_as_float(0x7f800000); }


template <class T>
__device__ __forceinline__ bool aligned4(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

// A bf16 / fp16 value from its bits (little-endian: token 4g + 2j + 1 is the high half of word j).
template <class T>
__device__ __forceinline__ float bits16_to_float(unsigned short b) {
  if constexpr (std::is_same<T, fp16>::value) return __half2float(__ushort_as_half(b));
  else return __uint_as_float(static_cast<unsigned>(b) << 16);
}

// p[i] as a float (16-bit types from their bits).
template <class T>
__device__ __forceinline__ float ld(const T* p, int64_t i) {
  if constexpr (sizeof(T) == 4) return p[i];
  else return bits16_to_float<T>(reinterpret_cast<const unsigned short*>(p)[i]);
}

// p[0..4) as floats, -inf for l >= n: one vector load when p is aligned and n >= 4.
template <class T>
__device__ __forceinline__ void load4(const T* p, int64_t n, bool aligned, float v[4]) {
  if (aligned && n >= 4) {
    if constexpr (sizeof(T) == 4) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(p));
      v[0] = q.x;
      v[1] = q.y;
      v[2] = q.z;
      v[3] = q.w;
    } else {
      // 4 x 16 bits, converted from their bits (no local copy whose address is taken)
      const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
      v[0] = bits16_to_float<T>(static_cast<unsigned short>(q.x & 0xffffu));
      v[1] = bits16_to_float<T>(static_cast<unsigned short>(q.x >> 16));
      v[2] = bits16_to_float<T>(static_cast<unsigned short>(q.y & 0xffffu));
      v[3] = bits16_to_float<T>(static_cast<unsigned short>(q.y >> 16));
    }
    return;
  }
#pragma unroll
  for (int l = 0; l < 4; ++l) v[l] = l < n ? ld(p, l) : ninf();
}

// ------------------------------------------------------------------ the draw of plain / min-p rows

// A row's cut (distributed.cpp row_cut / RowCuts::at): max m, 1/T, the draw's base-2 scale,
// log(min_p), and the top-p / large-k cut (cv, ci): -inf / INT64_MAX (none) for plain and
// min-p rows, else tokens x > cv or x == cv at a global id <= ci are kept.
struct RowCut {
  float m, it, c, lmp, cv;
  int64_t ci;
};

__device__ __forceinline__ RowCut row_cut(float m, float t, float mp, const float* cvs = nullptr,
                                          const int64_t* cis = nullptr, int64_t r = 0) {
  RowCut k;
  k.m = m;
  k.it = __fdiv_rn(1.0f, t);
  k.c = filter::draw_scale(k.it);
  k.lmp = filter::log_min_p_of(mp);
  k.cv = cvs ? cvs[r] : ninf();
  k.ci = cis ? cis[r] : kNoCut;
  return k;
}

// (x - m) / T as the CPU rounds it (explicitly rounded: nvcc cannot contract it into an FMA
// with what follows).
__device__ __forceinline__ float scaled(const RowCut& k, float x) { return __fmul_rn(__fsub_rn(x, k.m), k.it); }

// Cut::kept / filter::kept of token x at global id gi (kCut false: a row without a top-p /
// top-k cut, the test compiled out).
template <bool kCut = true>
__device__ __forceinline__ bool cut_kept(const RowCut& k, float x, int64_t gi) {
  if (kCut && !(x > k.cv || (x == k.cv && gi <= k.ci))) return false;
  return x > ninf() && scaled(k, x) >= k.lmp;
}

// The draw mass filter::draw_mass of a kept token, 0 otherwise, rounded as on CPU.
template <bool kCut>
__device__ __forceinline__ float cut_mass(const RowCut& k, float x, int64_t gi) {
  return cut_kept<kCut>(k, x, gi) ? filter::fexp2(__fmul_rn(__fsub_rn(x, k.m), k.c)) : 0.0f;
}

// filter::token_mass (fexp((x - m) / T)), the unit of the top-p cut, the normaliser and the race.
__device__ __forceinline__ float unit_mass(const RowCut& k, float x) { return filter::fexp(scaled(k, x)); }

// sampling_kernels.h's pick_in: the first j with mass[j] > 0 whose running double
// sum (in j order) exceeds target; else the last j with mass; -1 if none.
__device__ int64_t pick_in_seq(const float* mass, int64_t n, double target) {
  double run = 0.0;
  int64_t last = -1;
  for (int64_t j = 0; j < n; ++j) {
    const float v = mass[j];
    if (!(v > 0.0f)) continue;
    run = __dadd_rn(run, static_cast<double>(v));
    last = j;
    if (run > target) return j;
  }
  return last;
}

// Grid (rows, splits) x kMassThreads. Split s owns the inner blocks [nb s / splits,
// nb (s + 1) / splits) (local numbering: block j is global block b_lo + j) and walks
// them kMassGroup at a time (kCut: rows with a top-p / top-k cut, shard_cut_block_masses): every thread loads 4-token groups and writes their
// masses to shared memory e[block][token]; thread (j, l) = (t / 16, t % 16) adds lane
// l of block j in float in token order, the half-warp adds its 16 lane sums in
// double in lane order.
template <class T, bool kCut>
__global__ void __launch_bounds__(kMassThreads) shard_block_mass_kernel(
    const T* __restrict__ logits, int64_t rs, int64_t offset, int64_t V, int64_t b_lo, int64_t nb,
    const float* __restrict__ mx, const float* __restrict__ temp, const float* __restrict__ minp,
    const float* __restrict__ cvs, const int64_t* __restrict__ cis, int splits, double* __restrict__ out) {
  __shared__ __align__(16) float e[kMassGroup * kMassPitch];
  const int64_t r = blockIdx.x;
  const int s = blockIdx.y;
  const RowCut k = row_cut(mx[r], temp[r], minp[r], cvs, cis, r);  // cvs null: no top-p / top-k cut
  // global token t of this row is row[t - offset] (only tokens of inner blocks are read)
  const T* row = logits + r * rs;
  // the blocks start 1024 tokens apart, so all share the alignment of the first
  const bool aligned = aligned4(row + (b_lo * kCdfBlock - offset));
  const int64_t j0 = nb * s / splits, j1 = nb * (s + 1) / splits;
  const int lane = threadIdx.x & 31;
  const int gj = threadIdx.x / kCdfLanes, gl = threadIdx.x % kCdfLanes;
  constexpr int kGroupsPerBlock = static_cast<int>(kCdfBlock) / 4;
  double* o = out + r * nb;
  for (int64_t jj = j0; jj < j1; jj += kMassGroup) {  // the same trip count for every thread
    const int nblk = static_cast<int>(j1 - jj < kMassGroup ? j1 - jj : kMassGroup);
    const int ngroups = nblk * kGroupsPerBlock;
    float v[kMassLoads][4];
#pragma unroll
    for (int u = 0; u < kMassLoads; ++u) {
      const int g = threadIdx.x + u * kMassThreads;
      const int j = g / kGroupsPerBlock, w = 4 * (g % kGroupsPerBlock);
      const int64_t t0 = (b_lo + jj + j) * kCdfBlock + w;
      if (g < ngroups) load4(row + (t0 - offset), V - t0, aligned, v[u]);  // -inf past V: mass 0
    }
#pragma unroll
    for (int u = 0; u < kMassLoads; ++u) {
      const int g = threadIdx.x + u * kMassThreads;
      if (g >= ngroups) continue;
      const int j = g / kGroupsPerBlock, w = 4 * (g % kGroupsPerBlock);
      const int64_t t0 = (b_lo + jj + j) * kCdfBlock + w;  // global id of v[u][0]
      float4 q;
      q.x = cut_mass<kCut>(k, v[u][0], t0);
      q.y = cut_mass<kCut>(k, v[u][1], t0 + 1);
      q.z = cut_mass<kCut>(k, v[u][2], t0 + 2);
      q.w = cut_mass<kCut>(k, v[u][3], t0 + 3);
      *reinterpret_cast<float4*>(&e[j * kMassPitch + w]) = q;
    }
    __syncthreads();
    // adding a +0 (a token not kept, or past V) leaves a lane sum unchanged (sums are >= +0)
    float acc = 0.0f;
    if (gj < nblk) {
      const float* ej = e + gj * kMassPitch + gl;
#pragma unroll 16
      for (int i = 0; i < static_cast<int>(kCdfBlock) / kCdfLanes; ++i) acc = __fadd_rn(acc, ej[kCdfLanes * i]);
    }
    double sum = 0.0;
    const int hb = lane & 16;  // this half-warp's first lane = lane 0 of block gj
#pragma unroll
    for (int l = 0; l < kCdfLanes; ++l) sum = __dadd_rn(sum, static_cast<double>(__shfl_sync(0xffffffffu, acc, hb + l)));
    if (gl == 0 && gj < nblk) o[jj + gj] = sum;
    __syncthreads();  // e is rewritten by the next step
  }
}

// One CUDA block per row: the token drawn in block blocks[r] (global id), -1 when
// that block is not an inner block of the shard or the row's temperature is not > 0.
template <class T, bool kCut>
__global__ void __launch_bounds__(kPickThreads) shard_block_pick_kernel(
    const T* __restrict__ logits, int64_t rs, int64_t offset, int64_t V, int64_t b_lo, int64_t b_hi,
    const float* __restrict__ mx, const float* __restrict__ temp, const float* __restrict__ minp,
    const float* __restrict__ cvs, const int64_t* __restrict__ cis, const int64_t* __restrict__ blocks,
    const double* __restrict__ targets, int64_t* __restrict__ out) {
  __shared__ __align__(16) float e[kCdfBlock];
  const int64_t r = blockIdx.x;
  const int64_t b = blocks[r];
  const float t = temp[r];
  if (b < b_lo || b >= b_hi || !(t > 0.0f)) {  // uniform over the CUDA block
    if (threadIdx.x == 0) out[r] = -1;
    return;
  }
  const RowCut k = row_cut(mx[r], t, minp[r], cvs, cis, r);  // cvs null: no top-p / top-k cut
  const int64_t b0 = b * kCdfBlock;
  const int64_t n = V - b0 < kCdfBlock ? V - b0 : kCdfBlock;
  const T* p = logits + r * rs + (b0 - offset);
  const int w = 4 * threadIdx.x;
  float v[4];
  load4(p + w, n - w, aligned4(p), v);
  float4 q;
  q.x = cut_mass<kCut>(k, v[0], b0 + w);
  q.y = cut_mass<kCut>(k, v[1], b0 + w + 1);
  q.z = cut_mass<kCut>(k, v[2], b0 + w + 2);
  q.w = cut_mass<kCut>(k, v[3], b0 + w + 3);
  *reinterpret_cast<float4*>(&e[w]) = q;  // past n: -inf, mass 0 (never read: pick_in stops at n)
  __syncthreads();
  if (threadIdx.x == 0) {
    const int64_t j = pick_in_seq(e, n, targets[r]);
    out[r] = j < 0 ? -1 : b0 + j;
  }
}

// One warp per row of block sums blk (rows, nb): (the chosen block or -1, what is left
// of the target in it), draw_from_blocks' double arithmetic in block order.
__global__ void __launch_bounds__(kTargetThreads) block_draw_target_kernel(
    const double* __restrict__ blk, int64_t nb, const int64_t* __restrict__ seeds,
    const int64_t* __restrict__ offsets, int64_t* __restrict__ block_out, double* __restrict__ target_out) {
  __shared__ double sb[kTargetChunk];
  const int64_t r = blockIdx.x;
  const int lane = threadIdx.x;
  const double* row = blk + r * nb;
  // pass 1: total = blk[0] + blk[1] + ... (in order, lane 0)
  double total = 0.0;
  for (int64_t c0 = 0; c0 < nb; c0 += kTargetChunk) {
    const int n = static_cast<int>(nb - c0 < kTargetChunk ? nb - c0 : kTargetChunk);
    for (int j = lane; j < n; j += kTargetThreads) sb[j] = row[c0 + j];
    __syncwarp();
    if (lane == 0)
      for (int j = 0; j < n; ++j) total = __dadd_rn(total, sb[j]);
    __syncwarp();
  }
  total = __shfl_sync(0xffffffffu, total, 0);
  if (!(total > 0.0)) {
    if (lane == 0) {
      block_out[r] = -1;
      target_out[r] = 0.0;
    }
    return;
  }
  const double tg =
      __dmul_rn(philox::uniform53(static_cast<uint64_t>(seeds[r]), static_cast<uint64_t>(offsets[r])), total);
  // pass 2: pick_in over the blocks and the sum of the blocks before the chosen one
  // (dist_walk::DrawWalk: the CPU's double additions in the CPU's order), lane 0
  dist_walk::DrawWalk walk;
  bool done = false;
  for (int64_t c0 = 0; c0 < nb && !done; c0 += kTargetChunk) {  // `done` is uniform over the warp
    const int n = static_cast<int>(nb - c0 < kTargetChunk ? nb - c0 : kTargetChunk);
    for (int j = lane; j < n; j += kTargetThreads) sb[j] = row[c0 + j];
    __syncwarp();
    if (lane == 0)
      for (int j = 0; j < n && !done; ++j) done = walk.feed(sb[j], c0 + j, tg);
    __syncwarp();
    done = __shfl_sync(0xffffffffu, done ? 1 : 0, 0) != 0;
  }
  if (lane == 0) walk.finish(tg, block_out + r, target_out + r);
}

// ------------------------------------------------------------------ shard partials

// Arg / arg_take / block_argmax: csrc/cuda/block_argmax.cuh (shared with sampling.cu).
using block_arg::Arg;
using block_arg::arg_take;

// Block-wide exclusive scan of v (kPartThreads threads); *total = the block's sum.
__device__ __forceinline__ int block_excl_scan(int v, int* total, int* s_w) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane == 31) s_w[w] = inc;
  __syncthreads();
  if (w == 0) {
    int t = lane < kPartWarps ? s_w[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, t, o);
      if (lane >= o) t += y;
    }
    if (lane < kPartWarps) s_w[lane] = t;  // inclusive warp prefix
  }
  __syncthreads();
  const int wbase = w ? s_w[w - 1] : 0;
  *total = s_w[kPartWarps - 1];
  __syncthreads();  // s_w is reused by the next call
  return wbase + inc - v;
}

// hist_add (csrc/cuda/fixed_hist.cuh, shared with sampling.cu): warp-aggregated shared-memory
// histograms, one 32-bit integer atomic per distinct bucket of the warp (counts; with
// mass_mode, the fixed-point masses as lo / hi uint32 pairs). Integer sums: the histogram
// does not depend on the order of the adds.
using fixed_hist::hist_add;

// One CUDA block per row of the shard x (rows, n) at global offset `offset`: the row of
// partials (8 + 2c float64) of distributed.cpp's shard_partials_cpu.
// (min 1 block per SM in the launch bound: without it ptxas holds the 16-bit variants to 32
// registers and spills; with it they take 54, no spill)
template <class T>
__global__ void __launch_bounds__(kPartThreads, 1) shard_partials_kernel(const T* __restrict__ logits, int64_t rs,
                                                                      int64_t n, int64_t offset, int64_t c,
                                                                      double* __restrict__ out) {
  __shared__ int hc[256];
  __shared__ int s_w[kPartWarps];
  __shared__ float s_key[kPartWarps];
  __shared__ int64_t s_idx[kPartWarps];
  __shared__ long long s_cnt[kPartWarps];
  __shared__ uint32_t s_prefix;
  __shared__ int64_t s_rem;
  const int64_t r = blockIdx.x;
  const T* row = logits + r * rs;
  const bool aligned = aligned4(row);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t groups = (n + 3) / 4;
  double* o = out + r * (kHead + 2 * c);

  // pass 1: flags, the max of the tokens > -inf (lowest index among ties), their count
  int nan = 0, pinf_seen = 0;
  long long cnt = 0;
  Arg best{ninf(), -1};
  for (int64_t g = threadIdx.x; g < groups; g += kPartThreads) {
    float v[4];
    load4(row + 4 * g, n - 4 * g, aligned, v);
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const float x = v[l];
      nan |= x != x;
      pinf_seen |= x == pinf();
      if (x > ninf()) {  // NaN is not: only candidates (a +inf is one, as on CPU)
        ++cnt;
        arg_take(best, x, 4 * g + l);
      }
    }
  }
  nan = __syncthreads_or(nan);
  pinf_seen = __syncthreads_or(pinf_seen);
#pragma unroll
  for (int d = 16; d; d >>= 1) {
    const float k2 = __shfl_xor_sync(0xffffffffu, best.key, d);
    const long long i2 = __shfl_xor_sync(0xffffffffu, static_cast<long long>(best.idx), d);
    arg_take(best, k2, i2);
    cnt += __shfl_xor_sync(0xffffffffu, cnt, d);
  }
  if (lane == 0) {
    s_key[w] = best.key;
    s_idx[w] = best.idx;
    s_cnt[w] = cnt;
  }
  __syncthreads();
  if (threadIdx.x == 0) {  // fold the warp results (slot 0 holds the block's)
    Arg top{ninf(), -1};
    long long sum = 0;
    for (int j = 0; j < kPartWarps; ++j) {
      arg_take(top, s_key[j], s_idx[j]);
      sum += s_cnt[j];
    }
    s_key[0] = top.key;
    s_idx[0] = top.idx;
    s_cnt[0] = sum;
  }
  __syncthreads();
  const Arg top{s_key[0], s_idx[0]};
  const long long total = s_cnt[0];
  if (threadIdx.x == 0) {
    o[0] = nan ? 1.0 : 0.0;
    o[1] = pinf_seen ? 1.0 : 0.0;
    o[2] = total > 0 ? 1.0 : 0.0;
    o[3] = total > 0 ? static_cast<double>(top.key) : -static_cast<double>(pinf());
    o[4] = total > 0 ? static_cast<double>(top.idx + offset) : kNoId;
    o[5] = o[6] = o[7] = 0.0;
  }
  if (c == 0) return;
  const int64_t m = total < c ? total : c;  // candidates written; the slots [m, c) are padding
  for (int64_t j = m + threadIdx.x; j < c; j += kPartThreads) {
    o[kHead + j] = -static_cast<double>(pinf());
    o[kHead + c + j] = kNoId;
  }
  if (m == 0) return;

  // the kept set: x > value, and the first `rem` tokens (in id order) with x == value;
  // value = -inf, rem = 0 keeps every token > -inf (there are at most c)
  float value = ninf();
  int64_t rem = 0;
  if (total > c) {
    // radix selection of the c-th token of the order among the tokens > -inf
    if (threadIdx.x == 0) {
      s_prefix = 0;
      s_rem = c;
    }
    uint32_t mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += kPartThreads) hc[b] = 0;
      __syncthreads();
      const uint32_t prefix = s_prefix;
      for (int64_t g0 = 0; g0 < groups; g0 += kPartThreads) {  // the same trip count for every thread
        const int64_t g = g0 + threadIdx.x;
        float v[4] = {ninf(), ninf(), ninf(), ninf()};
        if (g < groups) load4(row + 4 * g, n - 4 * g, aligned, v);
#pragma unroll
        for (int l = 0; l < 4; ++l) {
          int b = -1;
          if (v[l] > ninf()) {
            const uint32_t key = filter::order_key(v[l]);
            if ((key & mask) == prefix) b = static_cast<int>((key >> shift) & 0xffu);
          }
          hist_add(b, 0, false, hc, nullptr, nullptr);
        }
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        // buckets from the largest key down; there are >= s_rem tokens under the prefix
        int64_t left = s_rem;
        int chosen = 0;
        for (int b = 255; b >= 0; --b) {
          if (hc[b] >= left) {
            chosen = b;
            break;
          }
          left -= hc[b];
        }
        s_prefix = prefix | (static_cast<uint32_t>(chosen) << shift);
        s_rem = left;
      }
      mask |= 0xffu << shift;
      __syncthreads();
    }
    value = filter::key_float(s_prefix);
    rem = s_rem;  // ties of `value` to keep, lowest ids first (>= 1)
  }

  // ordered compaction: slots follow thread order, then token order (= id order)
  int64_t eq_seen = 0, slot = 0;
  for (int64_t g0 = 0; g0 < groups && slot < m; g0 += kPartThreads) {  // slot is uniform over the block
    const int64_t g = g0 + threadIdx.x;
    float v[4] = {ninf(), ninf(), ninf(), ninf()};
    if (g < groups) load4(row + 4 * g, n - 4 * g, aligned, v);
    int neq = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) neq += (v[l] > ninf() && v[l] == value) ? 1 : 0;
    int eq_total = 0;
    const int eq_before = block_excl_scan(neq, &eq_total, s_w);
    bool keep[4];
    int nk = 0, e = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const bool eq = v[l] > ninf() && v[l] == value;
      keep[l] = v[l] > value || (eq && eq_seen + eq_before + e < rem);
      e += eq ? 1 : 0;
      nk += keep[l] ? 1 : 0;
    }
    int kept_total = 0;
    const int at = block_excl_scan(nk, &kept_total, s_w);
    int64_t s = slot + at;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      if (!keep[l]) continue;
      o[kHead + s] = static_cast<double>(v[l]);
      o[kHead + c + s] = static_cast<double>(4 * g + l + offset);
      ++s;
    }
    eq_seen += eq_total;
    slot += kept_total;
  }
}

// ------------------------------------------------------------------ merge of the gathered partials

// One CUDA block per row of g (world, rows, 8 + 2c): merge_partials_cpu's outputs.
__global__ void __launch_bounds__(kMergeThreads) merge_partials_kernel(
    const double* __restrict__ g, int64_t Wd, int64_t R, int64_t c, bool* __restrict__ valid,
    double* __restrict__ mx, int64_t* __restrict__ am, float* __restrict__ cv, int64_t* __restrict__ ci) {
  __shared__ int s_ok;
  const int64_t r = blockIdx.x;
  const int64_t W = kHead + 2 * c, nc = Wd * c + 1;
  if (threadIdx.x == 0) {
    bool nan = false, pinf_seen = false, fin = false;
    double m = -static_cast<double>(pinf()), a = kNoId;
    for (int64_t w = 0; w < Wd; ++w) {  // rank order, as on CPU
      const double* p = g + (w * R + r) * W;
      nan |= p[0] > 0.0;
      pinf_seen |= p[1] > 0.0;
      fin |= p[2] > 0.0;
      if (p[3] > m) {
        m = p[3];
        a = p[4];
      } else if (p[3] == m && p[4] < a) {
        a = p[4];
      }
    }
    const bool ok = !nan && !pinf_seen && fin;
    valid[r] = ok;
    mx[r] = m;
    am[r] = ok && a < kNoId ? static_cast<int64_t>(a) : 0;
    s_ok = ok ? 1 : 0;
  }
  __syncthreads();
  const bool ok = s_ok != 0;
  const float qnan = __int_as_float(0x7fc00000);
  float* rv = cv + r * nc;
  int64_t* ri = ci + r * nc;
  // the ranks' candidate id lists (each ascending, 2^62 padding at its end)
  const auto ids = [&](int64_t w) { return g + (w * R + r) * W + kHead + c; };
  const int64_t ncand = dist_walk::real_candidates(ids, Wd, c);
  for (int64_t s = threadIdx.x; s < Wd * c; s += kMergeThreads) {
    const int64_t w = s / c, j = s % c;
    const double* p = g + (w * R + r) * W;
    const double id = p[kHead + c + j];
    if (!(id < kNoId)) continue;
    const int64_t pos = dist_walk::merge_position(ids, Wd, c, w, id);  // in the union ordered by (id, rank)
    rv[pos] = ok ? static_cast<float>(p[kHead + j]) : qnan;
    ri[pos] = static_cast<int64_t>(id);
  }
  for (int64_t j = ncand + threadIdx.x; j < nc; j += kMergeThreads) {
    rv[j] = ok ? ninf() : qnan;
    ri[j] = -1;
  }
}

// ------------------------------------------------------------------ the top-p / large-k cut on shards
// shard_radix_hist (grid rows x splits, kHistThreads): every CUDA block histograms its
//   slice of the shard into shared memory (fixed_hist::hist_add: integer counts and the
//   fixed-point masses as lo / hi uint32 pairs, no CAS, no float atomic), then adds its 256 +
//   256 buckets to the row's int64 output with 64-bit *integer* global atomics (ATOMG.ADD.64):
//   integer sums, so the histograms are the CPU's whatever the order of the adds. The masses
//   are filter::to_fixed(fexp((x - m) / T), mass_shift(V, token_mass(m, m, 1/T))), as
//   shard_radix_hist_cpu computes them.
// shard_nth_tie (one CUDA block per row, kPartThreads): the tokens equal to value inside the
//   prefix are counted chunk by chunk (2048 tokens, block_excl_scan: ties are numbered in id
//   order), the thread holding the n-th one writes its id; stops once n ties are seen.

template <class T>
__global__ void __launch_bounds__(kHistThreads) shard_radix_hist_kernel(
    const T* __restrict__ logits, int64_t rs, int64_t n, int64_t offset, int64_t V, const float* __restrict__ mx,
    const float* __restrict__ temp, const float* __restrict__ cvs, const int64_t* __restrict__ cis,
    const int64_t* __restrict__ prefix, int shift, int splits, unsigned long long* __restrict__ out) {
  __shared__ int hc[256];
  __shared__ uint32_t hlo[256], hhi[256];
  for (int b = threadIdx.x; b < 256; b += kHistThreads) {
    hc[b] = 0;
    hlo[b] = 0;
    hhi[b] = 0;
  }
  __syncthreads();
  const int64_t r = blockIdx.x;
  const RowCut k = row_cut(mx[r], temp[r], 0.0f, cvs, cis, r);  // min-p is not part of the cut
  // shard_radix_hist_cpu's shift of the fixed point: token_mass(m, m, 1/T) is the row's largest mass
  const int sh = filter::mass_shift(V, static_cast<double>(unit_mass(k, k.m)));
  const uint32_t mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
  const uint32_t want = static_cast<uint32_t>(prefix[r]) & mask;
  const T* row = logits + r * rs;
  const bool aligned = aligned4(row);
  const int64_t groups = (n + 3) / 4;
  const int64_t g0 = groups * blockIdx.y / splits, g1 = groups * (blockIdx.y + 1) / splits;
  for (int64_t base = g0; base < g1; base += kHistThreads) {  // the same trip count for every thread
    const int64_t g = base + threadIdx.x;
    float v[4] = {ninf(), ninf(), ninf(), ninf()};
    if (g < g1) load4(row + 4 * g, n - 4 * g, aligned, v);
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      int b = -1;
      uint64_t q = 0;
      const float x = v[l];
      if (x > ninf()) {
        const uint32_t key = filter::order_key(x);
        if ((key & mask) == want && filter::detail::in_prefix(x, offset + 4 * g + l, k.cv, k.ci)) {
          b = static_cast<int>((key >> shift) & 0xffu);
          q = filter::to_fixed(static_cast<double>(unit_mass(k, x)), sh);
        }
      }
      hist_add(b, q, true, hc, hlo, hhi);  // warp-collective
    }
  }
  __syncthreads();
  unsigned long long* o = out + r * 512;
  for (int b = threadIdx.x; b < 256; b += kHistThreads) {
    const unsigned long long q = (static_cast<unsigned long long>(hhi[b]) << 32) | hlo[b];
    if (q) atomicAdd(o + b, q);  // integer: exact in any order
    if (hc[b]) atomicAdd(o + 256 + b, static_cast<unsigned long long>(hc[b]));
  }
}

template <class T>
__global__ void __launch_bounds__(kPartThreads) shard_nth_tie_kernel(
    const T* __restrict__ logits, int64_t rs, int64_t n, int64_t offset, const float* __restrict__ value,
    const float* __restrict__ cvs, const int64_t* __restrict__ cis, const int64_t* __restrict__ nth,
    int64_t* __restrict__ out) {
  __shared__ int s_w[kPartWarps];
  __shared__ long long s_found;
  const int64_t r = blockIdx.x;
  const int64_t want = nth[r];
  if (want < 1) {  // uniform over the CUDA block
    if (threadIdx.x == 0) out[r] = -1;
    return;
  }
  if (threadIdx.x == 0) s_found = -1;
  const float val = value[r], cv = cvs[r];
  const int64_t ci = cis[r];
  const T* row = logits + r * rs;
  const bool aligned = aligned4(row);
  const int64_t groups = (n + 3) / 4;
  int64_t seen = 0;  // ties in the chunks before this one (uniform over the block)
  for (int64_t g0 = 0; g0 < groups && seen < want; g0 += kPartThreads) {
    const int64_t g = g0 + threadIdx.x;
    float v[4] = {ninf(), ninf(), ninf(), ninf()};
    if (g < groups) load4(row + 4 * g, n - 4 * g, aligned, v);
    bool eq[4];
    int ne = 0;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      eq[l] = v[l] > ninf() && v[l] == val && filter::detail::in_prefix(v[l], offset + 4 * g + l, cv, ci);
      ne += eq[l] ? 1 : 0;
    }
    int total = 0;
    const int before = block_excl_scan(ne, &total, s_w);  // ties of the threads before (id order)
    const int l = ne ? dist_walk::nth_in_group(seen + before, want, eq) : -1;
    if (l >= 0) s_found = offset + 4 * g + l;  // one thread of the block at most
    seen += total;
  }
  __syncthreads();
  if (threadIdx.x == 0) out[r] = s_found;
}

// ------------------------------------------------------------------ verify(method="exact") on shards
// shard_kept_mass (one CUDA block per row, kPartThreads): the shard's part of the normaliser Z
//   by the exact rule of filter.h ("the kept mass Z, exactly"): every thread adds the MassSum
//   digits (three base-2^32 digits, exact double arithmetic) of its kept masses
//   (unit_mass = filter::token_mass, kept by cut_kept = filter::kept) into three uint64, and
//   block_mass::block_mass_sum adds the threads' sums as integers (warp shuffles, then the
//   warps through shared memory). Integer sums are exact in any order, so the [3] digit sums
//   are the CPU's (shard_kept_mass_cpu: cpu::MassLanes) bit for bit, and the all_reduce of
//   the ranks' sums gives every rank the single-device Z. No serial pass, no atomics.
// shard_verify_race (one CUDA block per row, kPartThreads): every thread races its tokens
//   (p_i = fexp((x_i - m) / T) * inv_z in float, key = verify::race_key(p_i, u_i), u_i =
//   philox::uniform(seed, stream, global id): the element philox_chunk gives the CPU), then
//   a warp / block (key, id) max: larger key, lower id on ties -- a total order, so the
//   winner does not depend on the reduction order.

template <class T>
__global__ void __launch_bounds__(kPartThreads) shard_kept_mass_kernel(
    const T* __restrict__ logits, int64_t rs, int64_t n, int64_t offset, const float* __restrict__ mx,
    const float* __restrict__ temp, const float* __restrict__ minp, const float* __restrict__ cvs,
    const int64_t* __restrict__ cis, const int64_t* __restrict__ wants, int64_t* __restrict__ out,
    float* __restrict__ out_want) {
  __shared__ block_mass::MassRed<kPartWarps> red;
  const int64_t r = blockIdx.x;
  const RowCut k = row_cut(mx[r], temp[r], minp[r], cvs, cis, r);
  const int64_t want = wants[r] - offset;  // local index of the token whose mass is asked for
  if (threadIdx.x == 0 && !(want >= 0 && want < n)) out_want[r] = -1.0f;
  const T* row = logits + r * rs;
  const bool aligned = aligned4(row);
  const int64_t groups = (n + 3) / 4;
  filter::MassSum z;  // this thread's digit sums
  for (int64_t g = threadIdx.x; g < groups; g += kPartThreads) {
    float v[4];
    load4(row + 4 * g, n - 4 * g, aligned, v);  // -inf past n: not kept
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t i = 4 * g + l;
      const bool kp = cut_kept(k, v[l], offset + i);
      const float e = kp ? unit_mass(k, v[l]) : 0.0f;
      if (kp) z.add(e);  // a zero mass adds no digit either
      if (i == want) out_want[r] = e;  // 0 when not kept
    }
  }
  z = block_mass::block_mass_sum<kPartWarps>(z, red);  // every thread gets the block's sums
  if (threadIdx.x == 0) {  // (constant indices: z stays in registers)
    out[3 * r] = static_cast<int64_t>(z.d[0]);
    out[3 * r + 1] = static_cast<int64_t>(z.d[1]);
    out[3 * r + 2] = static_cast<int64_t>(z.d[2]);
  }
}

template <class T>
__global__ void __launch_bounds__(kPartThreads) shard_verify_race_kernel(
    const T* __restrict__ logits, int64_t rs, int64_t n, int64_t offset, const float* __restrict__ mx,
    const float* __restrict__ temp, const float* __restrict__ minp, const float* __restrict__ cvs,
    const int64_t* __restrict__ cis, const float* __restrict__ inv_z, const int64_t* __restrict__ seeds,
    const int64_t* __restrict__ streams, const int64_t* __restrict__ skips, float* __restrict__ out_key,
    int64_t* __restrict__ out_id, float* __restrict__ out_skip) {
  const int64_t r = blockIdx.x;
  const RowCut k = row_cut(mx[r], temp[r], minp[r], cvs, cis, r);
  const float iz = inv_z[r];
  const uint64_t seed = static_cast<uint64_t>(seeds[r]), stream = static_cast<uint64_t>(streams[r]);
  const int64_t skip = skips[r];
  if (threadIdx.x == 0 && !(skip >= offset && skip < offset + n)) out_skip[r] = -1.0f;
  const T* row = logits + r * rs;
  const bool aligned = aligned4(row);
  const int64_t groups = (n + 3) / 4;
  Arg best{0.0f, -1};
  for (int64_t g = threadIdx.x; g < groups; g += kPartThreads) {
    float v[4];
    load4(row + 4 * g, n - 4 * g, aligned, v);
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      if (4 * g + l >= n) break;  // past the shard (a skip id there belongs to another shard)
      const int64_t gi = offset + 4 * g + l;
      const float p = cut_kept(k, v[l], gi) ? __fmul_rn(unit_mass(k, v[l]), iz) : 0.0f;
      if (gi == skip) {
        out_skip[r] = p;  // the one-hot draft's own residual is 0: not in the race
        continue;
      }
      if (p > 0.0f) arg_take(best, verify::race_key(p, philox::uniform(seed, stream, static_cast<uint64_t>(gi))), gi);
    }
  }
  // (key, id) max over the block: verify::race_better's order (arg_take: larger key, lower id)
  const Arg top = block_arg::block_argmax<kPartWarps>(best);
  if (threadIdx.x == 0) {
    out_key[r] = top.idx < 0 ? 0.0f : top.key;
    out_id[r] = top.idx;
  }
}

// ------------------------------------------------------------------ entry points

int sm_count(int device) {
  int n = 0;
  SOFTDEC_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n > 0 ? n : 1;
}

// The blocks of [0, V) lying entirely in the shard [offset, offset + n) (distributed.cpp inner_blocks).
std::pair<int64_t, int64_t> inner_blocks(int64_t offset, int64_t n, int64_t V) {
  const int64_t end = offset + n;
  const int64_t b_lo = (offset + kCdfBlock - 1) / kCdfBlock;
  const int64_t b_hi = end == V ? (V + kCdfBlock - 1) / kCdfBlock : end / kCdfBlock;
  return {b_lo, b_hi > b_lo ? b_hi : b_lo};
}

// Splits of a row for two waves of the SMs over R rows, at most `most` per row.
int row_splits(const Tensor& x, int64_t R, int64_t most) {
  const int64_t want = (2 * static_cast<int64_t>(sm_count(x.get_device())) + R - 1) / R;
  int64_t sp = want < most ? want : most;
  sp = sp < 65535 ? sp : 65535;
  return static_cast<int>(sp > 1 ? sp : 1);
}

// shard_block_masses / shard_cut_block_masses (cv, ci null: no cut).
Tensor block_masses(const Tensor& logits, int64_t offset, int64_t V, const Tensor& m, const Tensor& t,
                    const Tensor& mp, const float* cv, const int64_t* ci) {
  const int64_t R = logits.size(0), n = logits.size(1);
  const std::pair<int64_t, int64_t> inner = inner_blocks(offset, n, V);
  const int64_t b_lo = inner.first, nb = inner.second - inner.first;
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor out = new_empty(logits, {R, nb}, ScalarType::Double);
  if (R == 0 || nb == 0) return out;
  // enough CUDA blocks for two waves of the SMs, at most one per 1024-token block
  const int splits = row_splits(logits, R, nb);
  cudaStream_t stream = current_stream(logits);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    auto kernel = cv ? shard_block_mass_kernel<scalar_t, true> : shard_block_mass_kernel<scalar_t, false>;
    kernel<<<dim3(static_cast<unsigned>(R), static_cast<unsigned>(splits)), kMassThreads, 0, stream>>>(
        x, logits.stride(0), offset, V, b_lo, nb, m.const_data_ptr<float>(), t.const_data_ptr<float>(),
        mp.const_data_ptr<float>(), cv, ci, splits, out.mutable_data_ptr<double>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

Tensor shard_block_masses_cuda(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor mp) {
  distributed_checks::check_shard_args(logits, offset, V, m, t, mp);
  return block_masses(logits, offset, V, m, t, mp, nullptr, nullptr);
}

Tensor shard_cut_block_masses_cuda(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor mp,
                                   Tensor cv, Tensor ci) {
  distributed_checks::check_shard_args(logits, offset, V, m, t, mp);
  distributed_checks::check_cut_args(logits, cv, ci);
  return block_masses(logits, offset, V, m, t, mp, cv.const_data_ptr<float>(), ci.const_data_ptr<int64_t>());
}

// shard_block_pick / shard_cut_block_pick (cv, ci null: no cut).
Tensor block_pick(const Tensor& logits, int64_t offset, int64_t V, const Tensor& m, const Tensor& t,
                  const Tensor& mp, const float* cv, const int64_t* ci, const Tensor& block, const Tensor& target) {
  distributed_checks::check_pick_args(logits, block, target);
  const int64_t R = logits.size(0), n = logits.size(1);
  const std::pair<int64_t, int64_t> inner = inner_blocks(offset, n, V);
  const int64_t b_lo = inner.first, b_hi = inner.second;
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor out = new_empty(logits, {R}, ScalarType::Long);
  if (R == 0) return out;
  cudaStream_t stream = current_stream(logits);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    auto kernel = cv ? shard_block_pick_kernel<scalar_t, true> : shard_block_pick_kernel<scalar_t, false>;
    kernel<<<static_cast<unsigned>(R), kPickThreads, 0, stream>>>(
        x, logits.stride(0), offset, V, b_lo, b_hi, m.const_data_ptr<float>(), t.const_data_ptr<float>(),
        mp.const_data_ptr<float>(), cv, ci, block.const_data_ptr<int64_t>(), target.const_data_ptr<double>(),
        out.mutable_data_ptr<int64_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

Tensor shard_block_pick_cuda(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor mp, Tensor block,
                             Tensor target) {
  distributed_checks::check_shard_args(logits, offset, V, m, t, mp);
  return block_pick(logits, offset, V, m, t, mp, nullptr, nullptr, block, target);
}

Tensor shard_cut_block_pick_cuda(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor mp, Tensor cv,
                                 Tensor ci, Tensor block, Tensor target) {
  distributed_checks::check_shard_args(logits, offset, V, m, t, mp);
  distributed_checks::check_cut_args(logits, cv, ci);
  return block_pick(logits, offset, V, m, t, mp, cv.const_data_ptr<float>(), ci.const_data_ptr<int64_t>(), block,
                    target);
}

Tensor shard_radix_hist_cuda(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor cv, Tensor ci,
                             Tensor prefix, int64_t shift) {
  distributed_checks::check_shard_args(logits, offset, V, m, t, m);  // (no min-p in the cut)
  distributed_checks::check_cut_args(logits, cv, ci);
  distributed_checks::check_hist_args(logits, prefix, shift);
  const int64_t R = logits.size(0), n = logits.size(1);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor out = new_empty(logits, {R, 512}, ScalarType::Long);
  if (R == 0) return out;
  cudaStream_t stream = current_stream(logits);
  // the CUDA blocks of a row add their histograms into it (integer atomics): start from zero
  SOFTDEC_CUDA_CHECK(cudaMemsetAsync(out.mutable_data_ptr(), 0, static_cast<size_t>(R) * 512 * sizeof(int64_t),
                                     stream));
  if (n == 0) return out;
  const int splits = row_splits(logits, R, (n + kHistMinTokens - 1) / kHistMinTokens);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    shard_radix_hist_kernel<scalar_t>
        <<<dim3(static_cast<unsigned>(R), static_cast<unsigned>(splits)), kHistThreads, 0, stream>>>(
            x, logits.stride(0), n, offset, V, m.const_data_ptr<float>(), t.const_data_ptr<float>(),
            cv.const_data_ptr<float>(), ci.const_data_ptr<int64_t>(), prefix.const_data_ptr<int64_t>(),
            static_cast<int>(shift), splits, reinterpret_cast<unsigned long long*>(out.mutable_data_ptr<int64_t>()));
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

Tensor shard_nth_tie_cuda(Tensor logits, int64_t offset, Tensor value, Tensor cv, Tensor ci, Tensor nth) {
  distributed_checks::check_tie_args(logits, offset, value, cv, ci, nth);
  const int64_t R = logits.size(0), n = logits.size(1);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor out = new_empty(logits, {R}, ScalarType::Long);
  if (R == 0) return out;
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    shard_nth_tie_kernel<scalar_t><<<static_cast<unsigned>(R), kPartThreads, 0, current_stream(logits)>>>(
        x, logits.stride(0), n, offset, value.const_data_ptr<float>(), cv.const_data_ptr<float>(),
        ci.const_data_ptr<int64_t>(), nth.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<Tensor, Tensor> shard_kept_mass_cuda(Tensor logits, int64_t offset, Tensor m, Tensor t, Tensor mp,
                                                Tensor cv, Tensor ci, Tensor want) {
  distributed_checks::check_position_args(logits, offset, m, t, mp, cv, ci);
  distributed_checks::check_kept_mass_args(logits, want);
  const int64_t R = logits.size(0), n = logits.size(1);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor out = new_empty(logits, {R, 3}, ScalarType::Long);  // filter::MassSum digit sums
  Tensor ew = new_empty(logits, {R}, ScalarType::Float);
  if (R == 0) return {out, ew};
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    shard_kept_mass_kernel<scalar_t><<<static_cast<unsigned>(R), kPartThreads, 0, current_stream(logits)>>>(
        x, logits.stride(0), n, offset, m.const_data_ptr<float>(), t.const_data_ptr<float>(),
        mp.const_data_ptr<float>(), cv.const_data_ptr<float>(), ci.const_data_ptr<int64_t>(),
        want.const_data_ptr<int64_t>(), out.mutable_data_ptr<int64_t>(), ew.mutable_data_ptr<float>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return {out, ew};
}

std::tuple<Tensor, Tensor, Tensor> shard_verify_race_cuda(Tensor logits, int64_t offset, Tensor m, Tensor t,
                                                          Tensor mp, Tensor cv, Tensor ci, Tensor inv_z, Tensor seed,
                                                          Tensor stream, Tensor skip) {
  distributed_checks::check_position_args(logits, offset, m, t, mp, cv, ci);
  distributed_checks::check_race_args(logits, inv_z, seed, stream, skip);
  const int64_t R = logits.size(0), n = logits.size(1);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  Tensor key = new_empty(logits, {R}, ScalarType::Float);
  Tensor id = new_empty(logits, {R}, ScalarType::Long);
  Tensor psk = new_empty(logits, {R}, ScalarType::Float);
  if (R == 0) return {key, id, psk};
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    shard_verify_race_kernel<scalar_t><<<static_cast<unsigned>(R), kPartThreads, 0, current_stream(logits)>>>(
        x, logits.stride(0), n, offset, m.const_data_ptr<float>(), t.const_data_ptr<float>(),
        mp.const_data_ptr<float>(), cv.const_data_ptr<float>(), ci.const_data_ptr<int64_t>(),
        inv_z.const_data_ptr<float>(), seed.const_data_ptr<int64_t>(), stream.const_data_ptr<int64_t>(),
        skip.const_data_ptr<int64_t>(), key.mutable_data_ptr<float>(), id.mutable_data_ptr<int64_t>(),
        psk.mutable_data_ptr<float>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return {key, id, psk};
}

std::tuple<Tensor, Tensor> block_draw_target_cuda(Tensor blk, Tensor seed, Tensor offset) {
  distributed_checks::check_draw_target_args(blk, seed, offset);
  const int64_t R = blk.size(0), nb = blk.size(1);
  torch::stable::accelerator::DeviceGuard guard(blk.get_device_index());
  Tensor block = new_empty(blk, {R}, ScalarType::Long);
  Tensor target = new_empty(blk, {R}, ScalarType::Double);
  if (R == 0) return {block, target};
  block_draw_target_kernel<<<static_cast<unsigned>(R), kTargetThreads, 0, current_stream(blk)>>>(
      blk.const_data_ptr<double>(), nb, seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(),
      block.mutable_data_ptr<int64_t>(), target.mutable_data_ptr<double>());
  SOFTDEC_CUDA_LAUNCH_CHECK();
  return {block, target};
}

Tensor shard_partials_cuda(Tensor logits, int64_t offset, int64_t c) {
  distributed_checks::check_partials_args(logits, offset, c);
  const int64_t R = logits.size(0), n = logits.size(1);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  int64_t W = 0;
  SOFTDEC_CHECK(checked_mul(c, int64_t{2}, &W) && W <= kSizeMax - kHead, "c = ", c, " is too large");
  Tensor out = new_empty(logits, {R, kHead + W}, ScalarType::Double);
  if (R == 0) return out;
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    shard_partials_kernel<scalar_t><<<static_cast<unsigned>(R), kPartThreads, 0, current_stream(logits)>>>(
        x, logits.stride(0), n, offset, c, out.mutable_data_ptr<double>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> merge_partials_cuda(Tensor g, int64_t c) {
  distributed_checks::check_merge_args(g, c);
  const int64_t Wd = g.size(0), R = g.size(1);
  const int64_t nc = Wd * c + 1;
  torch::stable::accelerator::DeviceGuard guard(g.get_device_index());
  Tensor valid = new_empty(g, {R}, ScalarType::Bool);
  Tensor mx = new_empty(g, {R}, ScalarType::Double);
  Tensor am = new_empty(g, {R}, ScalarType::Long);
  Tensor cv = new_empty(g, {R, nc}, ScalarType::Float);
  Tensor ci = new_empty(g, {R, nc}, ScalarType::Long);
  if (R == 0) return {valid, mx, am, cv, ci};
  merge_partials_kernel<<<static_cast<unsigned>(R), kMergeThreads, 0, current_stream(g)>>>(
      g.const_data_ptr<double>(), Wd, R, c, valid.mutable_data_ptr<bool>(), mx.mutable_data_ptr<double>(),
      am.mutable_data_ptr<int64_t>(), cv.mutable_data_ptr<float>(), ci.mutable_data_ptr<int64_t>());
  SOFTDEC_CUDA_LAUNCH_CHECK();
  return {valid, mx, am, cv, ci};
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("shard_block_masses", TORCH_BOX(&softdec::shard_block_masses_cuda));
  m.impl("shard_block_pick", TORCH_BOX(&softdec::shard_block_pick_cuda));
  m.impl("block_draw_target", TORCH_BOX(&softdec::block_draw_target_cuda));
  m.impl("shard_partials", TORCH_BOX(&softdec::shard_partials_cuda));
  m.impl("merge_partials", TORCH_BOX(&softdec::merge_partials_cuda));
  m.impl("shard_radix_hist", TORCH_BOX(&softdec::shard_radix_hist_cuda));
  m.impl("shard_nth_tie", TORCH_BOX(&softdec::shard_nth_tie_cuda));
  m.impl("shard_cut_block_masses", TORCH_BOX(&softdec::shard_cut_block_masses_cuda));
  m.impl("shard_cut_block_pick", TORCH_BOX(&softdec::shard_cut_block_pick_cuda));
  m.impl("shard_kept_mass", TORCH_BOX(&softdec::shard_kept_mass_cuda));
  m.impl("shard_verify_race", TORCH_BOX(&softdec::shard_verify_race_cuda));
}
