// Header-only math of the soft-token log-densities (softdec.gumbel_log_density,
// dirichlet_log_density, gaussian_log_density), shared by the CPU and CUDA
// kernels. No torch headers; never throws.
//
// Notation, per row: the kept entries i < n of (ids, y / weights); l_i the
// logit of ids[i] divided by the row's temperature T; the renormalised policy
// weights pi_i = exp(l_i - L), L = logsumexp_{j < n} l_j. The row normaliser
// over the whole vocabulary cancels in pi (pi = softmax(logits / T)[ids],
// renormalised over the kept set), so only the n kept logits are read.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace softdec {
namespace logdens {

// Reductions of the per-entry values (the op's `reduction` argument).
enum Reduction : int64_t { kNone = 0, kSum = 1, kMean = 2 };

SOFTDEC_HD float ld_exp(float x) { return expf(x); }
SOFTDEC_HD double ld_exp(double x) { return exp(x); }
SOFTDEC_HD float ld_log(float x) { return logf(x); }
SOFTDEC_HD double ld_log(double x) { return log(x); }

// log(2 pi) / 2.
constexpr double kHalfLog2Pi = 0.91893853320467274178;

// digamma(x) for x > 0: shift to x >= 6 with psi(x) = psi(x + 1) - 1 / x, then
// the asymptotic series (error < 1e-12 there). float64 throughout.
SOFTDEC_HD double digamma(double x) {
  double acc = 0.0;
  while (x < 6.0) {
    acc -= 1.0 / x;
    x += 1.0;
  }
  const double r = 1.0 / x, r2 = r * r;
  return acc + log(x) - 0.5 * r -
         r2 * (1.0 / 12 - r2 * (1.0 / 120 - r2 * (1.0 / 252 - r2 * (1.0 / 240 - r2 * (1.0 / 132)))));
}

// Whether an entry with log(pi + eps) = lq counts in the sum / mean: above
// min_log_weight (SofT-GRPO's trainer keeps log(pi + 1e-6) > -3); every entry
// when min_log_weight is -inf (NaN propagates: counted).
template <typename acc_t>
SOFTDEC_HD bool counted(acc_t lq, acc_t min_log_weight) {
  return min_log_weight == -INFINITY || lq > min_log_weight || lq != lq;
}

// One Gumbel entry: z = clamp((y - log(pi + eps)) / s, lo, hi),
// value = -log s - z - exp(-z). `log_pi` is log pi_i (pi before eps).
// Returns the value; *dv_dq = d value / d log(pi + eps) (0 where the clamp is
// active), *dv_dy = d value / d y, *log_q = log(pi + eps).
template <typename acc_t>
SOFTDEC_HD acc_t gumbel_entry(acc_t y, acc_t log_pi, acc_t inv_s, acc_t log_s, acc_t lo, acc_t hi, acc_t eps,
                              acc_t* log_q, acc_t* dv_dy, acc_t* dv_dq) {
  const acc_t lq = eps > acc_t(0) ? ld_log(ld_exp(log_pi) + eps) : log_pi;
  acc_t z = (y - lq) * inv_s;
  // torch.clamp's gradient: 1 on [lo, hi] (bounds included), 0 outside
  const bool inside = !(z < lo) && !(z > hi);
  z = z < lo ? lo : (z > hi ? hi : z);  // NaN stays NaN
  const acc_t ez = ld_exp(-z);
  const acc_t dv_dz = inside ? (ez - acc_t(1)) : acc_t(0);
  *log_q = lq;
  *dv_dy = dv_dz * inv_s;
  *dv_dq = -dv_dz * inv_s;
  return -log_s - z - ez;
}

}  // namespace logdens
}  // namespace softdec
