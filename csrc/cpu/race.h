// The exponential race of the verification kernels (verify.cpp's race_range,
// verify_tree.cpp's race): the winner, and the 16-lane AVX-512 pieces both loops
// are built from. Keys are verify::race_key's, r / -flog(u) (vexp / vlog are
// filter::fexp / flog bit for bit), so either loop draws what the scalar rule draws.
#pragma once

#include "capability.h"

#include "softdec/filter.h"
#include "softdec/verify.h"
#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace softdec {
namespace SOFTDEC_CPU_NS {
namespace cpu {

// The race's winner so far: larger key, lower index on ties (verify::race_better, a
// total order on (key, index): merging partial winners in any order gives the winner
// of the whole range); idx -1: none yet.
struct RaceWin {
  float key = 0.0f;
  int64_t idx = -1;
  void take(float k, int64_t i) {
    if (i >= 0 && (idx < 0 || verify::race_better(k, i, key, idx))) {
      key = k;
      idx = i;
    }
  }
  void merge(const RaceWin& o) { take(o.key, o.idx); }
};

#if defined(SOFTDEC_SIMD_AVX512)
// 16 lanes of a race over a row of logits filtered by f (p = fexp((x - max) / T) * inv_z
// on the kept set): the filter's broadcast constants, the kept mask of 16 tokens, and one
// winner per lane (a strictly greater key replaces it: within a lane the earlier token
// wins ties), folded into a RaceWin at the end. Indices are int32 (V < 2^31).
struct RaceLanes16 {
  __m512 vm, vit, vlmp, vninf, vcv, viz;
  __m512i vci, lane;
  bool prefix_all;  // no top-k / top-p cut: the cut test below adds nothing
  __m512 bk = _mm512_setzero_ps();
  __m512i bi = _mm512_set1_epi32(-1);

  RaceLanes16(const filter::RowFilter& f, float inv_z)
      : vm(_mm512_set1_ps(f.max_logit)),
        vit(_mm512_set1_ps(f.inv_temp)),
        vlmp(_mm512_set1_ps(f.log_min_p)),
        vninf(_mm512_set1_ps(-std::numeric_limits<float>::infinity())),
        vcv(_mm512_set1_ps(f.cut_value)),
        viz(_mm512_set1_ps(inv_z)),
        vci(_mm512_set1_epi32(static_cast<int32_t>(std::min<int64_t>(f.cut_index, INT32_MAX)))),
        lane(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
        // cut_value = -inf: (v > cut) || (v == cut && i <= cut_index) holds for every v > -inf,
        // which the kept mask demands anyway
        prefix_all(f.cut_value == -std::numeric_limits<float>::infinity()) {}

  // The absolute indices i .. i + 15.
  __m512i index(int64_t i) const { return _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(i))); }
  // (v - max) * inv_temp, the score filter::kept and fexp see.
  __m512 score(__m512 v) const { return _mm512_mul_ps(_mm512_sub_ps(v, vm), vit); }
  // filter::kept of the lanes in tm (logits v at indices gi, scores sc).
  __mmask16 kept(__m512 v, __m512 sc, __m512i gi, __mmask16 tm) const {
    __mmask16 keep = _mm512_mask_cmp_ps_mask(tm, v, vninf, _CMP_GT_OQ);
    keep = _mm512_mask_cmp_ps_mask(keep, sc, vlmp, _CMP_GE_OQ);
    if (!prefix_all) {  // (v > cut_value) || (v == cut_value && i <= cut_index)
      const __mmask16 in = _mm512_cmp_ps_mask(v, vcv, _CMP_GT_OQ) |
                           (_mm512_cmp_ps_mask(v, vcv, _CMP_EQ_OQ) & _mm512_cmp_epi32_mask(gi, vci, _MM_CMPINT_LE));
      keep &= in;
    }
    return keep;
  }
  // The target's p of the scores sc.
  __m512 p(__m512 sc) const { return _mm512_mul_ps(simd::vexp(sc), viz); }
  // Enters the lanes in keep with residuals r; u: the 16 uniforms of these tokens (lanes
  // outside tm are not read: they take u = 0.5, so E = -flog(u) > 0 on every lane).
  void offer(__mmask16 keep, __m512 r, const float* u, __mmask16 tm, __m512i gi) {
    const __m512 uu = _mm512_maskz_loadu_ps(tm, u);
    const __m512 e = _mm512_sub_ps(_mm512_setzero_ps(), simd::vlog(_mm512_mask_mov_ps(_mm512_set1_ps(0.5f), tm, uu)));
    const __m512 key = _mm512_div_ps(r, e);
    const __mmask16 gt = _mm512_mask_cmp_ps_mask(keep, key, bk, _CMP_GT_OQ);
    bk = _mm512_mask_mov_ps(bk, gt, key);
    bi = _mm512_mask_mov_epi32(bi, gt, gi);
  }
  // Folds the 16 lane winners into w.
  void fold(RaceWin& w) const {
    alignas(64) float kv[16];
    alignas(64) int32_t iv[16];
    _mm512_store_ps(kv, bk);
    _mm512_store_si512(iv, bi);
    for (int l = 0; l < 16; ++l)
      if (iv[l] >= 0) w.take(kv[l], iv[l]);
  }
};
#endif

}  // namespace cpu
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec
