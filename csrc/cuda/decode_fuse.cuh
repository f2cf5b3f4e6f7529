// Pure logic of the fused sparse decode (sparse_attention.cu), host- and device-callable so that
// tests/cuda_host/decode_fuse.cu checks it without a GPU:
//   - the launch plan: which path a call takes (unfused / split-KV with the merge fused into the
//     attention kernel / one block that selects and attends) and how many kernels it launches;
//   - the "last block done" rule of the split-KV path;
//   - the merge of the split-KV chunk states (log-sum-exp), in a fixed chunk order with explicit
//     fmaf, shared by decode_merge_kernel (unfused path) and the fused kernels so both give the same
//     bits whichever block finishes last.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SOFTDEC_DF_HD __host__ __device__ __forceinline__
#else
#define SOFTDEC_DF_HD inline
#endif

namespace softdec {
namespace decode_fuse {

// Decode paths (page summaries, when built in the call, come first on every path).
//   kUnfused:     scoring (page_bound_kernel, or token_score_kernel -> vote_kernel) -> select_kernel
//                 -> decode_attn_kernel (split-KV) -> decode_merge_kernel
//   kFusedMerge:  score_select_kernel (the last scoring block of each (row, kv head) votes and selects)
//                 -> decode_attn_kernel<fused> (the last chunk block of each (row, kv head) merges)
//   kSingleBlock: score_select_kernel<attend> (M <= chunk: the last scoring block of each (row, kv head)
//                 votes, selects and attends to the one chunk; the merge is its own state)
enum class Path : int { kUnfused = 0, kFusedMerge = 1, kSingleBlock = 2 };

// Chunks of `chunk` selected tokens for at most M selected tokens (at least one: an empty row still
// writes its zero output through the merge).
SOFTDEC_DF_HD int64_t num_chunks(int64_t M, int64_t chunk) { return M <= chunk ? 1 : (M + chunk - 1) / chunk; }

// The path of a call: `fused` false (SOFTDEC_DECODE_FUSED=0) keeps the unfused kernels.
SOFTDEC_DF_HD Path choose_path(int64_t M, int64_t chunk, bool fused) {
  if (!fused) return Path::kUnfused;
  return M <= chunk ? Path::kSingleBlock : Path::kFusedMerge;
}

// Kernel launches of one call (one batch slice of at most 65535 rows; +1 in page mode when the page
// summaries are computed in the call). Unfused: scoring (page mode 1, token mode 2: scores + votes)
// + select + attention + merge. Fused: 2 (score+select, attention+merge) or 1 (score+select+attend).
SOFTDEC_DF_HD int launches(Path p, bool page_mode, bool summaries_in_call) {
  const int summaries = page_mode && summaries_in_call ? 1 : 0;
  switch (p) {
    case Path::kUnfused: return summaries + (page_mode ? 1 : 2) + 3;
    case Path::kFusedMerge: return summaries + 2;
    case Path::kSingleBlock: return summaries + 1;
  }
  return -1;
}

// Whether a fused call needs its arrival counters zeroed first (one cudaMemsetAsync, not a kernel):
// score_select_kernel counts its blocks when there are more than one per (row, kv head) (`score_blocks`),
// decode_attn_kernel<fused> always counts its chunk blocks. The one-block path on a small cache (one
// scoring block) needs none: a single launch and nothing else.
SOFTDEC_DF_HD bool counters_needed(Path p, int score_blocks) {
  if (p == Path::kUnfused) return false;
  return p == Path::kFusedMerge || score_blocks > 1;
}

// "Last block done": every chunk block of a (row, kv head) writes its state, fences, and adds 1 to the
// (row, kv head) counter (zeroed before the kernel); the block that reads chunks - 1 before its
// increment arrived last, so all other states are visible to it, and it resets the counter to 0.
// Exactly one block per (row, kv head) sees this, whatever the arrival order.
SOFTDEC_DF_HD bool arrived_last(int before_increment, int chunks) { return before_increment == chunks - 1; }

// Merge of the chunk states of one query head. Chunk c's state sits at base + c * cs: [m, l, acc[0:d]]
// (m the chunk's max score, -inf when empty; l = sum exp(s - m); acc = sum exp(s - m) v). `load(p)`
// reads one float (device: __ldcg, L2-coherent, since the states were written by other blocks).
// The chunks are combined in index order with explicit fmaf: fixed arithmetic, the same bits in every
// kernel that calls it.
struct MergeStats {
  float m;    // max over chunks of m (NaN states ignored here, reported by nan)
  float inv;  // 1 / sum_c exp(m_c - m) l_c, or 0 when that sum is 0
  bool nan;   // some chunk state is NaN: the head's output is NaN
};

// The loops go over the chunks in groups of kMergeUnroll: the group's loads are issued first (they are
// independent, so they are in flight together: the merge is bound by L2 latency, not by the FMAs), then
// applied one chunk after the other, in chunk order -- the arithmetic of the plain sequential loop.
constexpr int kMergeUnroll = 4;

// Issues the loads of chunks c0 .. c0 + kMergeUnroll - 1 together: each chunk's m and the float at offset
// `off` of its state (1: l; 2 + i: output element i); chunks past `chunks` read as empty (m = -inf, x = 0).
template <typename Load>
SOFTDEC_DF_HD void load_group(const float* base, int64_t cs, int chunks, int c0, int64_t off, Load load,
                              float (&mc)[kMergeUnroll], float (&xc)[kMergeUnroll]) {
#pragma unroll
  for (int u = 0; u < kMergeUnroll; ++u) {
    const bool in = c0 + u < chunks;
    mc[u] = in ? load(base + (c0 + u) * cs) : -INFINITY;
    xc[u] = in ? load(base + (c0 + u) * cs + off) : 0.f;
  }
}

template <typename Load>
SOFTDEC_DF_HD MergeStats merge_stats(const float* base, int64_t cs, int chunks, Load load) {
  const float neg_inf = -INFINITY;
  float m = neg_inf;
  bool nan = false;
  for (int c0 = 0; c0 < chunks; c0 += kMergeUnroll) {
    float mc[kMergeUnroll], lc[kMergeUnroll];
    load_group(base, cs, chunks, c0, 1, load, mc, lc);
#pragma unroll
    for (int u = 0; u < kMergeUnroll; ++u) {
      m = fmaxf(m, mc[u]);
      nan |= mc[u] != mc[u] || lc[u] != lc[u];
    }
  }
  float l = 0.f;
  if (m != neg_inf)
    for (int c0 = 0; c0 < chunks; c0 += kMergeUnroll) {
      float mc[kMergeUnroll], lc[kMergeUnroll];
      load_group(base, cs, chunks, c0, 1, load, mc, lc);  // beyond chunks: skipped like an empty chunk
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u)
        if (mc[u] != neg_inf) l = fmaf(expf(mc[u] - m), lc[u], l);
    }
  return MergeStats{m, l > 0.f ? 1.f / l : 0.f, nan};
}

// Output element i of the head (fp32, before the cast to the output dtype).
template <typename Load>
SOFTDEC_DF_HD float merge_elem(const float* base, int64_t cs, int chunks, const MergeStats& s, int i, Load load) {
  const float neg_inf = -INFINITY;
  if (s.nan) return NAN;
  float acc = 0.f;
  if (s.m != neg_inf)
    for (int c0 = 0; c0 < chunks; c0 += kMergeUnroll) {
      float mc[kMergeUnroll], vc[kMergeUnroll];
      load_group(base, cs, chunks, c0, 2 + i, load, mc, vc);
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u)
        if (mc[u] != neg_inf) acc = fmaf(expf(mc[u] - s.m), vc[u], acc);
    }
  return acc * s.inv;
}

}  // namespace decode_fuse
}  // namespace softdec

#undef SOFTDEC_DF_HD
