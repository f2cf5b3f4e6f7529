// Saturating / checked size arithmetic shared by the CPU and CUDA backends.
// No torch headers. Every size computation that multiplies or adds
// user-controlled values (budget, sink, window, top_k, page_size, shapes) goes
// through these, so a huge argument saturates at kSizeMax instead of wrapping.
#pragma once

#include "softdec/macros.h"

namespace softdec {

// Largest size these helpers return: INT64_MAX.
constexpr int64_t kSizeMax = INT64_MAX;

// a + b for a, b >= 0, saturating at kSizeMax.
SOFTDEC_HD int64_t sat_add(int64_t a, int64_t b) {
  return a > kSizeMax - b ? kSizeMax : a + b;
}

// a * b for a, b >= 0, saturating at kSizeMax.
SOFTDEC_HD int64_t sat_mul(int64_t a, int64_t b) {
  if (a == 0 || b == 0) return 0;
  return a > kSizeMax / b ? kSizeMax : a * b;
}

// ceil(a / b) for a >= 0, b > 0, without the overflow of (a + b - 1) / b.
SOFTDEC_HD int64_t sat_ceil_div(int64_t a, int64_t b) {
  return a / b + (a % b != 0 ? 1 : 0);
}

// a * b for a, b >= 0; false (and *out untouched) when it does not fit in int64.
SOFTDEC_HD bool checked_mul(int64_t a, int64_t b, int64_t* out) {
  if (a != 0 && b > kSizeMax / a) return false;
  *out = a * b;
  return true;
}

}  // namespace softdec
