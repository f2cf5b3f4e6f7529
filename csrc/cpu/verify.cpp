// CPU backend of speculative verification (softdec.verify).
//
// Per row: one pass set per verified position (validity/max, then the mass
// sum), stopping at the first rejection; one exponential-race pass over the
// vocabulary for the correction or bonus token. Threads over rows; for batches
// smaller than the thread count every pass is split over the vocabulary.
// AVX-512 hot loops (the same fexp / flog formulas as filter.h, op for op) with
// a scalar fallback. The sparse-draft residual max(0, p - q) differs from p
// only on the k draft entries: the race runs over p with those entries cut
// out, and the k entries are raced separately (no dense q).
#include "capability.h"
#include "../common.h"
#include "../dispatch.h"
#include "../verify_checks.h"
#include "mass_lanes.h"
#include "race.h"
#include "sampling_kernels.h"
#include "softdec/filter.h"
#include "softdec/philox.h"
#include "softdec/soft_mixture.h"
#include "softdec/verify.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>


namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

using filter::RowFilter;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Vector building blocks (loads, vexp/vlog, Philox) live in simd.h.
using namespace ::softdec::SOFTDEC_CPU_NS::simd;  // NOLINT
constexpr int64_t kChunk = kPhiloxChunk;  // uniforms per philox_chunk call

// ------------------------------------------------------------------ per-range passes

struct Stats {
  bool nan = false, pinf = false, any = false;
  float m = -kInf;
  int64_t am = 0;
  void merge(const Stats& o) {
    nan |= o.nan;
    pinf |= o.pinf;
    if (o.any && (!any || o.m > m || (o.m == m && o.am < am))) {
      m = o.m;
      am = o.am;
    }
    any |= o.any;
  }
};

// Validity, max and argmax (lowest index among ties) of x[lo, hi).
template <typename T>
Stats stats_range(const T* x, int64_t lo, int64_t hi) {
  Stats s;
  int64_t i = lo;
#if defined(SOFTDEC_SIMD_AVX512)
  __m512 vm = _mm512_set1_ps(-kInf);
  __m512i vi = _mm512_set1_epi32(-1);
  __mmask16 nanm = 0;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i < hi; i += 16) {
    const __mmask16 tm = tail_mask(hi - i);
    const __m512 v = load16_maskz(x + i, tm);
    nanm |= _mm512_mask_cmp_ps_mask(tm, v, v, _CMP_UNORD_Q);
    const __mmask16 gt = _mm512_mask_cmp_ps_mask(tm, v, vm, _CMP_GT_OQ);
    vm = _mm512_mask_mov_ps(vm, gt, v);
    // relative index fits int32 (ranges are chunks of at most V < 2^31 entries)
    vi = _mm512_mask_mov_epi32(vi, gt, _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(i - lo))));
  }
  if (nanm) s.nan = true;
  alignas(64) float mv[16];
  alignas(64) int32_t iv[16];
  _mm512_store_ps(mv, vm);
  _mm512_store_si512(iv, vi);
  for (int l = 0; l < 16; ++l) {
    if (iv[l] < 0) continue;
    const int64_t idx = lo + iv[l];
    if (!s.any || mv[l] > s.m || (mv[l] == s.m && idx < s.am)) {
      s.m = mv[l];
      s.am = idx;
      s.any = true;
    }
  }
#elif defined(SOFTDEC_SIMD_AVX2)
  if (hi - i >= 8) {
    __m256 vm = _mm256_set1_ps(-kInf);
    __m256i vi = _mm256_set1_epi32(-1);
    int nanm = 0;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (; i + 8 <= hi; i += 8) {
      const __m256 v = load8(x + i);
      nanm |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      const __m256 gt = _mm256_cmp_ps(v, vm, _CMP_GT_OQ);
      vm = _mm256_blendv_ps(vm, v, gt);
      const __m256i gi = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int32_t>(i - lo)));
      vi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(vi), _mm256_castsi256_ps(gi), gt));
    }
    if (nanm) s.nan = true;
    alignas(32) float mv[8];
    alignas(32) int32_t iv[8];
    _mm256_store_ps(mv, vm);
    _mm256_store_si256(reinterpret_cast<__m256i*>(iv), vi);
    for (int l = 0; l < 8; ++l) {
      if (iv[l] < 0) continue;
      const int64_t idx = lo + iv[l];
      if (!s.any || mv[l] > s.m || (mv[l] == s.m && idx < s.am)) {
        s.m = mv[l];
        s.am = idx;
        s.any = true;
      }
    }
  }
#endif
  for (; i < hi; ++i) {  // scalar: the whole range without SIMD, the tail with AVX2
    const float v = static_cast<float>(x[i]);
    if (v != v) {
      s.nan = true;
      continue;
    }
    if (v > s.m) {
      s.m = v;
      s.am = i;
      s.any = true;
    }
  }
  if (s.any && s.m == kInf) s.pinf = true;
  return s;
}

struct Mass {
  filter::MassSum z;  // the kept mass by the exact rule (filter.h: one Z on every path and split)
  double s = 0.0;     // sum of mass * scaled logit (entropy; tolerance only)
  void merge(const Mass& o) {
    z.merge(o.z);
    s += o.s;
  }
};

// Sum of fexp((x - m) / T) over kept tokens of x[lo, hi) (and of mass * scaled
// logit for the entropy). Only for the "prefix = whole row" cut (no top-k/top-p).
template <typename T, bool kEntropy>
Mass mass_range(const T* x, int64_t lo, int64_t hi, const RowFilter& f) {
  Mass r;
  int64_t i = lo;
#if defined(SOFTDEC_SIMD_AVX512) || defined(SOFTDEC_SIMD_AVX2)
  cpu::MassLanes lanes;
#endif
#if defined(SOFTDEC_SIMD_AVX512)
  const __m512 vm = _mm512_set1_ps(f.max_logit), vit = _mm512_set1_ps(f.inv_temp);
  const __m512 vlmp = _mm512_set1_ps(f.log_min_p), vninf = _mm512_set1_ps(-kInf);
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  for (; i < hi; i += 16) {
    const __mmask16 tm = tail_mask(hi - i);
    const __m512 v = load16_maskz(x + i, tm);
    const __m512 sc = _mm512_mul_ps(_mm512_sub_ps(v, vm), vit);
    __mmask16 keep = _mm512_mask_cmp_ps_mask(tm, v, vninf, _CMP_GT_OQ);
    keep = _mm512_mask_cmp_ps_mask(keep, sc, vlmp, _CMP_GE_OQ);
    const __m512 e = _mm512_maskz_mov_ps(keep, vexp(sc));
    lanes.add16(e);
    if (kEntropy) {
      const __m512 es = _mm512_maskz_mul_ps(keep, e, sc);
      s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(es)));
      s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(es), 1))));
    }
  }
  if (kEntropy) r.s = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
#elif defined(SOFTDEC_SIMD_AVX2)
  {
    const __m256 vm = _mm256_set1_ps(f.max_logit), vit = _mm256_set1_ps(f.inv_temp);
    const __m256 vlmp = _mm256_set1_ps(f.log_min_p), vninf = _mm256_set1_ps(-kInf);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (; i + 8 <= hi; i += 8) {
      const __m256 v = load8(x + i);
      const __m256 sc = _mm256_mul_ps(_mm256_sub_ps(v, vm), vit);
      const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(v, vninf, _CMP_GT_OQ), _mm256_cmp_ps(sc, vlmp, _CMP_GE_OQ));
      const __m256 e = _mm256_and_ps(vexp8(sc), keep);
      lanes.add8(e);
      if (kEntropy) {
        const __m256 es = _mm256_and_ps(_mm256_mul_ps(e, sc), _mm256_cmp_ps(e, _mm256_setzero_ps(), _CMP_GT_OQ));
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(es)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(es, 1)));
      }
    }
    if (kEntropy) {
      alignas(32) double t[4];
      _mm256_store_pd(t, _mm256_add_pd(s0, s1));
      r.s += (t[0] + t[1]) + (t[2] + t[3]);
    }
  }
#endif
#if defined(SOFTDEC_SIMD_AVX512) || defined(SOFTDEC_SIMD_AVX2)
  r.z = lanes.sum();
#endif
  for (; i < hi; ++i) {
    const float v = static_cast<float>(x[i]);
    if (!filter::kept(f, v, i)) continue;
    const float sc = (v - f.max_logit) * f.inv_temp;
    const float e = filter::fexp(sc);
    r.z.add(e);
    if (kEntropy && e > 0.0f) r.s += static_cast<double>(e) * sc;
  }
  return r;
}

// The race winner and the AVX-512 race lanes are shared with verify_tree.cpp (race.h).
using Best = cpu::RaceWin;

// Exponential race over x[lo, hi) with residual r_i = max(0, p_i - q_i) (q
// may be null: r = p), p from the filter with normaliser inv_z. Only r_i > 0
// take part. The uniform of token i is element i of the (seed, stream) stream.
template <typename T, typename Q>
Best race_range(const T* x, const Q* q, int64_t lo, int64_t hi, const RowFilter& f, float inv_z,
                uint64_t seed, uint64_t stream) {
  Best best;
  if (lo >= hi) return best;
  alignas(64) float u[kChunk];
#if defined(SOFTDEC_SIMD_AVX512)
  cpu::RaceLanes16 lanes(f, inv_z);
#elif defined(SOFTDEC_SIMD_AVX2)
  const bool prefix_all = f.cut_index >= 0 && f.cut_value == -kInf;
  const __m256 vm = _mm256_set1_ps(f.max_logit), vit = _mm256_set1_ps(f.inv_temp);
  const __m256 vlmp = _mm256_set1_ps(f.log_min_p), vninf = _mm256_set1_ps(-kInf);
  const __m256 vcv = _mm256_set1_ps(f.cut_value);
  const __m256i vci = _mm256_set1_epi32(static_cast<int32_t>(std::min<int64_t>(f.cut_index, INT32_MAX)));
  const __m256 viz = _mm256_set1_ps(inv_z);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 bk = _mm256_setzero_ps();
  __m256i bi = _mm256_set1_epi32(-1);
#endif
  for (int64_t c0 = (lo / kChunk) * kChunk; c0 < hi; c0 += kChunk) {
    philox_chunk(seed, stream, static_cast<uint64_t>(c0 / 4), u);
    const int64_t a = std::max(lo, c0), b = std::min(hi, c0 + kChunk);
#if defined(SOFTDEC_SIMD_AVX512)
    for (int64_t i = a; i < b; i += 16) {
      const __mmask16 tm = tail_mask(b - i);
      const __m512 v = load16_maskz(x + i, tm);
      const __m512i gi = lanes.index(i);
      const __m512 sc = lanes.score(v);
      const __mmask16 keep = lanes.kept(v, sc, gi, tm);
      if (!keep) continue;
      __m512 r = lanes.p(sc);
      if constexpr (!std::is_same_v<Q, void>) {
        r = _mm512_max_ps(_mm512_sub_ps(r, load16_maskz(q + i, tm)), _mm512_setzero_ps());
      }
      lanes.offer(keep, r, u + (i - c0), tm, gi);
    }
#else
    int64_t i = a;
#if defined(SOFTDEC_SIMD_AVX2)
    for (; i + 8 <= b; i += 8) {
      const __m256 v = load8(x + i);
      const __m256i gi = _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int32_t>(i)));
      const __m256 sc = _mm256_mul_ps(_mm256_sub_ps(v, vm), vit);
      __m256 keep = _mm256_and_ps(_mm256_cmp_ps(v, vninf, _CMP_GT_OQ), _mm256_cmp_ps(sc, vlmp, _CMP_GE_OQ));
      if (!prefix_all) {  // (v > cut_value) || (v == cut_value && i <= cut_index)
        const __m256 le = _mm256_castsi256_ps(
            _mm256_xor_si256(_mm256_cmpgt_epi32(gi, vci), _mm256_set1_epi32(-1)));
        const __m256 in = _mm256_or_ps(_mm256_cmp_ps(v, vcv, _CMP_GT_OQ),
                                       _mm256_and_ps(_mm256_cmp_ps(v, vcv, _CMP_EQ_OQ), le));
        keep = _mm256_and_ps(keep, in);
      }
      if (!_mm256_movemask_ps(keep)) continue;
      __m256 r = _mm256_mul_ps(vexp8(sc), viz);
      if constexpr (!std::is_same_v<Q, void>) {
        r = _mm256_max_ps(_mm256_sub_ps(r, load8(q + i)), _mm256_setzero_ps());
      }
      const __m256 e = _mm256_sub_ps(_mm256_setzero_ps(), vlog8(_mm256_loadu_ps(u + (i - c0))));
      const __m256 key = _mm256_div_ps(r, e);
      const __m256 gt = _mm256_and_ps(keep, _mm256_cmp_ps(key, bk, _CMP_GT_OQ));
      bk = _mm256_blendv_ps(bk, key, gt);
      bi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(gi), gt));
    }
#endif
    for (; i < b; ++i) {
      const float v = static_cast<float>(x[i]);
      if (!filter::kept(f, v, i)) continue;
      float r = f.greedy ? 1.0f : filter::fexp((v - f.max_logit) * f.inv_temp) * inv_z;
      if constexpr (!std::is_same_v<Q, void>) {
        r = std::max(r - static_cast<float>(q[i]), 0.0f);
      }
      if (!(r > 0.0f)) continue;
      best.take(verify::race_key(r, u[i - c0]), i);
    }
#endif
  }
#if defined(SOFTDEC_SIMD_AVX512)
  lanes.fold(best);
#elif defined(SOFTDEC_SIMD_AVX2)
  alignas(32) float kv[8];
  alignas(32) int32_t iv[8];
  _mm256_store_ps(kv, bk);
  _mm256_store_si256(reinterpret_cast<__m256i*>(iv), bi);
  for (int l = 0; l < 8; ++l)
    if (iv[l] >= 0) best.take(kv[l], iv[l]);
#endif
  return best;
}

// ------------------------------------------------------------------ row context

struct Params {
  int32_t method = 0, kind = 0;
  int64_t V = 0, K = 0, ks = 0, nb_m = 0;
  float post_thr = 0.09f, post_alpha = 0.3f, delta = 0.1f;
  bool split = false;  // split passes over the vocabulary (small batches)
};

// Runs fn(lo, hi) -> R over [0, V) either inline or split over threads, merged.
template <typename R, typename Fn>
R over_vocab(int64_t V, bool split, const Fn& fn) {
  if (!split || V < 8192) return fn(0, V);
  const int64_t nt = std::max<int64_t>(1, torch::stable::get_num_threads());
  const int64_t parts = std::min<int64_t>(nt * 2, (V + 4095) / 4096);
  const int64_t step = ((V + parts - 1) / parts + kChunk - 1) / kChunk * kChunk;
  std::vector<R> partial(static_cast<size_t>(parts));
  torch::stable::parallel_for(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const int64_t lo = std::min(V, p * step), hi = std::min(V, (p + 1) * step);
      partial[static_cast<size_t>(p)] = fn(lo, hi);
    }
  });
  R r = partial[0];
  for (int64_t p = 1; p < parts; ++p) r.merge(partial[static_cast<size_t>(p)]);
  return r;
}

// Race over [0, V) minus the sorted, unique indices `skip`.
template <typename T, typename Q>
Best race_skip(const T* x, const Q* q, const RowFilter& f, float inv_z, uint64_t seed,
               uint64_t stream, const std::vector<int64_t>& skip, const Params& P) {
  return over_vocab<Best>(P.V, P.split, [&](int64_t lo, int64_t hi) {
    Best b;
    int64_t cur = lo;
    for (int64_t s : skip) {
      if (s < lo) continue;
      if (s >= hi) break;
      b.merge(race_range<T, Q>(x, q, cur, s, f, inv_z, seed, stream));
      cur = s + 1;
    }
    b.merge(race_range<T, Q>(x, q, cur, hi, f, inv_z, seed, stream));
    return b;
  });
}

// The filtered target at one position, plus the normaliser and (optionally) entropy.
struct Target {
  RowFilter f;
  float inv_z = 0.0f;
  double entropy = 0.0;
  // top-k path: the kept prefix candidates in the filter order (min-p not applied)
  std::vector<float> cand_v;
  std::vector<int64_t> cand_i;
  int64_t cand_n = -1;  // -1: not available
};

// The k first tokens of the filter order (value descending, lower index
// first) among the finite logits of x[0, V), sorted; returns how many (<= k).
template <typename T>
int64_t topk_scan(const T* x, int64_t V, int64_t k, float* vals, int64_t* idx) {
  int64_t n = 0;
  float thr = -kInf;  // a token must beat vals[k-1] strictly (a later equal value loses)
  int64_t i = 0;
#if defined(SOFTDEC_SIMD_AVX512)
  for (; i < V; i += 16) {
    const __mmask16 tm = tail_mask(V - i);
    const __m512 v = load16_maskz(x + i, tm);
    __mmask16 m = _mm512_mask_cmp_ps_mask(tm, v, _mm512_set1_ps(thr), _CMP_GT_OQ);
    if (!m) continue;
    alignas(64) float buf[16];
    _mm512_store_ps(buf, v);
    while (m) {
      const int l = __builtin_ctz(m);
      m &= m - 1;
      if (!(buf[l] > thr)) continue;
      n = verify::topk_insert(vals, idx, n, k, buf[l], i + l);
      if (n == k) thr = vals[k - 1];
    }
  }
#elif defined(SOFTDEC_SIMD_AVX2)
  for (; i + 8 <= V; i += 8) {
    const __m256 v = load8(x + i);
    int m = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(thr), _CMP_GT_OQ));
    if (!m) continue;
    alignas(32) float buf[8];
    _mm256_store_ps(buf, v);
    while (m) {
      const int l = __builtin_ctz(static_cast<unsigned>(m));
      m &= m - 1;
      if (!(buf[l] > thr)) continue;
      n = verify::topk_insert(vals, idx, n, k, buf[l], i + l);
      if (n == k) thr = vals[k - 1];
    }
  }
#endif
  for (; i < V; ++i) {  // scalar: the whole row without SIMD, the tail with AVX2
    const float v = static_cast<float>(x[i]);
    if (!(v > thr)) continue;
    n = verify::topk_insert(vals, idx, n, k, v, i);
    if (n == k) thr = vals[k - 1];
  }
  return n;
}

template <typename T>
Target target_at(const T* x, float temp, int64_t top_k, float top_p, float min_p,
                 bool want_entropy, const Params& P) {
  Target t;
  RowFilter& f = t.f;
  const int64_t V = P.V;
  const bool topk_on = top_k > 0 && top_k < V;
  const bool topp_on = top_p < 1.0f;
  f.log_min_p = filter::log_min_p_of(min_p);
  // top-k above cpu::kVerifyCandK runs the radix selection of filter.h instead of the candidate scan
  const bool generic = (topp_on && !topk_on) || (topk_on && top_k > cpu::kVerifyCandK);
  if (generic) {
    // General cut: sampling's fast_row_filter -- top-p without top-k by its vectorised O(V) cut,
    // top_k > 1024 by filter.h's radix selection -- the same kept set and, by the exact rule, the
    // same Z as filter::compute_row_filter (and as verify_tree, which uses it too).
    f = cpu::fast_row_filter(x, V, filter::Params{temp, top_k, top_p, min_p}, P.split, cpu::kVerifyCandK);
  } else {
    const Stats s = over_vocab<Stats>(V, P.split, [&](int64_t lo, int64_t hi) {
      return stats_range(x, lo, hi);
    });
    f.valid = (!s.nan && !s.pinf && s.any && s.m > -kInf) ? 1 : 0;
    f.max_logit = f.valid ? s.m : 0.0f;
    f.argmax = f.valid ? s.am : 0;
    if (!f.valid) return t;
    if (!(temp > 0.0f)) {
      filter::set_greedy(f);
    } else {
      f.inv_temp = 1.0f / temp;
      if (topk_on) {
        // top-k candidates in one scan, then top-p / min-p on them (finish_from_sorted)
        std::vector<float>& vals = t.cand_v;
        std::vector<int64_t>& idx = t.cand_i;
        vals.assign(static_cast<size_t>(top_k), 0.0f);
        idx.assign(static_cast<size_t>(top_k), 0);
        const int64_t n = topk_scan(x, V, top_k, vals.data(), idx.data());
        std::vector<float> mass(static_cast<size_t>(n));
        for (int64_t j = 0; j < n; ++j)
          mass[static_cast<size_t>(j)] = filter::token_mass(vals[static_cast<size_t>(j)], f.max_logit, f.inv_temp);
        const int64_t keep = filter::top_p_prefix(mass.data(), n, top_p);
        filter::finish_from_sorted(f, vals.data(), idx.data(), keep, min_p);
        t.cand_n = keep;
        if (want_entropy) {
          double z = 0.0, sum = 0.0;
          for (int64_t j = 0; j < keep; ++j) {
            const float v = vals[static_cast<size_t>(j)];
            if (!filter::kept(f, v, idx[static_cast<size_t>(j)])) continue;
            const float sc = (v - f.max_logit) * f.inv_temp;
            const float e = filter::fexp(sc);
            z += e;
            if (e > 0.0f) sum += static_cast<double>(e) * sc;
          }
          t.entropy = std::log(z) - sum / z;
        }
      } else {
        f.cut_value = -kInf;
        f.cut_index = V;
        const Mass m = over_vocab<Mass>(V, P.split, [&](int64_t lo, int64_t hi) {
          return want_entropy ? mass_range<T, true>(x, lo, hi, f) : mass_range<T, false>(x, lo, hi, f);
        });
        f.norm = m.z.value();
        f.log_norm = std::log(f.norm);
        if (want_entropy) t.entropy = f.log_norm - m.s / f.norm;
      }
    }
  }
  if (!f.valid) return t;
  if (f.greedy) {
    t.inv_z = 1.0f;
    t.entropy = 0.0;
    return t;
  }
  t.inv_z = filter::inv_norm(f.norm);  // float(1 / Z): the same bits on every path and backend
  if (want_entropy && generic) {
    double z = 0.0, sum = 0.0;
    for (int64_t i = 0; i < V; ++i) {
      const float v = static_cast<float>(x[i]);
      if (!filter::kept(f, v, i)) continue;
      const float sc = (v - f.max_logit) * f.inv_temp;
      const float e = filter::fexp(sc);
      z += e;
      if (e > 0.0f) sum += static_cast<double>(e) * sc;
    }
    t.entropy = std::log(z) - sum / z;
  }
  return t;
}

// Filtered target probability of token i (0 when filtered out).
template <typename T>
inline float p_of(const T* x, const Target& t, int64_t i) {
  const float v = static_cast<float>(x[i]);
  if (!filter::kept(t.f, v, i)) return 0.0f;
  if (t.f.greedy) return 1.0f;
  return filter::fexp((v - t.f.max_logit) * t.f.inv_temp) * t.inv_z;
}

// Residual race for one special token s with residual r (normalised scale).
inline void race_one(Best& b, float r, int64_t s, uint64_t seed, uint64_t stream) {
  if (r > 0.0f) b.take(verify::race_key(r, philox::uniform(seed, stream, static_cast<uint64_t>(s))), s);
}

// Target soft token of method 'soft' with filter_top_k (fk >= 0; 0 or >= V:
// the whole vocabulary): soft_mixture's chain through its header
// (soft::finalize_row): softmax(x/T) -> the fk largest, renormalised -> top_p ->
// min_p -> the ks (output width) largest -> renormalised. Writes ks ids /
// weights (padding: the top id, weight 0); returns false on an invalid row.
template <typename T>
bool soft_filtered_target(const T* x, float temp, int64_t kk, int64_t fk, float top_p, float min_p, const Params& P,
                          std::vector<int64_t>& tidx, std::vector<float>& tvals) {
  const int64_t V = P.V, ks = P.ks;
  const Stats st = over_vocab<Stats>(V, P.split, [&](int64_t lo, int64_t hi) { return stats_range<T>(x, lo, hi); });
  if (st.nan || st.pinf || !st.any) return false;
  const bool whole = fk == 0 || fk >= V;
  const int64_t cap = whole ? ks : std::max(ks, fk);
  std::vector<float> cv(static_cast<size_t>(cap));
  std::vector<int64_t> ci(static_cast<size_t>(cap));
  // the cap first finite logits in the filter order (-inf never a candidate)
  const int64_t n = topk_scan(x, V, cap, cv.data(), ci.data());
  soft::RowParams rp{};
  rp.temperature = static_cast<double>(temp);
  rp.top_k = kk;
  rp.filter_top_k = whole ? 0 : fk;
  rp.top_p = static_cast<double>(top_p);
  rp.min_p = static_cast<double>(min_p);
  rp.noise = soft::kNoNoise;
  rp.vocab_mass = 0.0;
  if (whole && temp > 0.0f) {
    // sum of e^{(l - max l) t} over the finite logits: mass_range's vector pass
    // (float exponentials, float64 sums; terms below e^-87 count as 0)
    RowFilter f;
    f.valid = 1;
    f.max_logit = cv[0];
    f.inv_temp = soft::inv_temperature<float>(rp.temperature);
    f.cut_value = -kInf;
    f.cut_index = V;
    f.log_min_p = -kInf;
    rp.vocab_mass = over_vocab<Mass>(V, P.split, [&](int64_t lo, int64_t hi) {
      return mass_range<T, false>(x, lo, hi, f);
    }).z.value();
  }
  std::vector<float> noisy(static_cast<size_t>(ks));
  tidx.assign(static_cast<size_t>(ks), 0);
  tvals.assign(static_cast<size_t>(ks), 0.0f);
  const int kept = soft::finalize_row<float>(cv.data(), ci.data(), static_cast<int>(n), static_cast<int>(ks), rp,
                                             tidx.data(), tvals.data(), noisy.data());
  for (int64_t c = std::max<int64_t>(kept, 1); c < ks; ++c) {
    tidx[static_cast<size_t>(c)] = tidx[0];
    tvals[static_cast<size_t>(c)] = 0.0f;
  }
  return true;
}

// ------------------------------------------------------------------ one row

template <typename T, typename Q>
void verify_row(int64_t b, const T* logits, int64_t ls0, int64_t ls1, const int64_t* draft,
                int64_t n, const Q* dprobs, int64_t ds0, int64_t ds1, const int64_t* sids,
                const float* sw, const int64_t* nbrs, float temp, int64_t top_k, float top_p,
                float min_p, uint64_t seed, uint64_t off, const Params& P, int64_t* tokens,
                int64_t* nacc_out, int64_t* soft_ids, float* soft_w, int64_t fk = -1) {
  const int64_t V = P.V, K = P.K, ks = P.ks;
  int64_t* tok = tokens + b * (K + 1);
  for (int64_t j = 0; j <= K; ++j) tok[j] = -1;
  int64_t nacc = 0;
  const bool want_h = P.method == verify::kTypical;
  std::vector<float> tvals, tw;
  std::vector<int64_t> tidx;
  // method "soft", once position j's target soft token (tidx, tvals: ks entries) is known:
  // accept the draft when its TV distance is within delta (true), else emit the soft token
  // as the correction (false).
  auto soft_accepts = [&](int64_t j, bool bonus) -> bool {
    if (!bonus) {
      const double tv = verify::soft_tv(tidx.data(), tvals.data(), ks, sids + (b * K + j) * ks,
                                        sw + (b * K + j) * ks, ks);
      if (tv <= static_cast<double>(P.delta) + verify::kSoftTvSlack) {
        tok[j] = draft[b * K + j];
        ++nacc;
        return true;
      }
    }
    int64_t* oi = soft_ids + b * ks;
    float* ow = soft_w + b * ks;
    for (int64_t c = 0; c < ks; ++c) oi[c] = tidx[static_cast<size_t>(c)], ow[c] = tvals[static_cast<size_t>(c)];
    tok[j] = tidx[0];
    return false;
  };
  for (int64_t j = 0; j <= n; ++j) {
    const T* x = logits + b * ls0 + j * ls1;
    const bool bonus = j == n;
    if (P.method == verify::kSoft && fk >= 0) {  // filter_top_k given
      int64_t* oi = soft_ids + b * ks;
      float* ow = soft_w + b * ks;
      if (!soft_filtered_target(x, temp, top_k > 0 ? std::min(top_k, ks) : ks, fk, top_p, min_p, P, tidx, tvals)) {
        for (int64_t c = 0; c < ks; ++c) oi[c] = 0, ow[c] = 0.0f;
        tok[j] = -1;
        break;
      }
      if (soft_accepts(j, bonus)) continue;
      break;
    }
    if (P.method == verify::kSoft) {
      // target soft token: soft_mixture filtering with top_k = ks when 0
      const int64_t kk = top_k > 0 ? std::min(top_k, ks) : ks;
      const Target t = target_at(x, temp, kk, top_p, min_p, false, P);
      int64_t* oi = soft_ids + b * ks;
      float* ow = soft_w + b * ks;
      if (!t.f.valid) {
        for (int64_t c = 0; c < ks; ++c) oi[c] = 0, ow[c] = 0.0f;
        tok[j] = -1;
        break;
      }
      tvals.assign(static_cast<size_t>(ks), 0.0f);
      tidx.assign(static_cast<size_t>(ks), 0);
      int64_t cnt = 0;
      if (t.f.greedy) {
        tvals[0] = 1.0f;
        tidx[0] = t.f.argmax;
        cnt = 1;
      } else {
        // the kept set has at most kk tokens (a prefix of the order, min-p aside)
        std::vector<float> kv(static_cast<size_t>(ks));
        if (t.cand_n >= 0) {  // the top-k scan's sorted candidates
          for (int64_t c = 0; c < t.cand_n; ++c) {
            const float v = t.cand_v[static_cast<size_t>(c)];
            const int64_t i = t.cand_i[static_cast<size_t>(c)];
            if (filter::kept(t.f, v, i)) cnt = verify::topk_insert(kv.data(), tidx.data(), cnt, ks, v, i);
          }
        } else {
          for (int64_t i = 0; i < V; ++i) {
            const float v = static_cast<float>(x[i]);
            if (!filter::kept(t.f, v, i)) continue;
            cnt = verify::topk_insert(kv.data(), tidx.data(), cnt, ks, v, i);
          }
        }
        for (int64_t c = 0; c < cnt; ++c)
          tvals[static_cast<size_t>(c)] = filter::prob(t.f, kv[static_cast<size_t>(c)], tidx[static_cast<size_t>(c)]);
      }
      for (int64_t c = cnt; c < ks; ++c) {
        tidx[static_cast<size_t>(c)] = tidx[0];
        tvals[static_cast<size_t>(c)] = 0.0f;
      }
      if (soft_accepts(j, bonus)) continue;
      break;
    }

    const Target t = target_at(x, temp, top_k, top_p, min_p, want_h, P);
    if (!t.f.valid) {
      tok[j] = -1;
      break;
    }
    const uint64_t stream = verify::draw_stream(off, j);
    if (bonus || P.method == verify::kGreedy) {
      const int64_t xj = bonus ? -1 : draft[b * K + j];
      if (!bonus && xj == t.f.argmax) {
        tok[j] = xj;
        ++nacc;
        continue;
      }
      if (P.method == verify::kGreedy || t.f.greedy) {
        tok[j] = t.f.argmax;
      } else {
        const Best bb = race_skip<T, void>(x, nullptr, t.f, t.inv_z, seed, stream, {}, P);
        tok[j] = bb.idx >= 0 ? bb.idx : t.f.argmax;
      }
      break;
    }
    const int64_t xj = draft[b * K + j];
    const float px = p_of(x, t, xj);
    // q(x) of the draft
    float qx = 1.0f;
    const int64_t* pid = sids ? sids + (b * K + j) * ks : nullptr;
    const float* pw = sw ? sw + (b * K + j) * ks : nullptr;
    if (P.kind == verify::kDense) {
      qx = static_cast<float>(dprobs[b * ds0 + j * ds1 + xj]);
    } else if (P.kind == verify::kSparse) {
      qx = 0.0f;
      for (int64_t c = 0; c < ks; ++c)
        if (pid[c] == xj) qx += pw[c];
    }
    bool acc;
    std::vector<int64_t> skip;
    if (P.method == verify::kTypical) {
      acc = verify::accept_typical(px, t.entropy, P.post_thr, P.post_alpha);
    } else {
      float extra = 0.0f;
      if (P.method == verify::kRelaxed) {
        const int64_t* nb = nbrs + xj * P.nb_m;
        std::vector<int64_t> seen{xj};
        for (int64_t c = 0; c < P.nb_m; ++c) {
          const int64_t y = nb[c];
          if (y < 0 || y >= V || std::find(seen.begin(), seen.end(), y) != seen.end()) continue;
          seen.push_back(y);
          const float py = p_of(x, t, y);
          if (!(extra + py <= P.delta)) break;
          extra += py;
          skip.push_back(y);
        }
      }
      acc = verify::accept_exact(verify::accept_uniform(seed, off, j), px + extra, qx);
    }
    if (acc) {
      tok[j] = xj;
      ++nacc;
      continue;
    }
    // rejected: draw the correction
    if (t.f.greedy) {
      tok[j] = t.f.argmax;
      break;
    }
    Best bb;
    if (P.method == verify::kTypical) {
      bb = race_skip<T, void>(x, nullptr, t.f, t.inv_z, seed, stream, {}, P);
    } else if (P.kind == verify::kDense) {
      std::sort(skip.begin(), skip.end());
      bb = race_skip<T, Q>(x, dprobs + b * ds0 + j * ds1, t.f, t.inv_z, seed, stream, skip, P);
    } else {
      // residual = p except on the draft's entries (one-hot: x; sparse: its ids) and A(x)
      std::vector<int64_t> special;
      if (P.kind == verify::kOneHot) {
        special.push_back(xj);
      } else {
        for (int64_t c = 0; c < ks; ++c) special.push_back(pid[c]);
      }
      std::sort(special.begin(), special.end());
      special.erase(std::unique(special.begin(), special.end()), special.end());
      std::vector<int64_t> all = special;
      all.insert(all.end(), skip.begin(), skip.end());
      std::sort(all.begin(), all.end());
      all.erase(std::unique(all.begin(), all.end()), all.end());
      bb = race_skip<T, void>(x, nullptr, t.f, t.inv_z, seed, stream, all, P);
      for (int64_t s : special) {
        if (std::find(skip.begin(), skip.end(), s) != skip.end()) continue;  // in A(x)
        float q = 1.0f;
        if (P.kind == verify::kSparse) {
          q = 0.0f;
          for (int64_t c = 0; c < ks; ++c)
            if (pid[c] == s) q += pw[c];
        }
        race_one(bb, std::max(p_of(x, t, s) - q, 0.0f), s, seed, stream);
      }
    }
    if (bb.idx < 0) {  // residual zero through rounding: fall back to p
      bb = race_skip<T, void>(x, nullptr, t.f, t.inv_z, seed, stream, {}, P);
    }
    tok[j] = bb.idx >= 0 ? bb.idx : t.f.argmax;
    break;
  }
  nacc_out[b] = nacc;
}

// ------------------------------------------------------------------ entry point

std::tuple<Tensor, Tensor, Tensor, Tensor> verify_cpu(
    Tensor target_logits, Tensor draft_ids, Tensor num_draft, std::optional<Tensor> draft_probs,
    std::optional<Tensor> sparse_ids, std::optional<Tensor> sparse_weights,
    std::optional<Tensor> neighbours, int64_t method, Tensor temperature, Tensor top_k, Tensor top_p,
    Tensor min_p, double posterior_threshold, double posterior_alpha, double delta, Tensor seed,
    Tensor offset, std::optional<Tensor> filter_top_k) {
  const verify_checks::VerifyArgs a = verify_checks::check_verify_args(
      target_logits, draft_ids, num_draft, draft_probs, sparse_ids, sparse_weights, neighbours, method,
      temperature, top_k, top_p, min_p, seed, offset, filter_top_k);
  const int64_t B = a.B, K1 = a.K1, K = a.K, V = a.V;
  Params P;
  verify_checks::pack_params(P, a, posterior_threshold, posterior_alpha, delta);

  const int64_t ks_out = P.method == verify::kSoft ? P.ks : 0;
  Tensor tokens = new_empty(target_logits, {B, K1}, ScalarType::Long);
  Tensor nacc = new_empty(target_logits, {B}, ScalarType::Long);
  Tensor soft_ids = new_empty(target_logits, {B, ks_out}, ScalarType::Long);
  Tensor soft_w = new_empty(target_logits, {B, ks_out}, ScalarType::Float);
  if (B == 0) return {tokens, nacc, soft_ids, soft_w};

  const int64_t* nd = num_draft.const_data_ptr<int64_t>();
  const int64_t* dr = draft_ids.const_data_ptr<int64_t>();
  const int64_t* sid = P.kind == verify::kSparse ? sparse_ids->const_data_ptr<int64_t>() : nullptr;
  const float* swp = P.kind == verify::kSparse ? sparse_weights->const_data_ptr<float>() : nullptr;
  // Input checks that guard memory accesses (the Python wrapper repeats them with context).
  for (int64_t b = 0; b < B; ++b) {
    SOFTDEC_CHECK(nd[b] >= 0 && nd[b] <= K, "num_draft must be in [0, ", K, "] (K = draft_ids.size(1)), got ",
                  nd[b], " at row ", b);
    for (int64_t j = 0; j < nd[b]; ++j) {
      const int64_t x = dr[b * K + j];
      SOFTDEC_CHECK(x >= 0 && x < V, "draft_ids must lie in [0, ", V, ") (the vocabulary of target_logits), got ",
                    x, " at (row ", b, ", position ", j, ")");
      if (sid) {
        bool member = false;
        for (int64_t c = 0; c < P.ks; ++c) {
          const int64_t s = sid[(b * K + j) * P.ks + c];
          SOFTDEC_CHECK(s >= 0 && s < V, "draft_probs ids must lie in [0, ", V, "), got ", s, " at (row ", b,
                        ", position ", j, ", entry ", c, ")");
          member |= s == x;
        }
        SOFTDEC_CHECK(member || P.method == verify::kSoft, "draft_ids[", b, ", ", j, "] = ", x,
                      " must be one of the sparse draft's ids at that position");
      }
    }
  }
  const float* tp = temperature.const_data_ptr<float>();
  const int64_t* tk = top_k.const_data_ptr<int64_t>();
  const float* tpp = top_p.const_data_ptr<float>();
  const float* mpp = min_p.const_data_ptr<float>();
  draft_checks::check_row_settings(tp, tk, tpp, mpp, B);
  const int64_t* fkp = filter_top_k.has_value() ? filter_top_k->const_data_ptr<int64_t>() : nullptr;
  for (int64_t b = 0; fkp && b < B; ++b) {
    const int64_t kk = tk[b] > 0 ? std::min(tk[b], P.ks) : P.ks;
    SOFTDEC_CHECK(fkp[b] == 0 || fkp[b] >= V || (fkp[b] >= kk && fkp[b] <= soft::kMaxTopK),
                  "filter_top_k must be 0 (the whole vocabulary), >= vocab, or in [top_k, ", soft::kMaxTopK,
                  "] (top_k ", kk, ", the output width), got ", fkp[b], " at row ", b);
  }
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const int64_t* of = offset.const_data_ptr<int64_t>();
  const int64_t* nbp = P.method == verify::kRelaxed ? neighbours->const_data_ptr<int64_t>() : nullptr;
  int64_t* tok = tokens.mutable_data_ptr<int64_t>();
  int64_t* na = nacc.mutable_data_ptr<int64_t>();
  int64_t* soi = ks_out ? soft_ids.mutable_data_ptr<int64_t>() : nullptr;
  float* sow = ks_out ? soft_w.mutable_data_ptr<float>() : nullptr;
  const int64_t nthreads = torch::stable::get_num_threads();
  P.split = B < nthreads;
  const int64_t ls0 = target_logits.stride(0), ls1 = target_logits.stride(1);

  SOFTDEC_DISPATCH_FLOAT(target_logits.scalar_type(), "target_logits", scalar_t, [&] {
    auto run = [&](auto qtag) {
      using Q = decltype(qtag);
      const Q* dp = nullptr;
      int64_t ds0 = 0, ds1 = 0;
      if (P.kind == verify::kDense) {
        dp = draft_probs->const_data_ptr<Q>();
        ds0 = draft_probs->stride(0);
        ds1 = draft_probs->stride(1);
      }
      const scalar_t* lg = target_logits.const_data_ptr<scalar_t>();
      auto row = [&](int64_t b) {
        verify_row<scalar_t, Q>(b, lg, ls0, ls1, dr, nd[b], dp, ds0, ds1, sid, swp, nbp, tp[b], tk[b],
                                tpp[b], mpp[b], static_cast<uint64_t>(sd[b]), static_cast<uint64_t>(of[b]),
                                P, tok, na, soi, sow, fkp ? fkp[b] : -1);
      };
      if (P.split) {
        for (int64_t b = 0; b < B; ++b) row(b);
      } else {
        torch::stable::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
          for (int64_t b = lo; b < hi; ++b) row(b);
        });
      }
    };
    if (P.kind == verify::kDense && draft_probs->scalar_type() == ScalarType::Float) {
      run(float{});
    } else {
      run(scalar_t{});
    }
  });
  return {tokens, nacc, soft_ids, soft_w};
}

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(verify,
    {"verify", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::verify_cpu)})
