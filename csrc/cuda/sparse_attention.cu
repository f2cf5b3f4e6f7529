// CUDA backend of token-sparse attention: the same semantics as the CPU backend
// (include/softdec/attn_sparse.h).
//
// Decode: gather-then-attend with split-KV.
//   1. scoring: page bounds or exact token scores. A row (page summary or key) is scored by lpk lanes
//      that each own 8 contiguous elements (16-byte loads), so a warp scores 32 / lpk rows at once and
//      every lane works for d in {64, 128, 256} (decode_lanes.cuh); the scaled fp32 queries of the KV
//      head's whole query group sit in shared memory in a bank-conflict-free layout and each K row is
//      read once for the group (one tile loop, group_tiles, for every scoring path). Token mode also
//      keeps each head's running softmax (m, l) per lane and writes one partial per head and scoring
//      block; the soft votes are then one pass over the candidates (decode_vote.cuh);
//   2. selection: one block per (row, KV head) finds the k-th largest score by a 4-pass 8-bit radix
//      select on order-preserving keys, then compacts the selected candidates in index order with
//      block scans (ties: lower index) -- select_row;
//   3. attention: one block per (row, KV head, 64 selected tokens) computes the group's partial softmax
//      states (K and V rows by 16-byte loads, each V row read once per 4 query heads of the group);
//      the chunks are combined by log-sum-exp in chunk order: split-KV, so long budgets spread over
//      many blocks.
// Launch plan (decode_fuse.cuh, decode_launch); +1 launch in page mode when the page summaries are
// built in the call:
//   - unfused (SOFTDEC_DECODE_FUSED=0, read every call): page_bound_kernel (page mode) or
//     token_score_kernel -> vote_kernel (token mode) -> select_kernel -> decode_attn_kernel<false>
//     -> decode_merge_kernel: 4 launches (page mode), 5 (token mode);
//   - split-KV (default, M > kChunk): score_select_kernel -> decode_attn_kernel<true>: 2 launches (and a
//     memset of the arrival counters). "Last block done" twice: the scoring blocks of a (row, kv head)
//     each write their scores, __threadfence, then one integer atomicAdd on the (row, kv head) counter;
//     the block that reads gridDim.x - 1 resets the counter, votes (token mode) and selects on the scores
//     now in L2. Then every chunk block writes its state and counts the same way, and the last one
//     merges all chunk states in chunk order (decode_fuse::merge_stats / merge_elem);
//   - one block (default, M <= kChunk): score_select_kernel<attend>: the selecting block also attends
//     (chunk_state, sliced by kAttnThreads as in decode_attn_kernel) and merges its one chunk: 1 launch
//     (no counter and no memset when one scoring block covers the row: small caches).
// All paths give the same bits: the scoring bodies and the grid are shared, the selection's result does
// not depend on the block size, the merge order is fixed, and no floating-point atomics are used.
// Compiled, not run.
// Softmax exponentials use expf (not __expf): the votes that decide the token
// selection follow the CPU's exp to a few ulp (see tests: exact-score inputs).
// Prefill lives in sparse_attention_prefill.cu; shared device helpers in attn_common.cuh.
//
// Row loads are 16-byte vectors when the head dim and strides allow, coalesced
// across the warp; reductions are warp shuffles.
#include <algorithm>
#include <cstdlib>

#include "attn_common.cuh"
#include "decode_fuse.cuh"
#include "decode_lanes.cuh"
#include "decode_vote.cuh"

namespace softdec {
namespace {

using namespace attn_checks;
using namespace attn_cuda;
using decode_lanes::LaneMap;
using decode_lanes::lane_map;
using decode_lanes::q_slot;
using decode_lanes::q_vec;

// Threads per block of each kernel (the launch and its __launch_bounds__).
constexpr int kSummaryThreads = 256;  // page summaries: threads over head_dim (fewer when d is small)
constexpr int kScoreThreads = 256;    // page bounds / token scores: one warp per page or token
constexpr int kAttnThreads = 128;     // split-KV chunk attention
constexpr int kMergeThreads = 128;    // merge of the chunk states
constexpr int kScorePasses = 4;       // passes of a scoring block over its rows (grid sizing)
// Resident scoring blocks an SM must fit (the launch bounds' second argument). Left to itself ptxas gives
// token_score_kernel 128 registers (2 blocks of 256, 16 warps a SM) once the softmax partials are in;
// bounded to 3 blocks it keeps its old 80 registers, no spills (sm_80, sm_90a). score_select_kernel fits
// 3 blocks without spills in page mode without the attention (72 registers); in token mode (scoring +
// votes + selection [+ attention] in one kernel) 3 blocks spill loop invariants inside the token loop (LDL
// per head per step, sm_90a SASS), and page mode with the attention spills 16 B on sm_80, so those keep 2
// blocks (<= 128 registers, no spills). Measure on the GPU (fused vs SOFTDEC_DECODE_FUSED=0).
constexpr int kScoreMinBlocks = 3;
constexpr int kScoreSelectMinBlocks(bool page, bool attend) { return page && !attend ? 3 : 2; }

// ------------------------------------------------------------------ page summaries
template <typename T>
__global__ void __launch_bounds__(kSummaryThreads)
    page_summary_kernel(const T* __restrict__ k, Strides4 ks, T* __restrict__ mn,
                                    T* __restrict__ mx, Strides4 ss, const int64_t* __restrict__ lo_tok,
                                    const int64_t* __restrict__ hi_tok, int ps, int d, int P, int b0) {
  const int p = blockIdx.x, g = blockIdx.y, b = b0 + blockIdx.z;
  const int64_t lo = lo_tok ? lo_tok[b] : 0, hi = hi_tok[b];
  // update mode (lo_tok given): only pages touched by [lo, hi)
  if (lo_tok && (hi <= lo || p < lo / ps || p > (hi - 1) / ps)) return;
  const int64_t t0 = static_cast<int64_t>(p) * ps;
  const int64_t t1 = min(t0 + ps, hi);
  T* omn = mn + b * ss.b + g * ss.h + p * ss.n;
  T* omx = mx + b * ss.b + g * ss.h + p * ss.n;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float a = __int_as_float(0x7f800000), c = kNegInf;
    for (int64_t t = t0; t < t1; ++t) {
      const float v = to_float(k[b * ks.b + g * ks.h + t * ks.n + i]);
      // NaN propagates (as torch.amin / amax): fminf / fmaxf would drop it
      a = (v < a || v != v) ? v : a;
      c = (v > c || v != v) ? v : c;
    }
    if (t1 <= t0) a = c = 0.f;
    omn[i] = from_float<T>(a);
    omx[i] = from_float<T>(c);
  }
}

// ------------------------------------------------------------------ decode scoring
// Scaled fp32 queries of one (b, KV head) group into shared memory: head h's
// element i at sq[h * dp + q_slot(i)], zeros in the padding i >= d.
template <typename T>
__device__ __forceinline__ void load_group_q(const T* __restrict__ q, int64_t qsb, int64_t qsh, int b, int g,
                                             int G, int d, const LaneMap& lm, float scale, float* sq) {
  for (int x = threadIdx.x; x < G * lm.dp; x += blockDim.x) {
    const int h = x / lm.dp, i = x % lm.dp;
    sq[h * lm.dp + q_slot(i, lm.lpk)] = i < d ? scale * to_float(q[b * qsb + (g * G + h) * qsh + i]) : 0.f;
  }
}

// A 2-byte float from its bits (no local copy of the loaded vector).
template <typename T>
__device__ __forceinline__ T from_bits(uint16_t u);
template <>
__device__ __forceinline__ __half from_bits<__half>(uint16_t u) { return __ushort_as_half(u); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_bits<__nv_bfloat16>(uint16_t u) { return __ushort_as_bfloat16(u); }

// Elements e0 .. e0 + 7 of a row as fp32 (e0 a multiple of 8), zeros past d. `vec`: d % 8 == 0 and the
// row is 16-byte aligned, so a group is one 16-byte load (bf16 / fp16) or two (fp32).
template <typename T>
__device__ __forceinline__ void load8(const T* __restrict__ row, int e0, int d, bool vec, float* x) {
  if (vec) {
    if (e0 < d) {
      if constexpr (sizeof(T) == 4) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(row + e0));
        const float4 c = __ldg(reinterpret_cast<const float4*>(row + e0 + 4));
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = c.x, x[5] = c.y, x[6] = c.z, x[7] = c.w;
      } else {
        static_assert(sizeof(T) == 2, "8 elements of 2 bytes in one 16-byte load");
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + e0));
        const uint32_t wd[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {  // element 2j in the low half of word j (little endian)
          x[2 * j] = to_float(from_bits<T>(static_cast<uint16_t>(wd[j] & 0xffffu)));
          x[2 * j + 1] = to_float(from_bits<T>(static_cast<uint16_t>(wd[j] >> 16)));
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) x[j] = 0.f;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = e0 + j < d ? to_float(row[e0 + j]) : 0.f;
  }
}

// The 8 query values of a lane's group (two conflict-free 16-byte shared loads): qa = sq + h * dp +
// q_vec(c, 0, sub, lpk), the second half `half` floats further (q_vec(c, 1, ..) - q_vec(c, 0, ..) = 4 lpk).
__device__ __forceinline__ void query8(const float* __restrict__ qa, int half, float* qv) {
  const float4 a = *reinterpret_cast<const float4*>(qa);
  const float4 b = *reinterpret_cast<const float4*>(qa + half);
  qv[0] = a.x, qv[1] = a.y, qv[2] = a.z, qv[3] = a.w, qv[4] = b.x, qv[5] = b.y, qv[6] = b.z, qv[7] = b.w;
}

// The tile loop of every scoring path (token dots, two-token dots, page bounds): lane `sub`'s
// 8-element groups of the row(s) -- `load(e0)` reads the group that starts at element e0 -- each
// combined with the 8 query values of every head h < G of the group (`apply(h, qv)`, h a
// compile-time constant after unrolling, so per-head register arrays stay in registers).
template <int MAXG, typename Load, typename Apply>
__device__ __forceinline__ void group_tiles(const float* __restrict__ sq, int G, int d, const LaneMap& lm, int sub,
                                            Load load, Apply apply) {
  for (int c = 0; c < lm.chunks; ++c) {
    const int e0 = decode_lanes::group_start(c, sub, lm.lpk);
    if (e0 >= d) break;
    load(e0);
    const float* qa = sq + q_vec(c, 0, sub, lm.lpk);  // head 0; head h at qa + h * dp
#pragma unroll
    for (int h = 0; h < MAXG; ++h) {
      if (h < G) {
        float qv[8];
        query8(qa, 4 * lm.lpk, qv);
        qa += lm.dp;
        apply(h, qv);
      }
    }
  }
}

// Lane partials of the G dot products q[h] . row over this lane's groups (part[0:G]); zeros when !ok.
// Sum them over the lpk lanes of the row with group_sum.
template <typename T>
__device__ __forceinline__ void row_dots(const float* __restrict__ sq, int G, const T* __restrict__ row, bool ok,
                                         int d, bool vec, const LaneMap& lm, int sub, float* part) {
#pragma unroll
  for (int h = 0; h < kMaxG; ++h) part[h] = 0.f;
  if (!ok) return;
  float x[8];
  group_tiles<kMaxG>(
      sq, G, d, lm, sub, [&](int e0) { load8(row, e0, d, vec, x); },
      [&](int h, const float* qv) {
#pragma unroll
        for (int j = 0; j < 8; ++j) part[h] = fmaf(qv[j], x[j], part[h]);
      });
}

// row_dots for two rows at once (each query load feeds 16 FMAs: half the shared-memory traffic per K
// byte of row_dots, which matters when the whole cache streams through token scoring), for G <= MAXG.
// ok1 implies ok0.
template <int MAXG, typename T>
__device__ __forceinline__ void row_dots2(const float* __restrict__ sq, int G, const T* __restrict__ row0,
                                          const T* __restrict__ row1, bool ok0, bool ok1, int d, bool vec,
                                          const LaneMap& lm, int sub, float* part0, float* part1) {
#pragma unroll
  for (int h = 0; h < MAXG; ++h) part0[h] = part1[h] = 0.f;
  if (!ok0) return;
  float x0[8], x1[8];
  group_tiles<MAXG>(
      sq, G, d, lm, sub,
      [&](int e0) {
        load8(row0, e0, d, vec, x0);
        if (ok1) {
          load8(row1, e0, d, vec, x1);
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) x1[j] = 0.f;
        }
      },
      [&](int h, const float* qv) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          part0[h] = fmaf(qv[j], x0[j], part0[h]);
          part1[h] = fmaf(qv[j], x1[j], part1[h]);
        }
      });
}

// Sum over the lpk lanes that share a row (lpk a power of two, warp-uniform; every lane must call it).
__device__ __forceinline__ float group_sum(float x, int lpk) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    if (o < lpk) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// attn::candidate_pages for a power-of-two page size (checked on the host) with shifts: a 64-bit
// division compiles to a called subroutine, and ptxas spills the live registers around the call.
__device__ __forceinline__ void candidate_pages_pow2(const attn::Region& r, int ps, int64_t* first, int64_t* last) {
  const int sh = __ffs(ps) - 1;
  if (r.sink_end >= r.win_start) {
    *first = *last = 0;
    return;
  }
  *first = r.sink_end >> sh;                // sink_end >= 0
  *last = ((r.win_start - 1) >> sh) + 1;    // win_start > sink_end >= 0
}

// ---- scoring bodies, shared by the unfused kernels and score_select_kernel. `sq` holds the group's
// scaled queries (load_group_q). The block takes the pages / tokens of its grid-stride share over the
// gridDim.x blocks of (b, g); which rows a lane scores depends only on the shape, not on the kernel.

// Page bounds of (b, KV head g): bound[w * P + p] for every page p < P this block takes (-inf for the
// non-candidate pages).
template <typename T>
__device__ __forceinline__ void page_bounds_block(const float* __restrict__ sq, const T* __restrict__ mn,
                                                  const T* __restrict__ mx, Strides4 ss, int64_t len, int G,
                                                  int d, int P, int ps, int sink, int window, bool vec, int b,
                                                  int g, int64_t w, float* __restrict__ bound) {
  const LaneMap lm = lane_map(d);
  const attn::Region r = attn::decode_region(len, sink, window);
  int64_t first, last;
  candidate_pages_pow2(r, ps, &first, &last);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  const int sub = lane % lm.lpk, slot = lane / lm.lpk;
  // warp-uniform loop over groups of kpw pages; lane group `slot` scores page p0 + slot
  const int64_t step = static_cast<int64_t>(gridDim.x) * nw * lm.kpw;
  for (int64_t p0 = (static_cast<int64_t>(blockIdx.x) * nw + warp) * lm.kpw; p0 < P; p0 += step) {
    const int64_t p = p0 + slot;
    const bool cand = p < P && p >= first && p < last;
    float part[kMaxG];
#pragma unroll
    for (int h = 0; h < kMaxG; ++h) part[h] = 0.f;
    if (cand) {
      const T* a = mn + b * ss.b + g * ss.h + p * ss.n;
      const T* c = mx + b * ss.b + g * ss.h + p * ss.n;
      float lo[8], hi[8];
      group_tiles<kMaxG>(
          sq, G, d, lm, sub,
          [&](int e0) {
            load8(a, e0, d, vec, lo);
            load8(c, e0, d, vec, hi);
          },
          [&](int h, const float* qv) {
#pragma unroll
            for (int j = 0; j < 8; ++j) part[h] += attn::page_bound_term(qv[j], lo[j], hi[j]);
          });
    }
    float best = kNegInf;
#pragma unroll
    for (int h = 0; h < kMaxG; ++h)
      if (h < G) best = fmaxf(best, nan_to_neginf(group_sum(part[h], lm.lpk)));
    if (!cand) best = kNegInf;
    if (p < P && sub == 0) bound[w * P + p] = best;
  }
}

// Token mode's running softmax states: one (m, l) per head and lane group (row slot) of the block, in
// shared memory after the group's queries, at s_run[(warp * kpw + slot) * G + h]. Lane sub == h % lpk of
// the group owns head h's entry (the lpk lanes of a group all hold the same group_sum, so one of them
// suffices): no two lanes touch an entry, and no per-head state lives in registers (16 heads x 2 floats
// per lane would cost the scoring loop a third of its registers).
inline size_t softmax_run_smem(int G, const LaneMap& lm) {
  return static_cast<size_t>(kScoreThreads / 32) * lm.kpw * G * sizeof(decode_vote::SoftStat);
}

// The block's softmax partial per head from the running states: one thread per head merges the lane
// groups' entries in (warp, slot) order, to stats[(w * G + h) * gridDim.x + blockIdx.x]. The whole
// block calls it after its last push.
__device__ __forceinline__ void block_softmax_partials(const decode_vote::SoftStat* s_run, int G, int groups,
                                                       int64_t w, float2* __restrict__ stats) {
  __syncthreads();
  for (int h = threadIdx.x; h < G; h += blockDim.x) {
    decode_vote::SoftStat a = decode_vote::softmax_empty();
    for (int x = 0; x < groups; ++x) a = decode_vote::softmax_merge(a, s_run[x * G + h]);
    stats[(w * G + h) * gridDim.x + blockIdx.x] = make_float2(a.m, a.l);
  }
}

// Exact token scores of (b, KV head g) for the tokens t < L this block takes, to scores [B, Hq, N]
// (head h of the group at (w * G + h) * N), and the block's softmax partial per head (m, l over those
// tokens: decode_vote::softmax_push in each lane group's token order into its s_run entries, then
// block_softmax_partials). The whole block calls it.
template <typename T>
__device__ __forceinline__ void token_scores_block(const float* __restrict__ sq, const T* __restrict__ k,
                                                   Strides4 ks, int64_t L, int G, int d, int N, bool vec, int b,
                                                   int g, int64_t w, float* __restrict__ scores,
                                                   decode_vote::SoftStat* s_run, float2* __restrict__ stats) {
  using decode_vote::SoftStat;
  const LaneMap lm = lane_map(d);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  const int sub = lane % lm.lpk, slot = lane / lm.lpk;
  SoftStat* run = s_run + (warp * lm.kpw + slot) * G;  // this lane group's entries; lane sub owns h % lpk == sub
  for (int h = sub; h < G; h += lm.lpk) run[h] = decode_vote::softmax_empty();
  const int64_t step = static_cast<int64_t>(gridDim.x) * nw * lm.kpw;
  // warp-uniform loops over groups of kpw tokens (lane group `slot` scores token t0 + slot) or, for
  // groups of at most kMaxG / 2 heads, of 2 kpw tokens (tokens t0 + slot and t0 + kpw + slot: the warp
  // reads 2 kpw consecutive rows)
  const T* kb = k + b * ks.b + g * ks.h;
  float* sb0 = scores + w * G * N;  // head h's row at sb0 + h * N
  if (G <= kMaxG / 2) {  // two tokens a lane group (2 x kMaxG / 2 partials: the registers of one x kMaxG)
    for (int64_t t0 = (static_cast<int64_t>(blockIdx.x) * nw + warp) * 2 * lm.kpw; t0 < L; t0 += 2 * step) {
      const int64_t ta = t0 + slot, tb = ta + lm.kpw;
      const bool oka = ta < L, okb = tb < L;
      float pa[kMaxG / 2], pb[kMaxG / 2];
      row_dots2<kMaxG / 2>(sq, G, kb + (oka ? ta : 0) * ks.n, kb + (okb ? tb : 0) * ks.n, oka, okb, d, vec, lm,
                           sub, pa, pb);
#pragma unroll
      for (int h = 0; h < kMaxG / 2; ++h) {
        if (h < G) {
          const float sa = group_sum(pa[h], lm.lpk), sb = group_sum(pb[h], lm.lpk);
          if (oka && sub == 0) sb0[h * N + ta] = sa;
          if (okb && sub == 0) sb0[h * N + tb] = sb;
          if ((h & (lm.lpk - 1)) == sub && oka) {
            SoftStat st = run[h];
            decode_vote::softmax_push(st, decode_vote::sanitize(sa));
            if (okb) decode_vote::softmax_push(st, decode_vote::sanitize(sb));
            run[h] = st;
          }
        }
      }
    }
  } else {  // one token a lane group
    for (int64_t t0 = (static_cast<int64_t>(blockIdx.x) * nw + warp) * lm.kpw; t0 < L; t0 += step) {
      const int64_t t = t0 + slot;
      const bool ok = t < L;
      float part[kMaxG];
      row_dots(sq, G, kb + (ok ? t : 0) * ks.n, ok, d, vec, lm, sub, part);
#pragma unroll
      for (int h = 0; h < kMaxG; ++h) {
        if (h < G) {
          const float sc = group_sum(part[h], lm.lpk);
          if (ok && sub == 0) sb0[h * N + t] = sc;
          if ((h & (lm.lpk - 1)) == sub && ok) {
            SoftStat st = run[h];
            decode_vote::softmax_push(st, decode_vote::sanitize(sc));
            run[h] = st;
          }
        }
      }
    }
  }
  block_softmax_partials(s_run, G, nw * lm.kpw, w, stats);
}

// Token mode: the candidate tokens' votes of (b, KV head g) in one pass. The head's softmax state is
// the merge of the scoring blocks' partials (a warp per head: lane j merges blocks j, j + 32, ... in
// order, then the xor butterfly; lane 0's result), then vote[w * N + t] = decode_vote::vote_value for
// t in [first, last). Every value is independent of the block size (vote_kernel: kVoteThreads,
// score_select_kernel: kScoreThreads). The scores and partials may come from other blocks of the same
// kernel: L2 loads (__ldcg). The whole block calls it.
__device__ __forceinline__ void vote_row(const float* scores /* [B, Hq, N] */, const float2* stats, int gx, int G,
                                         int N, int64_t first, int64_t last, int64_t w, float* vote /* [B, Hkv, N] */,
                                         decode_vote::HeadNorm* s_norm /* shared [kMaxG] */) {
  using decode_vote::SoftStat;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  for (int h = warp; h < G; h += nw) {
    const float2* sh = stats + (w * G + h) * gx;
    SoftStat a = decode_vote::softmax_empty();
    for (int j = lane; j < gx; j += 32) {
      const float2 x = __ldcg(sh + j);
      a = decode_vote::softmax_merge(a, SoftStat{x.x, x.y});
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const SoftStat o2{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.l, o)};
      a = decode_vote::softmax_merge(a, o2);
    }
    if (lane == 0) s_norm[h] = decode_vote::head_norm(a);
  }
  __syncthreads();
  const float* sb = scores + w * G * N;  // head h's row at sb + h * N
  for (int64_t t = first + threadIdx.x; t < last; t += blockDim.x)
    vote[w * N + t] =
        decode_vote::vote_value(s_norm, G, [&](int h) { return decode_vote::sanitize(__ldcg(sb + h * N + t)); });
}

// Token mode: the middle region [first, last) of row b and whether the selection reads votes at all
// (budget < its length; otherwise every middle token is selected and no vote is computed).
__device__ __forceinline__ bool vote_needed(int64_t len, int sink, int window, int64_t budget, int64_t* first,
                                            int64_t* last) {
  const attn::Region r = attn::decode_region(len, sink, window);
  *first = r.sink_end;
  *last = r.win_start;
  return budget < r.win_start - r.sink_end;
}

// ---- the unfused scoring kernels (SOFTDEC_DECODE_FUSED=0): one block per (x, KV head, row)
template <typename T>
__global__ void __launch_bounds__(kScoreThreads)
    page_bound_kernel(const T* __restrict__ q, int64_t qsb, int64_t qsh, const T* __restrict__ mn,
                      const T* __restrict__ mx, Strides4 ss, const int64_t* __restrict__ lens, int G, int d, int P,
                      int ps, int sink, int window, float scale, bool vec, int b0, float* __restrict__ bound) {
  extern __shared__ float sq[];
  const int g = blockIdx.y, b = b0 + blockIdx.z, Hkv = gridDim.y;
  load_group_q(q, qsb, qsh, b, g, G, d, lane_map(d), scale, sq);
  __syncthreads();
  page_bounds_block(sq, mn, mx, ss, lens[b], G, d, P, ps, sink, window, vec, b, g,
                    static_cast<int64_t>(b) * Hkv + g, bound);
}

template <typename T>
__global__ void __launch_bounds__(kScoreThreads, kScoreMinBlocks)
    token_score_kernel(const T* __restrict__ q, int64_t qsb, int64_t qsh, const T* __restrict__ k, Strides4 ks,
                       const int64_t* __restrict__ lens, int G, int d, int N, float scale, bool vec, int b0,
                       float* __restrict__ scores /* [B, Hq, N] */,
                       float2* __restrict__ stats /* [B, Hkv, G, gridDim.x] */) {
  extern __shared__ float sq[];  // the group's queries [G][dp], then the running softmax states
  const int g = blockIdx.y, b = b0 + blockIdx.z, Hkv = gridDim.y;
  const LaneMap lm = lane_map(d);
  load_group_q(q, qsb, qsh, b, g, G, d, lm, scale, sq);
  __syncthreads();
  token_scores_block(sq, k, ks, lens[b], G, d, N, vec, b, g, static_cast<int64_t>(b) * Hkv + g, scores,
                     reinterpret_cast<decode_vote::SoftStat*>(sq + G * lm.dp), stats);
}

// Soft votes of one (b, KV head): vote_row, one block per (g, b).
__global__ void __launch_bounds__(kVoteThreads)
    vote_kernel(const float* __restrict__ scores, const float2* __restrict__ stats, int gx,
                const int64_t* __restrict__ lens, int G, int N, int sink, int window, int64_t budget, int b0,
                float* __restrict__ vote /* [B, Hkv, N] */) {
  __shared__ decode_vote::HeadNorm s_norm[kMaxG];
  const int g = blockIdx.x, b = b0 + blockIdx.y, Hkv = gridDim.x;
  int64_t first, last;
  if (!vote_needed(lens[b], sink, window, budget, &first, &last)) return;  // block-uniform
  vote_row(scores, stats, gx, G, N, first, last, static_cast<int64_t>(b) * Hkv + g, vote, s_norm);
}

// Selection of one (b, KV head) w = b * Hkv + g: top candidates of `score` by
// (score desc, index asc), expanded to tokens, written ascending after the sink
// tokens and followed by the window tokens to sel[w * M ...]; cnt[w] = their
// number, which the function also returns (block-uniform). The whole block of
// THREADS threads calls it (select_kernel: kSelThreads, score_select_kernel: kScoreThreads; the result
// does not depend on THREADS: the radix select's counts are exact, the tie ranks and output offsets are
// exclusive scans over contiguous index segments, i.e. index order). `score` is read from L2 (__ldcg):
// in score_select_kernel other blocks of the same kernel wrote it. The writes to sel are visible to the
// block after a __syncthreads (read them with plain loads, not __ldg).
template <int THREADS>
__device__ __forceinline__ int64_t select_row(const float* __restrict__ score /* [B, Hkv, S] */, int64_t S,
                                              const int64_t* __restrict__ lens, bool page_mode, int ps, int sink,
                                              int window, int64_t budget, int M, int b, int g, int Hkv,
                                              int32_t* sel /* [B, Hkv, M] */, int32_t* cnt, int64_t* idx_out) {
  using Scan = cub::BlockScan<int64_t, THREADS>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_word;
  __shared__ int64_t s_count, s_total;
  const int64_t w = static_cast<int64_t>(b) * Hkv + g;
  const attn::Region r = attn::decode_region(lens[b], sink, window);
  int64_t first, last;
  if (page_mode) {
    attn::candidate_pages(r, ps, &first, &last);
  } else {
    first = r.sink_end;
    last = r.win_start;
  }
  const int64_t n = last - first;
  const int64_t need = page_mode ? attn::pages_for_budget(budget, ps) : budget;
  const float* sc = score + w * S + first;
  uint32_t kth = 0;
  int64_t greater = 0;
  const bool all = need >= n;
  if (!all) {
    kth = block_radix_select<THREADS>(
        n, need, true, [&](int64_t i) { return order_key(__ldcg(sc + i)); }, &greater, hist, &s_word, &s_count);
  }
  const int64_t ties_needed = need - greater;
  // Pass 1: tie ranks in index order (contiguous segments per thread).
  const int64_t seg = (n + THREADS - 1) / THREADS;
  const int64_t i0 = min(n, threadIdx.x * seg), i1 = min(n, i0 + seg);
  int64_t ties = 0;
  if (!all)
    for (int64_t i = i0; i < i1; ++i) ties += order_key(__ldcg(sc + i)) == kth;
  int64_t tie_rank;
  Scan(scan_tmp).ExclusiveSum(ties, tie_rank);
  __syncthreads();
  // Pass 2: tokens contributed by the selected candidates, in index order.
  auto chosen = [&](int64_t i, int64_t& rank) {
    if (all) return true;
    const uint32_t key = order_key(__ldcg(sc + i));
    if (key > kth) return true;
    if (key == kth) return rank++ < ties_needed;
    return false;
  };
  auto ntok = [&](int64_t i) -> int64_t {
    if (!page_mode) return 1;
    int64_t lo, hi;
    attn::page_middle(r, ps, first + i, &lo, &hi);
    return hi - lo;
  };
  int64_t mine = 0;
  {
    int64_t rank = tie_rank;
    for (int64_t i = i0; i < i1; ++i)
      if (chosen(i, rank)) mine += ntok(i);
  }
  int64_t off;
  Scan(scan_tmp).ExclusiveSum(mine, off);
  if (threadIdx.x == THREADS - 1) s_total = off + mine;
  int32_t* s = sel + w * M;
  {
    int64_t rank = tie_rank, o = r.sink_end + off;
    for (int64_t i = i0; i < i1; ++i) {
      if (!chosen(i, rank)) continue;
      if (page_mode) {
        int64_t lo, hi;
        attn::page_middle(r, ps, first + i, &lo, &hi);
        for (int64_t t = lo; t < hi; ++t) s[o++] = static_cast<int32_t>(t);
      } else {
        s[o++] = static_cast<int32_t>(first + i);
      }
    }
  }
  __syncthreads();
  const int64_t mid_total = s_total;
  for (int64_t t = threadIdx.x; t < r.sink_end; t += blockDim.x) s[t] = static_cast<int32_t>(t);
  const int64_t wbase = r.sink_end + mid_total;
  for (int64_t t = r.win_start + threadIdx.x; t < r.len; t += blockDim.x)
    s[wbase + (t - r.win_start)] = static_cast<int32_t>(t);
  const int64_t total = wbase + (r.len - r.win_start);
  if (threadIdx.x == 0) cnt[w] = static_cast<int32_t>(total);
  if (idx_out) {
    __syncthreads();
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) idx_out[w * M + j] = j < total ? s[j] : -1;
  }
  return total;
}

// The selection step of the unfused path: one block per (g, b).
__global__ void __launch_bounds__(kSelThreads)
    select_kernel(const float* __restrict__ score /* [B, Hkv, S] */, int64_t S,
                              const int64_t* __restrict__ lens, bool page_mode, int ps, int sink, int window,
                              int64_t budget, int M, int b0, int32_t* __restrict__ sel /* [B, Hkv, M] */,
                              int32_t* __restrict__ cnt, int64_t* __restrict__ idx_out) {
  const int g = blockIdx.x, b = b0 + blockIdx.y, Hkv = gridDim.x;
  select_row<kSelThreads>(score, S, lens, page_mode, ps, sink, window, budget, M, b, g, Hkv, sel, cnt, idx_out);
}

// ------------------------------------------------------------------ decode attention (split-KV)
constexpr int kChunk = 64;  // selected tokens per block
constexpr int kHpt = 4;     // query heads per thread in P.V (each V load feeds kHpt heads x 8 elements)

// Dynamic shared memory of chunk_state: the group's queries [G][dp], chunk probabilities [G][kChunk],
// token ids [kChunk], the P.V slice partials [kAttnThreads][kHpt][8] (the slices are sized by
// kAttnThreads whatever the block size, see chunk_state).
inline size_t decode_attn_smem(int64_t G, int64_t dp) {
  return static_cast<size_t>(G) * dp * sizeof(float) + static_cast<size_t>(G) * kChunk * sizeof(float) +
         kChunk * sizeof(int) + static_cast<size_t>(kAttnThreads) * kHpt * 8 * sizeof(float);
}

// Selected tokens of the chunk that starts at j0.
__device__ __forceinline__ int n_tokens(const int32_t* __restrict__ cnt, int64_t w, int j0) {
  return max(0, min(cnt[w] - j0, kChunk));
}

// The partial softmax state of one chunk of n <= kChunk selected tokens tok[0:n] of (b, KV head g),
// for the G heads of the group, to pt = [G][d + 2] (per head: m, l, acc[0:d]). The whole block calls
// it (any block size that is a multiple of 32; block-uniform n). Every float is computed the same way
// whatever the block size: a token's dot by one lane group, a head's max / sum by one warp, and the
// P.V work split into `slices` fixed by kAttnThreads (not blockDim), summed in slice order, so the
// one-block path (kSelThreads threads) gives the bits of decode_attn_kernel (kAttnThreads).
// `tok` is read with plain loads: the one-block path wrote it in the same kernel.
template <typename T>
__device__ __forceinline__ void chunk_state(float* smem, const T* __restrict__ q, int64_t qsb, int64_t qsh,
                                            const T* __restrict__ k, Strides4 ks, const T* __restrict__ v,
                                            Strides4 vs, const int32_t* tok, int n,
                                            const float* scores /* token mode or null */, int G,
                                            int d, int N, float scale, bool veck, bool vecv, int b, int g,
                                            int64_t w, float* pt) {
  const LaneMap lm = lane_map(d);
  float* sq = smem;                                     // [G][dp]  (q_slot layout)
  float* sp = sq + G * lm.dp;                           // [G][kChunk]
  int* stok = reinterpret_cast<int*>(sp + G * kChunk);  // [kChunk]
  float* red = reinterpret_cast<float*>(stok + kChunk); // [kAttnThreads][kHpt][8]
  if (n == 0) {
    for (int x = threadIdx.x; x < G; x += blockDim.x) {
      pt[x * (d + 2)] = kNegInf;
      pt[x * (d + 2) + 1] = 0.f;
    }
    for (int x = threadIdx.x; x < G * d; x += blockDim.x) pt[(x / d) * (d + 2) + 2 + x % d] = 0.f;
    return;
  }
  if (!scores) load_group_q(q, qsb, qsh, b, g, G, d, lm, scale, sq);
  for (int j = threadIdx.x; j < n; j += blockDim.x) stok[j] = tok[j];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  // scores of the chunk's tokens
  if (scores) {
    for (int x = threadIdx.x; x < G * n; x += blockDim.x) {
      const int h = x / n, j = x % n;
      sp[h * kChunk + j] = __ldcg(scores + (w * G + h) * N + stok[j]);  // maybe written by this kernel
    }
  } else {
    const int sub = lane % lm.lpk, slot = lane / lm.lpk;
    // warp-uniform loop over groups of kpw tokens; lane group `slot` scores token j0w + slot
    for (int j0w = warp * lm.kpw; j0w < n; j0w += nw * lm.kpw) {
      const int j = j0w + slot;
      const bool ok = j < n;
      float pr[kMaxG];
      row_dots(sq, G, k + b * ks.b + g * ks.h + static_cast<int64_t>(stok[ok ? j : 0]) * ks.n, ok, d, veck, lm, sub,
               pr);
#pragma unroll
      for (int h = 0; h < kMaxG; ++h) {
        if (h < G) {
          const float s = group_sum(pr[h], lm.lpk);
          if (ok && sub == 0) sp[h * kChunk + j] = s;
        }
      }
    }
  }
  __syncthreads();
  // per-head chunk softmax state
  for (int h = warp; h < G; h += nw) {
    float m = kNegInf;
    bool nan = false;
    for (int j = lane; j < n; j += 32) {
      const float x = sp[h * kChunk + j];
      nan |= x != x;
      m = fmaxf(m, x);
    }
    m = warp_max(m);
    if (__any_sync(0xffffffffu, nan)) m = __int_as_float(0x7fc00000);  // a NaN score: NaN output
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float p = (m == kNegInf || m != m) ? 0.f : expf(sp[h * kChunk + j] - m);
      sp[h * kChunk + j] = p;
      l += p;
    }
    l = warp_sum(l);
    if (lane == 0) {
      pt[h * (d + 2)] = m;
      pt[h * (d + 2) + 1] = (m != m) ? m : l;
    }
  }
  __syncthreads();
  // acc[h][i] = sum_j p[h][j] v[tok_j][i]. Work item = (8-element group i8 of the row, kHpt heads h0..):
  // one 16-byte V load feeds kHpt x 8 FMAs; consecutive threads take consecutive groups of the same
  // row (coalesced). When the items do not fill kAttnThreads threads, `slices` threads split the chunk's
  // tokens (slice s takes j = s, s + slices, ...) and their partials are summed in slice order
  // (deterministic; slices * items <= kAttnThreads, the size of `red`).
  const int d8 = (d + 7) / 8, items = d8 * ((G + kHpt - 1) / kHpt);
  const int slices = max(1, kAttnThreads / items);
  const T* vb = v + b * vs.b + g * vs.h;
  for (int it = threadIdx.x; it < items * slices; it += blockDim.x) {
    const int item = it % items, sl = it / items;
    const int i8 = item % d8, h0 = (item / d8) * kHpt;
    float acc[kHpt][8];
#pragma unroll
    for (int hh = 0; hh < kHpt; ++hh)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[hh][e] = 0.f;
    for (int j = sl; j < n; j += slices) {
      float x[8];
      load8(vb + static_cast<int64_t>(stok[j]) * vs.n, i8 * 8, d, vecv, x);
#pragma unroll
      for (int hh = 0; hh < kHpt; ++hh) {
        if (h0 + hh < G) {
          const float p = sp[(h0 + hh) * kChunk + j];
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[hh][e] = fmaf(p, x[e], acc[hh][e]);
        }
      }
    }
    if (slices == 1) {
#pragma unroll
      for (int hh = 0; hh < kHpt; ++hh)
#pragma unroll
        for (int e = 0; e < 8; ++e)
          if (h0 + hh < G && i8 * 8 + e < d) pt[(h0 + hh) * (d + 2) + 2 + i8 * 8 + e] = acc[hh][e];
    } else {
      float* r = red + (static_cast<int64_t>(sl) * items + item) * (kHpt * 8);  // sl * items + item < kAttnThreads
#pragma unroll
      for (int hh = 0; hh < kHpt; ++hh)
#pragma unroll
        for (int e = 0; e < 8; ++e) r[hh * 8 + e] = acc[hh][e];
    }
  }
  if (slices > 1) {  // block-uniform
    __syncthreads();
    for (int x = threadIdx.x; x < G * d; x += blockDim.x) {
      const int h = x / d, i = x % d;
      const int item = (h / kHpt) * d8 + i / 8, o = (h % kHpt) * 8 + i % 8;
      float acc = 0.f;
      for (int sl = 0; sl < slices; ++sl) acc += red[(sl * items + item) * (kHpt * 8) + o];
      pt[h * (d + 2) + 2 + i] = acc;
    }
  }
}

// Reads of chunk states written by other blocks of the same kernel: L2 (ld.global.cg), never the
// non-coherent L1 / texture path.
struct LoadCg {
  __device__ __forceinline__ float operator()(const float* p) const { return __ldcg(p); }
};

// The merge of the `chunks` chunk states of (b, KV head g), pw = [chunks][G][d + 2], into the group's
// G output rows ow = [G][d]: decode_fuse::merge_stats / merge_elem, the arithmetic of
// decode_merge_kernel (same functions, same chunk order). The whole block calls it.
template <typename T>
__device__ __forceinline__ void merge_group(const float* pw, int G, int d, int chunks, T* __restrict__ ow) {
  __shared__ decode_fuse::MergeStats s_stats[kMaxG];
  const int64_t cs = static_cast<int64_t>(G) * (d + 2);
  for (int h = threadIdx.x; h < G; h += blockDim.x)
    s_stats[h] = decode_fuse::merge_stats(pw + h * (d + 2), cs, chunks, LoadCg{});
  __syncthreads();
  for (int x = threadIdx.x; x < G * d; x += blockDim.x) {
    const int h = x / d, i = x % d;
    ow[x] = from_float<T>(decode_fuse::merge_elem(pw + h * (d + 2), cs, chunks, s_stats[h], i, LoadCg{}));
  }
}

// Split-KV chunk attention: one block per (chunk of kChunk selected tokens, KV head, row), the chunk's
// state to part [B, Hkv, chunks, G, d + 2]. FUSED: "last block done" -- each block fences its state,
// thread 0 adds 1 to ctr[w] (an integer atomic; zeroed by the host's memset earlier on the stream), and the
// block that arrives last (decode_fuse::arrived_last) resets ctr[w] to 0 and merges all chunks in chunk
// order into out [B, Hq, d]: the bits of decode_merge_kernel, whichever block is last.
template <typename T, bool FUSED>
__global__ void __launch_bounds__(kAttnThreads) decode_attn_kernel(const T* __restrict__ q, int64_t qsb, int64_t qsh, const T* __restrict__ k,
                                   Strides4 ks, const T* __restrict__ v, Strides4 vs,
                                   const int32_t* __restrict__ sel, const int32_t* __restrict__ cnt,
                                   const float* __restrict__ scores /* token mode or null */, int G, int d,
                                   int N, int M, float scale, bool veck, bool vecv, int b0, float* part,
                                   int32_t* __restrict__ ctr /* FUSED */, T* __restrict__ out /* FUSED */) {
  extern __shared__ float smem[];
  const int ch = blockIdx.x, g = blockIdx.y, b = b0 + blockIdx.z, Hkv = gridDim.y, chunks = gridDim.x;
  const int64_t w = static_cast<int64_t>(b) * Hkv + g;
  const int j0 = ch * kChunk;
  const int n = n_tokens(cnt, w, j0);
  float* pw = part + w * chunks * G * (d + 2);
  chunk_state<T>(smem, q, qsb, qsh, k, ks, v, vs, sel + w * M + j0, n, scores, G, d, N, scale, veck, vecv, b, g, w,
                 pw + ch * G * (d + 2));
  if constexpr (FUSED) {
    __shared__ int s_last;
    __threadfence();  // this thread's state writes are visible device-wide before the count below
    __syncthreads();  // ... for every thread of the block
    if (threadIdx.x == 0) {
      const int last = decode_fuse::arrived_last(atomicAdd(ctr + w, 1), chunks);
      if (last) ctr[w] = 0;  // reset: the counter is back at 0 after the call
      s_last = last;
    }
    __syncthreads();
    if (!s_last) return;  // block-uniform
    __threadfence();      // order the merge's reads after the observed count
    merge_group<T>(pw, G, d, chunks, out + (static_cast<int64_t>(b) * Hkv + g) * G * d);
  }
}

// The unfused merge: one block per (query head, row).
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    decode_merge_kernel(const float* __restrict__ part, int G, int d, int chunks, int b0,
                                    T* __restrict__ out /* [B, Hq, d] */) {
  const int h = blockIdx.x, b = b0 + blockIdx.y, Hq = gridDim.x, Hkv = Hq / G;
  const int g = h / G, hh = h % G;
  const float* base = part + ((static_cast<int64_t>(b) * Hkv + g) * chunks) * G * (d + 2) + hh * (d + 2);
  const int64_t cs = static_cast<int64_t>(G) * (d + 2);
  const decode_fuse::MergeStats s = decode_fuse::merge_stats(base, cs, chunks, LoadCg{});
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    out[(static_cast<int64_t>(b) * Hq + h) * d + i] = from_float<T>(decode_fuse::merge_elem(base, cs, chunks, s, i, LoadCg{}));
}

// The fused paths' arguments (one struct: score_select_kernel takes the scoring, the selection and the
// attention arguments at once).
template <typename T>
struct FusedArgs {
  const T* q;
  int64_t qsb, qsh;
  const T *mn, *mx;  // page mode: the page summaries
  Strides4 ss;
  const T *k, *v;
  Strides4 ks, vs;
  const int64_t* lens;
  int G, d, N, P, ps, sink, window, M, b0;
  float scale;
  int64_t budget;
  bool vecs, veck, vecv;  // 16-byte rows: summaries, K, V
  float* score_sel;       // page mode: bounds [B, Hkv, P]; token mode: votes [B, Hkv, N]
  float* scores;          // token mode: [B, Hq, N]
  float2* stats;          // token mode: [B, Hkv, G, gridDim.x] softmax partials
  int32_t* ctr;           // [B, Hkv] scoring arrivals (zeroed by the host when gridDim.x > 1)
  int32_t *sel, *cnt;     // [B, Hkv, M], [B, Hkv]
  int64_t* idx_out;       // [B, Hkv, M] or null
  float* part;            // ATTEND: [B, Hkv, 1, G, d + 2]
  T* out;                 // ATTEND: [B, Hq, d]
};

// Scoring with the selection fused in (and, ATTEND, the attention of a single chunk: M <= kChunk):
// one block per (x, KV head, row), kScoreThreads threads. Every block scores its share (page bounds, or
// token scores + softmax partials); with more than one block per (row, kv head) the blocks meet at a
// "last block done" counter (each thread fences its writes, thread 0 adds 1 to ctr[w] -- one integer
// atomicAdd -- and the block that reads gridDim.x - 1 resets ctr[w] to 0), so the last block sees every
// score (L2 loads) and goes on: token mode votes (vote_row), then select_row -- the keys, tie rule and
// output of select_kernel -- then, ATTEND, chunk_state + the one-chunk merge (the arithmetic of
// decode_attn_kernel and merge kernel). The scores, partials and votes are those of the unfused kernels
// (same scoring bodies on the same grid), so both paths select the same tokens and give the same bits.
template <typename T, bool PAGE, bool ATTEND>
__global__ void __launch_bounds__(kScoreThreads, kScoreSelectMinBlocks(PAGE, ATTEND)) score_select_kernel(const FusedArgs<T> a) {
  // the group's queries [G][dp] and (token mode) the running softmax states; then, ATTEND, chunk_state's
  extern __shared__ float smem[];
  __shared__ decode_vote::HeadNorm s_norm[kMaxG];
  __shared__ int s_last;
  const int g = blockIdx.y, b = a.b0 + blockIdx.z, Hkv = gridDim.y;
  const int64_t w = static_cast<int64_t>(b) * Hkv + g;
  load_group_q(a.q, a.qsb, a.qsh, b, g, a.G, a.d, lane_map(a.d), a.scale, smem);
  __syncthreads();
  if constexpr (PAGE)
    page_bounds_block(smem, a.mn, a.mx, a.ss, a.lens[b], a.G, a.d, a.P, a.ps, a.sink, a.window, a.vecs, b, g, w,
                      a.score_sel);
  else
    token_scores_block(smem, a.k, a.ks, a.lens[b], a.G, a.d, a.N, a.veck, b, g, w, a.scores,
                       reinterpret_cast<decode_vote::SoftStat*>(smem + a.G * lane_map(a.d).dp), a.stats);
  if (gridDim.x > 1) {  // grid-uniform
    __threadfence();    // this thread's score writes are visible device-wide before the count below
    __syncthreads();    // ... for every thread of the block
    if (threadIdx.x == 0) {
      const int last = decode_fuse::arrived_last(atomicAdd(a.ctr + w, 1), static_cast<int>(gridDim.x));
      if (last) a.ctr[w] = 0;  // reset: the counter is back at 0 after the call
      s_last = last;
    }
    __syncthreads();
    if (!s_last) return;  // block-uniform
    __threadfence();      // order the reads below after the observed count
  } else {
    __syncthreads();  // the block's own score writes: visible to it
  }
  if constexpr (!PAGE) {
    int64_t first, last;
    if (vote_needed(a.lens[b], a.sink, a.window, a.budget, &first, &last)) {  // block-uniform
      vote_row(a.scores, a.stats, static_cast<int>(gridDim.x), a.G, a.N, first, last, w, a.score_sel, s_norm);
      __syncthreads();  // the votes: visible to the block
    }
  }
  const int64_t total = select_row<kScoreThreads>(a.score_sel, PAGE ? a.P : a.N, a.lens, PAGE, a.ps, a.sink,
                                                  a.window, a.budget, a.M, b, g, Hkv, a.sel, a.cnt, a.idx_out);
  if constexpr (ATTEND) {
    __syncthreads();  // sel[w * M ...] written by the block: visible to it
    const int n = static_cast<int>(imin(total, kChunk));
    float* pw = a.part + w * a.G * (a.d + 2);
    chunk_state<T>(smem, a.q, a.qsb, a.qsh, a.k, a.ks, a.v, a.vs, a.sel + w * a.M, n, PAGE ? nullptr : a.scores,
                   a.G, a.d, a.N, a.scale, a.veck, a.vecv, b, g, w, pw);
    __syncthreads();  // the state written by the block: visible to it
    merge_group<T>(pw, a.G, a.d, 1, a.out + w * a.G * a.d);
  }
}

// ------------------------------------------------------------------ host: decode
// Kernels take page_size, sink and window as int: clamp them to the cache
// length first (an equivalent selection: sink_end = min(sink, L) and
// L - window <= 0 once either is >= N >= L; a page_size >= N is one page,
// as is the smallest power of two >= N). Values up to INT64_MAX are valid.
inline int64_t clamp_len(int64_t v, int64_t n) { return v < n ? v : n; }
inline int64_t clamp_page_size(int64_t ps, int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return ps < p ? ps : p;
}

template <typename NT>
void summary_launch(const Tensor& k_cache, Tensor& mn, Tensor& mx, const int64_t* lo, const int64_t* hi,
                    int64_t ps, cudaStream_t st) {
  const int64_t B = k_cache.size(0), H = k_cache.size(1), d = k_cache.size(3), P = mn.size(2);
  if (B * H * P * d == 0) return;
  ps = clamp_page_size(ps, k_cache.size(2));
  SOFTDEC_CHECK(H <= kMaxGridYZ, "k_cache must have at most ", kMaxGridYZ, " kv heads on CUDA, got ", H);
  SOFTDEC_CHECK(P < (int64_t(1) << 31), "k_cache must have fewer than 2^31 pages on CUDA, got ", P);
  const int threads = static_cast<int>(imin(kSummaryThreads, (d + 31) / 32 * 32));
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
    const dim3 grid(static_cast<unsigned>(P), static_cast<unsigned>(H),
                    static_cast<unsigned>(imin(kMaxGridYZ, B - b0)));
    page_summary_kernel<NT><<<grid, threads, 0, st>>>(
        reinterpret_cast<const NT*>(k_cache.data_ptr()), strides4(k_cache), reinterpret_cast<NT*>(mn.data_ptr()),
        reinterpret_cast<NT*>(mx.data_ptr()), strides4(mn), lo, hi, static_cast<int>(ps), static_cast<int>(d),
        static_cast<int>(P), static_cast<int>(b0));
    SOFTDEC_CUDA_LAUNCH_CHECK();
  }
}

std::tuple<Tensor, Tensor> page_summary_cuda(Tensor k_cache, int64_t page_size, Tensor seq_lens) {
  check_cache(k_cache, "k_cache");
  SOFTDEC_CHECK(page_size > 0 && (page_size & (page_size - 1)) == 0, "page_size must be a power of two, got ",
                page_size);
  const int64_t B = k_cache.size(0), H = k_cache.size(1), N = k_cache.size(2), d = k_cache.size(3);
  check_lens(seq_lens, "seq_lens", B, N, k_cache);
  torch::stable::accelerator::DeviceGuard guard(k_cache.get_device_index());
  const int64_t P = attn::ceil_div(N, page_size);
  Tensor mn = new_empty(k_cache, {B, H, P, d}, k_cache.scalar_type());
  Tensor mx = new_empty(k_cache, {B, H, P, d}, k_cache.scalar_type());
  SOFTDEC_DISPATCH_FLOAT(k_cache.scalar_type(), "k_cache", scalar_t, [&] {
    summary_launch<typename CudaNative<scalar_t>::type>(k_cache, mn, mx, nullptr, seq_lens.const_data_ptr<int64_t>(),
                                                    page_size, current_stream(k_cache));
  });
  return {mn, mx};
}

void page_summary_update_cuda(Tensor kmin, Tensor kmax, Tensor k_cache, Tensor start, Tensor end) {
  check_cache(k_cache, "k_cache");
  check_summary(kmin, "kmin", k_cache, 0);
  check_summary(kmax, "kmax", k_cache, 0);
  check_no_internal_overlap(kmin, "kmin");
  check_no_internal_overlap(kmax, "kmax");
  SOFTDEC_CHECK(kmax.size(2) == kmin.size(2) && kmin.stride(0) == kmax.stride(0) &&
                    kmin.stride(1) == kmax.stride(1) && kmin.stride(2) == kmax.stride(2),
                "kmax must have the shape and strides of kmin ", shape_str(kmin), ", got ", shape_str(kmax));
  const int64_t B = k_cache.size(0), N = k_cache.size(2), P = kmin.size(2);
  SOFTDEC_CHECK(P > 0 && N > 0, "kmin must have at least one page");
  int64_t ps = 1;
  while (attn::ceil_div(N, ps) > P) ps <<= 1;
  SOFTDEC_CHECK(attn::ceil_div(N, ps) == P, "kmin has ", P, " pages, which matches no power-of-two page size for ",
                N, " tokens");
  check_lens(start, "start", B, N, k_cache);
  check_lens(end, "end", B, N, k_cache);
  torch::stable::accelerator::DeviceGuard guard(k_cache.get_device_index());
  SOFTDEC_DISPATCH_FLOAT(k_cache.scalar_type(), "k_cache", scalar_t, [&] {
    summary_launch<typename CudaNative<scalar_t>::type>(k_cache, kmin, kmax, start.const_data_ptr<int64_t>(),
                                                    end.const_data_ptr<int64_t>(), ps, current_stream(k_cache));
  });
}

// SOFTDEC_DECODE_FUSED=0 forces the unfused decode kernels (select -> split-KV attention -> merge);
// anything else (or unset) takes the fused paths (decode_fuse::choose_path). Read on every call, so a
// process (or a test) can switch it between calls.
inline bool decode_fused_enabled() {
  const char* e = std::getenv("SOFTDEC_DECODE_FUSED");
  return !(e && e[0] == '0' && e[1] == '\0');
}

template <typename NT>
void decode_launch(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lens,
                   int64_t budget, bool page_mode, int64_t ps, int64_t sink, int64_t window, float scale,
                   const Tensor* mn, const Tensor* mx, int64_t M, Tensor& out, int64_t* idx_out) {
  const int64_t B = q.size(0), Hq = q.size(1), d = q.size(2), Hkv = k_cache.size(1), N = k_cache.size(2);
  const int G = static_cast<int>(Hq / Hkv);
  ps = clamp_page_size(ps, N);
  sink = clamp_len(sink, N);
  window = clamp_len(window, N);
  cudaStream_t st = current_stream(q);
  const NT* qp = reinterpret_cast<const NT*>(q.data_ptr());
  const NT* kp = reinterpret_cast<const NT*>(k_cache.data_ptr());
  const NT* vp = reinterpret_cast<const NT*>(v_cache.data_ptr());
  const int64_t* lp = lens.const_data_ptr<int64_t>();
  // 16-byte row loads: d a multiple of 8 (a lane's group of 8 elements is whole) and rows 16-byte aligned.
  const bool veck = d % 8 == 0 && vec_ok(k_cache, d, sizeof(NT));
  const bool vecv = d % 8 == 0 && vec_ok(v_cache, d, sizeof(NT));
  const bool vecs = page_mode && d % 8 == 0 && vec_ok(*mn, d, sizeof(NT)) && vec_ok(*mx, d, sizeof(NT));
  const LaneMap lm = lane_map(static_cast<int>(d));
  // scoring: the group's queries (+ token mode: the running softmax states, after them: 8-byte aligned,
  // dp is a multiple of 8)
  const size_t qsm = static_cast<size_t>(G) * lm.dp * sizeof(float) + (page_mode ? 0 : softmax_run_smem(G, lm));
  const size_t smem = decode_attn_smem(G, lm.dp);
  // Shared memory above 48 KB (large G x head_dim): opt in, or a clear error past the device's maximum.
  const std::string what = detail::cat("sparse_decode_attention with ", G, " query heads per kv head and head_dim ",
                                       d);
  const unsigned hkv = static_cast<unsigned>(Hkv);
  const int64_t P = page_mode ? mn->size(2) : 0, S = page_mode ? P : N;
  // Scoring blocks per (row, kv head), the same on every path (the token softmax partials depend on it):
  // page mode kpw pages a warp, token mode kpw tokens (2 kpw for G <= kMaxG / 2); at least kScorePasses
  // passes a block, so loading the group's queries stays small.
  const int64_t per_block =
      static_cast<int64_t>(kScoreThreads / 32) * (!page_mode && G <= kMaxG / 2 ? 2 : 1) * lm.kpw;
  const int gx = static_cast<int>(
      page_mode ? imin(attn::ceil_div(P, per_block * kScorePasses), 1024) : imin(attn::ceil_div(N, per_block * kScorePasses), 4096));
  Tensor score_sel = new_empty(q, {B, Hkv, S}, ScalarType::Float);
  Tensor scores = new_empty(q, {page_mode ? 0 : B, Hq, N}, ScalarType::Float);
  Tensor stats = new_empty(q, {page_mode ? 0 : B, Hkv, G, gx, 2}, ScalarType::Float);
  Tensor sel = new_empty(q, {B, Hkv, imax(M, 1)}, ScalarType::Int);
  Tensor cnt = new_empty(q, {B, Hkv}, ScalarType::Int);
  const int chunks = static_cast<int>(decode_fuse::num_chunks(M, kChunk));
  Tensor part = new_empty(q, {B, Hkv, chunks, G, d + 2}, ScalarType::Float);
  float* scp = page_mode ? nullptr : scores.mutable_data_ptr<float>();
  float2* stp = page_mode ? nullptr : reinterpret_cast<float2*>(stats.mutable_data_ptr<float>());
  NT* op = reinterpret_cast<NT*>(out.data_ptr());
  const decode_fuse::Path path = decode_fuse::choose_path(M, kChunk, decode_fused_enabled());

  if (path != decode_fuse::Path::kUnfused) {
    const bool attend = path == decode_fuse::Path::kSingleBlock;
    // The arrival counters: [0] scoring blocks (score_select_kernel, when gx > 1), [1] chunk blocks
    // (decode_attn_kernel<fused>). One memset zeroes both when either is used; each kernel's last block
    // resets its counter, so the counters are back at 0 after the call.
    Tensor ctr = new_empty(q, {2, B, Hkv}, ScalarType::Int);
    if (decode_fuse::counters_needed(path, gx))
      SOFTDEC_CUDA_CHECK(cudaMemsetAsync(ctr.data_ptr(), 0, static_cast<size_t>(2 * B * Hkv) * sizeof(int32_t), st));
    int32_t* ctrp = ctr.mutable_data_ptr<int32_t>();
    FusedArgs<NT> a{};
    a.q = qp;
    a.qsb = q.stride(0);
    a.qsh = q.stride(1);
    if (page_mode) {
      a.mn = reinterpret_cast<const NT*>(mn->data_ptr());
      a.mx = reinterpret_cast<const NT*>(mx->data_ptr());
      a.ss = strides4(*mn);
    }
    a.k = kp;
    a.v = vp;
    a.ks = strides4(k_cache);
    a.vs = strides4(v_cache);
    a.lens = lp;
    a.G = G;
    a.d = static_cast<int>(d);
    a.N = static_cast<int>(N);
    a.P = static_cast<int>(P);
    a.ps = static_cast<int>(ps);
    a.sink = static_cast<int>(sink);
    a.window = static_cast<int>(window);
    a.M = static_cast<int>(M);
    a.scale = scale;
    a.budget = budget;
    a.vecs = vecs;
    a.veck = veck;
    a.vecv = vecv;
    a.score_sel = score_sel.mutable_data_ptr<float>();
    a.scores = scp;
    a.stats = stp;
    a.ctr = ctrp;
    a.sel = sel.mutable_data_ptr<int32_t>();
    a.cnt = cnt.mutable_data_ptr<int32_t>();
    a.idx_out = idx_out;
    a.part = part.mutable_data_ptr<float>();
    a.out = op;
    auto kernel = page_mode ? (attend ? score_select_kernel<NT, true, true> : score_select_kernel<NT, true, false>)
                            : (attend ? score_select_kernel<NT, false, true> : score_select_kernel<NT, false, false>);
    const size_t ssm = attend ? std::max(smem, qsm) : qsm;
    set_dynamic_smem(kernel, ssm, what);
    if (!attend) set_dynamic_smem(decode_attn_kernel<NT, true>, smem, what);
    for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
      const unsigned rows = static_cast<unsigned>(imin(kMaxGridYZ, B - b0));
      a.b0 = static_cast<int>(b0);
      kernel<<<dim3(static_cast<unsigned>(gx), hkv, rows), kScoreThreads, ssm, st>>>(a);
      SOFTDEC_CUDA_LAUNCH_CHECK();
      if (!attend) {
        decode_attn_kernel<NT, true><<<dim3(static_cast<unsigned>(chunks), hkv, rows), kAttnThreads, smem, st>>>(
            qp, q.stride(0), q.stride(1), kp, strides4(k_cache), vp, strides4(v_cache), sel.const_data_ptr<int32_t>(),
            cnt.const_data_ptr<int32_t>(), scp, G, static_cast<int>(d), static_cast<int>(N), static_cast<int>(M),
            scale, veck, vecv, static_cast<int>(b0), part.mutable_data_ptr<float>(), ctrp + B * Hkv, op);
        SOFTDEC_CUDA_LAUNCH_CHECK();
      }
    }
    return;
  }

  // Unfused (SOFTDEC_DECODE_FUSED=0): scoring (page bounds, or token scores + votes) -> select_kernel ->
  // decode_attn_kernel -> decode_merge_kernel.
  if (page_mode) set_dynamic_smem(page_bound_kernel<NT>, qsm, what);
  else set_dynamic_smem(token_score_kernel<NT>, qsm, what);
  set_dynamic_smem(decode_attn_kernel<NT, false>, smem, what);
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
    const unsigned rows = static_cast<unsigned>(imin(kMaxGridYZ, B - b0));
    const dim3 sgrid(static_cast<unsigned>(gx), hkv, rows);
    if (page_mode) {
      page_bound_kernel<NT><<<sgrid, kScoreThreads, qsm, st>>>(
          qp, q.stride(0), q.stride(1), reinterpret_cast<const NT*>(mn->data_ptr()),
          reinterpret_cast<const NT*>(mx->data_ptr()), strides4(*mn), lp, G, static_cast<int>(d),
          static_cast<int>(P), static_cast<int>(ps), static_cast<int>(sink), static_cast<int>(window), scale,
          vecs, static_cast<int>(b0), score_sel.mutable_data_ptr<float>());
      SOFTDEC_CUDA_LAUNCH_CHECK();
    } else {
      token_score_kernel<NT><<<sgrid, kScoreThreads, qsm, st>>>(
          qp, q.stride(0), q.stride(1), kp, strides4(k_cache), lp, G, static_cast<int>(d), static_cast<int>(N),
          scale, veck, static_cast<int>(b0), scp, stp);
      SOFTDEC_CUDA_LAUNCH_CHECK();
      vote_kernel<<<dim3(hkv, rows), kVoteThreads, 0, st>>>(scp, stp, gx, lp, G, static_cast<int>(N),
                                                           static_cast<int>(sink), static_cast<int>(window), budget,
                                                           static_cast<int>(b0), score_sel.mutable_data_ptr<float>());
      SOFTDEC_CUDA_LAUNCH_CHECK();
    }
    select_kernel<<<dim3(hkv, rows), kSelThreads, 0, st>>>(
        score_sel.const_data_ptr<float>(), S, lp, page_mode, static_cast<int>(ps), static_cast<int>(sink),
        static_cast<int>(window), budget, static_cast<int>(M), static_cast<int>(b0), sel.mutable_data_ptr<int32_t>(),
        cnt.mutable_data_ptr<int32_t>(), idx_out);
    SOFTDEC_CUDA_LAUNCH_CHECK();
    decode_attn_kernel<NT, false><<<dim3(static_cast<unsigned>(chunks), hkv, rows), kAttnThreads, smem, st>>>(
        qp, q.stride(0), q.stride(1), kp, strides4(k_cache), vp, strides4(v_cache), sel.const_data_ptr<int32_t>(),
        cnt.const_data_ptr<int32_t>(), scp, G, static_cast<int>(d), static_cast<int>(N), static_cast<int>(M), scale,
        veck, vecv, static_cast<int>(b0), part.mutable_data_ptr<float>(), nullptr, nullptr);
    SOFTDEC_CUDA_LAUNCH_CHECK();
    decode_merge_kernel<NT><<<dim3(static_cast<unsigned>(Hq), rows), kMergeThreads, 0, st>>>(
        part.const_data_ptr<float>(), G, static_cast<int>(d), chunks, static_cast<int>(b0), op);
    SOFTDEC_CUDA_LAUNCH_CHECK();
  }
}

std::tuple<Tensor, Tensor> sparse_decode_attention_cuda(Tensor q, Tensor k_cache, Tensor v_cache, Tensor seq_lens,
                                                        int64_t budget, int64_t select, int64_t page_size,
                                                        int64_t sink, int64_t window, double scale,
                                                        std::optional<Tensor> kmin, std::optional<Tensor> kmax,
                                                        bool return_indices) {
  check_decode_args(q, k_cache, v_cache, budget, select, page_size, sink, window, scale);
  const int64_t B = q.size(0), Hq = q.size(1), d = q.size(2), Hkv = k_cache.size(1), N = k_cache.size(2);
  check_lens(seq_lens, "seq_lens", B, N, k_cache);
  SOFTDEC_CHECK(Hq / Hkv <= kMaxG, "the CUDA backend supports at most ", kMaxG,
                " query heads per kv head, got ", Hq / Hkv);
  SOFTDEC_CHECK(N < (int64_t(1) << 31), "k_cache must have fewer than 2^31 tokens on CUDA, got ", N);
  SOFTDEC_CHECK(Hq <= kMaxGridYZ, "q must have at most ", kMaxGridYZ, " heads on CUDA, got ", Hq);
  SOFTDEC_CHECK(B < (int64_t(1) << 31), "q must have fewer than 2^31 rows on CUDA, got ", B);
  const bool page_mode = select == 0;
  SOFTDEC_CHECK(kmin.has_value() == kmax.has_value(), "kmin and kmax must be given together");
  if (kmin) {
    check_summary(*kmin, "kmin", k_cache, page_size);
    check_summary(*kmax, "kmax", k_cache, page_size);
    SOFTDEC_CHECK(kmin->stride(0) == kmax->stride(0) && kmin->stride(1) == kmax->stride(1) &&
                      kmin->stride(2) == kmax->stride(2),
                  "kmax must have the strides of kmin");
  }
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  const int64_t M = attn::max_selected(N, budget, page_mode, page_size, sink, window);
  Tensor out = new_empty(q, {B, Hq, d}, q.scalar_type());
  Tensor idx = new_empty(q, {return_indices ? B : 0, Hkv, M}, ScalarType::Long);
  if (B == 0 || Hq == 0 || d == 0) return {out, idx};
  if (N == 0) {  // nothing to attend to: zero rows (as for seq_lens 0)
    torch::stable::zero_(out);
    return {out, idx};
  }
  Tensor mn, mx;
  if (page_mode) {
    if (kmin) {
      mn = *kmin;
      mx = *kmax;
    } else {
      std::tie(mn, mx) = page_summary_cuda(k_cache, page_size, seq_lens);
    }
  }
  SOFTDEC_DISPATCH_FLOAT(q.scalar_type(), "q", scalar_t, [&] {
    decode_launch<typename CudaNative<scalar_t>::type>(
        q, k_cache, v_cache, seq_lens, budget, page_mode, page_size, sink, window, static_cast<float>(scale),
        page_mode ? &mn : nullptr, page_mode ? &mx : nullptr, M, out,
        return_indices ? idx.mutable_data_ptr<int64_t>() : nullptr);
  });
  return {out, idx};
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("sparse_page_summary", TORCH_BOX(&softdec::page_summary_cuda));
  m.impl("sparse_page_summary_update", TORCH_BOX(&softdec::page_summary_update_cuda));
  m.impl("sparse_decode_attention", TORCH_BOX(&softdec::sparse_decode_attention_cuda));
}
