// Input checks of softdec.distributed's shard ops for the CUDA entry points
// (csrc/cuda/distributed.cu) and the CPU ones (csrc/cpu/distributed.cpp shares
// check_shard_args, check_cut_args and check_position_args). Shapes, dtypes, devices and the shard's extent are checked;
// per-row *values* (temperature in (0, inf)) only on CPU: the CUDA path leaves
// them to the Python wrapper (python/softdec/distributed.py passes the rows of
// positive, finite temperature only), as sampling_checks.h does, since reading
// them would synchronise the stream.
#pragma once

#include "common.h"

namespace softdec {
namespace distributed_checks {

constexpr int64_t kHead = 8;  // header columns of a row of partials (python/softdec/distributed.py _HEAD)

// A shard's logits (rows, vocab_local), float, last dimension contiguous, at offset >= 0.
inline void check_local_logits(const Tensor& logits, int64_t offset) {
  check_dim(logits, "logits", 2, "(rows, vocab_local)");
  check_float(logits, "logits");
  check_last_contiguous(logits, "logits");
  SOFTDEC_CHECK(offset >= 0, "offset must be >= 0, got ", offset);
}

// logits (rows, vocab_local) of the shard [offset, offset + vocab_local) of a
// vocab_size row, and its per-row max_logit / temperature / min_p (float32).
inline void check_shard_args(const Tensor& logits, int64_t offset, int64_t V, const Tensor& m, const Tensor& t,
                             const Tensor& mp) {
  check_dim(logits, "logits", 2, "(rows, vocab_local)");
  check_float(logits, "logits");
  check_last_contiguous(logits, "logits");
  const int64_t R = logits.size(0), n = logits.size(1);
  SOFTDEC_CHECK(offset >= 0 && V >= 1 && offset + n <= V, "the shard [offset, offset + vocab_local) = [", offset,
                ", ", offset + n, ") must lie in [0, vocab_size = ", V, ")");
  check_per_row(m, "max_logit", R, ScalarType::Float, logits, "logits");
  check_per_row(t, "temperature", R, ScalarType::Float, logits, "logits");
  check_per_row(mp, "min_p", R, ScalarType::Float, logits, "logits");
}

inline void check_pick_args(const Tensor& logits, const Tensor& block, const Tensor& target) {
  const int64_t R = logits.size(0);
  check_per_row(block, "block", R, ScalarType::Long, logits, "logits");
  check_per_row(target, "target", R, ScalarType::Double, logits, "logits");
}

inline void check_draw_target_args(const Tensor& blk, const Tensor& seed, const Tensor& offset) {
  check_dim(blk, "blk", 2, "(rows, blocks)");
  check_dtype(blk, "blk", ScalarType::Double);
  check_contiguous(blk, "blk");
  const int64_t R = blk.size(0);
  check_per_row(seed, "seed", R, ScalarType::Long, blk, "blk");
  check_per_row(offset, "offset", R, ScalarType::Long, blk, "blk");
}

inline void check_partials_args(const Tensor& logits, int64_t offset, int64_t c) {
  check_local_logits(logits, offset);
  SOFTDEC_CHECK(c >= 0, "c must be >= 0, got ", c);
}

inline void check_merge_args(const Tensor& g, int64_t c) {
  check_dim(g, "g", 3, "(world, rows, 8 + 2c)");
  check_dtype(g, "g", ScalarType::Double);
  check_contiguous(g, "g");
  SOFTDEC_CHECK(c >= 0 && g.size(2) == kHead + 2 * c, "g must have 8 + 2c = ", kHead + 2 * c, " columns, got ",
                g.size(2));
}

// The per-row cut (cut_value float32, cut_index int64) of a top-p / large-k row.
inline void check_cut_args(const Tensor& logits, const Tensor& cv, const Tensor& ci) {
  const int64_t R = logits.size(0);
  check_per_row(cv, "cut_value", R, ScalarType::Float, logits, "logits");
  check_per_row(ci, "cut_index", R, ScalarType::Long, logits, "logits");
}

// shard_radix_hist's prefix (int64 per row) and shift.
inline void check_hist_args(const Tensor& logits, const Tensor& prefix, int64_t shift) {
  check_per_row(prefix, "prefix", logits.size(0), ScalarType::Long, logits, "logits");
  SOFTDEC_CHECK(shift == 0 || shift == 8 || shift == 16 || shift == 24, "shift must be 0, 8, 16 or 24, got ",
                shift);
}

// shard_nth_tie's logits, value, cut and n.
inline void check_tie_args(const Tensor& logits, int64_t offset, const Tensor& value, const Tensor& cv,
                           const Tensor& ci, const Tensor& nth) {
  check_local_logits(logits, offset);
  const int64_t R = logits.size(0);
  check_per_row(value, "value", R, ScalarType::Float, logits, "logits");
  check_cut_args(logits, cv, ci);
  check_per_row(nth, "n", R, ScalarType::Long, logits, "logits");
}

// A position's filter on a shard (shard_kept_mass, shard_verify_race): shapes and dtypes
// (the CPU op also checks the temperatures' values).
inline void check_position_args(const Tensor& logits, int64_t offset, const Tensor& m, const Tensor& t,
                                const Tensor& mp, const Tensor& cv, const Tensor& ci) {
  check_local_logits(logits, offset);
  const int64_t R = logits.size(0);
  check_per_row(m, "max_logit", R, ScalarType::Float, logits, "logits");
  check_per_row(t, "temperature", R, ScalarType::Float, logits, "logits");
  check_per_row(mp, "min_p", R, ScalarType::Float, logits, "logits");
  check_cut_args(logits, cv, ci);
}

inline void check_kept_mass_args(const Tensor& logits, const Tensor& want) {
  const int64_t R = logits.size(0);
  check_per_row(want, "want", R, ScalarType::Long, logits, "logits");
}

inline void check_race_args(const Tensor& logits, const Tensor& inv_z, const Tensor& seed, const Tensor& stream,
                            const Tensor& skip) {
  const int64_t R = logits.size(0);
  check_per_row(inv_z, "inv_z", R, ScalarType::Float, logits, "logits");
  check_per_row(seed, "seed", R, ScalarType::Long, logits, "logits");
  check_per_row(stream, "stream", R, ScalarType::Long, logits, "logits");
  check_per_row(skip, "skip", R, ScalarType::Long, logits, "logits");
}

}  // namespace distributed_checks
}  // namespace softdec
