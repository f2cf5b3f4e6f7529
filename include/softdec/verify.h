// Speculative verification: acceptance rules, RNG layout and the soft-token
// distance shared by the CPU and CUDA backends. Header-only, no torch headers.
//
// ---------------------------------------------------------------------------
// Semantics (binding; softdec.verify documents the same):
//
// Target distribution at position j of row b: the filtered, renormalised
// softmax(target_logits[b, j] / T) of include/softdec/filter.h (top-k, top-p,
// min-p; T = 0 is the one-hot argmax). Row b verifies positions
// 0 .. num_draft[b]-1 in order, stops at the first rejection and emits one
// token there (the correction), or after num_draft[b] acceptances emits the
// bonus token drawn from the target at position num_draft[b].
//
// RNG layout (Philox, per row (seed, offset); never shared between uses):
//   acceptance uniform of position j  = element j of the (seed, offset) stream
//   residual / bonus draw at position j = exponential race
//       argmax_i r_i / E_i,  E_i = -flog(u_i),  u_i = element i (the vocab id)
//       of the (seed, offset + 1 + j) stream
// A call therefore reads streams offset .. offset + K + 1: advance offset by
// K + 2 per call. Ties of the race go to the lower index; a race in which no
// r_i > 0 falls back to the target p itself (only reachable through rounding).
//
// Methods: kExact (accept iff u * q(x) < p(x)), kGreedy (accept iff x is the
// argmax), kTypical (Medusa: accept iff p(x) > min(eps, alpha * exp(-H(p)))),
// kRelaxed (LANTERN: accept iff u * q(x) < p(x) + p(A(x)), A(x) = the longest
// prefix of neighbours[x] -- skipping -1, x and repeats -- with mass <= delta;
// the residual drops A(x)), kSoft (accept iff TV(target soft token, draft soft
// token) <= delta).
#pragma once

#include <cstdint>

#include "softdec/filter.h"
#include "softdec/macros.h"
#include "softdec/philox.h"

namespace softdec {
namespace verify {

enum Method : int32_t { kExact = 0, kGreedy = 1, kTypical = 2, kRelaxed = 3, kSoft = 4 };
enum DraftKind : int32_t { kOneHot = 0, kDense = 1, kSparse = 2 };

// Stream of the acceptance uniforms and of the draw at position j.
SOFTDEC_HD uint64_t accept_stream(uint64_t offset) { return offset; }
SOFTDEC_HD uint64_t draw_stream(uint64_t offset, int64_t j) {
  return offset + 1 + static_cast<uint64_t>(j);
}

// Acceptance uniform of position j, strictly inside (0, 1).
SOFTDEC_HD float accept_uniform(uint64_t seed, uint64_t offset, int64_t j) {
  return philox::uniform(seed, accept_stream(offset), static_cast<uint64_t>(j));
}

// Race key of residual mass r with uniform u: r / E, E = -log u > 0.
SOFTDEC_HD float race_key(float r, float u) { return r / -filter::flog(u); }

// (key, index) ordering of the race: larger key wins, lower index on ties.
SOFTDEC_HD bool race_better(float ka, int64_t ia, float kb, int64_t ib) {
  return ka > kb || (ka == kb && ia < ib && ia >= 0);
}

// Exact rejection sampling: accept with probability min(1, p / q).
SOFTDEC_HD bool accept_exact(float u, float p, float q) { return u * q < p; }

// Medusa's typical acceptance; entropy is H of the filtered target.
SOFTDEC_HD bool accept_typical(float p, double entropy, float threshold, float alpha) {
  double t = static_cast<double>(alpha) * exp(-entropy);
  if (static_cast<double>(threshold) < t) t = threshold;
  return static_cast<double>(p) > t;
}

// Total-variation distance between two sparse distributions given as
// (ids, weights) lists of lengths na and nb (repeated ids add up). O(na * nb).
SOFTDEC_HD double soft_tv(const int64_t* ia, const float* wa, int64_t na, const int64_t* ib,
                          const float* wb, int64_t nb) {
  double tv = 0.0;
  for (int64_t s = 0; s < na; ++s) {
    bool first = true;
    for (int64_t t = 0; t < s; ++t)
      if (ia[t] == ia[s]) first = false;
    if (!first) continue;
    double a = 0.0, b = 0.0;
    for (int64_t t = s; t < na; ++t)
      if (ia[t] == ia[s]) a += wa[t];
    for (int64_t t = 0; t < nb; ++t)
      if (ib[t] == ia[s]) b += wb[t];
    tv += a > b ? a - b : b - a;
  }
  for (int64_t s = 0; s < nb; ++s) {
    bool skip = false;
    for (int64_t t = 0; t < s && !skip; ++t)
      if (ib[t] == ib[s]) skip = true;
    for (int64_t t = 0; t < na && !skip; ++t)
      if (ia[t] == ib[s]) skip = true;
    if (skip) continue;
    double b = 0.0;
    for (int64_t t = s; t < nb; ++t)
      if (ib[t] == ib[s]) b += wb[t];
    tv += b;
  }
  return 0.5 * tv;
}

// Insert candidate (x, i) into a list sorted in the filter order (value
// descending, lower index first), capped at cap entries. Returns the new size.
SOFTDEC_HD int64_t topk_insert(float* vals, int64_t* idx, int64_t size, int64_t cap, float x,
                               int64_t i) {
  if (size == cap && !filter::before(x, i, vals[size - 1], idx[size - 1])) return size;
  int64_t pos = size < cap ? size : cap - 1;
  while (pos > 0 && filter::before(x, i, vals[pos - 1], idx[pos - 1])) {
    vals[pos] = vals[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  vals[pos] = x;
  idx[pos] = i;
  return size < cap ? size + 1 : size;
}

}  // namespace verify
}  // namespace softdec
