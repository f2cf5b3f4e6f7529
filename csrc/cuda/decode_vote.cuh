// Pure arithmetic of the token-mode soft votes of the sparse decode (sparse_attention.cu), host- and
// device-callable so that tests/cuda_host/decode_vote.cu checks it without a GPU.
//
// votes[t] = sum over the query heads h of the KV head's group of softmax_h(scores)[t]: per head the
// max m_h and the sum l_h = sum_t exp(s_ht - m_h) over the L valid tokens, then one value per token.
// The old vote kernel made three passes over L per head (max, sum, accumulate into the vote row, which
// it also zeroed and re-read G times). Now:
//   - the scoring pass keeps a running (m, l) per head and lane group (softmax_push, the "online
//     softmax" update, in the group's fixed token order; in shared memory), merges the groups of a
//     block in (warp, slot) order (softmax_merge), and writes one partial (m, l) per head and scoring
//     block;
//   - one pass over the candidate tokens then merges a head's partials (a warp per head: lane j takes
//     blocks j, j + 32, ... in order, then the same butterfly) and writes each vote once (vote_value:
//     heads in order, one fmaf each).
// The partition of the tokens (lanes, warps, blocks) depends only on the shape (N, head_dim, G), not on
// the path, so the unfused path (token_score_kernel -> vote_kernel) and the fused one (scoring whose
// last block votes and selects) compute the same bits. l differs from the CPU's sum with the final max
// by rounding only (a few ulp per merge level; tests/cuda_host/decode_vote.cu bounds it), and the vote
// is a function of the score alone (the same m_h, 1 / l_h for every token), so equal scores still give
// equal votes and the documented CPU == CUDA selection tests (exact scores >= 1/4 apart) are unchanged.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SOFTDEC_DV_HD __host__ __device__ __forceinline__
#else
#define SOFTDEC_DV_HD inline
#endif

namespace softdec {
namespace decode_vote {

// A partial softmax state: m the max score seen (-inf: none), l = sum exp(s - m) over the scores seen.
struct SoftStat {
  float m;
  float l;
};

SOFTDEC_DV_HD SoftStat softmax_empty() { return SoftStat{-INFINITY, 0.f}; }

// Scores enter as the CPU's sanitize does: NaN counts as -inf (never selected, no mass).
SOFTDEC_DV_HD float sanitize(float s) { return s != s ? -INFINITY : s; }

// One more score s (already sanitized). A new max rescales the sum once (one expf, as a lower score).
SOFTDEC_DV_HD void softmax_push(SoftStat& a, float s) {
  if (s > a.m) {
    a.l = fmaf(a.l, expf(a.m - s), 1.f);  // a.m = -inf: expf(-inf) = 0, l = 1
    a.m = s;
  } else if (s != -INFINITY) {
    a.l += expf(s - a.m);
  }
}

// a then b (the order is part of the arithmetic: callers fix it).
SOFTDEC_DV_HD SoftStat softmax_merge(SoftStat a, SoftStat b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return softmax_empty();
  const float ea = a.m == -INFINITY ? 0.f : expf(a.m - m);
  const float eb = b.m == -INFINITY ? 0.f : expf(b.m - m);
  return SoftStat{m, fmaf(b.l, eb, a.l * ea)};
}

// What a head contributes to every vote: m and 1 / l, or inv = 0 when the head has no finite score or
// its sum is not a positive number (an +inf score: NaN sum), as the old kernel skipped such heads.
struct HeadNorm {
  float m;
  float inv;
};

SOFTDEC_DV_HD HeadNorm head_norm(SoftStat a) {
  if (a.m == -INFINITY || !(a.l > 0.f)) return HeadNorm{0.f, 0.f};
  return HeadNorm{a.m, 1.f / a.l};
}

// The vote of one token: v = 0, then for h = 0 .. G - 1 (heads with inv > 0) v = fmaf(exp(s_h - m_h),
// inv_h, v). `score(h)` returns head h's sanitized score of the token.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable  // `score` is a host lambda in the host test, a device lambda in the kernels
#endif
template <typename Score>
SOFTDEC_DV_HD float vote_value(const HeadNorm* norm, int G, Score score) {
  float v = 0.f;
  for (int h = 0; h < G; ++h)
    if (norm[h].inv > 0.f) v = fmaf(expf(score(h) - norm[h].m), norm[h].inv, v);
  return v;
}

}  // namespace decode_vote
}  // namespace softdec

#undef SOFTDEC_DV_HD
