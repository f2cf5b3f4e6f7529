// Input checks of the sampling family (sample, gumbel_softmax,
// gumbel_softmax_topk, top_k_mask_logits, top_p_renorm_probs,
// min_p_renorm_probs), shared by the CPU and CUDA entry points (the only layer
// that touches torch tensors). Per-row *values* (temperature >= 0, tau > 0,
// ...) are read only on CPU; the CUDA path leaves them to the Python wrapper
// (reading them would synchronise the stream).
#pragma once

#include "common.h"

namespace softdec {
namespace sampling_checks {

// logits (batch, vocab) of a float dtype, contiguous in the vocabulary.
inline void check_logits(const Tensor& logits, const char* name) {
  check_dim(logits, name, 2, "(batch, vocab)");
  check_float(logits, name);
  check_last_contiguous(logits, name);
}

// sample: logits and its per-row parameters.
inline void check_sample_args(const Tensor& logits, const Tensor& temperature, const Tensor& top_k,
                              const Tensor& top_p, const Tensor& min_p, const Tensor& seed,
                              const Tensor& offset) {
  check_logits(logits, "logits");
  const int64_t B = logits.size(0), V = logits.size(1);
  check_per_row(temperature, "temperature", B, ScalarType::Float, logits, "logits");
  check_per_row(top_k, "top_k", B, ScalarType::Long, logits, "logits");
  check_per_row(top_p, "top_p", B, ScalarType::Float, logits, "logits");
  check_per_row(min_p, "min_p", B, ScalarType::Float, logits, "logits");
  check_per_row(seed, "seed", B, ScalarType::Long, logits, "logits");
  check_per_row(offset, "offset", B, ScalarType::Long, logits, "logits");
  SOFTDEC_CHECK(V >= 1 || B == 0, "logits must have at least one column (vocab >= 1), got shape ",
                shape_str(logits));
}

// gumbel_softmax / gumbel_softmax_topk: logits, tau, seed, offset.
inline void check_gumbel_args(const Tensor& logits, const Tensor& tau, const Tensor& seed,
                              const Tensor& offset) {
  check_logits(logits, "logits");
  const int64_t B = logits.size(0);
  check_per_row(tau, "tau", B, ScalarType::Float, logits, "logits");
  check_per_row(seed, "seed", B, ScalarType::Long, logits, "logits");
  check_per_row(offset, "offset", B, ScalarType::Long, logits, "logits");
}

// gumbel_softmax_topk: the output width (after check_gumbel_args).
inline void check_gumbel_topk_k(const Tensor& logits, int64_t k) {
  const int64_t B = logits.size(0), V = logits.size(1);
  SOFTDEC_CHECK(k >= 1 && (k <= V || B == 0), "k must be in [1, vocab] = [1, ", V, "], got ", k);
}

// top_k_mask_logits: logits and top_k.
inline void check_top_k_mask_args(const Tensor& logits, const Tensor& top_k) {
  check_logits(logits, "logits");
  check_per_row(top_k, "top_k", logits.size(0), ScalarType::Long, logits, "logits");
}

// top_p_renorm_probs / min_p_renorm_probs: probs and its per-row parameter
// (named pname: "top_p" or "min_p").
inline void check_renorm_args(const Tensor& probs, const Tensor& param, const char* pname) {
  check_logits(probs, "probs");
  check_per_row(param, pname, probs.size(0), ScalarType::Float, probs, "probs");
}

}  // namespace sampling_checks
}  // namespace softdec
