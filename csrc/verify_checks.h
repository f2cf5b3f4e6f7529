// Input checks of the verify op, shared by the CPU and CUDA entry points (the
// only layer that touches torch tensors). Per-row *values* (num_draft, draft
// ids, temperature, ...) are read only on CPU; the CUDA path leaves them to the
// Python wrapper (reading them would synchronise the stream).
#pragma once

#include <optional>

#include "common.h"
#include "draft_checks.h"
#include "softdec/verify.h"

namespace softdec {
namespace verify_checks {

// Shapes and kinds that the checks establish; each backend packs its own
// kernel Params from them (see pack_params).
struct VerifyArgs {
  int64_t B = 0, K1 = 0, K = 0, V = 0;
  int32_t method = 0, kind = 0;
  int64_t ks = 0;    // sparse draft width (kSparse), else 0
  int64_t nb_m = 0;  // neighbours width (kRelaxed), else 0
};

// Checks every tensor argument of verify (dims, dtypes, shapes, contiguity,
// devices, which draft form and method combination is given).
inline VerifyArgs check_verify_args(const Tensor& target_logits, const Tensor& draft_ids,
                                    const Tensor& num_draft, const std::optional<Tensor>& draft_probs,
                                    const std::optional<Tensor>& sparse_ids,
                                    const std::optional<Tensor>& sparse_weights,
                                    const std::optional<Tensor>& neighbours, int64_t method,
                                    const Tensor& temperature, const Tensor& top_k, const Tensor& top_p,
                                    const Tensor& min_p, const Tensor& seed, const Tensor& offset,
                                    const std::optional<Tensor>& filter_top_k = std::nullopt) {
  VerifyArgs a;
  check_dim(target_logits, "target_logits", 3, "(batch, K+1, vocab)");
  check_float(target_logits, "target_logits");
  check_last_contiguous(target_logits, "target_logits");
  const int64_t B = target_logits.size(0), K1 = target_logits.size(1), V = target_logits.size(2);
  SOFTDEC_CHECK(K1 >= 1, "target_logits must have K+1 >= 1 positions, got shape ", shape_str(target_logits));
  SOFTDEC_CHECK(V >= 1 && V < (int64_t(1) << 31), "target_logits must have a vocabulary in [1, 2^31), got ", V);
  const int64_t K = K1 - 1;
  SOFTDEC_CHECK(method >= 0 && method <= 4, "method must be in [0, 4], got ", method);
  check_dim(draft_ids, "draft_ids", 2, "(batch, K)");
  check_dtype(draft_ids, "draft_ids", ScalarType::Long);
  SOFTDEC_CHECK(draft_ids.size(0) == B && draft_ids.size(1) == K, "draft_ids must have shape (", B, ", ", K,
                ") to match target_logits ", shape_str(target_logits), ", got ", shape_str(draft_ids));
  check_contiguous(draft_ids, "draft_ids");
  // (Always true in the CPU kernel: the dispatcher sends mixed CPU/CUDA inputs to CUDA.)
  check_same_device(target_logits, "target_logits", draft_ids, "draft_ids");
  check_per_row(num_draft, "num_draft", B, ScalarType::Long, target_logits, "target_logits");
  check_per_row(temperature, "temperature", B, ScalarType::Float, target_logits, "target_logits");
  check_per_row(top_k, "top_k", B, ScalarType::Long, target_logits, "target_logits");
  check_per_row(top_p, "top_p", B, ScalarType::Float, target_logits, "target_logits");
  check_per_row(min_p, "min_p", B, ScalarType::Float, target_logits, "target_logits");
  check_per_row(seed, "seed", B, ScalarType::Long, target_logits, "target_logits");
  check_per_row(offset, "offset", B, ScalarType::Long, target_logits, "target_logits");
  a.B = B;
  a.K1 = K1;
  a.K = K;
  a.V = V;
  a.method = static_cast<int32_t>(method);
  draft_checks::check_draft_probs(target_logits, draft_probs, sparse_ids, sparse_weights, B, K, V, "K",
                                  a.method, a.kind, a.ks);
  if (filter_top_k.has_value()) {
    SOFTDEC_CHECK(a.method == verify::kSoft, "filter_top_k is only defined for method 'soft' (got method ",
                  method, "); pass None");
    check_per_row(*filter_top_k, "filter_top_k", B, ScalarType::Long, target_logits, "target_logits");
  }
  if (a.method == verify::kRelaxed) {
    SOFTDEC_CHECK(neighbours.has_value(), "method 'relaxed' needs neighbours, a (vocab, m) int64 tensor");
    const Tensor& nb = *neighbours;
    check_dim(nb, "neighbours", 2, "(vocab, m)");
    check_dtype(nb, "neighbours", ScalarType::Long);
    SOFTDEC_CHECK(nb.size(0) == V, "neighbours must have one row per vocabulary entry (", V, "), got shape ",
                  shape_str(nb));
    check_contiguous(nb, "neighbours");
    check_same_device(target_logits, "target_logits", nb, "neighbours");
    a.nb_m = nb.size(1);
  }
  return a;
}

// Packs the fields common to both backends' kernel Params (the structs differ:
// CPU has `split`, CUDA has `excl_cap` and the vectorisation flags).
template <typename ParamsT>
inline void pack_params(ParamsT& P, const VerifyArgs& a, double posterior_threshold, double posterior_alpha,
                        double delta) {
  P.method = a.method;
  P.kind = a.kind;
  P.V = a.V;
  P.K = a.K;
  P.ks = a.ks;
  P.nb_m = a.nb_m;
  P.post_thr = static_cast<float>(posterior_threshold);
  P.post_alpha = static_cast<float>(posterior_alpha);
  P.delta = static_cast<float>(delta);
}

}  // namespace verify_checks
}  // namespace softdec
