// CUDA backend of token_sparse_prefill: window-query row statistics (online
// softmax), key scores, the drop rule (block-wide bisection on the score mass +
// radix select, ties by lower index), then a tiled flash-attention kernel over
// the gathered kept set and the scatter back (dropped rows 0). The attention step
// runs on tensor cores (CuTe sm_80 MMA atoms, FlashAttention-2 style) for bf16/fp16
// with head_dim 64 or 128, and on fp32 FMA tiles in shared memory otherwise.
// Hopper: prefill_wgmma_kernel (SM90 GMMA atoms, sm_90a cubin only) is the same attention
// on warpgroup MMA; it is COMPILED, NOT RUN, so it is opt-in: SOFTDEC_PREFILL_WGMMA=1 on an
// sm_90 device with sm_90a in the build (default "0": the mma.sync kernel). The first GPU
// session runs its tests and `softdec bench` prefill rows (switch on / off) and flips the default.
#include <cstdlib>
#include <type_traits>

#include "attn_common.cuh"

namespace softdec {
namespace {

using namespace attn_checks;
using namespace attn_cuda;

// Threads per block of each kernel (the launch and its __launch_bounds__).
constexpr int kScoreWarps = 8, kScoreThreads = 32 * kScoreWarps;  // row stats / key scores: a warp per row
constexpr int kZeroThreads = 256;                                 // zeroing of the dropped rows

// ------------------------------------------------------------------ prefill: scoring
// (bf16 / fp16 with head_dim 64 or 128 score on tensor cores, prefill_rowstats_mma_kernel /
// prefill_score_mma_kernel below; these SIMT kernels take fp32 and the other head dims.)

// Element j of 16 bytes of T held as four 32-bit words (j a compile-time constant after unrolling, so the
// words stay in registers: no local-memory copy of the vector).
template <typename T>
__device__ __forceinline__ float word_elem(const uint32_t (&wd)[4], int j) {
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(wd[j]);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __uint_as_float(j % 2 ? wd[j / 2] & 0xffff0000u : wd[j / 2] << 16);  // bf16 -> fp32 is exact
  } else {
    static_assert(std::is_same_v<T, __half>, "fp32 / bf16 / fp16");
    return __half2float(__ushort_as_half(static_cast<unsigned short>(j % 2 ? wd[j / 2] >> 16 : wd[j / 2] & 0xffffu)));
  }
}

// This lane's partial of the dot product of an fp32 row in shared memory with a row of T: 16-byte loads
// strided by 32 lanes when `vec` (row 16-byte aligned, d a multiple of 16 / sizeof(T)), else elements.
template <typename T>
__device__ __forceinline__ float lane_dot(const float* __restrict__ q, const T* __restrict__ k, int d, bool vec,
                                          int lane) {
  constexpr int kV = 16 / sizeof(T);
  float acc = 0.f;
  if (vec) {
    for (int c = lane; c < d / kV; c += 32) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(k) + c);
      const uint32_t wd[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int j = 0; j < kV; ++j) acc += q[c * kV + j] * word_elem<T>(wd, j);
    }
  } else {
    for (int i = lane; i < d; i += 32) acc += q[i] * to_float(k[i]);
  }
  return acc;
}
// Row statistics (max, sum of exp) of the last w queries of (b, h): one warp per query.
template <typename T>
__global__ void __launch_bounds__(kScoreThreads)
    prefill_rowstats_kernel(const T* __restrict__ q, Strides4 qs, const T* __restrict__ k, Strides4 ks,
                                        int G, int L, int w, int d, bool causal, float scale, bool vec, int b0,
                                        float2* __restrict__ stats /* [B, Hq, w] */) {
  extern __shared__ float sq[];  // [nw][d]
  const int h = blockIdx.y, b = b0 + blockIdx.z, Hq = gridDim.y, g = h / G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  const int r = blockIdx.x * nw + warp;  // window row
  float* qr = sq + warp * d;
  if (r < w) {
    const int i = L - w + r;
    for (int x = lane; x < d; x += 32) qr[x] = scale * to_float(q[b * qs.b + h * qs.h + static_cast<int64_t>(i) * qs.n + x]);
  }
  __syncwarp();
  if (r >= w) return;
  const int i = L - w + r;
  const int jend = causal ? i + 1 : L;
  float m = kNegInf, l = 0.f;
  for (int j = 0; j < jend; ++j) {
    const float s =
        nan_to_neginf(warp_sum(lane_dot<T>(qr, k + b * ks.b + g * ks.h + static_cast<int64_t>(j) * ks.n, d, vec, lane)));
    if (s == kNegInf) continue;
    const float mn = fmaxf(m, s);
    l = l * __expf(m - mn) + __expf(s - mn);
    m = mn;
  }
  if (lane == 0) stats[(static_cast<int64_t>(b) * Hq + h) * w + r] = make_float2(m, l);
}

// score[j] = sum_r exp(s_rj - m_r) / l_r: one warp per key j, looping over the window rows.
template <typename T>
__global__ void __launch_bounds__(kScoreThreads)
    prefill_score_kernel(const T* __restrict__ q, Strides4 qs, const T* __restrict__ k, Strides4 ks,
                                     const float2* __restrict__ stats, int G, int L, int w, int d, bool causal,
                                     float scale, bool vec, int b0, float* __restrict__ score /* [B, Hq, L] */) {
  extern __shared__ float sk[];  // [nw][d]
  const int h = blockIdx.y, b = b0 + blockIdx.z, Hq = gridDim.y, g = h / G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  const int j = blockIdx.x * nw + warp;
  if (j >= L) return;
  float* kr = sk + warp * d;
  for (int x = lane; x < d; x += 32) kr[x] = scale * to_float(k[b * ks.b + g * ks.h + static_cast<int64_t>(j) * ks.n + x]);
  __syncwarp();
  const float2* st = stats + (static_cast<int64_t>(b) * Hq + h) * w;
  float acc = 0.f;
  for (int r = 0; r < w; ++r) {
    const int i = L - w + r;
    if (causal && j > i) continue;
    const float2 ml = st[r];
    if (ml.x == kNegInf || !(ml.y > 0.f)) continue;
    const float s =
        nan_to_neginf(warp_sum(lane_dot<T>(kr, q + b * qs.b + h * qs.h + static_cast<int64_t>(i) * qs.n, d, vec, lane)));
    acc += __expf(s - ml.x) / ml.y;
  }
  if (lane == 0) score[(static_cast<int64_t>(b) * Hq + h) * L + j] = acc;
}

// Drop rule and compaction of one (b, h): kept mask, kept positions ascending, count.
__global__ void __launch_bounds__(kSelThreads)
    prefill_select_kernel(const float* __restrict__ score, int L, int w, int64_t min_tokens,
                                      float coverage, int b0, bool* __restrict__ kept, int32_t* __restrict__ list,
                                      int32_t* __restrict__ count) {
  using Reduce = cub::BlockReduce<float, kSelThreads>;
  using Scan = cub::BlockScan<int64_t, kSelThreads>;
  __shared__ union {
    typename Reduce::TempStorage red;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_word;
  __shared__ int64_t s_count;
  __shared__ float s_f;
  __shared__ uint32_t s_key;
  const int64_t row = static_cast<int64_t>(b0 + blockIdx.y) * gridDim.x + blockIdx.x;  // gridDim.x = Hq
  const float* sc = score + row * L;
  bool* kp = kept + row * L;
  int32_t* ls = list + row * L;
  const int nc = L - w;  // candidates: the non-window tokens
  int64_t D = 0;
  const int64_t dmax = attn::max_drop(L, w, min_tokens);
  if (coverage > 0.f && dmax > 0 && nc > 0) {
    float tot = 0.f;
    for (int j = threadIdx.x; j < L; j += blockDim.x) tot += sc[j];
    tot = Reduce(tmp.red).Sum(tot);
    if (threadIdx.x == 0) s_f = tot;
    __syncthreads();
    const float limit = coverage * s_f;
    // Largest key K with mass(key < K) <= limit (bisection over the key space).
    uint32_t lo = 0, hi = 0xffffffffu;  // invariant: mass(< lo) <= limit
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      float m = 0.f;
      for (int j = threadIdx.x; j < nc; j += blockDim.x)
        if (order_key(sc[j]) < mid) m += sc[j];
      __syncthreads();
      m = Reduce(tmp.red).Sum(m);
      if (threadIdx.x == 0) s_f = m;
      __syncthreads();
      if (s_f <= limit) lo = mid; else hi = mid - 1;
      __syncthreads();
    }
    // D_mass = #(key < lo) + ties at lo that still fit.
    float mlt = 0.f;
    int64_t nlt = 0, nties = 0;
    for (int j = threadIdx.x; j < nc; j += blockDim.x) {
      const uint32_t key = order_key(sc[j]);
      if (key < lo) { mlt += sc[j]; ++nlt; }
      nties += key == lo;
    }
    __syncthreads();
    mlt = Reduce(tmp.red).Sum(mlt);
    if (threadIdx.x == 0) s_f = mlt;
    __syncthreads();
    mlt = s_f;
    int64_t agg[2] = {nlt, nties};
    for (int a = 0; a < 2; ++a) {
      int64_t tot_a;
      __syncthreads();
      Scan(tmp.scan).ExclusiveSum(agg[a], tot_a);
      if (threadIdx.x == kSelThreads - 1) s_count = tot_a + agg[a];
      __syncthreads();
      agg[a] = s_count;
    }
    nlt = agg[0];
    nties = agg[1];
    const uint32_t u = (lo & 0x80000000u) ? (lo & 0x7fffffffu) : ~lo;  // float bits of key lo
    const float tv = __uint_as_float(u);
    int64_t fit = nties;
    if (tv > 0.f) fit = imin(nties, static_cast<int64_t>(floorf((limit - mlt) / tv)));
    D = imin(nlt + imax(fit, 0), dmax);
  }
  // Drop the D smallest candidates by (score, index): radix select + tie ranks.
  uint32_t kth = 0;
  int64_t less = 0;
  if (D > 0) {
    kth = block_radix_select<kSelThreads>(
        nc, D, false, [&](int64_t j) { return order_key(sc[j]); }, &less, hist, &s_word, &s_count);
    if (threadIdx.x == 0) s_key = kth;
    __syncthreads();
    kth = s_key;
  }
  const int64_t seg = (L + kSelThreads - 1) / kSelThreads;
  const int64_t i0 = imin(L, threadIdx.x * seg), i1 = imin(L, i0 + seg);
  int64_t ties = 0;
  if (D > 0)
    for (int64_t j = i0; j < imin(i1, nc); ++j) ties += order_key(sc[j]) == kth;
  int64_t rank;
  __syncthreads();
  Scan(tmp.scan).ExclusiveSum(ties, rank);
  int64_t keep_n = 0;
  {
    int64_t rk = rank;
    for (int64_t j = i0; j < i1; ++j) {
      bool keep = true;
      if (D > 0 && j < nc) {
        const uint32_t key = order_key(sc[j]);
        if (key < kth) keep = false;
        else if (key == kth) keep = !(rk++ < D - less);
      }
      kp[j] = keep;
      keep_n += keep;
    }
  }
  int64_t off;
  __syncthreads();
  Scan(tmp.scan).ExclusiveSum(keep_n, off);
  for (int64_t j = i0; j < i1; ++j)
    if (kp[j]) ls[off++] = static_cast<int32_t>(j);
  if (threadIdx.x == kSelThreads - 1) count[row] = static_cast<int32_t>(off);
}

// ------------------------------------------------------------------ prefill: gathered flash attention
constexpr int kBr = 32, kBc = 32, kFlashThreads = 128;  // 4 threads per query row
constexpr int kMaxD = 256;

// Dynamic shared memory of prefill_flash_kernel: sQ, sK, sV, sP.
inline size_t prefill_flash_smem(int64_t d) {
  return static_cast<size_t>(kBr * (d + 1) + kBc * (d + 1) + kBc * d + kBr * (kBc + 1)) * sizeof(float);
}

template <typename T>
__global__ void __launch_bounds__(kFlashThreads)
    prefill_flash_kernel(const T* __restrict__ q, Strides4 qs, const T* __restrict__ k, Strides4 ks,
                                     const T* __restrict__ v, Strides4 vs, const int32_t* __restrict__ list,
                                     const int32_t* __restrict__ count, int G, int L, int d, bool causal,
                                     float scale, int b0, T* __restrict__ out /* [B, Hq, L, d] */) {
  extern __shared__ float sm[];
  float* sQ = sm;                 // [kBr][d + 1]
  float* sK = sQ + kBr * (d + 1); // [kBc][d + 1]
  float* sV = sK + kBc * (d + 1); // [kBc][d]
  float* sP = sV + kBc * d;       // [kBr][kBc + 1]
  const int h = blockIdx.y, b = b0 + blockIdx.z, Hq = gridDim.y, g = h / G;
  const int64_t row = static_cast<int64_t>(b) * Hq + h;
  const int n = count[row];
  const int a0 = blockIdx.x * kBr;
  if (a0 >= n) return;
  const int32_t* ls = list + row * L;
  const int tid = threadIdx.x, r = tid / 4, sub = tid % 4;
  for (int x = tid; x < kBr * d; x += blockDim.x) {
    const int rr = x / d, i = x % d;
    sQ[rr * (d + 1) + i] = a0 + rr < n ? scale * to_float(q[b * qs.b + h * qs.h + static_cast<int64_t>(ls[a0 + rr]) * qs.n + i]) : 0.f;
  }
  constexpr int kPer = kMaxD / 4;
  float acc[kPer];
#pragma unroll
  for (int x = 0; x < kPer; ++x) acc[x] = 0.f;
  float m = kNegInf, l = 0.f;
  const int kend = causal ? min(n, a0 + kBr) : n;
  for (int c0 = 0; c0 < kend; c0 += kBc) {
    __syncthreads();
    for (int x = tid; x < kBc * d; x += blockDim.x) {
      const int cc = x / d, i = x % d;
      const bool ok = c0 + cc < n;
      const int64_t t = ok ? ls[c0 + cc] : 0;
      sK[cc * (d + 1) + i] = ok ? to_float(k[b * ks.b + g * ks.h + t * ks.n + i]) : 0.f;
      sV[cc * d + i] = ok ? to_float(v[b * vs.b + g * vs.h + t * vs.n + i]) : 0.f;
    }
    __syncthreads();
    // scores: thread (r, sub) computes columns sub, sub+4, ...
    float s[kBc / 4];
    float mt = kNegInf;
#pragma unroll
    for (int cj = 0; cj < kBc / 4; ++cj) {
      const int c = sub + 4 * cj;
      float x = 0.f;
      for (int i = 0; i < d; ++i) x += sQ[r * (d + 1) + i] * sK[c * (d + 1) + i];
      const bool valid = (c0 + c < n) && (!causal || c0 + c <= a0 + r) && (a0 + r < n);
      s[cj] = valid ? x : kNegInf;
      mt = fmaxf(mt, s[cj]);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
    const float mn = fmaxf(m, mt);
    const float alpha = (m == kNegInf) ? 0.f : __expf(m - mn);
    float ps = 0.f;
#pragma unroll
    for (int cj = 0; cj < kBc / 4; ++cj) {
      const float p = (s[cj] == kNegInf) ? 0.f : __expf(s[cj] - mn);
      sP[r * (kBc + 1) + sub + 4 * cj] = p;
      ps += p;
    }
    ps += __shfl_xor_sync(0xffffffffu, ps, 1);
    ps += __shfl_xor_sync(0xffffffffu, ps, 2);
    if (mn != kNegInf) {
      l = l * alpha + ps;
      m = mn;
    }
    __syncwarp();
    // acc over this thread's dims i = sub + 4x
#pragma unroll
    for (int x = 0; x < kPer; ++x) {
      const int i = sub + 4 * x;
      if (i < d) {
        float o = acc[x] * alpha;
        for (int c = 0; c < kBc; ++c) o += sP[r * (kBc + 1) + c] * sV[c * d + i];
        acc[x] = o;
      }
    }
  }
  if (a0 + r < n) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* o = out + (row * L + ls[a0 + r]) * d;
#pragma unroll
    for (int x = 0; x < kPer; ++x) {
      const int i = sub + 4 * x;
      if (i < d) o[i] = from_float<T>(acc[x] * inv);
    }
  }
}

}  // namespace
}  // namespace softdec

#if defined(SOFTDEC_HAS_CUTLASS)
#include <cutlass/arch/barrier.h>  // fence_view_async_shared (fence.proxy.async.shared::cta)
#include <cutlass/numeric_conversion.h>

#include "prefill_mma_traits.cuh"

namespace softdec_prefill_mma {
using namespace cute;
using softdec::attn_checks::Strides4;

// Source row of compressed / window position a: the kept list (attention) or an affine map (scoring).
struct ListRows {
  const int32_t* __restrict__ ls;
  __device__ __forceinline__ int64_t operator()(int a) const { return ls[a]; }
};
struct ShiftRows {
  int off;
  __device__ __forceinline__ int64_t operator()(int a) const { return static_cast<int64_t>(off) + a; }
};

// The work of one attention block (the mma.sync and the wgmma kernels): query tile blockIdx.x of (b, h) =
// (b0 + blockIdx.z, blockIdx.y), its n kept rows (list row `row`), the Q / K / V bases of h and its KV head,
// and the key tiles it visits: causal on compressed positions, column c is allowed for row a0 + r iff
// c <= a0 + r, so a causal tile stops at min(n, a0 + kBM).
template <class E>
struct AttnBlock {
  int64_t row;
  int n, a0, nblocks;
  ListRows ls;
  const E *qb, *kb, *vb;
};

template <int kBM, int kBN, class E>
__device__ __forceinline__ AttnBlock<E> attn_block(const E* q, Strides4 qs, const E* k, Strides4 ks, const E* v,
                                                   Strides4 vs, const int32_t* list, const int32_t* count, int G,
                                                   int L, bool causal, int b0) {
  const int h = blockIdx.y, b = b0 + blockIdx.z, g = h / G;
  AttnBlock<E> blk;
  blk.row = static_cast<int64_t>(b) * gridDim.y + h;
  blk.n = count[blk.row];
  blk.a0 = blockIdx.x * kBM;
  blk.ls = ListRows{list + blk.row * L};
  blk.qb = q + b * qs.b + h * qs.h;
  blk.kb = k + b * ks.b + g * ks.h;
  blk.vb = v + b * vs.b + g * vs.h;
  const int kend = causal ? min(blk.n, blk.a0 + kBM) : blk.n;
  blk.nblocks = (kend + kBN - 1) / kBN;
  return blk;
}


// Gathers positions [base, base + ROWS) into a smem tile: smem row r <- src[rows(base + r)], zeros for
// base + r >= n. Thread tid moves 16-byte chunk tid % (D/8) of rows tid / (D/8) + pass * (T / (D/8)),
// so a warp reads 256 or 512 contiguous bytes of 2-4 gathered rows per pass. With vec the copies are cp.async
// (16 bytes, L1 bypassed) and complete at the caller's cp_async_wait; otherwise plain loads.
template <int ROWS, int D, int THREADS, class SL, class E, class Rows>
__device__ __forceinline__ void gather_rows(E* smem, SL sl, const E* __restrict__ src, int64_t sn, Rows rows,
                                            int base, int n, bool vec, int tid) {
  constexpr int kChunks = D / 8, kRowsPerPass = THREADS / kChunks;
  const int ch = tid % kChunks;
#pragma unroll
  for (int p = 0; p < ROWS / kRowsPerPass; ++p) {
    const int r = p * kRowsPerPass + tid / kChunks;
    E* dst = smem + sl(r, ch * 8);
    if (base + r < n) {
      const E* s = src + rows(base + r) * sn + ch * 8;
      if (vec) {
        SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(s),
                                                         *reinterpret_cast<cute::uint128_t*>(dst));
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) dst[e] = s[e];
      }
    } else {
      *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

__device__ __forceinline__ float nan_to_neginf(float s) {
  return s != s ? -std::numeric_limits<float>::infinity() : s;
}

// ---------------------------------------------------------------- scoring on tensor cores
// The drop rule needs, per (b, h), score[j] = sum over the last w queries i of softmax_i(j), i.e. two passes
// over S = Qw K^T (Qw: the w window queries, pre-scaled scores s = scale * q.k, NaN -> -inf, causal j <= i):
//   1. prefill_rowstats_mma_kernel: (max, sum exp) of every window row, split along the keys
//      (kStatsSplitKeys keys a block; the splits are merged by the score kernel: m = max m_s,
//      l = sum l_s exp(m_s - m)).
//   2. prefill_score_mma_kernel: S^T = K Qw^T tile by tile, 64 keys a block (the keys are the MMA rows,
//      so each key's sum over the window rows is a per-row reduction: the thread's columns, then its quad).
// Both are the attention kernel's MMA loop (same TiledMma, smem layouts and ldmatrix copies, layouts checked by
// tests/cuda_host/prefill_mma_layouts.cu) without the P V product; the streamed operand (K tiles, window-Q
// tiles) is double-buffered with cp.async.
constexpr int kStatsSplitKeys = 2048;

// The tile loop both scoring kernels share. A: kBM rows rows_a(base_a + r) of a_src (zeros past n_a), gathered
// once and held in registers; B: ntiles tiles of kBN rows rows_b(base_b + t kBN + c) of b_src (zeros past n_b),
// streamed through Tr::kStages cp.async stages (tile t + 1 loads while tile t multiplies). For each tile,
// acc_s = A B^T (fp32, the attention's TiledMma / ldmatrix copies / smem layouts) and on_tile(acc_s, t, stage)
// consumes it; prefetch(t, stage) runs once tile t's copies are issued (the key scores stage their window
// rows' statistics there). pA: [kBM, D] smem; pB: kStages x [kBN, D] smem.
template <class Tr, class RowsA, class RowsB, class Prefetch, class OnTile>
__device__ __forceinline__ void stream_score_tiles(typename Tr::Elem* pA, const typename Tr::Elem* __restrict__ a_src,
                                                   int64_t a_sn, RowsA rows_a, int base_a, int n_a, bool va,
                                                   typename Tr::Elem* pB, const typename Tr::Elem* __restrict__ b_src,
                                                   int64_t b_sn, RowsB rows_b, int base_b, int n_b, bool vb,
                                                   int ntiles, int tid, Prefetch&& prefetch, OnTile&& on_tile) {
  constexpr int D = Tr::D, kBM = Tr::kBM, kBN = Tr::kBN, kT = Tr::kThreads;
  const auto sA = make_tensor(make_smem_ptr(pA), typename Tr::SmemQ{});
  gather_rows<kBM, D, kT>(pA, typename Tr::SmemQ{}, a_src, a_sn, rows_a, base_a, n_a, va, tid);
  if (ntiles > 0) {
    gather_rows<kBN, D, kT>(pB, typename Tr::SmemKV{}, b_src, b_sn, rows_b, base_b, n_b, vb, tid);
    prefetch(0, 0);
  }
  cp_async_fence();

  typename Tr::TiledMma mma;
  auto thr = mma.get_thread_slice(tid);
  auto tSrA = thr.partition_fragment_A(sA);  // (MMA, 1, D/16): the warp's 16 rows, kept in registers
  auto tSrB = thr.partition_fragment_B(make_tensor(make_smem_ptr(pB), typename Tr::SmemKV{}));
  auto cpA = make_tiled_copy_A(typename Tr::LdsmN{}, mma);
  auto thrA = cpA.get_thread_slice(tid);
  auto tSrA_v = thrA.retile_D(tSrA);
  auto cpB = make_tiled_copy_B(typename Tr::LdsmN{}, mma);
  auto thrB = cpB.get_thread_slice(tid);
  auto tSrB_v = thrB.retile_D(tSrB);

  cp_async_wait<0>();
  __syncthreads();
  copy(cpA, thrA.partition_S(sA), tSrA_v);

  for (int t = 0; t < ntiles; ++t) {
    if (t + 1 < ntiles) {  // tile t + 1 into the other stage (free: the barrier ending iteration t - 1)
      const int s1 = (t + 1) % Tr::kStages;
      gather_rows<kBN, D, kT>(pB + s1 * kBN * D, typename Tr::SmemKV{}, b_src, b_sn, rows_b, base_b + (t + 1) * kBN,
                              n_b, vb, tid);
      cp_async_fence();
      prefetch(t + 1, s1);
    }
    const int s0 = t % Tr::kStages;
    const auto tSsB = thrB.partition_S(make_tensor(make_smem_ptr(pB + s0 * kBN * D), typename Tr::SmemKV{}));
    auto acc_s = partition_fragment_C(mma, Shape<Int<kBM>, Int<kBN>>{});
    clear(acc_s);
    copy(cpB, tSsB(_, _, _0{}), tSrB_v(_, _, _0{}));
#pragma unroll
    for (int kk = 0; kk < size<2>(tSrB); ++kk) {
      if (kk + 1 < size<2>(tSrB)) copy(cpB, tSsB(_, _, kk + 1), tSrB_v(_, _, kk + 1));
      gemm(mma, tSrA(_, _, kk), tSrB(_, _, kk), acc_s);
    }
    on_tile(acc_s, t, s0);
    cp_async_wait<0>();  // tile t + 1 landed (this thread's copies) ...
    __syncthreads();     // ... everyone's, and nobody reads stage t % kStages any more
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    prefill_rowstats_mma_kernel(const typename Tr::Elem* __restrict__ q, Strides4 qs,
                                const typename Tr::Elem* __restrict__ k, Strides4 ks, int G, int L, int w,
                                bool causal, float scale, bool vq, bool vk, int b0, int nsplit,
                                float2* __restrict__ stats /* [B, Hq, nsplit, w] */) {
  using E = typename Tr::Elem;
  constexpr int D = Tr::D, kBM = Tr::kBM, kBN = Tr::kBN;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  extern __shared__ __align__(128) unsigned char prefill_stats_smem[];
  E* pQ = reinterpret_cast<E*>(prefill_stats_smem);  // [kBM, D] window rows a0 ..
  E* pK = pQ + kBM * D;                               // kStages x [kBN, D]

  const int h = blockIdx.y, b = b0 + blockIdx.z, Hq = gridDim.y, g = h / G;
  const int64_t row = static_cast<int64_t>(b) * Hq + h;
  const int rt = blockIdx.x / nsplit, sp = blockIdx.x % nsplit;
  const int a0 = rt * kBM;  // window rows [a0, a0 + kBM) (query positions qoff + r)
  const int qoff = L - w;
  const int j0 = sp * kStatsSplitKeys;
  int j1 = min(L, j0 + kStatsSplitKeys);
  if (causal) j1 = min(j1, qoff + min(w, a0 + kBM));  // no key after this tile's last query
  const int ntiles = j1 > j0 ? (j1 - j0 + kBN - 1) / kBN : 0;
  const int tid = threadIdx.x;
  const E* qb = q + b * qs.b + h * qs.h;
  const E* kb = k + b * ks.b + g * ks.h;

  typename Tr::TiledMma mma;
  const auto tScS = mma.get_thread_slice(tid).partition_C(make_identity_tensor(Shape<Int<kBM>, Int<kBN>>{}));
  const auto cRC = make_tensor(tScS.data(), rowcol(tScS.layout()));  // rows: window rows a0 + r; cols: keys

  float m_run[2] = {kNegInf, kNegInf}, l_run[2] = {0.f, 0.f};
  // A = the window rows a0 .. (registers), B = key tiles j0 + t kBN .. (< j1) streamed
  stream_score_tiles<Tr>(
      pQ, qb, qs.n, ShiftRows{qoff}, a0, w, vq, pK, kb, ks.n, ShiftRows{0}, j0, j1, vk, ntiles, tid,
      [](int, int) {}, [&](auto& acc_s, int t, int) {
    const int c0 = j0 + t * kBN;
    auto sRC = make_tensor(acc_s.data(), rowcol(acc_s.layout()));
    const bool need_mask = c0 + kBN > j1 || (causal && c0 + kBN - 1 > qoff + a0);
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const int i = qoff + a0 + get<0>(cRC(mi, 0));  // query position of this row
      float mx = kNegInf;
#pragma unroll
      for (int ni = 0; ni < size<1>(sRC); ++ni) {
        float x = nan_to_neginf(sRC(mi, ni) * scale);
        if (need_mask) {
          const int c = c0 + get<1>(cRC(mi, ni));
          if (c >= j1 || (causal && c > i)) x = kNegInf;
        }
        sRC(mi, ni) = x;
        mx = fmaxf(mx, x);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the quad shares the row
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mn = fmaxf(m_run[mi], mx);
      if (mn != kNegInf) {  // quad-uniform; -inf: no finite score in this row yet
        const float alpha = m_run[mi] == kNegInf ? 0.f : __expf(m_run[mi] - mn);
        float ps = 0.f;
#pragma unroll
        for (int ni = 0; ni < size<1>(sRC); ++ni) ps += __expf(sRC(mi, ni) - mn);  // exp(-inf) = 0
        l_run[mi] = l_run[mi] * alpha + ps;
        m_run[mi] = mn;
      }
    }
  });
  const int lane = tid % 32;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    float l = l_run[mi];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int r = a0 + get<0>(cRC(mi, 0));
    if (lane % 4 == 0 && r < w) stats[(row * nsplit + sp) * w + r] = make_float2(m_run[mi], l);
  }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    prefill_score_mma_kernel(const typename Tr::Elem* __restrict__ q, Strides4 qs,
                             const typename Tr::Elem* __restrict__ k, Strides4 ks,
                             const float2* __restrict__ stats, int G, int L, int w, bool causal, float scale,
                             bool vq, bool vk, int b0, int nsplit, float* __restrict__ score /* [B, Hq, L] */) {
  using E = typename Tr::Elem;
  constexpr int D = Tr::D, kBM = Tr::kBM, kBN = Tr::kBN;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  extern __shared__ __align__(128) unsigned char prefill_score_smem[];
  E* pK = reinterpret_cast<E*>(prefill_score_smem);  // [kBM, D] keys j0 .. (the A operand)
  E* pQ = pK + kBM * D;                               // kStages x [kBN, D] window rows
  float2* sStat = reinterpret_cast<float2*>(pQ + Tr::kStages * kBN * D);  // kStages x [kBN] (max, 1 / sum)

  const int h = blockIdx.y, b = b0 + blockIdx.z, Hq = gridDim.y, g = h / G;
  const int64_t row = static_cast<int64_t>(b) * Hq + h;
  const int j0 = blockIdx.x * kBM;  // keys [j0, j0 + kBM)
  const int qoff = L - w;
  const int r_lo = causal ? max(0, j0 - qoff) : 0;  // window rows before r_lo see none of these keys
  const int ntiles = r_lo < w ? (w - r_lo + kBN - 1) / kBN : 0;
  const int tid = threadIdx.x;
  const E* qb = q + b * qs.b + h * qs.h;
  const E* kb = k + b * ks.b + g * ks.h;
  const float2* st = stats + row * nsplit * w;

  // (max, 1 / sum) of window rows [r0, r0 + kBN) into stage s: the key splits merged; rows past w or with
  // no finite score get 1 / sum = 0 (they add nothing).
  auto load_stats = [&](int r0, int s) {
    if (tid < kBN) {
      const int r = r0 + tid;
      float m = kNegInf, l = 0.f;
      if (r < w) {
        for (int x = 0; x < nsplit; ++x) m = fmaxf(m, st[x * w + r].x);
        if (m != kNegInf)
          for (int x = 0; x < nsplit; ++x) {
            const float2 ml = st[x * w + r];
            if (ml.x != kNegInf) l += ml.y * __expf(ml.x - m);
          }
      }
      const bool ok = m != kNegInf && l > 0.f;
      sStat[s * kBN + tid] = make_float2(ok ? m : 0.f, ok ? 1.f / l : 0.f);
    }
  };

  typename Tr::TiledMma mma;
  // rows of the accumulator: keys j0 + row; columns: window rows r0 + col
  const auto tScS = mma.get_thread_slice(tid).partition_C(make_identity_tensor(Shape<Int<kBM>, Int<kBN>>{}));
  const auto cRC = make_tensor(tScS.data(), rowcol(tScS.layout()));

  float acc[2] = {0.f, 0.f};  // this thread's partial score of keys cRC(mi, 0)
  // A = the keys j0 .. (registers), B = window tiles r_lo + t kBN .. (< w) streamed with their statistics
  stream_score_tiles<Tr>(
      pK, kb, ks.n, ShiftRows{0}, j0, L, vk, pQ, qb, qs.n, ShiftRows{qoff}, r_lo, w, vq, ntiles, tid,
      [&](int t, int s) { load_stats(r_lo + t * kBN, s); }, [&](auto& acc_s, int t, int s0) {
    const int r0 = r_lo + t * kBN;
    auto sRC = make_tensor(acc_s.data(), rowcol(acc_s.layout()));
    // causal: key j counts for window row r iff j <= qoff + r; only tiles whose first row precedes a key mask
    const bool need_mask = causal && j0 + kBM - 1 > qoff + r0;
#pragma unroll
    for (int ni = 0; ni < size<1>(sRC); ++ni) {
      const int c = get<1>(cRC(0, ni));
      const float2 mi_inv = sStat[s0 * kBN + c];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const float x = nan_to_neginf(sRC(mi, ni) * scale);
        bool ok = mi_inv.y > 0.f && x != kNegInf;
        if (need_mask) ok = ok && j0 + get<0>(cRC(mi, ni)) <= qoff + r0 + c;
        acc[mi] += ok ? __expf(x - mi_inv.x) * mi_inv.y : 0.f;
      }
    }
  });
  const int lane = tid % 32;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    float a = acc[mi];
    a += __shfl_xor_sync(0xffffffffu, a, 1);  // the quad shares the key
    a += __shfl_xor_sync(0xffffffffu, a, 2);
    const int j = j0 + get<0>(cRC(mi, 0));
    if (lane % 4 == 0 && j < L) score[row * L + j] = a;
  }
}

// ---------------------------------------------------------------- shared by the two attention kernels
// One key tile [c0, c0 + BN) of the online softmax of prefill_mma_kernel (mma.sync) and prefill_wgmma_kernel
// (wgmma): one function, so both apply the same rules in the same per-thread order. sRC: this thread's S
// values as (its 2 rows, its columns), replaced by p = exp(x - base) in fp32; cRC: their (row, col) tile
// coordinates; oRC: the O accumulator as (the same 2 rows, its columns), rescaled by alpha; m_run: running row
// max; l_run: this thread's partial row sums. Both accumulators give every row to one quad (lanes 4i .. 4i + 3)
// of one warp (checked on the host), so the max reduces over the quad with xor-1 / xor-2 shuffles.
template <int BN, class SRC, class CRC, class ORC>
__device__ __forceinline__ void online_softmax_tile(SRC&& sRC, const CRC& cRC, ORC&& oRC, float (&m_run)[2],
                                                    float (&l_run)[2], int c0, int n, int a0, bool causal,
                                                    float scale) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // Causal on compressed positions: column c0 + c is allowed for row a0 + r iff c0 + c <= a0 + r.
  const bool need_mask = c0 + BN > n || (causal && c0 + BN - 1 > a0);
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    const int r = get<0>(cRC(mi, 0));
    float mx = kNegInf;
#pragma unroll
    for (int ni = 0; ni < size<1>(sRC); ++ni) {
      float x = sRC(mi, ni) * scale;
      if (need_mask) {
        const int c = c0 + get<1>(cRC(mi, ni));
        if (c >= n || (causal && c > a0 + r)) x = kNegInf;
      }
      sRC(mi, ni) = x;
      mx = fmaxf(mx, x);  // NaN scores do not enter the max; they propagate through exp below
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the quad (lanes 4i..4i+3) shares the row
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(m_run[mi], mx);
    const float base = mn == kNegInf ? 0.f : mn;  // fully masked so far: exp(-inf - 0) = 0
    const float alpha = m_run[mi] == kNegInf ? 0.f : __expf(m_run[mi] - mn);
    m_run[mi] = mn;
    float ps = 0.f;
#pragma unroll
    for (int ni = 0; ni < size<1>(sRC); ++ni) {
      const float p = __expf(sRC(mi, ni) - base);
      sRC(mi, ni) = p;
      ps += p;
    }
    l_run[mi] = l_run[mi] * alpha + ps;
#pragma unroll
    for (int ni = 0; ni < size<1>(oRC); ++ni) oRC(mi, ni) *= alpha;
  }
}

// Epilogue of both attention kernels: O / l (l summed over the row's quad; 0 for an empty row), staged as the
// input dtype in smem (pO through the element-offset layout sl_o, which keeps 16-byte chunks contiguous), then
// whole rows written to out_bh[ls(a0 + r)] with 16-byte stores. tOcO: (row, col) of every acc_o element.
template <int kBM, int D, int kT, class Acc, class ORC, class CO, class E, class SL, class Rows>
__device__ __forceinline__ void store_output_tile(Acc& acc_o, ORC&& oRC, const CO& tOcO, const float (&l_run)[2],
                                                  E* pO, SL sl_o, E* __restrict__ out_bh, Rows ls, int a0, int n,
                                                  int tid) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    float l = l_run[mi];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int ni = 0; ni < size<1>(oRC); ++ni) oRC(mi, ni) *= inv;
  }
  static_assert(decltype(size(tOcO))::value == decltype(size(acc_o))::value, "coordinates match accumulator");
#pragma unroll
  for (int i = 0; i < size(acc_o); ++i) pO[sl_o(get<0>(tOcO(i)), get<1>(tOcO(i)))] = static_cast<E>(acc_o(i));
  __syncthreads();
  constexpr int kChunks = D / 8, kRowsPerPass = kT / kChunks;
  const int ch = tid % kChunks;
#pragma unroll
  for (int p = 0; p < kBM / kRowsPerPass; ++p) {
    const int r = p * kRowsPerPass + tid / kChunks;
    if (a0 + r < n)
      *reinterpret_cast<uint4*>(out_bh + ls(a0 + r) * D + ch * 8) = *reinterpret_cast<const uint4*>(pO + sl_o(r, ch * 8));
  }
}

// ---------------------------------------------------------------- attention on tensor cores
// bf16/fp16 with head_dim 64 or 128 (sm_80 mma.sync atoms; they also run on sm_90a).
// FlashAttention-2 structure on the gathered kept set of one (b, h):
//   block = 64 compressed query rows [a0, a0 + 64) x all key tiles of 64 compressed columns,
//   4 warps, warp w owns query rows 16w .. 16w + 15 of the tile (TiledMMA 4x1x1 warps).
//   Q tile: gathered into smem once; its A fragments are read from smem per k-slice (ldmatrix) beside the
//   K fragments (holding all of Q in registers cost 32 registers a thread at d = 128).
//   K, V tiles: gathered rows ls[c0 + c] -> swizzled smem with 16-byte cp.async (plain loads when a row is not
//   16-byte aligned), two stages: K(j + 1), V(j + 1) load while S(j) = Q K(j)^T and O += P V(j) run.
//   S, O accumulate in fp32 registers; online softmax in fp32 (row max / sum across the 4 threads of a quad);
//   P is rounded to the input dtype and fed back as the A operand of the P V MMA (no smem round trip).
// Accumulator ownership (SM80 m16n8k16 C fragment, PTX ISA "mma.m16n8k16 .f32"): lane t of a warp holds
//   c0, c1 = (row t/4, cols 2(t%4), 2(t%4)+1) and c2, c3 = (row t/4 + 8, same cols) of every 16x8 tile.
//   In CuTe terms acc = ((2, 2), MMA_M, MMA_N): value (v0, v1) -> col + v0, row + 8 v1. The code never
//   hand-indexes this: coordinates come from partition_C of an identity tensor, and the row/col view
//   (`rowcol`) regroups the same registers as ((2, MMA_M), (2, MMA_N)) = (this thread's rows, its cols).
template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    prefill_mma_kernel(const typename Tr::Elem* __restrict__ q, Strides4 qs, const typename Tr::Elem* __restrict__ k,
                       Strides4 ks, const typename Tr::Elem* __restrict__ v, Strides4 vs,
                       const int32_t* __restrict__ list, const int32_t* __restrict__ count, int G, int L,
                       bool causal, float scale, bool vq, bool vk, bool vv, int b0,
                       typename Tr::Elem* __restrict__ out /* [B, Hq, L, D] */) {
  using E = typename Tr::Elem;
  constexpr int D = Tr::D, kBM = Tr::kBM, kBN = Tr::kBN, kT = Tr::kThreads, kS = Tr::kStages;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  extern __shared__ __align__(128) unsigned char prefill_mma_smem[];
  E* pQ = reinterpret_cast<E*>(prefill_mma_smem);  // [kBM, D] Q tile, reused for the output tile
  E* pK = pQ + kBM * D;                            // kStages x [kBN, D]
  E* pV = pK + kS * kBN * D;                       // kStages x [kBN, D]
  const auto sQ = make_tensor(make_smem_ptr(pQ), typename Tr::SmemQ{});

  const AttnBlock<E> blk = attn_block<kBM, kBN>(q, qs, k, ks, v, vs, list, count, G, L, causal, b0);
  if (blk.a0 >= blk.n) return;
  const int64_t row = blk.row;
  const int n = blk.n, a0 = blk.a0, nblocks = blk.nblocks, tid = threadIdx.x;
  const ListRows ls = blk.ls;
  const E *qb = blk.qb, *kb = blk.kb, *vb = blk.vb;

  gather_rows<kBM, D, kT>(pQ, typename Tr::SmemQ{}, qb, qs.n, ls, a0, n, vq, tid);
  gather_rows<kBN, D, kT>(pK, typename Tr::SmemKV{}, kb, ks.n, ls, 0, n, vk, tid);
  gather_rows<kBN, D, kT>(pV, typename Tr::SmemKV{}, vb, vs.n, ls, 0, n, vv, tid);
  cp_async_fence();

  typename Tr::TiledMma mma;
  auto thr = mma.get_thread_slice(tid);
  auto tSrQ = thr.partition_fragment_A(sQ);  // (MMA, 1, D/16), filled one k-slice at a time
  auto tSrK = thr.partition_fragment_B(make_tensor(make_smem_ptr(pK), typename Tr::SmemKV{}));  // (MMA, kBN/8, D/16)
  auto tOrVt = thr.partition_fragment_B(make_tensor(make_smem_ptr(pV),
                                                    make_layout(Shape<Int<D>, Int<kBN>>{}, GenRowMajor{})));
  auto acc_o = partition_fragment_C(mma, Shape<Int<kBM>, Int<D>>{});  // ((2,2), 1, D/8) fp32
  clear(acc_o);

  auto cpQ = make_tiled_copy_A(typename Tr::LdsmN{}, mma);
  auto thrQ = cpQ.get_thread_slice(tid);
  const auto tSsQ = thrQ.partition_S(sQ);
  auto tSrQ_v = thrQ.retile_D(tSrQ);
  auto cpK = make_tiled_copy_B(typename Tr::LdsmN{}, mma);
  auto thrK = cpK.get_thread_slice(tid);
  auto tSrK_v = thrK.retile_D(tSrK);
  auto cpV = make_tiled_copy_B(typename Tr::LdsmT{}, mma);
  auto thrV = cpV.get_thread_slice(tid);
  auto tOrVt_v = thrV.retile_D(tOrVt);
  static_assert(decltype(size<1>(tSrQ))::value == 1, "one m16 tile per warp");
  static_assert(decltype(size<2>(tSrQ))::value == D / 16 && decltype(size<2>(tSrK))::value == D / 16, "k-slices");
  static_assert(decltype(size<2>(tOrVt))::value == kBN / 16, "P V k-slices");

  // (row, col) of every S accumulator element in tile coordinates, as this thread's rows x cols.
  const auto tScS = thr.partition_C(make_identity_tensor(Shape<Int<kBM>, Int<kBN>>{}));
  const auto cRC = make_tensor(tScS.data(), rowcol(tScS.layout()));
  auto oRC = make_tensor(acc_o.data(), rowcol(acc_o.layout()));  // (2, 2 * D/8)
  static_assert(decltype(size<0>(cRC))::value == 2 && decltype(size<0>(oRC))::value == 2, "2 rows per thread");

  cp_async_wait<0>();
  __syncthreads();

  float m_run[2] = {kNegInf, kNegInf};  // running row max (scaled scores) of rows cRC(mi, 0)
  float l_run[2] = {0.f, 0.f};          // this thread's partial row sums (its 2 * kBN/8 columns)

  for (int nb = 0; nb < nblocks; ++nb) {
    const int c0 = nb * kBN;
    if (nb + 1 < nblocks) {  // K(nb + 1), V(nb + 1) into the other stage (free since the barrier ending nb - 1)
      const int s1 = (nb + 1) % kS;
      gather_rows<kBN, D, kT>(pK + s1 * kBN * D, typename Tr::SmemKV{}, kb, ks.n, ls, c0 + kBN, n, vk, tid);
      gather_rows<kBN, D, kT>(pV + s1 * kBN * D, typename Tr::SmemKV{}, vb, vs.n, ls, c0 + kBN, n, vv, tid);
      cp_async_fence();
    }
    const int s0 = nb % kS;
    const auto tSsK = thrK.partition_S(make_tensor(make_smem_ptr(pK + s0 * kBN * D), typename Tr::SmemKV{}));
    const auto tOsVt = thrV.partition_S(make_tensor(make_smem_ptr(pV + s0 * kBN * D), typename Tr::SmemVt{}));

    // S = Q K^T (fp32): Q and K fragments of k-slice kk + 1 load while slice kk multiplies.
    auto acc_s = partition_fragment_C(mma, Shape<Int<kBM>, Int<kBN>>{});
    clear(acc_s);
    copy(cpQ, tSsQ(_, _, _0{}), tSrQ_v(_, _, _0{}));
    copy(cpK, tSsK(_, _, _0{}), tSrK_v(_, _, _0{}));
#pragma unroll
    for (int kk = 0; kk < size<2>(tSrK); ++kk) {
      if (kk + 1 < size<2>(tSrK)) {
        copy(cpQ, tSsQ(_, _, kk + 1), tSrQ_v(_, _, kk + 1));
        copy(cpK, tSsK(_, _, kk + 1), tSrK_v(_, _, kk + 1));
      }
      gemm(mma, tSrQ(_, _, kk), tSrK(_, _, kk), acc_s);
    }

    // Online softmax on this thread's 2 rows.
    auto sRC = make_tensor(acc_s.data(), rowcol(acc_s.layout()));  // (2, 2 * kBN/8)
    online_softmax_tile<kBN>(sRC, cRC, oRC, m_run, l_run, c0, n, a0, causal, scale);

    // O += P V with P rounded to the input dtype, straight from the S registers.
    // (packed round-to-nearest conversion: cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32 on sm_80+)
    constexpr int kSN = decltype(size(acc_s))::value;
    const cutlass::NumericArrayConverter<E, float, kSN> to_e;
    auto p_frag = to_e(*reinterpret_cast<const cutlass::Array<float, kSN>*>(raw_pointer_cast(acc_s.data())));
    auto tOrP = make_tensor(make_rmem_ptr<E>(&p_frag), acc_as_A(acc_s.layout()));
    static_assert(decltype(size<2>(tOrP))::value == decltype(size<2>(tOrVt))::value, "P / V^T k-slices");
    copy(cpV, tOsVt(_, _, _0{}), tOrVt_v(_, _, _0{}));
#pragma unroll
    for (int kk = 0; kk < size<2>(tOrP); ++kk) {
      if (kk + 1 < size<2>(tOrP)) copy(cpV, tOsVt(_, _, kk + 1), tOrVt_v(_, _, kk + 1));
      gemm(mma, tOrP(_, _, kk), tOrVt(_, _, kk), acc_o);
    }
    cp_async_wait<0>();  // K(nb + 1), V(nb + 1) landed (this thread's copies) ...
    __syncthreads();     // ... everyone's; nobody reads stage nb % kStages (or, after the loop, sQ) any more
  }

  // Normalise, stage the tile in smem (the Q buffer), write whole rows back to ls[a0 + r] with 16-byte stores.
  store_output_tile<kBM, D, kT>(acc_o, oRC, thr.partition_C(make_identity_tensor(Shape<Int<kBM>, Int<D>>{})), l_run,
                                pQ, typename Tr::SmemQ{}, out + row * L * D, ls, a0, n, tid);
}

// Launch of either attention kernel (prefill_mma_kernel<Tr> or prefill_wgmma_kernel<Tr>): 64 compressed rows a
// block, Tr::kThreads threads, Tr::kSmemBytes of dynamic shared memory.
template <class Tr, class Kern>
void launch_attention(Kern kern, const void* q, Strides4 qs, const void* k, Strides4 ks, const void* v, Strides4 vs,
                      const int32_t* list, const int32_t* count, int B, int Hq, int G, int L, bool causal,
                      float scale, bool vq, bool vk, bool vv, void* out, cudaStream_t st) {
  using E = typename Tr::Elem;
  SOFTDEC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kSmemBytes));
  for (int b0 = 0; b0 < B; b0 += static_cast<int>(softdec::attn_cuda::kMaxGridYZ)) {  // grid z <= 65535
    const dim3 grid(static_cast<unsigned>((L + Tr::kBM - 1) / Tr::kBM), Hq,
                    static_cast<unsigned>(B - b0 < softdec::attn_cuda::kMaxGridYZ ? B - b0 : softdec::attn_cuda::kMaxGridYZ));
    kern<<<grid, Tr::kThreads, Tr::kSmemBytes, st>>>(
        static_cast<const E*>(q), qs, static_cast<const E*>(k), ks, static_cast<const E*>(v), vs, list, count, G, L,
        causal, scale, vq, vk, vv, b0, static_cast<E*>(out));
    SOFTDEC_CUDA_LAUNCH_CHECK();
  }
}

// ---------------------------------------------------------------- attention on Hopper warpgroup MMA (sm_90a)
// prefill_wgmma_kernel: the prefill_mma_kernel above with the two products on wgmma (compiled, not run: no
// GPU session has executed it yet, hence SOFTDEC_PREFILL_WGMMA defaults to off, see prefill_wgmma_requested / wgmma_runnable).
// Only the sm_90a cubin has a body (__CUDA_ARCH_FEAT_SM90_ALL); the sm_80 one is empty and never launched.
//   block = one warpgroup (4 warps, 128 threads), 64 compressed query rows [a0, a0 + 64); warp w owns rows
//   16w .. 16w + 15 (the wgmma M = 64 split; PTX ISA "warpgroup level matrix fragments").
//   Q tile, K / V tiles: gathered rows ls[c] -> 128-byte swizzled smem (GMMA SW128 atoms, the same bytes as
//   the element-offset Plain* layouts the gathers write through; WgTraits), 16-byte cp.async, kStages = 2:
//   K(j + 1), V(j + 1) load while tile j multiplies.
//   S = Q K^T: SS wgmma 64 x kBN x 16 per k-slice (Q, K straight from smem through descriptors), fp32.
//   Online softmax in fp32 on the S registers: prefill_mma_kernel's function (online_softmax_tile), so the
//   same rules in the same per-thread order: scale then mask (c >= n, causal c > a0 + r -> -inf), row max over
//   the thread's columns in ni order then the quad (xor 1, xor 2), base / alpha / p = __expf(x - base) with the
//   same -inf conventions, l = l alpha + sum over the thread's columns; the same epilogue (store_output_tile).
//   O += P V: RS wgmma 64 x D x 16, A = P rounded to the input dtype in registers (acc_as_A_gmma: the S
//   values of n8 tiles 2j, 2j + 1 are the A fragment of k-slice j), B = V^T (d, key) from smem (MN-major).
// Fragment ownership (SM90 64 x N F32 accumulator; checked by tests/cuda_host/prefill_mma_layouts.cu): thread
//   tid = 32 w + lane holds rows 16 w + lane / 4 + {0, 8} and columns 8 j + 2 (lane % 4) + {0, 1}, j < N / 8 --
//   per warp exactly the m16n8 C fragment of prefill_mma_kernel repeated over N, so the quad shares a row.
// Proxies: cp.async / st.shared write smem through the generic proxy and wgmma reads it through the async
//   proxy, so each writer runs fence.proxy.async.shared::cta after its copies land and before the barrier that
//   publishes them; every wgmma batch is waited for (wgmma.wait_group 0) before its registers are read or its
//   smem stage is refilled.
// Differences from prefill_mma_kernel: 64-key tiles (kWgmmaAttnBN) instead of 32, so the running max is
//   refreshed at other tile boundaries, and the tensor cores' fp32 accumulation order inside a product may
//   differ; outputs agree within the dtype's rounding, not bitwise (bound argued in tests/test_sparse_prefill_cuda.py).
template <class Tr>
struct VtRows {  // gather view of the V^T tile: smem offset of (key r, dim c)
  CUTE_HOST_DEVICE int operator()(int r, int c) const { return static_cast<int>(typename Tr::PlainVt{}(c, r)); }
};

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads)
    prefill_wgmma_kernel(const typename Tr::Elem* __restrict__ q, Strides4 qs,
                         const typename Tr::Elem* __restrict__ k, Strides4 ks, const typename Tr::Elem* __restrict__ v,
                         Strides4 vs, const int32_t* __restrict__ list, const int32_t* __restrict__ count, int G,
                         int L, bool causal, float scale, bool vq, bool vk, bool vv, int b0,
                         typename Tr::Elem* __restrict__ out /* [B, Hq, L, D] */) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using E = typename Tr::Elem;
  constexpr int D = Tr::D, kBM = Tr::kBM, kBN = Tr::kBN, kT = Tr::kThreads, kS = Tr::kStages;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  extern __shared__ __align__(128) unsigned char prefill_wgmma_smem[];
  // SW128 swizzles absolute shared addresses: the tiles start at a 1024-byte boundary (kSmemBytes has the slack).
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(prefill_wgmma_smem));
  E* pQ = reinterpret_cast<E*>(prefill_wgmma_smem + (Tr::kAlign - smem_addr % Tr::kAlign) % Tr::kAlign);  // [kBM, D]
  E* pK = pQ + kBM * D;       // kStages x [kBN, D]
  E* pV = pK + kS * kBN * D;  // kStages x [kBN, D] (stored [key][d], read as V^T)

  const AttnBlock<E> blk = attn_block<kBM, kBN>(q, qs, k, ks, v, vs, list, count, G, L, causal, b0);
  if (blk.a0 >= blk.n) return;
  const int64_t row = blk.row;
  const int n = blk.n, a0 = blk.a0, nblocks = blk.nblocks, tid = threadIdx.x;
  const ListRows ls = blk.ls;
  const E *qb = blk.qb, *kb = blk.kb, *vb = blk.vb;

  gather_rows<kBM, D, kT>(pQ, typename Tr::PlainQ{}, qb, qs.n, ls, a0, n, vq, tid);
  gather_rows<kBN, D, kT>(pK, typename Tr::PlainK{}, kb, ks.n, ls, 0, n, vk, tid);
  gather_rows<kBN, D, kT>(pV, VtRows<Tr>{}, vb, vs.n, ls, 0, n, vv, tid);
  cp_async_fence();

  typename Tr::MmaS mma_s;
  typename Tr::MmaO mma_o;
  auto ts = mma_s.get_thread_slice(tid);
  auto to = mma_o.get_thread_slice(tid);
  const auto tSrQ = ts.partition_fragment_A(make_tensor(make_smem_ptr(pQ), typename Tr::SmemQ{}));  // descriptors
  static_assert(decltype(size<1>(tSrQ))::value == 1 && decltype(size<2>(tSrQ))::value == D / 16, "Q k-slices");
  auto acc_o = partition_fragment_C(mma_o, Shape<Int<kBM>, Int<D>>{});  // ((2, 2, D/8), 1, 1) fp32
  clear(acc_o);
  // (row, col) of every S accumulator element in tile coordinates, as this thread's rows x cols.
  const auto tScS = ts.partition_C(make_identity_tensor(Shape<Int<kBM>, Int<kBN>>{}));
  const auto cRC = make_tensor(tScS.data(), rowcol_gmma(tScS.layout()));  // (2, kBN/4)
  auto oRC = make_tensor(acc_o.data(), rowcol_gmma(acc_o.layout()));       // (2, D/4)
  static_assert(decltype(size<0>(cRC))::value == 2 && decltype(size<0>(oRC))::value == 2, "2 rows per thread");

  cp_async_wait<0>();
  cutlass::arch::fence_view_async_shared();  // this thread's smem writes -> visible to the async proxy (wgmma)
  __syncthreads();

  float m_run[2] = {kNegInf, kNegInf};  // running row max (scaled scores) of rows cRC(mi, 0)
  float l_run[2] = {0.f, 0.f};          // this thread's partial row sums (its kBN/4 columns a tile)

  for (int nb = 0; nb < nblocks; ++nb) {
    const int c0 = nb * kBN;
    if (nb + 1 < nblocks) {  // K(nb + 1), V(nb + 1) into the other stage (free since the barrier ending nb - 1)
      const int s1 = (nb + 1) % kS;
      gather_rows<kBN, D, kT>(pK + s1 * kBN * D, typename Tr::PlainK{}, kb, ks.n, ls, c0 + kBN, n, vk, tid);
      gather_rows<kBN, D, kT>(pV + s1 * kBN * D, VtRows<Tr>{}, vb, vs.n, ls, c0 + kBN, n, vv, tid);
      cp_async_fence();
    }
    const int s0 = nb % kS;
    const auto tSrK = ts.partition_fragment_B(make_tensor(make_smem_ptr(pK + s0 * kBN * D), typename Tr::SmemK{}));
    const auto tOrVt = to.partition_fragment_B(make_tensor(make_smem_ptr(pV + s0 * kBN * D), typename Tr::SmemVt{}));
    static_assert(decltype(size<2>(tOrVt))::value == kBN / 16, "P V k-slices");

    // S = Q K^T (fp32), one wgmma batch over the D/16 k-slices (the first one overwrites the accumulator).
    auto acc_s = partition_fragment_C(mma_s, Shape<Int<kBM>, Int<kBN>>{});  // ((2, 2, kBN/8), 1, 1)
    warpgroup_fence_operand(acc_s);
    warpgroup_arrive();
    mma_s.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
    for (int kk = 0; kk < size<2>(tSrQ); ++kk) {
      gemm(mma_s, tSrQ(_, _, kk), tSrK(_, _, kk), acc_s);
      mma_s.accumulate_ = GMMA::ScaleOut::One;
    }
    warpgroup_commit_batch();
    warpgroup_wait<0>();
    warpgroup_fence_operand(acc_s);

    // Online softmax on this thread's 2 rows: prefill_mma_kernel's code (online_softmax_tile).
    auto sRC = make_tensor(acc_s.data(), rowcol_gmma(acc_s.layout()));  // (2, kBN/4)
    online_softmax_tile<kBN>(sRC, cRC, oRC, m_run, l_run, c0, n, a0, causal, scale);

    // O += P V: P rounded to the input dtype (cvt.rn.bf16x2 / f16x2) in registers, the RS wgmma's A operand.
    constexpr int kSN = decltype(size(acc_s))::value;
    const cutlass::NumericArrayConverter<E, float, kSN> to_e;
    auto p_frag = to_e(*reinterpret_cast<const cutlass::Array<float, kSN>*>(raw_pointer_cast(acc_s.data())));
    auto tOrP = make_tensor(make_rmem_ptr<E>(&p_frag), acc_as_A_gmma(acc_s.layout()));  // ((2,2,2), 1, kBN/16)
    static_assert(decltype(size<2>(tOrP))::value == kBN / 16, "P k-slices");
    warpgroup_fence_operand(tOrP);
    warpgroup_fence_operand(acc_o);
    warpgroup_arrive();
#pragma unroll
    for (int kk = 0; kk < size<2>(tOrP); ++kk) gemm(mma_o, tOrP(_, _, kk), tOrVt(_, _, kk), acc_o);
    warpgroup_commit_batch();
    warpgroup_wait<0>();  // the wgmma read P's registers and stage s0 before either is reused
    warpgroup_fence_operand(acc_o);

    cp_async_wait<0>();                        // K(nb + 1), V(nb + 1) landed (this thread's copies) ...
    cutlass::arch::fence_view_async_shared();  // ... visible to the next wgmma ...
    __syncthreads();                           // ... everyone's; nobody reads stage nb % kStages any more
  }

  // Normalise, stage the tile in smem (the Q buffer: its last wgmma read completed before the loop's final
  // barrier), write whole rows back to ls[a0 + r] with 16-byte stores.
  store_output_tile<kBM, D, kT>(acc_o, oRC, to.partition_C(make_identity_tensor(Shape<Int<kBM>, Int<D>>{})), l_run,
                                pQ, typename Tr::PlainQ{}, out + row * L * D, ls, a0, n, tid);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __trap();  // an sm_90+ cubin without the sm_90a features: never selected (wgmma_runnable), and never silent
#endif
}

// Whether the wgmma kernel of Tr can run on the current device: an sm_90 device, a build whose arch list has
// sm_90a (SOFTDEC_CUDA_HAS_SM90A, set by CMakeLists.txt) and the sm_90a cubin being what the driver loaded
// for this kernel (binaryVersion 90; a device it would JIT from PTX for reports its own version).
template <class Tr>
bool wgmma_runnable() {
#if defined(SOFTDEC_CUDA_HAS_SM90A)
  int dev = 0, major = 0, minor = 0;
  SOFTDEC_CUDA_CHECK(cudaGetDevice(&dev));
  SOFTDEC_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  SOFTDEC_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (major != 9 || minor != 0) return false;
  cudaFuncAttributes fa{};
  SOFTDEC_CUDA_CHECK(cudaFuncGetAttributes(&fa, prefill_wgmma_kernel<Tr>));
  return fa.binaryVersion == 90;
#else
  return false;
#endif
}

// Row statistics then key scores of every (b, h) (the two scoring kernels above); stats is scratch of
// B * Hq * ceil(L / kStatsSplitKeys) * w float2.
template <class Tr>
void launch_scores(const void* q, Strides4 qs, const void* k, Strides4 ks, int B, int Hq, int G, int L, int w,
                   bool causal, float scale, bool vq, bool vk, float2* stats, float* score, cudaStream_t st) {
  using E = typename Tr::Elem;
  const int nsplit = (L + kStatsSplitKeys - 1) / kStatsSplitKeys;
  auto ks_rows = prefill_rowstats_mma_kernel<Tr>;
  auto ks_score = prefill_score_mma_kernel<Tr>;
  SOFTDEC_CUDA_CHECK(
      cudaFuncSetAttribute(ks_rows, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kStatsSmemBytes));
  SOFTDEC_CUDA_CHECK(
      cudaFuncSetAttribute(ks_score, cudaFuncAttributeMaxDynamicSharedMemorySize, Tr::kScoreSmemBytes));
  constexpr int kYZ = static_cast<int>(softdec::attn_cuda::kMaxGridYZ);
  for (int b0 = 0; b0 < B; b0 += kYZ) {
    const unsigned nz = static_cast<unsigned>(B - b0 < kYZ ? B - b0 : kYZ);
    ks_rows<<<dim3(static_cast<unsigned>((w + Tr::kBM - 1) / Tr::kBM * nsplit), Hq, nz), Tr::kThreads,
              Tr::kStatsSmemBytes, st>>>(static_cast<const E*>(q), qs, static_cast<const E*>(k), ks, G, L, w, causal,
                                         scale, vq, vk, b0, nsplit, stats);
    SOFTDEC_CUDA_LAUNCH_CHECK();
    ks_score<<<dim3(static_cast<unsigned>((L + Tr::kBM - 1) / Tr::kBM), Hq, nz), Tr::kThreads, Tr::kScoreSmemBytes,
               st>>>(static_cast<const E*>(q), qs, static_cast<const E*>(k), ks, stats, G, L, w, causal, scale, vq,
                     vk, b0, nsplit, score);
    SOFTDEC_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace softdec_prefill_mma
#endif  // SOFTDEC_HAS_CUTLASS

namespace softdec {
namespace {

// Keys per tile of the tensor-core attention: 32 keeps the S / P tile of a warp (16 x 32) at 16 + 8 registers.
constexpr int kMmaAttnBN = 32;
// Keys per tile of the wgmma attention (sm_90a): S = 64 x 64 per warpgroup, 32 fp32 + 16 P registers a thread.
constexpr int kWgmmaAttnBN = 64;

// SOFTDEC_PREFILL_WGMMA=1 selects the Hopper wgmma attention (prefill_wgmma_kernel) where it can run
// (softdec_prefill_mma::wgmma_runnable: sm_90 device, sm_90a in the build); unset or anything else keeps the
// mma.sync kernel. Default off because the wgmma kernel is compiled, not run: the first GPU session compares
// the two (tests with the switch on, `softdec bench` prefill rows with it on and off) and flips the default.
// Read on every call, so a process (or a test) can switch it between calls.
inline bool prefill_wgmma_requested() {
  const char* e = std::getenv("SOFTDEC_PREFILL_WGMMA");
  return e && e[0] == '1' && e[1] == '\0';
}

// Whether the tensor-core path takes this launch (and runs it): bf16 / fp16, head_dim 64 or 128.
template <typename NT>
bool prefill_mma_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& list,
                           const Tensor& count, bool causal, float scale, Tensor& out, cudaStream_t st) {
#if defined(SOFTDEC_HAS_CUTLASS)
  constexpr bool is_bf16 = std::is_same_v<NT, __nv_bfloat16>, is_fp16 = std::is_same_v<NT, __half>;
  if constexpr (is_bf16 || is_fp16) {
    using E = std::conditional_t<is_bf16, cutlass::bfloat16_t, cutlass::half_t>;
    static_assert(sizeof(E) == sizeof(NT), "same storage");
    const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), d = q.size(3), Hkv = k.size(1);
    if (d != 64 && d != 128) return false;
    const int G = static_cast<int>(Hq / Hkv);
    const bool vq = vec_ok(q, d, 2), vk = vec_ok(k, d, 2), vv = vec_ok(v, d, 2);
    auto go = [&](auto tr, auto wtr) {
      using W = decltype(wtr);
      auto run = [&](auto traits, auto kern) {
        softdec_prefill_mma::launch_attention<decltype(traits)>(
            kern, q.data_ptr(), strides4(q), k.data_ptr(), strides4(k), v.data_ptr(), strides4(v),
            list.const_data_ptr<int32_t>(), count.const_data_ptr<int32_t>(), static_cast<int>(B),
            static_cast<int>(Hq), G, static_cast<int>(L), causal, scale, vq, vk, vv, out.data_ptr(), st);
      };
      if (prefill_wgmma_requested() && softdec_prefill_mma::wgmma_runnable<W>())
        run(wtr, softdec_prefill_mma::prefill_wgmma_kernel<W>);
      else
        run(tr, softdec_prefill_mma::prefill_mma_kernel<decltype(tr)>);
    };
    if (d == 64)
      go(softdec_prefill_mma::Traits<E, 64, kMmaAttnBN>{}, softdec_prefill_mma::WgTraits<E, 64, kWgmmaAttnBN>{});
    else
      go(softdec_prefill_mma::Traits<E, 128, kMmaAttnBN>{}, softdec_prefill_mma::WgTraits<E, 128, kWgmmaAttnBN>{});
    return true;
  }
#endif
  (void)q, (void)k, (void)v, (void)list, (void)count, (void)causal, (void)scale, (void)out, (void)st;
  return false;
}

// Whether the tensor-core scoring kernels take this launch (and run it): same dtypes / head dims as the
// attention. score [B, Hq, L] gets every key's score; otherwise nothing is launched.
template <typename NT>
bool prefill_mma_scores(const Tensor& q, const Tensor& k, int w, bool causal, float scale, Tensor& score,
                        cudaStream_t st) {
#if defined(SOFTDEC_HAS_CUTLASS)
  constexpr bool is_bf16 = std::is_same_v<NT, __nv_bfloat16>, is_fp16 = std::is_same_v<NT, __half>;
  if constexpr (is_bf16 || is_fp16) {
    using E = std::conditional_t<is_bf16, cutlass::bfloat16_t, cutlass::half_t>;
    const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), d = q.size(3), Hkv = k.size(1);
    if (d != 64 && d != 128) return false;
    const int64_t nsplit = attn::ceil_div(L, softdec_prefill_mma::kStatsSplitKeys);
    Tensor stats = new_empty(q, {B, Hq, nsplit, w, 2}, ScalarType::Float);
    auto go = [&](auto tr) {
      softdec_prefill_mma::launch_scores<decltype(tr)>(
          q.data_ptr(), strides4(q), k.data_ptr(), strides4(k), static_cast<int>(B), static_cast<int>(Hq),
          static_cast<int>(Hq / Hkv), static_cast<int>(L), w, causal, scale, vec_ok(q, d, 2), vec_ok(k, d, 2),
          reinterpret_cast<float2*>(stats.mutable_data_ptr<float>()), score.mutable_data_ptr<float>(), st);
    };
    if (d == 64) go(softdec_prefill_mma::Traits<E, 64>{});
    else go(softdec_prefill_mma::Traits<E, 128>{});
    return true;
  }
#endif
  (void)q, (void)k, (void)w, (void)causal, (void)scale, (void)score, (void)st;
  return false;
}

// Zeroes the output rows of the dropped tokens: one warp per row (the kept test is warp-uniform, no division
// per element), 16-byte stores when a row is a whole number of 16-byte chunks (out is contiguous).
template <typename T>
__global__ void __launch_bounds__(kZeroThreads)
    zero_dropped_kernel(const bool* __restrict__ kept, int64_t rows_L, int d, T* __restrict__ out) {
  constexpr int kRowsPerBlock = kZeroThreads / 32;
  const int lane = threadIdx.x % 32;
  const bool vec = (d * sizeof(T)) % 16 == 0;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32; r < rows_L;
       r += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    if (kept[r]) continue;
    T* o = out + r * d;
    if (vec) {
      const int chunks = static_cast<int>(d * sizeof(T) / 16);
      for (int c = lane; c < chunks; c += 32) reinterpret_cast<uint4*>(o)[c] = make_uint4(0u, 0u, 0u, 0u);
    } else {
      for (int x = lane; x < d; x += 32) o[x] = from_float<T>(0.f);
    }
  }
}

template <typename NT>
void prefill_launch(const Tensor& q, const Tensor& k, const Tensor& v, float coverage, int64_t min_tokens,
                    int64_t window, bool causal, float scale, Tensor& out, Tensor& kept) {
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), d = q.size(3), Hkv = k.size(1);
  const int G = static_cast<int>(Hq / Hkv);
  const int w = static_cast<int>(imin(window, L));
  cudaStream_t st = current_stream(q);
  const NT* qp = reinterpret_cast<const NT*>(q.data_ptr());
  const NT* kp = reinterpret_cast<const NT*>(k.data_ptr());
  const NT* vp = reinterpret_cast<const NT*>(v.data_ptr());
  const bool veck = vec_ok(k, d, sizeof(NT)), vecq = vec_ok(q, d, sizeof(NT));
  Tensor score = new_empty(q, {B, Hq, L}, ScalarType::Float);
  const bool drop = coverage > 0.f && attn::max_drop(L, w, min_tokens) > 0;
  const unsigned hq = static_cast<unsigned>(Hq);
  auto rows_from = [B](int64_t b0) { return static_cast<unsigned>(imin(kMaxGridYZ, B - b0)); };
  if (drop && !prefill_mma_scores<NT>(q, k, w, causal, scale, score, st)) {
    // fp32, or a head_dim without a tensor-core kernel: a warp per dot product.
    Tensor stats = new_empty(q, {B, Hq, w, 2}, ScalarType::Float);
    const size_t ssm = kScoreWarps * d * sizeof(float);  // d <= kMaxD: at most 8 KB
    for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
      prefill_rowstats_kernel<NT><<<dim3(static_cast<unsigned>(attn::ceil_div(w, kScoreWarps)), hq, rows_from(b0)),
                                     kScoreThreads, ssm, st>>>(
          qp, strides4(q), kp, strides4(k), G, static_cast<int>(L), w, static_cast<int>(d), causal, scale, veck,
          static_cast<int>(b0), reinterpret_cast<float2*>(stats.mutable_data_ptr<float>()));
      SOFTDEC_CUDA_LAUNCH_CHECK();
      prefill_score_kernel<NT><<<dim3(static_cast<unsigned>(attn::ceil_div(L, kScoreWarps)), hq, rows_from(b0)),
                                  kScoreThreads, ssm, st>>>(
          qp, strides4(q), kp, strides4(k), reinterpret_cast<const float2*>(stats.const_data_ptr<float>()), G,
          static_cast<int>(L), w, static_cast<int>(d), causal, scale, vecq, static_cast<int>(b0),
          score.mutable_data_ptr<float>());
      SOFTDEC_CUDA_LAUNCH_CHECK();
    }
  }
  Tensor list = new_empty(q, {B, Hq, L}, ScalarType::Int);
  Tensor count = new_empty(q, {B, Hq}, ScalarType::Int);
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
    prefill_select_kernel<<<dim3(hq, rows_from(b0)), kSelThreads, 0, st>>>(
        score.const_data_ptr<float>(), static_cast<int>(L), w, min_tokens, drop ? coverage : 0.f,
        static_cast<int>(b0), kept.mutable_data_ptr<bool>(), list.mutable_data_ptr<int32_t>(),
        count.mutable_data_ptr<int32_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  }
  if (!prefill_mma_attention<NT>(q, k, v, list, count, causal, scale, out, st)) {
    // fp32, or a head_dim without a tensor-core kernel: fp32 FMA tiles.
    const size_t smem = prefill_flash_smem(d);
    set_dynamic_smem(prefill_flash_kernel<NT>, smem,
                     detail::cat("token_sparse_prefill with head_dim ", d, " (", dtype_name(q.scalar_type()), ")"));
    for (int64_t b0 = 0; b0 < B; b0 += kMaxGridYZ) {
      prefill_flash_kernel<NT><<<dim3(static_cast<unsigned>(attn::ceil_div(L, kBr)), hq, rows_from(b0)),
                                 kFlashThreads, smem, st>>>(
          qp, strides4(q), kp, strides4(k), vp, strides4(v), list.const_data_ptr<int32_t>(),
          count.const_data_ptr<int32_t>(), G, static_cast<int>(L), static_cast<int>(d), causal, scale,
          static_cast<int>(b0), reinterpret_cast<NT*>(out.data_ptr()));
      SOFTDEC_CUDA_LAUNCH_CHECK();
    }
  }
  const int64_t rows_L = B * Hq * L;
  const unsigned zg = static_cast<unsigned>(imin(attn::ceil_div(rows_L, kZeroThreads / 32), 65535));
  zero_dropped_kernel<NT><<<zg, kZeroThreads, 0, st>>>(kept.const_data_ptr<bool>(), rows_L, static_cast<int>(d),
                                                       reinterpret_cast<NT*>(out.data_ptr()));
  SOFTDEC_CUDA_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor> token_sparse_prefill_cuda(Tensor q, Tensor k, Tensor v, double coverage,
                                                     int64_t min_tokens, int64_t window, bool causal,
                                                     double scale) {
  check_prefill_args(q, k, v, coverage, min_tokens, window, scale);
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), d = q.size(3);
  SOFTDEC_CHECK(d <= kMaxD, "head_dim must be at most ", kMaxD, " on CUDA, got ", d);
  SOFTDEC_CHECK(L < (int64_t(1) << 31), "L must be below 2^31 on CUDA, got ", L);
  SOFTDEC_CHECK(Hq <= kMaxGridYZ, "q must have at most ", kMaxGridYZ, " heads on CUDA, got ", Hq);
  SOFTDEC_CHECK(B < (int64_t(1) << 31), "q must have fewer than 2^31 rows on CUDA, got ", B);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = new_empty(q, {B, Hq, L, d}, q.scalar_type());
  Tensor kept = new_empty(q, {B, Hq, L}, ScalarType::Bool);
  if (B * Hq * L == 0 || d == 0) return {out, kept};
  SOFTDEC_DISPATCH_FLOAT(q.scalar_type(), "q", scalar_t, [&] {
    prefill_launch<typename CudaNative<scalar_t>::type>(q, k, v, static_cast<float>(coverage), min_tokens, window,
                                                    causal, static_cast<float>(scale), out, kept);
  });
  return {out, kept};
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("token_sparse_prefill", TORCH_BOX(&softdec::token_sparse_prefill_cuda));
}
