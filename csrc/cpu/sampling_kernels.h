// CPU building blocks of the sampling family, shared with other CPU kernels
// (verification): vectorised passes over a row of logits (built on simd.h's
// AVX-512 loads, Philox stream and Gumbel noise), the top-k candidate pass, the O(V) top-p cut, and
// fast_row_filter(): include/softdec/filter.h's RowFilter of a row, computed
// with these passes (same kept set as filter::compute_row_filter).
#pragma once

#include "capability.h"

#include "../common.h"
#include "../dispatch.h"
#include "softdec/filter.h"
#include "softdec/philox.h"
#include "simd.h"
#include "mass_lanes.h"
#include "topk.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>


namespace softdec {
namespace SOFTDEC_CPU_NS {
namespace cpu {

// The vector building blocks (loads, vlog/vexp, Philox, Gumbel) live in simd.h.
using namespace ::softdec::SOFTDEC_CPU_NS::simd;  // NOLINT
using filter::RowFilter;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kGroup = 64;        // tokens per Philox group (16 blocks of 4)
constexpr int64_t kSmallK = 2048;     // top-k candidate path up to this k
// verify / verify_tree's target filter takes the candidate path up to this k only (the CUDA row
// filter's kFilterCand: both backends use the same rule for every k)
constexpr int64_t kVerifyCandK = 1024;
constexpr int64_t kMinChunk = 16384;  // smallest vocabulary chunk per thread

// ------------------------------------------------------------------ argmax state

struct Best {
  float key = -kInf;
  int64_t idx = -1;
  // Larger key wins; equal keys: the lower index.
  void take(float k, int64_t i) {
    if (idx < 0 || k > key || (k == key && i < idx)) {
      key = k;
      idx = i;
    }
  }
};

#if SOFTDEC_SIMD_AVX512
// Fold a 16-lane argmax state (keys, indices relative to lo; -1 = empty lane) into best.
inline void take_lanes(Best& best, __m512 bkey, __m512i bidx, int64_t lo) {
  alignas(64) float kk[16];
  alignas(64) int32_t ii[16];
  _mm512_store_ps(kk, bkey);
  _mm512_store_si512(ii, bidx);
  for (int l = 0; l < 16; ++l)
    if (ii[l] >= 0) best.take(kk[l], lo + ii[l]);
}
#endif

// Flags of a row seen by a pass: any NaN, any +inf, any finite token.
struct Flags {
  bool nan = false, pinf = false, finite = false;
  void merge(const Flags& o) {
    nan |= o.nan;
    pinf |= o.pinf;
    finite |= o.finite;
  }
};

// ------------------------------------------------------------------ the kept set of a row (a cut)

// kept(i) = x > -inf && (x > cv || (x == cv && i <= ci)) && (x - m) * it >= lmp
struct Cut {
  float cv = -kInf;
  int64_t ci = std::numeric_limits<int64_t>::max();
  float m = 0.0f;
  float it = 1.0f;    // 1/T
  float lmp = -kInf;  // log(min_p)
  explicit Cut(float inv_temp = 1.0f) : it(inv_temp) {}
  static Cut of(const RowFilter& f) {
    Cut c(f.inv_temp);
    c.cv = f.cut_value;
    c.ci = f.cut_index;
    c.m = f.max_logit;
    c.lmp = f.log_min_p;
    return c;
  }
  bool kept(float x, int64_t i) const {
    return x > -kInf && (x > cv || (x == cv && i <= ci)) && (x - m) * it >= lmp;
  }
};

// ------------------------------------------------------------------ passes over [lo, hi) of a row

// Masses e_i = fexp((x_i - m) * it) of n tokens (vexp mirrors filter::fexp bit for bit).
template <class T>
void masses(const T* x, int64_t n, float m, float it, float* e) {
  int64_t j = 0;
#if SOFTDEC_SIMD_AVX512
  const __m512 vm = _mm512_set1_ps(m), vit = _mm512_set1_ps(it);
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(e + j, vexp(_mm512_mul_ps(_mm512_sub_ps(load16<T>(x + j), vm), vit)));
#endif
  for (; j < n; ++j) e[j] = filter::token_mass(to_float(x[j]), m, it);
}

// ------------------------------------------------------------------ inverse-CDF draw (sample)
// softdec.sample draws kept token i with probability draw_mass(x_i) / (sum of
// the kept masses), draw_mass = 2^((x - max) * c) (filter.h; vexp2 here, the
// same bits), by inversion with one uniform u = philox::uniform53(seed, offset).
// The order of every sum is part of the definition (CUDA and the reference
// oracle repeat it, so all three pick the same token):
//   block b = tokens [1024 b, 1024 b + 1024); lane l of block b = its tokens
//   1024 b + 16 j + l, j = 0..63, summed in float in j order; blk[b] = the 16
//   lane sums added in double in lane order;
//   target = u * (blk[0] + blk[1] + ...) (double, in order); the chosen block
//   is the first with mass whose running double sum exceeds target (else the
//   last block with mass); inside it, the first kept token with mass whose
//   running double sum exceeds what is left of target (else the block's last
//   token with mass).

constexpr int64_t kCdfBlock = 1024;
constexpr int kCdfLanes = 16;

#if SOFTDEC_SIMD_AVX512
// Lanes at or above a cut in the filter order: x > cv, or x == cv at an index
// <= ci (ties are kept up to the cut's index); base = index of lane 0.
inline __mmask16 above_cut(__m512 xv, float cv, int64_t ci, int64_t base) {
  const __m512 vcv = _mm512_set1_ps(cv);
  __mmask16 k = _mm512_cmp_ps_mask(xv, vcv, _CMP_GT_OQ);
  const __mmask16 eq = _mm512_cmp_ps_mask(xv, vcv, _CMP_EQ_OQ);
  if (eq)
    for (int l = 0; l < 16; ++l)
      if (((eq >> l) & 1) && base + l <= ci) k |= static_cast<__mmask16>(1u << l);
  return k;
}

// Does the cut keep each of 16 lanes (x loaded, z = (x - m) * c, base = index of lane 0)?
inline __mmask16 kept_lanes(const Cut& cut, __m512 xv, __m512 z, int64_t base, __mmask16 lm) {
  __mmask16 k = _mm512_mask_cmp_ps_mask(lm, xv, _mm512_set1_ps(-kInf), _CMP_GT_OQ);
  if (cut.lmp > -kInf) {
    // min-p compares (x - m) * (1/T), the filter's unit, not the draw's base-2 z
    const __m512 s = _mm512_mul_ps(_mm512_sub_ps(xv, _mm512_set1_ps(cut.m)), _mm512_set1_ps(cut.it));
    k &= _mm512_cmp_ps_mask(s, _mm512_set1_ps(cut.lmp), _CMP_GE_OQ);
  }
  if (cut.cv > -kInf) k &= above_cut(xv, cut.cv, cut.ci, base);
  (void)z;
  return k;
}
#endif

// Draw masses of the n tokens x[0..n) (first index base): 0 where not kept.
template <class T>
void draw_masses(const T* x, int64_t base, int64_t n, const Cut& cut, float* e) {
  const float c = filter::draw_scale(cut.it);
  int64_t j = 0;
#if SOFTDEC_SIMD_AVX512
  const __m512 vm = _mm512_set1_ps(cut.m), vc = _mm512_set1_ps(c);
  for (; j < n; j += 16) {
    const int64_t left = n - j;
    const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    const __m512 xv = left >= 16 ? load16<T>(x + j) : load16_mask<T>(x + j, lm);
    const __m512 z = _mm512_mul_ps(_mm512_sub_ps(xv, vm), vc);
    const __m512 ev = _mm512_maskz_mov_ps(kept_lanes(cut, xv, z, base + j, lm), vexp2(z));
    _mm512_mask_storeu_ps(e + j, lm, ev);
  }
#endif
  for (; j < n; ++j) {
    const float v = to_float(x[j]);
    e[j] = cut.kept(v, base + j) ? filter::draw_mass(v, cut.m, c) : 0.0f;
  }
}

// blk[(b0 - lo) / kCdfBlock] for every block b0 of [lo, hi) (lo a multiple of
// kCdfBlock), by the lane rule above. 16-token vectors whose kept tokens all
// underflow (z <= -125) cost one compare. pf (optional): a row of the same
// length whose [lo, hi) is prefetched meanwhile (the next row a thread reads:
// this pass computes from cache, and the memory reads of that row overlap it).
template <class T>
void mass_pass(const T* x, int64_t lo, int64_t hi, const Cut& cut, double* blk, const T* pf = nullptr) {
  const float c = filter::draw_scale(cut.it);
  for (int64_t b0 = lo; b0 < hi; b0 += kCdfBlock) {
    const int64_t b1 = std::min(hi, b0 + kCdfBlock);
    alignas(64) float lane[kCdfLanes] = {};
#if SOFTDEC_SIMD_AVX512
    const __m512 vm = _mm512_set1_ps(cut.m), vc = _mm512_set1_ps(c), vunder = _mm512_set1_ps(-125.0f);
    const bool plain = !(cut.cv > -kInf) && !(cut.lmp > -kInf);
    __m512 acc = _mm512_setzero_ps();
    if (pf)
      for (int64_t i = b0; i < b1; i += 64 / static_cast<int64_t>(sizeof(T)))
        _mm_prefetch(reinterpret_cast<const char*>(pf + i), _MM_HINT_T1);
    for (int64_t i = b0; i < b1; i += 16) {
      const int64_t left = b1 - i;
      const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
      const __m512 xv = left >= 16 ? load16<T>(x + i) : load16_mask<T>(x + i, lm);
      const __m512 z = _mm512_mul_ps(_mm512_sub_ps(xv, vm), vc);
      const __mmask16 live = _mm512_mask_cmp_ps_mask(lm, z, vunder, _CMP_GT_OQ);
      if (!live) continue;  // all underflow (or NaN / -inf)
      // without a cut every live lane is kept (z > -125 implies x > -inf); z <= 0
      // (m is the max), so the live lanes are in vexp2_in_range's range
      const __mmask16 k = plain ? live : static_cast<__mmask16>(kept_lanes(cut, xv, z, i, lm) & live);
      if (!k) continue;
      acc = _mm512_mask_add_ps(acc, k, acc, vexp2_in_range(z));
    }
    _mm512_store_ps(lane, acc);
#else
    (void)pf;
    for (int64_t i = b0; i < b1; ++i) {
      const float v = to_float(x[i]);
      if (cut.kept(v, i)) lane[(i - b0) % kCdfLanes] += filter::draw_mass(v, cut.m, c);
    }
#endif
    double sum = 0.0;
    for (int l = 0; l < kCdfLanes; ++l) sum += static_cast<double>(lane[l]);
    blk[(b0 - lo) / kCdfBlock] = sum;
  }
}

// Position of the draw among n masses in vocabulary order: the first j with
// mass[j] > 0 whose running sum (double) exceeds target; if rounding leaves
// none, the last j with mass[j] > 0 (-1 if there is none).
template <class M>
int64_t pick_in(const M* mass, int64_t n, double target) {
  double run = 0.0;
  int64_t last = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (!(mass[j] > M(0))) continue;
    run += static_cast<double>(mass[j]);
    last = j;
    if (run > target) return j;
  }
  return last;
}

// The draw of a row whose kept set is `cut`, given its block masses blk[0 ..
// ceil(V / kCdfBlock)). Returns -1 if the kept set has no mass.
template <class T>
int64_t draw_from_blocks(const T* x, int64_t V, const Cut& cut, const double* blk, double u) {
  const int64_t nb = (V + kCdfBlock - 1) / kCdfBlock;
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) total += blk[b];
  if (!(total > 0.0)) return -1;
  double target = u * total;
  const int64_t b = pick_in(blk, nb, target);
  if (b < 0) return -1;
  double before = 0.0;  // the running sum of pick_in up to block b (zero blocks add nothing)
  for (int64_t j = 0; j < b; ++j) before += blk[j];
  target -= before;
  const int64_t b0 = b * kCdfBlock, n = std::min(kCdfBlock, V - b0);
  alignas(64) float e[kCdfBlock];
  draw_masses(x + b0, b0, n, cut, e);
  const int64_t j = pick_in(e, n, target);
  return j < 0 ? -1 : b0 + j;
}

// Max / argmax (lowest index among ties) and flags of [lo, hi). Without
// want_index the max is recorded at index lo (callers that only need the max
// skip the search for its first position).
template <class T>
void stats_pass(const T* x, int64_t lo, int64_t hi, Best& best, Flags& flags, bool want_index = true) {
  int64_t i = lo;
#if SOFTDEC_SIMD_AVX512
  const __m512 vninf = _mm512_set1_ps(-kInf), vpinf = _mm512_set1_ps(kInf);
  __m512 mx = vninf, mx2 = vninf;
  __mmask16 un = 0;
  for (; i + 32 <= hi; i += 32) {
    const __m512 v = load16<T>(x + i), w = load16<T>(x + i + 16);
    un |= _mm512_cmp_ps_mask(v, w, _CMP_UNORD_Q);
    mx = _mm512_max_ps(mx, v);
    mx2 = _mm512_max_ps(mx2, w);
  }
  for (; i + 16 <= hi; i += 16) {
    const __m512 v = load16<T>(x + i);
    un |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    mx = _mm512_max_ps(mx, v);
  }
  if (i < hi) {
    const __m512 v = load16_mask<T>(x + i, static_cast<__mmask16>((1u << (hi - i)) - 1));
    un |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    mx = _mm512_max_ps(mx, v);
  }
  const bool nan = un != 0;
  flags.nan |= nan;
  const float m = hmax(_mm512_max_ps(mx, mx2));
  if (m > -kInf && !nan) {
    flags.finite |= m < kInf;
    flags.pinf |= m == kInf;
    if (!want_index) {
      best.take(m, lo);
      i = hi;
      return;
    }
    // first index holding the max
    const __m512 vm = _mm512_set1_ps(m);
    for (int64_t j = lo; j < hi; j += 16) {
      const int64_t left = hi - j;
      const __m512 v = left >= 16 ? load16<T>(x + j)
                                  : load16_mask<T>(x + j, static_cast<__mmask16>((1u << left) - 1));
      const __mmask16 eq = _mm512_cmp_ps_mask(v, vm, _CMP_EQ_OQ);
      if (eq) {
        best.take(m, j + __builtin_ctz(eq));
        break;
      }
    }
  }
  (void)vpinf;
  i = hi;
#endif
  for (; i < hi; ++i) {
    const float v = to_float(x[i]);
    if (v != v) {
      flags.nan = true;
      continue;
    }
    if (v == kInf) flags.pinf = true;
    if (v > -kInf && v < kInf) flags.finite = true;
    if (v > -kInf) best.take(v, i);
  }
}

// Candidates (value, index) of [lo, hi) that can be among the row's first k
// tokens of the filter order; returns them sorted in that order, at most k.
using Cand = TopKCollector<float>::Item;
inline bool cand_before(const Cand& a, const Cand& b) { return filter::before(a.v, a.i, b.v, b.i); }

template <class T>
void topk_pass(const T* x, int64_t lo, int64_t hi, int64_t k, std::vector<Cand>& out, Flags& flags) {
  TopKCollector<float> top(k, 64);
  int64_t i = lo;
#if SOFTDEC_SIMD_AVX512
  __mmask16 nanm = 0;
  __m512 vmax = _mm512_set1_ps(-kInf);
  alignas(64) float vals[64];
  // 64 tokens per step; one compare of their max against the threshold
  for (; i + 64 <= hi; i += 64) {
    const __m512 v0 = load16<T>(x + i), v1 = load16<T>(x + i + 16);
    const __m512 v2 = load16<T>(x + i + 32), v3 = load16<T>(x + i + 48);
    nanm |= _mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v2, v3, _CMP_UNORD_Q);
    const __m512 mm = _mm512_max_ps(_mm512_max_ps(v0, v1), _mm512_max_ps(v2, v3));
    vmax = _mm512_max_ps(vmax, mm);
    const __m512 vt = _mm512_set1_ps(top.thr);
    if (!_mm512_cmp_ps_mask(mm, vt, _CMP_GT_OQ)) continue;
    // (a plain store + bit walk: vcompressps to memory is microcoded on Zen 4)
    _mm512_store_ps(vals, v0);
    _mm512_store_ps(vals + 16, v1);
    _mm512_store_ps(vals + 32, v2);
    _mm512_store_ps(vals + 48, v3);
    const __m512 vq[4] = {v0, v1, v2, v3};
    for (int q = 0; q < 4; ++q) {
      __mmask16 msk = _mm512_cmp_ps_mask(vq[q], vt, _CMP_GT_OQ);
      while (msk) {
        const int l = __builtin_ctz(msk);
        msk &= static_cast<__mmask16>(msk - 1);
        top.push(vals[16 * q + l], i + 16 * q + l);
      }
    }
    top.maybe_compact();
  }
  flags.nan |= nanm != 0;
  flags.pinf |= hmax(vmax) == kInf;
#endif
  for (; i < hi; ++i) {
    const float v = to_float(x[i]);
    if (v != v) flags.nan = true;
    if (v == kInf) flags.pinf = true;
    if (v > top.thr) {
      top.push(v, i);
      top.maybe_compact();
    }
  }
  for (const Cand& c : top)
    if (c.v < kInf) {
      flags.finite = true;
      break;
    }
  out = top.finish();
}

// ------------------------------------------------------------------ sample

// The top-p cut of a valid row without top-k (filter.h semantics), in O(V):
// a 4096-bucket histogram of (count, mass) on order_key >> 20 finds the bucket
// where the running mass (descending) reaches top_p * total; the tokens of
// that bucket are compacted (in index order) and filter::detail::select_nth
// finishes the selection on them. Masses in filter.h's fixed point (exact
// integer sums): the same cut as generic_cut and the CUDA block selection.
// kProbs: the row holds probabilities (FlashInfer's top_p_renorm_probs): the mass
// of a token is its value and non-positive entries are never kept.
template <bool kProbs = false, class T>
void top_p_cut(const T* x, int64_t V, float m, int64_t argmax, float it, float top_p, float* cv,
               int64_t* ci) {
  constexpr int kBuckets = 4096;
  std::vector<uint64_t> mass(kBuckets, 0);
  std::vector<int64_t> cnt(kBuckets, 0);
  const int sh = filter::mass_shift(V, kProbs ? static_cast<double>(m)
                                              : static_cast<double>(filter::token_mass(m, m, it)));
  alignas(64) float e[1024];
  for (int64_t base = 0; base < V; base += 1024) {
    const int64_t n = std::min<int64_t>(1024, V - base);
    if (!kProbs) masses(x + base, n, m, it, e);
    for (int64_t j = 0; j < n; ++j) {
      const float v = to_float(x[base + j]);
      if (kProbs) {
        if (!(v > 0.0f)) continue;
        e[j] = v;
      }
      if (!(v > -kInf)) continue;
      const uint32_t b = filter::order_key(v) >> 20;
      cnt[b] += 1;
      mass[b] += filter::to_fixed(static_cast<double>(e[j]), sh);
    }
  }
  uint64_t total = 0;
  for (int b = 0; b < kBuckets; ++b) total += mass[b];
  const uint64_t target = filter::fixed_target(top_p, total);
  if (target == 0) {
    *cv = m;
    *ci = argmax;
    return;
  }
  uint64_t macc = 0;
  int chosen = -1, last = -1;
  for (int b = kBuckets - 1; b >= 0; --b) {
    if (cnt[b] == 0) continue;
    last = b;
    if (macc + mass[b] >= target) {
      chosen = b;
      break;
    }
    macc += mass[b];
  }
  if (chosen < 0) {
    chosen = last;
    macc -= mass[chosen];
  }
  std::vector<float> cx;
  std::vector<int64_t> cidx;
  cx.reserve(static_cast<size_t>(cnt[chosen]));
  cidx.reserve(static_cast<size_t>(cnt[chosen]));
  for (int64_t i = 0; i < V; ++i) {
    const float v = to_float(x[i]);
    if ((kProbs ? v > 0.0f : v > -kInf) && static_cast<int>(filter::order_key(v) >> 20) == chosen) {
      cx.push_back(v);
      cidx.push_back(i);
    }
  }
  const int64_t nc = static_cast<int64_t>(cx.size());
  auto load = [&cx](int64_t j) { return cx[static_cast<size_t>(j)]; };
  auto mass_of = [m, it, sh](float v) -> uint64_t {
    return filter::to_fixed(kProbs ? static_cast<double>(v) : static_cast<double>(filter::token_mass(v, m, it)), sh);
  };
  float val = m;
  int64_t pos = 0;
  filter::detail::select_nth(load, nc, -kInf, nc, true, 0, target - macc, mass_of, &val, &pos);
  *cv = val;
  *ci = cidx[static_cast<size_t>(std::min<int64_t>(std::max<int64_t>(pos, 0), nc - 1))];
}


// Plain and min-p rows read the vocabulary in fixed pieces of kFilterPiece
// tokens: each piece's statistics and kept-mass digit sums start from zero and
// the pieces are merged in index order, so the result does not depend on
// whether the pieces ran on one thread or on torch's threads (`par`).
constexpr int64_t kFilterPiece = 16384;

// Kept mass of [lo, hi) by the exact rule (filter::MassSum's digit sums, MassLanes), and the
// number of kept tokens. Token i of x has the vocabulary id id0 + i (a shard's offset).
template <class T>
filter::MassSum kept_mass(const T* x, int64_t lo, int64_t hi, const filter::RowFilter& f, int64_t* cnt_out,
                          int64_t id0 = 0) {
  const float m = f.max_logit, it = f.inv_temp;
  const bool all_finite_kept = f.cut_value == -kInf && !(f.log_min_p > -kInf);
  int64_t cnt = 0;
  MassLanes lanes;
  alignas(64) float e[1024];
  for (int64_t base = lo; base < hi; base += 1024) {
    const int64_t n = std::min<int64_t>(1024, hi - base);
    masses(x + base, n, m, it, e);
    if (all_finite_kept) {  // filter::kept is "finite" here: -inf tokens have e = 0
      for (int64_t j = 0; j < n; ++j) cnt += to_float(x[base + j]) > -kInf ? 1 : 0;
    } else {
      for (int64_t j = 0; j < n; ++j) {
        const bool k = filter::kept(f, to_float(x[base + j]), id0 + base + j);
        e[j] = k ? e[j] : 0.0f;
        cnt += k ? 1 : 0;
      }
    }
    lanes.add(e, n);
  }
  *cnt_out = cnt;
  return lanes.sum();
}

// Runs body(piece, lo, hi) for the kFilterPiece pieces of [0, V): in order on this thread, or
// on torch's threads when par.
template <class Body>
void for_pieces(int64_t V, bool par, const Body& body) {
  const int64_t n = (V + kFilterPiece - 1) / kFilterPiece;
  auto run = [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) body(i, i * kFilterPiece, std::min(V, (i + 1) * kFilterPiece));
  };
  if (par && n > 1) {
    torch::stable::parallel_for(0, n, 1, run);
  } else {
    run(0, n);
  }
}

// filter::RowFilter of one row of logits, with the fast passes above: greedy,
// top-k (k <= kSmallK, candidate pass), top-p (O(V) cut), min-p and plain
// rows; larger k falls back to filter::compute_row_filter. Serial (one thread),
// except that `par` runs the plain / min-p passes' pieces on torch's threads
// (same result: see kFilterPiece).
// max_cand: the largest k of the candidate path (sample: kSmallK; verify / verify_tree: 1024, the
// CUDA row filter's kFilterCand, so that both backends take the same rule for every k).
template <class T>
filter::RowFilter fast_row_filter(const T* x, int64_t V, filter::Params p, bool par = false,
                                  int64_t max_cand = kSmallK) {
  const int64_t k = (p.top_k > 0 && p.top_k < V) ? p.top_k : 0;
  if (k > max_cand && p.temperature > 0.0f) {
    auto load = [x](int64_t i) { return to_float(x[i]); };
    return filter::compute_row_filter(load, V, p);
  }
  filter::RowFilter f;
  f.log_min_p = filter::log_min_p_of(p.min_p);
  Best bs;
  Flags fl;
  std::vector<Cand> cand;
  if (k > 0) {
    topk_pass(x, 0, V, k, cand, fl);
    if (!cand.empty()) bs.take(cand[0].v, cand[0].i);
  } else {
    const int64_t np = (V + kFilterPiece - 1) / kFilterPiece;
    if (par && np > 1) {
      std::vector<Best> pb(static_cast<size_t>(np));
      std::vector<Flags> pf(static_cast<size_t>(np));
      for_pieces(V, true, [&](int64_t i, int64_t lo, int64_t hi) {
        stats_pass(x, lo, hi, pb[static_cast<size_t>(i)], pf[static_cast<size_t>(i)]);
      });
      for (int64_t i = 0; i < np; ++i) {  // max with the lowest index: exact in any split
        if (pb[static_cast<size_t>(i)].idx >= 0) bs.take(pb[static_cast<size_t>(i)].key, pb[static_cast<size_t>(i)].idx);
        fl.merge(pf[static_cast<size_t>(i)]);
      }
    } else {
      stats_pass(x, 0, V, bs, fl);
    }
  }
  if (fl.nan || fl.pinf || !fl.finite || bs.idx < 0) return f;  // invalid: valid = 0, argmax = 0
  f.valid = 1;
  f.max_logit = bs.key;
  f.argmax = bs.idx;
  if (!(p.temperature > 0.0f)) {
    filter::set_greedy(f);
    return f;
  }
  const float m = f.max_logit, it = 1.0f / p.temperature;
  f.inv_temp = it;
  if (k > 0) {
    const int64_t n0 = static_cast<int64_t>(cand.size());
    std::vector<float> vals(static_cast<size_t>(n0)), mass(static_cast<size_t>(n0));
    std::vector<int64_t> ids(static_cast<size_t>(n0));
    for (int64_t j = 0; j < n0; ++j) {
      vals[j] = cand[j].v;
      ids[j] = cand[j].i;
      mass[j] = filter::token_mass(cand[j].v, m, it);
    }
    const int64_t n = filter::top_p_prefix(mass.data(), n0, p.top_p);
    filter::finish_from_sorted(f, vals.data(), ids.data(), n, p.min_p);
    return f;
  }
  if (p.top_p < 1.0f) {
    top_p_cut(x, V, m, f.argmax, it, p.top_p, &f.cut_value, &f.cut_index);
  } else {
    f.cut_value = -kInf;
    f.cut_index = V;
  }
  // Kept mass Z by the exact rule (integer digit sums: the same in any split, with or without par)
  const int64_t np = (V + kFilterPiece - 1) / kFilterPiece;
  std::vector<filter::MassSum> ps(static_cast<size_t>(np));
  std::vector<int64_t> pc(static_cast<size_t>(np), 0);
  for_pieces(V, par, [&](int64_t i, int64_t lo, int64_t hi) {
    ps[static_cast<size_t>(i)] = kept_mass(x, lo, hi, f, pc.data() + i);
  });
  filter::MassSum z;
  int64_t cnt = 0;
  for (int64_t i = 0; i < np; ++i) {
    z.merge(ps[static_cast<size_t>(i)]);
    cnt += pc[static_cast<size_t>(i)];
  }
  f.num_kept = cnt;
  f.norm = z.value();
  f.log_norm = std::log(f.norm);
  return f;
}

}  // namespace cpu
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec
