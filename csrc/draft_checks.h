// The draft-distribution checks shared by verify (csrc/verify_checks.h, axis
// "K": one draft token per position) and verify_tree (csrc/verify_tree_checks.h,
// axis "nodes"): dense draft_probs (batch, n, vocab) or sparse draft ids /
// weights (batch, n, k), never both; method 'soft' needs the sparse form.
#pragma once

#include <cmath>
#include <optional>
#include <string>

#include "common.h"
#include "softdec/verify.h"

namespace softdec {
namespace draft_checks {

// The per-row sampling settings of a verification on host memory (the CPU kernels;
// the Python wrapper checks them first, with the same messages): temperature finite
// and >= 0, top_k >= 0, top_p and min_p in [0, 1], rows [0, B).
inline void check_row_settings(const float* temperature, const int64_t* top_k, const float* top_p,
                               const float* min_p, int64_t B) {
  for (int64_t b = 0; b < B; ++b) {
    SOFTDEC_CHECK(temperature[b] >= 0.0f && std::isfinite(temperature[b]),
                  "temperature must be finite and >= 0, got ", temperature[b], " at row ", b);
    SOFTDEC_CHECK(top_k[b] >= 0, "top_k must be >= 0, got ", top_k[b], " at row ", b);
    SOFTDEC_CHECK(top_p[b] >= 0.0f && top_p[b] <= 1.0f, "top_p must be in [0, 1], got ", top_p[b], " at row ", b);
    SOFTDEC_CHECK(min_p[b] >= 0.0f && min_p[b] <= 1.0f, "min_p must be in [0, 1], got ", min_p[b], " at row ", b);
  }
}

// Sets kind (verify::kDense / kSparse / kOneHot) and, for kSparse, ks (the
// sparse width). n: the size of the draft axis, named `axis` in the messages.
inline void check_draft_probs(const Tensor& target_logits, const std::optional<Tensor>& draft_probs,
                              const std::optional<Tensor>& sparse_ids, const std::optional<Tensor>& sparse_weights,
                              int64_t B, int64_t n, int64_t V, const char* axis, int32_t method, int32_t& kind,
                              int64_t& ks) {
  SOFTDEC_CHECK(sparse_ids.has_value() == sparse_weights.has_value(),
                "sparse draft ids and weights must be given together");
  SOFTDEC_CHECK(!(draft_probs.has_value() && sparse_ids.has_value()),
                "give either dense draft_probs or sparse draft ids/weights, not both");
  kind = draft_probs.has_value() ? verify::kDense : (sparse_ids.has_value() ? verify::kSparse : verify::kOneHot);
  if (kind == verify::kDense) {
    const Tensor& d = *draft_probs;
    check_dim(d, "draft_probs", 3, (std::string("(batch, ") + axis + ", vocab)").c_str());
    check_float(d, "draft_probs");
    check_same_device(target_logits, "target_logits", d, "draft_probs");
    SOFTDEC_CHECK(d.size(0) == B && d.size(1) == n && d.size(2) == V, "draft_probs must have shape (", B, ", ", n,
                  ", ", V, ") to match target_logits, got ", shape_str(d));
    check_last_contiguous(d, "draft_probs");
    SOFTDEC_CHECK(d.scalar_type() == target_logits.scalar_type() || d.scalar_type() == ScalarType::Float,
                  "draft_probs must be float32 or the dtype of target_logits (",
                  dtype_name(target_logits.scalar_type()), "), got ", dtype_name(d.scalar_type()));
  }
  if (kind == verify::kSparse) {
    const Tensor& si = *sparse_ids;
    const Tensor& sw = *sparse_weights;
    check_dim(si, "draft_probs ids", 3, (std::string("(batch, ") + axis + ", k)").c_str());
    check_dtype(si, "draft_probs ids", ScalarType::Long);
    check_dtype(sw, "draft_probs weights", ScalarType::Float);
    SOFTDEC_CHECK(si.size(0) == B && si.size(1) == n && si.size(2) >= 1, "draft_probs ids must have shape (", B,
                  ", ", n, ", k >= 1), got ", shape_str(si));
    SOFTDEC_CHECK(sw.dim() == 3 && sw.size(0) == B && sw.size(1) == n && sw.size(2) == si.size(2),
                  "draft_probs weights must have the shape of its ids ", shape_str(si), ", got ", shape_str(sw));
    check_contiguous(si, "draft_probs ids");
    check_contiguous(sw, "draft_probs weights");
    check_same_device(target_logits, "target_logits", si, "draft_probs ids");
    check_same_device(target_logits, "target_logits", sw, "draft_probs weights");
    ks = si.size(2);
  }
  SOFTDEC_CHECK(method != verify::kSoft || kind == verify::kSparse,
                "method 'soft' needs sparse draft ids and weights");
}

}  // namespace draft_checks
}  // namespace softdec
