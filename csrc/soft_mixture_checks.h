// Input checks of the soft_mixture ops, shared by the CPU and CUDA entry
// points (the only layer that touches torch tensors). Per-row *values*
// (top_k in [1, k], top_p in (0, 1], ...) are read only on CPU; the CUDA path
// leaves them to the Python wrapper (reading them would synchronise the stream).
#pragma once

#include <cmath>
#include <cstdint>
#include <tuple>

#include "common.h"
#include "softdec/soft_mixture.h"

namespace softdec {
namespace soft_mixture_checks {

enum class Backend { kCpu, kCuda };

// Tensor and scalar arguments of soft_mixture (forward). The two backends
// differ in one place: CUDA also limits the vocabulary to < 2^31 columns
// (32-bit indexing).
inline void check_forward_inputs(const Tensor& logits, const Tensor& embedding, const Tensor& temperature,
                                 const Tensor& top_k, const Tensor& top_p, const Tensor& min_p,
                                 const Tensor& seed, const Tensor& offset, int64_t k, int64_t noise,
                                 double tau, double dirichlet_alpha, const Tensor& filter_top_k,
                                 int64_t kc, double gumbel_lo, double gumbel_hi, double gumbel_eps,
                                 double embed_noise_std, Backend backend) {
  check_dim(logits, "logits", 2, "(batch, vocab)");
  check_dim(embedding, "embedding", 2, "(vocab, dim)");
  SOFTDEC_CHECK(is_float_dtype(logits.scalar_type()) || logits.scalar_type() == ScalarType::Double,
                "logits must be float32, bfloat16, float16 or float64, got ",
                dtype_name(logits.scalar_type()));
  SOFTDEC_CHECK(
      is_float_dtype(embedding.scalar_type()) || embedding.scalar_type() == ScalarType::Double,
      "embedding must be float32, bfloat16, float16 or float64, got ",
      dtype_name(embedding.scalar_type()));
  check_same_device(logits, "logits", embedding, "embedding");
  SOFTDEC_CHECK(logits.size(1) >= 1, "logits must have at least one column (vocab), got shape ",
                shape_str(logits));
  SOFTDEC_CHECK(embedding.size(0) == logits.size(1),
                "embedding must have as many rows as logits has columns (", logits.size(1),
                "), got ", embedding.size(0));
  if (backend == Backend::kCuda) {
    SOFTDEC_CHECK(logits.size(1) < INT32_MAX, "logits must have fewer than 2^31 columns, got ",
                  logits.size(1));
  }
  check_last_contiguous(logits, "logits");
  check_last_contiguous(embedding, "embedding");
  const int64_t B = logits.size(0);
  check_per_row(temperature, "temperature", B, ScalarType::Double, logits, "logits");
  check_per_row(top_k, "top_k", B, ScalarType::Long, logits, "logits");
  check_per_row(top_p, "top_p", B, ScalarType::Double, logits, "logits");
  check_per_row(min_p, "min_p", B, ScalarType::Double, logits, "logits");
  check_per_row(seed, "seed", B, ScalarType::Long, logits, "logits");
  check_per_row(offset, "offset", B, ScalarType::Long, logits, "logits");
  SOFTDEC_CHECK(k >= 1 && k <= soft::kMaxTopK, "k (the output width, max top_k) must be in [1, ",
                soft::kMaxTopK, "], got ", k);
  check_per_row(filter_top_k, "filter_top_k", B, ScalarType::Long, logits, "logits");
  SOFTDEC_CHECK(kc >= k && kc <= soft::kMaxTopK, "kc (the candidate width, max(k, filter_top_k)) must be in [k = ",
                k, ", ", soft::kMaxTopK, "], got ", kc);
  SOFTDEC_CHECK(noise >= 0 && noise <= 2, "noise must be 0 (none), 1 (gumbel) or 2 (dirichlet), got ",
                noise);
  SOFTDEC_CHECK(tau > 0 && std::isfinite(tau), "tau must be > 0 and finite, got ", tau);
  SOFTDEC_CHECK(gumbel_lo < gumbel_hi && !std::isnan(gumbel_lo) && !std::isnan(gumbel_hi),
                "gumbel_clamp must be (lo, hi) with lo < hi, got (", gumbel_lo, ", ", gumbel_hi, ")");
  SOFTDEC_CHECK(embed_noise_std >= 0 && std::isfinite(embed_noise_std),
                "embed_noise_std must be >= 0 and finite, got ", embed_noise_std);
  SOFTDEC_CHECK(gumbel_eps >= 0 && std::isfinite(gumbel_eps), "gumbel_eps must be >= 0 and finite, got ",
                gumbel_eps);
  SOFTDEC_CHECK(dirichlet_alpha > 0 && std::isfinite(dirichlet_alpha),
                "dirichlet_alpha must be > 0 and finite, got ", dirichlet_alpha);
}

// (logits, embedding) of soft_mixture_backward; the other tensors come from
// the forward's outputs (internal op, called by the autograd formula).
inline void check_backward_inputs(const Tensor& logits, const Tensor& embedding) {
  check_dim(logits, "logits", 2, "(batch, vocab)");
  check_dim(embedding, "embedding", 2, "(vocab, dim)");
  check_last_contiguous(logits, "logits");
  check_last_contiguous(embedding, "embedding");
}

// The forward's nine outputs, uninitialised, on logits' device (CUDA: call it
// under the device guard): embeds [B, D] in the embedding's dtype; ids [B, k]
// int64; weights, noisy_logits [B, k], entropy, max_prob, lse [B] in float64
// for float64 logits, else float32; valid [B] bool; nkept [B] int64.
using ForwardOutputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
inline ForwardOutputs allocate_forward_outputs(const Tensor& logits, const Tensor& embedding, int64_t k) {
  const int64_t B = logits.size(0), D = embedding.size(1);
  const ScalarType acc = logits.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  return {new_empty(logits, {B, D}, embedding.scalar_type()), new_empty(logits, {B, k}, ScalarType::Long),
          new_empty(logits, {B, k}, acc),  new_empty(logits, {B}, acc),
          new_empty(logits, {B}, acc),     new_empty(logits, {B}, ScalarType::Bool),
          new_empty(logits, {B, k}, acc),  new_empty(logits, {B}, acc),
          new_empty(logits, {B}, ScalarType::Long)};
}

}  // namespace soft_mixture_checks
}  // namespace softdec
