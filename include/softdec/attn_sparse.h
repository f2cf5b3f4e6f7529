// Token-sparse attention: selection rules shared by the CPU and CUDA backends.
// No torch headers. Every function is a pure function of sizes and scores.
//
// Decode selection, per (row b, KV head g), with L = seq_lens[b]:
//   sink   tokens [0, sink_end)            sink_end  = min(sink, L)
//   window tokens [win_start, L)           win_start = max(sink_end, L - window)
//   middle tokens [sink_end, win_start)    candidates for the budget
// select="token": the `budget` middle tokens with the largest votes.
// select="token": votes = sum over the KV head's query group of each head's
//   softmax(scale q.k) over the L valid tokens (TokenSelect soft voting).
// select="page" : pages are aligned blocks [p*ps, (p+1)*ps); a page is a
//   candidate when it overlaps the middle; its score for a KV head is the MAX
//   over the group's query heads of the Quest bound sum_i max(q_i kmin_i,
//   q_i kmax_i) (scaled q); the ceil(budget/ps) candidate pages with the
//   largest scores are selected and contribute their middle tokens.
// Ranking ties: the larger score first, then the lower index (page or token).
// NaN scores rank as -inf. budget >= L selects every middle token (dense).
#pragma once

#include "softdec/macros.h"
#include "softdec/sizes.h"

namespace softdec {
namespace attn {

struct Region {
  int64_t len;        // valid tokens L
  int64_t sink_end;   // end of the sink tokens
  int64_t win_start;  // start of the window tokens
};

SOFTDEC_HD Region decode_region(int64_t len, int64_t sink, int64_t window) {
  Region r;
  r.len = len;
  r.sink_end = sink < len ? sink : len;
  int64_t ws = len - window;
  r.win_start = ws < r.sink_end ? r.sink_end : ws;
  return r;
}

// ceil(a / b), a >= 0, b > 0; no overflow for huge a (budget up to INT64_MAX).
SOFTDEC_HD int64_t ceil_div(int64_t a, int64_t b) { return sat_ceil_div(a, b); }

// Pages a page-mode selection keeps for a token budget.
SOFTDEC_HD int64_t pages_for_budget(int64_t budget, int64_t page_size) {
  return ceil_div(budget, page_size);
}

// Upper bound on the number of selected tokens per (row, KV head): the width
// of the `indices` output.
SOFTDEC_HD int64_t max_selected(int64_t n, int64_t budget, bool page_mode, int64_t page_size,
                                int64_t sink, int64_t window) {
  // saturating: sink, window and budget may each be up to INT64_MAX
  const int64_t mid = page_mode ? sat_mul(pages_for_budget(budget, page_size), page_size) : budget;
  const int64_t m = sat_add(sat_add(sink, window), mid);
  return m < n ? m : n;
}

// Candidate pages: [first, last) (empty when the middle is empty).
SOFTDEC_HD void candidate_pages(const Region& r, int64_t page_size, int64_t* first, int64_t* last) {
  if (r.sink_end >= r.win_start) {
    *first = *last = 0;
    return;
  }
  *first = r.sink_end / page_size;
  *last = (r.win_start - 1) / page_size + 1;
}

// Middle tokens of page p: [lo, hi).
SOFTDEC_HD void page_middle(const Region& r, int64_t page_size, int64_t p, int64_t* lo, int64_t* hi) {
  int64_t a = p * page_size, b = sat_add(a, page_size);
  *lo = a < r.sink_end ? r.sink_end : a;
  *hi = b > r.win_start ? r.win_start : b;
}

// One channel of the Quest bound: max over the page's keys of q_i * k_i.
SOFTDEC_HD float page_bound_term(float q, float kmin, float kmax) {
  const float a = q * kmin, b = q * kmax;
  return a > b ? a : b;
}

// Strict total order of candidates: larger score first, then lower index.
SOFTDEC_HD bool ranks_before(float sa, int64_t ia, float sb, int64_t ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Prefill drop rule (token_sparse_prefill), per head with L tokens, w =
// min(window, L) scoring queries (the last w tokens, always kept), and scores
// summing to `total`: drop the longest prefix of the non-window tokens in
// ascending (score, index) order whose cumulative score is <= coverage *
// total, never keeping fewer than min(min_tokens, L) tokens. coverage == 0
// keeps every token.
SOFTDEC_HD int64_t max_drop(int64_t len, int64_t w, int64_t min_tokens) {
  int64_t keep = min_tokens > w ? min_tokens : w;
  if (keep > len) keep = len;
  return len - keep;
}

}  // namespace attn
}  // namespace softdec
