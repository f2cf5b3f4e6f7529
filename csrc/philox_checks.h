// Input checks of the Philox stream ops (philox_uniform, philox_normal), shared by
// the CPU and CUDA entry points.
#pragma once

#include "common.h"

namespace softdec {
namespace philox_checks {

// The per-row stream keys of `op` (its name starts the size message): seed (rows,)
// int64 and contiguous, offset (rows,) int64 beside it, n >= 0, and rows x n at most
// 2^60 elements (the float32 output's size in bytes, times two, fits in int64).
// Returns rows.
inline int64_t check_stream_args(const Tensor& seed, const Tensor& offset, int64_t n, const char* op) {
  check_dim(seed, "seed", 1, "(rows,)");
  check_dtype(seed, "seed", ScalarType::Long);
  check_per_row(offset, "offset", seed.size(0), ScalarType::Long, seed, "seed");
  SOFTDEC_CHECK(n >= 0, "n must be non-negative, got ", n);
  SOFTDEC_CHECK(seed.numel() <= 1 || seed.stride(0) == 1, "seed must be contiguous");
  const int64_t rows = seed.size(0);
  int64_t total = 0;
  SOFTDEC_CHECK(checked_mul(rows, n, &total) && total <= (kSizeMax >> 3), op, ": shape (", rows, ", ", n,
                ") has too many elements (at most 2^60 in all)");
  return rows;
}

}  // namespace philox_checks
}  // namespace softdec
