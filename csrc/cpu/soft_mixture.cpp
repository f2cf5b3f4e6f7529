// CPU backend of softdec.soft_mixture (Soft Thinking concept tokens), forward
// and backward.
//
// Forward, three threaded phases:
//   1. scan: work item = (row, vocabulary slice); one pass over the slice keeps
//      the online softmax state (max, sum-exp, entropy term; 16 lanes, rescaled
//      when a lane's max grows), a NaN/+inf flag and a running top-k whose
//      k-th value is a threshold. The slice goes in 256-token chunks read twice
//      from L1: lane maxima (a chunk with no value above the threshold costs
//      one compare for the top-k), then the exponentials against the updated
//      maxima; chunks with -inf / NaN / huge logits take an exact per-vector
//      path. Rows are split into fixed 16384-token slices (independent of B and
//      the thread count: bit-identical results), the work items spread over threads.
//   2. per row: merge the slices' states and top-k lists, entropy / max prob,
//      then filtering, noise and the final order (soft::finalize_row, shared
//      with CUDA).
//   3. gather: work item = (row, 512-column block of D); fp32 (fp64 for fp64
//      inputs) accumulation of w_i * E[id_i] with vectorised bf16/fp16 -> fp32.
// Backward: soft_mixture_backward (grad w.r.t. logits: sparse over the kept
// tokens, dense over V only for the entropy / max-prob terms) and
// soft_mixture_embedding_backward (the scatter into the kept rows, as a dense
// (V, D) gradient; rows grouped by token id so no two threads write one row).
#include "capability.h"
#include "../common.h"
#include "../dispatch.h"
#include "../soft_mixture_checks.h"
#include "softdec/soft_mixture.h"
#include "simd.h"
#include "topk.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>


// float32 / bfloat16 / float16 and float64 (float64 for gradcheck).
#define SM_DISPATCH(DTYPE, NAME, scalar_t, ...)                                              \
  [&] {                                                                                      \
    if ((DTYPE) == ::softdec::ScalarType::Double) {                                          \
      using scalar_t = double;                                                               \
      return __VA_ARGS__();                                                                  \
    }                                                                                        \
    return SOFTDEC_DISPATCH_FLOAT(DTYPE, NAME, scalar_t, __VA_ARGS__);                        \
  }()

namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

using namespace ::softdec::SOFTDEC_CPU_NS::simd;  // NOLINT: load16, load16_mask, tail_mask
using cpu::TopKCollector;

using soft::SoftmaxState;

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <typename acc_t, typename scalar_t>
inline acc_t to_acc(scalar_t v) {
  return static_cast<acc_t>(static_cast<typename AccOf<scalar_t>::type>(v));
}

// Partial state of one (row, vocabulary slice).
template <typename acc_t>
struct Part {
  SoftmaxState<acc_t> sm;
  bool bad;
  int n;
  acc_t* vals;
  int64_t* ids;
};

// ------------------------------------------------------------------ slice top-k
// A slice's running top-k (topk.h), seeded with the entries P already holds,
// and written back to P (sorted, P.n = min(k, candidates)).
template <typename acc_t>
TopKCollector<acc_t> start_topk(const Part<acc_t>& P, int k, int64_t slack) {
  TopKCollector<acc_t> top(k, slack, 4 * k);
  for (int i = 0; i < P.n; ++i) top.push(P.vals[i], P.ids[i]);
  top.compact();
  return top;
}

// The collector's result, sorted, into (vals, ids); returns how many.
template <typename acc_t>
int finish_topk(TopKCollector<acc_t>& top, acc_t* vals, int64_t* ids) {
  const auto items = top.finish();
  for (size_t i = 0; i < items.size(); ++i) {
    vals[i] = items[i].v;
    ids[i] = items[i].i;
  }
  return static_cast<int>(items.size());
}

// ------------------------------------------------------------------ scan, scalar
template <typename scalar_t, typename acc_t>
void scan_scalar(const scalar_t* row, int64_t v0, int64_t v1, acc_t t, bool cold, int k,
                 Part<acc_t>& P, acc_t thr0) {
  const acc_t big = std::numeric_limits<acc_t>::max();
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  TopKCollector<acc_t> top = start_topk(P, k, 1);
  top.thr = std::max(top.thr, thr0);
  // The softmax sums in float64 (a sequential float32 sum over a 150k-token slice loses ~1e-4
  // relative; the AVX-512 path sums in 16 lanes), rounded to acc_t once at the end.
  soft::SoftmaxState<double> sd{static_cast<double>(P.sm.m), static_cast<double>(P.sm.s),
                                static_cast<double>(P.sm.a)};
  const double td = static_cast<double>(t);
  for (int64_t v = v0; v < v1; ++v) {
    const acc_t l = to_acc<acc_t>(row[v]);
    if (!(l <= big) && l != ninf) P.bad = true;  // NaN or +inf
    if (l > top.thr) {
      top.push(l, v);
      top.maybe_compact();
    }
    if (!cold) soft::softmax_push(sd, static_cast<double>(l), td);
  }
  P.sm.m = static_cast<acc_t>(sd.m);
  P.sm.s = static_cast<acc_t>(sd.s);
  P.sm.a = static_cast<acc_t>(sd.a);
  P.n = finish_topk(top, P.vals, P.ids);
}

#if defined(SOFTDEC_SIMD_AVX512)

// The lanes work in base 2: z2 = (l - m) t log2(e), S = sum 2^z2 and
// A2 = sum 2^z2 z2 (A = A2 ln 2), converted when the lanes are merged.
struct SoftmaxLanes {
  __m512 vm = _mm512_set1_ps(-FLT_MAX), vs = _mm512_setzero_ps(), va = _mm512_setzero_ps();
  __m512 vt, vfloor = _mm512_set1_ps(-217.0f), vlive = _mm512_set1_ps(-125.0f);
  explicit SoftmaxLanes(float t) : vt(_mm512_set1_ps(std::min(t * 1.44269504088896341f, FLT_MAX))) {}

  // the lanes in up take their max from x; their sums are rescaled
  __attribute__((always_inline)) inline void raise(__mmask16 up, __m512 x) {
    const __m512 mn = _mm512_mask_max_ps(vm, up, vm, x);
    const __m512 d = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(vm, mn), vt), vfloor);
    const __m512 e = vexp2(d);
    va = _mm512_mul_ps(e, _mm512_fmadd_ps(d, vs, va));
    vs = _mm512_mul_ps(e, vs);
    vm = mn;
  }

  __attribute__((always_inline)) inline void push(__m512 x) {
    const __mmask16 up = _mm512_cmp_ps_mask(x, vm, _CMP_GT_OQ);
    if (SOFTDEC_UNLIKELY(up)) raise(up, x);
    // max_ps returns its second operand for NaN: NaN lanes give z = floor, e = 0
    const __m512 z = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(x, vm), vt), vfloor);
    // 2^z2 underflows to 0 (z2 <= -125, fexp2's zero) in every lane: an exact
    // no-op (typical for LLM logits far below the max), skip the exponential.
    // Otherwise only the live lanes add (the others would add exactly 0); z2 <= 0,
    // so they are in vexp2_in_range's range.
    const __mmask16 live = _mm512_cmp_ps_mask(z, vlive, _CMP_GT_OQ);
    if (live) {
      const __m512 e = vexp2_in_range(z);
      vs = _mm512_mask_add_ps(vs, live, vs, e);
      va = _mm512_mask3_fmadd_ps(e, z, va, live);
    }
  }
};

// 2^z for z <= 0, |error| <= 2e-7 relative: a degree-5 fit on [-1/2, 1/2] (one
// FMA fewer than vexp2's degree 6; the scan's sums only need float accuracy,
// not fexp2's bits). z = -inf or NaN gives NaN: the caller checks.
__attribute__((always_inline)) inline __m512 scan_exp2(__m512 z) {
  static constexpr float kC[] = {1.3269955637349655e-3f, 9.6715111448848976e-3f, 5.5507157373357645e-2f,
                                 2.4022242123023277e-1f, 6.9314699127574340e-1f, 1.0f};
  return vexp2_poly(z, kC);  // underflows to 0 / subnormals below -126
}

// Append the lanes of x selected by mask (values above the top-k threshold)
// to the top-k buffer, with their vocabulary indices base + lane.
__attribute__((always_inline)) inline void append_lanes(TopKCollector<float>::Item* store, int64_t& n,
                                                        __m512 x, __mmask16 mask, int64_t base) {
  alignas(64) float buf[16];
  _mm512_store_ps(buf, x);
  while (mask) {
    const int i = __builtin_ctz(mask);
    mask &= mask - 1;
    store[n++] = {buf[i], base + i};
  }
}

// The scan's fast path works on chunks of 16 vectors, each read twice from L1:
// pass A takes the lane maxima (and, when some lane beats the top-k threshold,
// collects the candidates); the lane maxima are updated once per chunk; pass B
// adds 2^z and z 2^z with z = x t log2e - m t log2e (one FMA; no clamp, no
// per-vector max test). A chunk whose sums come out NaN (a -inf or NaN logit,
// or an overflowing product) is redone by SoftmaxLanes::push, which handles
// every value; NaN / +inf are flagged there. Slack of the top-k buffer: one chunk.
constexpr int64_t kChunk = 256;

// Scan [base, v1) until the end or until the top-k buffer needs compacting;
// returns where it stopped. No call inside: every zmm register is
// caller-saved, and with a call anywhere in the loop GCC kept the accumulators
// in memory (a store and a reload on each iteration's loop-carried chain). The
// partial last chunk goes vector by vector, its last vector read with a masked
// load (-inf past the end).
template <typename scalar_t, bool kCold>
__attribute__((noinline)) int64_t scan_run(const scalar_t* row, int64_t base, int64_t v1, SoftmaxLanes& lanes,
                                           TopKCollector<float>& top, __mmask16& badm_out) {
  SoftmaxLanes sm = lanes;
  const float thr = top.thr;
  const __m512 vthr = _mm512_set1_ps(thr), vbig = _mm512_set1_ps(FLT_MAX);
  const int64_t full = top.cap - top.slack;
  int64_t n = top.n;
  TopKCollector<float>::Item* store = top.store.data();
  __mmask16 badm = 0;
  if constexpr (!kCold) {
    const __m512 vlim = _mm512_set1_ps(0x1p12f);  // |m t log2e| above: push()
    for (; base + kChunk <= v1;) {
      const scalar_t* c = row + base;
      // lane maxima of four 64-token groups (four independent chains), then
      // of the chunk; only groups above the threshold are walked for candidates
      __m512 g[4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        g[q] = load16(c + 64 * q);
#pragma GCC unroll 3
        for (int j = 1; j < 4; ++j) g[q] = _mm512_max_ps(g[q], load16(c + 64 * q + 16 * j));
      }
      const __m512 cmx = _mm512_max_ps(_mm512_max_ps(g[0], g[1]), _mm512_max_ps(g[2], g[3]));
      if (SOFTDEC_UNLIKELY(_mm512_cmp_ps_mask(cmx, vthr, _CMP_GT_OQ))) {
        for (int q = 0; q < 4; ++q) {
          if (!_mm512_cmp_ps_mask(g[q], vthr, _CMP_GT_OQ)) continue;
          for (int j = 64 * q; j < 64 * q + 64; j += 16) {
            const __m512 x = load16(c + j);
            const __mmask16 gt = _mm512_cmp_ps_mask(x, vthr, _CMP_GT_OQ);
            if (gt) {
              badm |= _mm512_mask_cmp_ps_mask(gt, x, vbig, _CMP_GT_OQ);  // +inf
              append_lanes(store, n, x, gt, base + j);
            }
          }
        }
      }
      const __mmask16 up = _mm512_cmp_ps_mask(cmx, sm.vm, _CMP_GT_OQ);
      if (SOFTDEC_UNLIKELY(up)) sm.raise(up, cmx);
      const __m512 vmt = _mm512_mul_ps(sm.vm, sm.vt);
      __m512 s = _mm512_setzero_ps(), a = _mm512_setzero_ps();
      if (SOFTDEC_LIKELY(_mm512_cmp_ps_mask(_mm512_abs_ps(vmt), vlim, _CMP_LT_OQ) == 0xFFFF)) {
#pragma GCC unroll 4
        for (int j = 0; j < kChunk; j += 16) {
          const __m512 z = _mm512_fmsub_ps(load16(c + j), sm.vt, vmt);
          const __m512 e = scan_exp2(z);
          s = _mm512_add_ps(s, e);
          a = _mm512_fmadd_ps(e, z, a);
        }
      } else {
        s = _mm512_set1_ps(NAN);
      }
      if (SOFTDEC_LIKELY(_mm512_cmp_ps_mask(_mm512_add_ps(s, a), _mm512_setzero_ps(), _CMP_UNORD_Q) == 0)) {
        // The sums are relative to vmt = fl(m t log2e), the lanes' to m t log2e:
        // times 2^-d with d = m t log2e - vmt (exact by FMA; |d| <= 2^-24 |vmt| <= 2^-12),
        // to first order (the next term, (d ln2)^2 / 2 < 2^-25, is below float resolution).
        const __m512 d = _mm512_fmsub_ps(sm.vm, sm.vt, vmt);
        const __m512 corr = _mm512_fnmadd_ps(d, _mm512_set1_ps(0.69314718055994531f), _mm512_set1_ps(1.0f));
        sm.vs = _mm512_fmadd_ps(corr, s, sm.vs);
        sm.va = _mm512_fmadd_ps(corr, _mm512_fnmadd_ps(d, s, a), sm.va);
      } else {
        for (int j = 0; j < kChunk; j += 16) {
          const __m512 x = load16(c + j);
          badm |= _mm512_cmp_ps_mask(x, vbig, _CMP_NLE_UQ);  // NaN or +inf
          sm.push(x);
        }
      }
      base += kChunk;
      if (SOFTDEC_UNLIKELY(n >= full)) break;  // (at most kChunk pushes a chunk)
    }
  }
  // vector by vector: at most 16 pushes a step (slack >= 16)
  for (; base < v1 && n < full; base += 16) {
    const __m512 x = base + 16 <= v1 ? load16(row + base) : load16_mask(row + base, tail_mask(v1 - base));
    // x > thr, or NaN (unordered): one compare covers the top-k threshold and
    // the NaN / +inf check (+inf is always above the threshold)
    const __mmask16 gt = _mm512_cmp_ps_mask(x, vthr, _CMP_NLE_UQ);
    if (SOFTDEC_UNLIKELY(gt)) {
      badm |= _mm512_mask_cmp_ps_mask(gt, x, vbig, _CMP_NLE_UQ);  // NaN or +inf
      append_lanes(store, n, x, _mm512_mask_cmp_ps_mask(gt, x, vthr, _CMP_GT_OQ), base);  // (not NaN)
    }
    if constexpr (!kCold) sm.push(x);
  }
  lanes = sm;
  top.n = n;
  badm_out |= badm;
  return base;
}

template <typename scalar_t, bool kCold>
void scan_avx512(const scalar_t* row, int64_t v0, int64_t v1, float t, int k, Part<float>& P,
                 float thr0) {
  SoftmaxLanes sm(t);
  __mmask16 badm = 0;
  TopKCollector<float> top = start_topk(P, k, kChunk);
  top.thr = std::max(top.thr, thr0);
  constexpr float kLn2 = 0.69314718055994531f;
  for (int64_t base = v0; base < v1;) {
    base = scan_run<scalar_t, kCold>(row, base, v1, sm, top, badm);
    top.compact();
  }
  if (badm) P.bad = true;
  P.n = finish_topk(top, P.vals, P.ids);
  if constexpr (!kCold) {
    alignas(64) float m[16], s[16], a[16];
    _mm512_store_ps(m, sm.vm);
    _mm512_store_ps(s, sm.vs);
    _mm512_store_ps(a, sm.va);
    for (int j = 0; j < 16; ++j)
      soft::softmax_merge(P.sm, SoftmaxState<float>{m[j], s[j], a[j] * kLn2}, t);
  }
}
#endif

template <typename scalar_t, typename acc_t>
// thr0: a value no token of [v0, v1) needs to beat to matter (the k-th best of
// the row's earlier slice, whose ids are all lower): only tokens above it are
// candidates. The row's top k, merged from every slice, does not depend on it.
void scan(const scalar_t* row, int64_t v0, int64_t v1, acc_t t, bool cold, int k, Part<acc_t>& P,
          acc_t thr0) {
#if defined(SOFTDEC_SIMD_AVX512)
  if constexpr (std::is_same_v<acc_t, float> && !std::is_same_v<scalar_t, double>) {
    if (cold)
      scan_avx512<scalar_t, true>(row, v0, v1, t, k, P, thr0);
    else
      scan_avx512<scalar_t, false>(row, v0, v1, t, k, P, thr0);
    return;
  }
#endif
  scan_scalar<scalar_t, acc_t>(row, v0, v1, t, cold, k, P, thr0);
}

// ------------------------------------------------------------------ gather
constexpr int64_t kDBlock = 512;

// out[d0:d1] = scale * sum_i w_i * E[ids_i, d0:d1], accumulated in fp32 (fp64
// when either side is fp64), rows added in order i = 0, 1, ...
template <typename emb_t, typename w_t>
void gather_block(const emb_t* E, int64_t sE, const int64_t* ids, const w_t* w, int kept,
                  int64_t d0, int64_t d1, double scale, emb_t* out) {
  constexpr bool kDouble = std::is_same_v<emb_t, double> || std::is_same_v<w_t, double>;
  using acc_t = std::conditional_t<kDouble, double, float>;
  const int64_t n = d1 - d0;
  int64_t d = 0;
#if defined(SOFTDEC_SIMD_AVX512)
  if constexpr (!kDouble) {
    // 128 columns in 8 registers through all rows (no accumulator traffic),
    // then 16 at a time
    const __m512 vsc = _mm512_set1_ps(static_cast<float>(scale));
    // The k rows are k concurrent streams, more than the hardware prefetcher
    // follows (cold rows at k = 30 took 2x longer than k = 10 per row): each
    // row's columns two steps ahead are prefetched by hand, and the first
    // two steps before the loop. (Prefetches past the block are harmless.)
    constexpr int64_t kStepBytes = 128 * sizeof(emb_t);
    for (int i = 0; i < kept; ++i) {
      const char* r = reinterpret_cast<const char*>(E + ids[i] * sE + d0);
      for (int64_t o = 0; o < 2 * kStepBytes; o += 64) _mm_prefetch(r + o, _MM_HINT_T0);
    }
    for (; d + 128 <= n; d += 128) {
      __m512 a[8];
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) a[j] = _mm512_setzero_ps();
      for (int i = 0; i < kept; ++i) {
        const __m512 vw = _mm512_set1_ps(static_cast<float>(w[i]));
        const emb_t* r = E + ids[i] * sE + d0 + d;
        const char* ahead = reinterpret_cast<const char*>(r + 256);
#pragma GCC unroll 8
        for (int64_t o = 0; o < kStepBytes; o += 64) _mm_prefetch(ahead + o, _MM_HINT_T0);
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) a[j] = _mm512_fmadd_ps(vw, load16(r + 16 * j), a[j]);
      }
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) store16(out + d + 16 * j, _mm512_mul_ps(a[j], vsc));
    }
    for (; d + 16 <= n; d += 16) {
      __m512 a = _mm512_setzero_ps();
      for (int i = 0; i < kept; ++i)
        a = _mm512_fmadd_ps(_mm512_set1_ps(static_cast<float>(w[i])), load16(E + ids[i] * sE + d0 + d), a);
      store16(out + d, _mm512_mul_ps(a, vsc));
    }
  }
#endif
  for (; d < n; ++d) {
    acc_t acc = 0;
    for (int i = 0; i < kept; ++i) acc += static_cast<acc_t>(w[i]) * to_acc<acc_t>(E[ids[i] * sE + d0 + d]);
    out[d] = static_cast<emb_t>(acc * static_cast<acc_t>(scale));
  }
}

// ------------------------------------------------------------------ checks
// Per-row values (CPU tensors: read directly).
void check_row_values(int64_t B, const double* T, const int64_t* K, const double* P,
                      const double* M, const int64_t* FK, int64_t k, int64_t kc) {
  for (int64_t b = 0; b < B; ++b) {
    SOFTDEC_CHECK(T[b] >= 0 && std::isfinite(T[b]), "temperature must be >= 0 and finite, got ",
                  T[b], " at row ", b);
    SOFTDEC_CHECK(K[b] >= 1 && K[b] <= k, "top_k must be in [1, ", k, "], got ", K[b], " at row ",
                  b);
    SOFTDEC_CHECK(FK[b] == 0 || (FK[b] >= K[b] && FK[b] <= kc),
                  "filter_top_k must be 0 (the whole vocabulary) or in [top_k, ", kc, "], got ", FK[b],
                  " (top_k ", K[b], ") at row ", b);
    SOFTDEC_CHECK(P[b] > 0 && P[b] <= 1, "top_p must be in (0, 1], got ", P[b], " at row ", b);
    SOFTDEC_CHECK(M[b] >= 0 && M[b] <= 1, "min_p must be in [0, 1], got ", M[b], " at row ", b);
  }
}

// ------------------------------------------------------------------ forward
// Width of a vocabulary slice (a multiple of the scan's 256-token chunk): the
// fixed partition of a row for the phase-1 work items.
constexpr int64_t kSlice = 16384;

using Out9 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

template <typename scalar_t>
void forward_rows(const Tensor& logits, const double* T, const int64_t* K, const double* TP,
                  const double* MP, const int64_t* FK, const int64_t* S, const int64_t* O, int k,
                  int kc, int noise,
                  double tau, double noise_scale, double alpha, double glo, double ghi, double geps,
                  Tensor& ids, Tensor& weights,
                  Tensor& entropy, Tensor& max_prob, Tensor& valid, Tensor& noisy, Tensor& lse,
                  Tensor& nkept) {
  using acc_t = typename AccOf<scalar_t>::type;
  const int64_t B = logits.size(0), V = logits.size(1), sL = logits.stride(0);
  const scalar_t* L = logits.const_data_ptr<scalar_t>();
  // Slices per row: a fixed partition of the vocabulary into kSlice-token
  // slices, independent of the thread count and of B, merged in slice order in
  // phase 2, so a row's entropy / max prob / weights are bit-identical for any
  // thread count and batch layout (DESIGN). A long row still spreads over the
  // threads: the work items are (row, slice).
  const int64_t C = std::max<int64_t>(1, (V + kSlice - 1) / kSlice);
  const int64_t slice = kSlice;
  std::vector<Part<acc_t>> parts(static_cast<size_t>(B * C));
  // kc >= k candidates per row: the filter_top_k largest feed top-p / min-p
  std::vector<acc_t> pv(static_cast<size_t>(B * C * kc));
  std::vector<int64_t> pi(static_cast<size_t>(B * C * kc));
  torch::stable::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    // the k-th best value of the previous slice of the same row, when this thread
    // scanned it: a starting threshold for the next slice (which candidates a slice
    // reports changes, the row's merged top k does not; the float sums never see it)
    acc_t carry = -std::numeric_limits<acc_t>::infinity();
    int64_t carry_w = -1;
    for (int64_t w = begin; w < end; ++w) {
      const int64_t b = w / C, c = w % C;
      Part<acc_t>& P = parts[w];
      P.sm = SoftmaxState<acc_t>{std::numeric_limits<acc_t>::lowest(), acc_t(0), acc_t(0)};
      P.bad = false;
      P.n = 0;
      P.vals = pv.data() + w * kc;
      P.ids = pi.data() + w * kc;
      const int64_t v0 = c * slice, v1 = std::min(V, v0 + slice);
      if (v0 >= v1) continue;
      // T = 0: the entropy / max prob are of softmax(logits) (T = 1, DESIGN)
      const acc_t t = T[b] == 0.0 ? acc_t(1) : soft::inv_temperature<acc_t>(T[b]);
      const acc_t thr0 = (c > 0 && carry_w == w - 1) ? carry : -std::numeric_limits<acc_t>::infinity();
      scan<scalar_t, acc_t>(L + b * sL, v0, v1, t, false, kc, P, thr0);
      // a full slice's kc-th value; fewer than kc candidates: the carried one still holds
      carry = P.n == kc ? std::max(thr0, P.vals[kc - 1]) : thr0;
      carry_w = w;
    }
  });
  int64_t* ids_p = ids.mutable_data_ptr<int64_t>();
  acc_t* w_p = weights.mutable_data_ptr<acc_t>();
  acc_t* h_p = entropy.mutable_data_ptr<acc_t>();
  acc_t* mp_p = max_prob.mutable_data_ptr<acc_t>();
  bool* ok_p = valid.mutable_data_ptr<bool>();
  acc_t* y_p = noisy.mutable_data_ptr<acc_t>();
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  int64_t* nk_p = nkept.mutable_data_ptr<int64_t>();
  torch::stable::parallel_for(0, B, 8, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> mv(kc);
    std::vector<int64_t> mi(kc);
    for (int64_t b = begin; b < end; ++b) {
      const acc_t t = T[b] == 0.0 ? acc_t(1) : soft::inv_temperature<acc_t>(T[b]);
      SoftmaxState<acc_t> st = parts[b * C].sm;
      bool bad = false;
      int n;
      // each slice pushes at most k items (the slack) before the next compaction check
      TopKCollector<acc_t> top(kc, kc);
      for (int64_t c = 0; c < C; ++c) {
        const Part<acc_t>& P = parts[b * C + c];
        if (c > 0) soft::softmax_merge(st, P.sm, t);
        bad |= P.bad;
        for (int i = 0; i < P.n; ++i) top.push(P.vals[i], P.ids[i]);
        top.maybe_compact();
      }
      n = finish_topk(top, mv.data(), mi.data());
      const bool ok = !bad && n > 0;
      ok_p[b] = ok;
      if (!ok) {
        h_p[b] = mp_p[b] = lse_p[b] = acc_t(0);
        nk_p[b] = 0;
        for (int i = 0; i < k; ++i) {
          ids_p[b * k + i] = 0;
          w_p[b * k + i] = acc_t(0);
          y_p[b * k + i] = -std::numeric_limits<acc_t>::infinity();
        }
        continue;
      }
      soft::row_stats<acc_t>(st, t, false, h_p + b, mp_p + b, lse_p + b);
      soft::RowParams rp{T[b], K[b], FK[b], static_cast<double>(st.s), TP[b], MP[b], static_cast<uint64_t>(S[b]),
                         static_cast<uint64_t>(O[b]), noise, tau, noise_scale, alpha, glo, ghi, geps};
      nk_p[b] = soft::finalize_row<acc_t>(mv.data(), mi.data(), n, k, rp, ids_p + b * k,
                                          w_p + b * k, y_p + b * k);
    }
  });
}

Out9 soft_mixture_cpu(Tensor logits, Tensor embedding, Tensor temperature, Tensor top_k,
                      Tensor top_p, Tensor min_p, Tensor seed, Tensor offset, int64_t k,
                      int64_t noise, double tau, double noise_scale, double dirichlet_alpha,
                      double embed_scale, Tensor filter_top_k, int64_t kc, double gumbel_lo,
                      double gumbel_hi, double gumbel_eps, double embed_noise_std) {
  soft_mixture_checks::check_forward_inputs(logits, embedding, temperature, top_k, top_p, min_p, seed,
                                            offset, k, noise, tau, dirichlet_alpha, filter_top_k, kc,
                                            gumbel_lo, gumbel_hi, gumbel_eps, embed_noise_std,
                                            soft_mixture_checks::Backend::kCpu);
  const int64_t B = logits.size(0), D = embedding.size(1);
  const bool f64 = logits.scalar_type() == ScalarType::Double;
  Tensor embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept;
  std::tie(embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept) =
      soft_mixture_checks::allocate_forward_outputs(logits, embedding, k);
  if (B == 0) return {embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept};
  const double* T = temperature.const_data_ptr<double>();
  const int64_t* K = top_k.const_data_ptr<int64_t>();
  const double* TP = top_p.const_data_ptr<double>();
  const double* MP = min_p.const_data_ptr<double>();
  const int64_t* FK = filter_top_k.const_data_ptr<int64_t>();
  check_row_values(B, T, K, TP, MP, FK, k, kc);
  SM_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    forward_rows<scalar_t>(logits, T, K, TP, MP, FK, seed.const_data_ptr<int64_t>(),
                           offset.const_data_ptr<int64_t>(), static_cast<int>(k), static_cast<int>(kc),
                           static_cast<int>(noise), tau, noise_scale, dirichlet_alpha, gumbel_lo, gumbel_hi,
                           gumbel_eps, ids, weights,
                           entropy, max_prob, valid, noisy, lse, nkept);
  });
  if (D == 0) return {embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept};
  // phase 3: the weighted gather
  const int64_t nb = (D + kDBlock - 1) / kDBlock;
  const int64_t* ids_p = ids.const_data_ptr<int64_t>();
  const int64_t* nk_p = nkept.const_data_ptr<int64_t>();
  SM_DISPATCH(embedding.scalar_type(), "embedding", emb_t, [&] {
    SOFTDEC_DISPATCH_BOOL(f64, kF64, [&] {
      using w_t = std::conditional_t<kF64, double, float>;
      const emb_t* E = embedding.const_data_ptr<emb_t>();
      const int64_t sE = embedding.stride(0);
      const w_t* w_p = weights.const_data_ptr<w_t>();
      emb_t* out = embeds.mutable_data_ptr<emb_t>();
      // A small gather (B = 1, k * D < 64K: ~10 rows of D) runs on the calling
      // thread: waking the pool would cost more than the work. Larger ones are
      // split (cold rows from DRAM at k = 30: 77 -> 71 us a B = 1 call).
      const int64_t grain = B * k * D < (int64_t(1) << 16) ? B * nb : 1;
      torch::stable::parallel_for(0, B * nb, grain, [&](int64_t begin, int64_t end) {
        for (int64_t it = begin; it < end; ++it) {
          const int64_t b = it / nb, d0 = (it % nb) * kDBlock, d1 = std::min(D, d0 + kDBlock);
          gather_block<emb_t, w_t>(E, sE, ids_p + b * k, w_p + b * k,
                                   static_cast<int>(nk_p[b]), d0, d1, embed_scale,
                                   out + b * D + d0);
        }
      });
    });
  });
  if (embed_noise_std != 0.0) {
    // Gaussian noise on the mixed embedding (Soft Tokens, Hard Truths; SofT-GRPO):
    // embeds[b, d] += std * eps_d(seed[b], offset[b]), valid rows only, added to the
    // mixture in the embedding's dtype and rounded again.
    const int64_t* S = seed.const_data_ptr<int64_t>();
    const int64_t* O = offset.const_data_ptr<int64_t>();
    const bool* ok = valid.const_data_ptr<bool>();
    SM_DISPATCH(embedding.scalar_type(), "embedding", emb_t, [&] {
      using a_t = std::conditional_t<std::is_same_v<emb_t, double>, double, float>;
      emb_t* out = embeds.mutable_data_ptr<emb_t>();
      const a_t sd = static_cast<a_t>(embed_noise_std);
      torch::stable::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          if (!ok[b]) continue;
          emb_t* o = out + b * D;
          for (int64_t d = 0; d < D; ++d) {
            const a_t e = static_cast<a_t>(soft::embed_normal(static_cast<uint64_t>(S[b]),
                                                              static_cast<uint64_t>(O[b]), static_cast<uint64_t>(d)));
            o[d] = static_cast<emb_t>(to_acc<a_t>(o[d]) + sd * e);
          }
        }
      });
    });
  }
  return {embeds, ids, weights, entropy, max_prob, valid, noisy, lse, nkept};
}

// ------------------------------------------------------------------ backward (logits)
// The dense terms work from the shifted log-probabilities of the row,
// lp_j = (l_j - m) t - log S with m the row max and S = sum_j exp((l_j - m) t),
// recomputed here together with H = log S - sum_j e_j z_j / S and
// max p = 1 / S: the saved lse = m t + log S loses log S next to a huge m t
// (logits ~1e10 or -1e30 in float32), which turned dH/dx into -(log p + H) != 0
// for the tied maxima. p_j log p_j is 0 where p_j underflows to 0.
template <typename scalar_t, typename acc_t>
struct DenseStats {
  acc_t m, logS, h, pm;
};

template <typename scalar_t, typename acc_t>
DenseStats<scalar_t, acc_t> dense_stats(const scalar_t* l, int64_t V, acc_t t) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  int64_t j = 0;
#if defined(SOFTDEC_SIMD_AVX512)
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<scalar_t, float>) {
    __m512 vm = _mm512_set1_ps(-INFINITY);
    for (; j + 16 <= V; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(l + j));
    m = hmax(vm);
  }
#endif
  for (; j < V; ++j) m = std::max(m, to_acc<acc_t>(l[j]));
  acc_t s = 0, a = 0;
  j = 0;
#if defined(SOFTDEC_SIMD_AVX512)
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<scalar_t, float>) {
    // base 2: z2 = (l - m) t log2 e >= -216 (2^z2 = 0 below -125), a2 = sum 2^z2 z2
    const __m512 vmx = _mm512_set1_ps(m), vt = _mm512_set1_ps(t * 1.44269504088896341f),
                 vfloor = _mm512_set1_ps(-216.0f);
    __m512 vs = _mm512_setzero_ps(), va = _mm512_setzero_ps();
    for (; j + 16 <= V; j += 16) {
      const __m512 z = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(l + j), vmx), vt), vfloor);
      const __m512 e = vexp2(z);
      vs = _mm512_add_ps(vs, e);
      va = _mm512_fmadd_ps(e, z, va);
    }
    s = hsum(vs);
    a = hsum(va) * 0.69314718055994531f;
  }
#endif
  for (; j < V; ++j) {
    const acc_t z = (to_acc<acc_t>(l[j]) - m) * t;
    const acc_t e = std::exp(z);
    if (e > acc_t(0)) {
      s += e;
      a += e * z;
    }
  }
  const acc_t logS = std::log(s);  // s >= 1: the max contributes exp(0)
  return {m, logS, logS - a / s, acc_t(1) / s};
}

#if defined(SOFTDEC_SIMD_AVX512)
// o[j] = t p_j (-gh (log p_j + H) - gm pm) for the float32 rows, 16 at a time,
// with log p_j = (l_j - m) t - log S; returns the first index left to the
// scalar tail.
inline int64_t dense_grad_avx512(const float* l, int64_t V, float t, float m, float logS, float gh,
                                 float h, float gmpm, float* o) {
  constexpr float kLog2e = 1.44269504088896341f;
  const __m512 vt = _mm512_set1_ps(t), vm = _mm512_set1_ps(m), vls = _mm512_set1_ps(logS),
               vgh = _mm512_set1_ps(-gh), vh = _mm512_set1_ps(h), vc = _mm512_set1_ps(-gmpm),
               vfloor = _mm512_set1_ps(-150.0f), vl2e = _mm512_set1_ps(kLog2e);
  int64_t j = 0;
  for (; j + 16 <= V; j += 16) {
    // lp >= -150: p underflows to exactly 0 and the product stays finite
    const __m512 z = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(l + j), vm), vt);
    const __m512 lp = _mm512_max_ps(_mm512_sub_ps(z, vls), vfloor);
    const __m512 p = vexp2(_mm512_mul_ps(lp, vl2e));
    const __m512 d = _mm512_mul_ps(p, _mm512_fmadd_ps(vgh, _mm512_add_ps(lp, vh), vc));
    _mm512_storeu_ps(o + j, _mm512_mul_ps(d, vt));
  }
  return j;
}
#endif

template <typename scalar_t, typename emb_t, typename acc_t>
void backward_rows(const acc_t* gE, const acc_t* gW, const acc_t* gH, const acc_t* gM,
                   const acc_t* gY, const scalar_t* L, int64_t sL, const emb_t* E, int64_t sE,
                   const double* T, const int64_t* ids, const acc_t* W, const acc_t* lse,
                   const acc_t* H, const acc_t* MPr, const bool* valid, const int64_t* nkept,
                   int64_t B, int64_t V, int64_t D, int k, int noise, double tau,
                   double embed_scale, double gumbel_eps, scalar_t* out) {
  // lse, H and MPr (the forward's) are not used: the dense terms recompute them
  // stably from the logits (dense_stats).
  (void)lse;
  (void)H;
  (void)MPr;
  torch::stable::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g(k), dx(k), wpre(k);
    for (int64_t b = begin; b < end; ++b) {
      scalar_t* o = out + b * V;
      if (!valid[b]) {
        for (int64_t j = 0; j < V; ++j) o[j] = static_cast<scalar_t>(0.0f);
        continue;
      }
      // T = 0: one-hot weights (no gradient); entropy / max prob are of T = 1
      const bool cold = T[b] == 0.0;
      const acc_t t = cold ? acc_t(1) : soft::inv_temperature<acc_t>(T[b]);
      const int kept = static_cast<int>(nkept[b]);
      const int64_t* id = ids + b * k;
      const acc_t* w = W + b * k;
      // dense terms: entropy and max prob of the full distribution
      const acc_t gh = gH[b], gm = gM[b];
      if (gh != acc_t(0) || gm != acc_t(0)) {
        const scalar_t* lr = L + b * sL;
        const DenseStats<scalar_t, acc_t> ds = dense_stats<scalar_t, acc_t>(lr, V, t);
        const acc_t h = ds.h, pm = ds.pm;
        int64_t j0 = 0;
#if defined(SOFTDEC_SIMD_AVX512)
        if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<scalar_t, float>) {
          j0 = dense_grad_avx512(lr, V, t, ds.m, ds.logS, gh, h, gm * pm, o);
        }
#endif
        for (int64_t j = j0; j < V; ++j) {
          const acc_t lp = (to_acc<acc_t>(lr[j]) - ds.m) * t - ds.logS;
          const acc_t p = std::exp(lp);
          const acc_t d = p > acc_t(0) ? -gh * p * (lp + h) - gm * pm * p : acc_t(0);
          o[j] = static_cast<scalar_t>(d * t);
        }
        // + gm * pm at the argmax (a kept token: largest logit, lowest id)
        int am = 0;
        for (int i = 1; i < kept; ++i) {
          const acc_t li = to_acc<acc_t>(L[b * sL + id[i]]), la = to_acc<acc_t>(L[b * sL + id[am]]);
          if (soft::ranks_before(li, id[i], la, id[am])) am = i;
        }
        o[id[am]] = static_cast<scalar_t>(to_acc<acc_t>(o[id[am]]) + gm * pm * t);
      } else {
        for (int64_t j = 0; j < V; ++j) o[j] = static_cast<scalar_t>(0.0f);
      }
      if (cold || noise == soft::kDirichlet) continue;  // the Dirichlet draw is a stop-gradient
      // sparse terms: the kept weights
      acc_t sbar = 0;
      for (int i = 0; i < kept; ++i) {
        acc_t dot = 0;
        const emb_t* r = E + id[i] * sE;
        const acc_t* ge = gE + b * D;
        for (int64_t d = 0; d < D; ++d) dot += ge[d] * to_acc<acc_t>(r[d]);
        g[i] = gW[b * k + i] + static_cast<acc_t>(embed_scale) * dot;
        sbar += w[i] * g[i];
      }
      if (noise == soft::kNoNoise) {
        for (int i = 0; i < kept; ++i) dx[i] = w[i] * (g[i] - sbar);
      } else {  // gumbel: y = log w_pre + s G, w = softmax(y / tau)
        acc_t xm = -std::numeric_limits<acc_t>::infinity(), z = 0, sdy = 0;
        for (int i = 0; i < kept; ++i) xm = std::max(xm, to_acc<acc_t>(L[b * sL + id[i]]));
        for (int i = 0; i < kept; ++i) {
          // (l - max l) t: no l t overflow for huge logits / small temperatures
          wpre[i] = std::exp((to_acc<acc_t>(L[b * sL + id[i]]) - xm) * t);
          z += wpre[i];
        }
        const acc_t itau = static_cast<acc_t>(1.0 / tau);
        for (int i = 0; i < kept; ++i) {
          wpre[i] /= z;
          dx[i] = w[i] * (g[i] - sbar) * itau + gY[b * k + i];
          // y = log(w_pre + eps): dy/dw_pre = 1 / (w_pre + eps)
          if (gumbel_eps > 0) dx[i] *= wpre[i] / (wpre[i] + static_cast<acc_t>(gumbel_eps));
          sdy += dx[i];
        }
        for (int i = 0; i < kept; ++i) dx[i] -= wpre[i] * sdy;
      }
      for (int i = 0; i < kept; ++i)
        o[id[i]] = static_cast<scalar_t>(to_acc<acc_t>(o[id[i]]) + dx[i] * t);
    }
  });
}

Tensor soft_mixture_backward_cpu(Tensor grad_embeds, Tensor grad_weights, Tensor grad_entropy,
                                 Tensor grad_max_prob, Tensor grad_noisy, Tensor logits,
                                 Tensor embedding, Tensor temperature, Tensor ids, Tensor weights,
                                 Tensor lse, Tensor entropy, Tensor max_prob, Tensor valid,
                                 Tensor nkept, int64_t noise, double tau, double embed_scale,
                                 double gumbel_eps) {
  soft_mixture_checks::check_backward_inputs(logits, embedding);
  const int64_t B = logits.size(0), V = logits.size(1), D = embedding.size(1);
  const int64_t k = ids.size(1);
  const ScalarType acc = weights.scalar_type();
  SOFTDEC_ASSERT(grad_embeds.scalar_type() == acc && grad_weights.scalar_type() == acc);
  SOFTDEC_ASSERT(grad_embeds.size(0) == B && grad_embeds.size(1) == D);
  SOFTDEC_ASSERT(grad_weights.size(1) == k && grad_noisy.size(1) == k);
  Tensor out = new_empty(logits, {B, V}, logits.scalar_type());
  if (B == 0) return out;
  SM_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    SM_DISPATCH(embedding.scalar_type(), "embedding", emb_t, [&] {
      using acc_t = typename AccOf<scalar_t>::type;
      constexpr bool kAccF64 = std::is_same_v<acc_t, double>;
      SOFTDEC_ASSERT((acc == ScalarType::Double) == kAccF64);
      backward_rows<scalar_t, emb_t, acc_t>(
          grad_embeds.const_data_ptr<acc_t>(), grad_weights.const_data_ptr<acc_t>(),
          grad_entropy.const_data_ptr<acc_t>(), grad_max_prob.const_data_ptr<acc_t>(),
          grad_noisy.const_data_ptr<acc_t>(), logits.const_data_ptr<scalar_t>(), logits.stride(0),
          embedding.const_data_ptr<emb_t>(), embedding.stride(0),
          temperature.const_data_ptr<double>(), ids.const_data_ptr<int64_t>(),
          weights.const_data_ptr<acc_t>(), lse.const_data_ptr<acc_t>(),
          entropy.const_data_ptr<acc_t>(), max_prob.const_data_ptr<acc_t>(),
          valid.const_data_ptr<bool>(), nkept.const_data_ptr<int64_t>(), B, V, D,
          static_cast<int>(k), static_cast<int>(noise), tau, embed_scale, gumbel_eps,
          out.mutable_data_ptr<scalar_t>());
    });
  });
  return out;
}

// ------------------------------------------------------------------ backward (embedding)
// grad_E[id] = embed_scale * sum over (row b, slot i) with ids[b, i] = id of
// w[b, i] * grad_embeds[b]: the (b, i) pairs are sorted by id, so each thread
// owns whole output rows; untouched rows are zero.
Tensor soft_mixture_embedding_backward_cpu(Tensor grad_embeds, Tensor embedding, Tensor ids,
                                           Tensor weights, Tensor nkept, double embed_scale) {
  check_dim(embedding, "embedding", 2, "(vocab, dim)");
  const int64_t Ve = embedding.size(0), D = embedding.size(1);
  const int64_t B = ids.size(0), k = ids.size(1);
  Tensor out = new_empty(embedding, {Ve, D}, embedding.scalar_type());
  const int64_t* id = ids.const_data_ptr<int64_t>();
  const int64_t* nk = nkept.const_data_ptr<int64_t>();
  std::vector<std::pair<int64_t, int64_t>> pairs;  // (token id, b * k + i)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < nk[b]; ++i) pairs.emplace_back(id[b * k + i], b * k + i);
  std::sort(pairs.begin(), pairs.end());
  std::vector<int64_t> starts;
  for (size_t j = 0; j < pairs.size(); ++j)
    if (j == 0 || pairs[j].first != pairs[j - 1].first) starts.push_back(static_cast<int64_t>(j));
  starts.push_back(static_cast<int64_t>(pairs.size()));
  const int64_t groups = static_cast<int64_t>(starts.size()) - 1;
  SM_DISPATCH(embedding.scalar_type(), "embedding", emb_t, [&] {
    SM_DISPATCH(weights.scalar_type(), "weights", w_t, [&] {
      emb_t* o = out.mutable_data_ptr<emb_t>();
      // zero-fill (parallel over rows), then write the touched rows
      torch::stable::parallel_for(0, Ve, 256, [&](int64_t begin, int64_t end) {
        std::memset(static_cast<void*>(o + begin * D), 0, sizeof(emb_t) * (end - begin) * D);
      });
      const w_t* w = weights.const_data_ptr<w_t>();
      const w_t* ge = grad_embeds.const_data_ptr<w_t>();
      torch::stable::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
        std::vector<w_t> acc(D);
        for (int64_t gi = begin; gi < end; ++gi) {
          std::fill(acc.begin(), acc.end(), w_t(0));
          for (int64_t j = starts[gi]; j < starts[gi + 1]; ++j) {
            const int64_t bi = pairs[j].second;
            const w_t wi = w[bi] * static_cast<w_t>(embed_scale);
            const w_t* g = ge + (bi / k) * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += wi * g[d];
          }
          emb_t* r = o + pairs[starts[gi]].first * D;
          for (int64_t d = 0; d < D; ++d) r[d] = static_cast<emb_t>(acc[d]);
        }
      });
    });
  });
  return out;
}

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(soft_mixture,
    {"soft_mixture", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::soft_mixture_cpu)},
    {"soft_mixture_backward", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::soft_mixture_backward_cpu)},
    {"soft_mixture_embedding_backward", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::soft_mixture_embedding_backward_cpu)})
