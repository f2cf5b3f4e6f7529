// Input checks of the log-density ops (gumbel_log_density, dirichlet_log_density,
// gaussian_log_density and their backwards), shared by the CPU and CUDA entry
// points. Tensor *values* (ids in range, y finite, weights on the simplex,
// nkept in [0, k]) are checked on CPU only, by the kernels (reading them on
// CUDA would synchronise the stream; the CUDA kernels write NaN for such rows).
#pragma once

#include <cmath>
#include <cstdint>

#include "common.h"

namespace softdec {
namespace log_density_checks {

inline bool is_any_float(ScalarType t) { return is_float_dtype(t) || t == ScalarType::Double; }

// The float dtype of y / weights / the outputs for logits of dtype t: float64
// for float64 logits, else float32 (soft_mixture's noisy_logits / weights).
inline ScalarType acc_dtype(ScalarType t) { return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float; }

// (logits [B, V], ids [B, k], values [B, k], nkept [B], temperature [B]) of the
// Gumbel and Dirichlet ops; `values_name` is "y" or "weights".
inline void check_sparse_inputs(const Tensor& logits, const Tensor& ids, const Tensor& values,
                                const char* values_name, const Tensor& nkept, const Tensor& temperature,
                                bool cuda) {
  check_dim(logits, "logits", 2, "(batch, vocab)");
  SOFTDEC_CHECK(is_any_float(logits.scalar_type()), "logits must be float32, bfloat16, float16 or float64, got ",
                dtype_name(logits.scalar_type()));
  SOFTDEC_CHECK(logits.size(1) >= 1, "logits must have at least one column (vocab), got shape ", shape_str(logits));
  if (cuda) {
    SOFTDEC_CHECK(logits.size(1) < INT32_MAX, "logits must have fewer than 2^31 columns, got ", logits.size(1));
  }
  check_last_contiguous(logits, "logits");
  check_dim(ids, "ids", 2, "(batch, k)");
  check_dtype(ids, "ids", ScalarType::Long);
  check_same_device(logits, "logits", ids, "ids");
  SOFTDEC_CHECK(ids.size(0) == logits.size(0), "ids must have one row per row of logits (", logits.size(0),
                "), got shape ", shape_str(ids));
  check_contiguous(ids, "ids");
  SOFTDEC_CHECK(values.dim() == 2 && values.size(0) == ids.size(0) && values.size(1) == ids.size(1), values_name,
                " must have the shape of ids ", shape_str(ids), ", got ", shape_str(values));
  check_dtype(values, values_name, acc_dtype(logits.scalar_type()));
  check_same_device(logits, "logits", values, values_name);
  check_contiguous(values, values_name);
  check_per_row(nkept, "nkept", logits.size(0), ScalarType::Long, logits, "logits");
  check_per_row(temperature, "temperature", logits.size(0), ScalarType::Double, logits, "logits");
}

inline void check_gumbel_scalars(double noise_scale, double clamp_lo, double clamp_hi, double eps,
                                 double min_log_weight, int64_t reduction) {
  SOFTDEC_CHECK(noise_scale > 0 && std::isfinite(noise_scale), "noise_scale must be > 0 and finite, got ",
                noise_scale);
  SOFTDEC_CHECK(!std::isnan(clamp_lo) && !std::isnan(clamp_hi) && clamp_lo < clamp_hi,
                "gumbel_clamp must be (lo, hi) with lo < hi, got (", clamp_lo, ", ", clamp_hi, ")");
  SOFTDEC_CHECK(eps >= 0 && std::isfinite(eps), "gumbel_eps must be >= 0 and finite, got ", eps);
  SOFTDEC_CHECK(!std::isnan(min_log_weight), "min_log_weight must not be NaN");
  SOFTDEC_CHECK(reduction >= 0 && reduction <= 2, "reduction must be 0 (none), 1 (sum) or 2 (mean), got ",
                reduction);
}

inline void check_alpha(double alpha) {
  SOFTDEC_CHECK(alpha > 0 && std::isfinite(alpha), "alpha must be > 0 and finite, got ", alpha);
}

// grad of the forward output: (B,) or (B, k) for reduction "none", float32 / float64.
inline void check_grad(const Tensor& grad, const Tensor& like, int64_t B, int64_t k, bool per_entry) {
  if (per_entry) {
    SOFTDEC_CHECK(grad.dim() == 2 && grad.size(0) == B && grad.size(1) == k, "grad must have shape (", B, ", ",
                  k, "), got ", shape_str(grad));
  } else {
    SOFTDEC_CHECK(grad.dim() == 1 && grad.size(0) == B, "grad must have shape (", B, ",), got ", shape_str(grad));
  }
  check_dtype(grad, "grad", acc_dtype(like.scalar_type()));
  check_same_device(like, "logits", grad, "grad");
  check_contiguous(grad, "grad");
}

// (x [B, D], mean [B, D], std) of the Gaussian op.
inline void check_gaussian_inputs(const Tensor& x, const Tensor& mean, double std_) {
  check_dim(x, "x", 2, "(batch, dim)");
  SOFTDEC_CHECK(is_any_float(x.scalar_type()), "x must be float32, bfloat16, float16 or float64, got ",
                dtype_name(x.scalar_type()));
  SOFTDEC_CHECK(mean.dim() == 2 && mean.size(0) == x.size(0) && mean.size(1) == x.size(1),
                "mean must have the shape of x ", shape_str(x), ", got ", shape_str(mean));
  SOFTDEC_CHECK(mean.scalar_type() == x.scalar_type(), "mean must have the dtype of x (",
                dtype_name(x.scalar_type()), "), got ", dtype_name(mean.scalar_type()));
  check_same_device(x, "x", mean, "mean");
  check_contiguous(x, "x");
  check_contiguous(mean, "mean");
  SOFTDEC_CHECK(std_ > 0 && std::isfinite(std_), "std must be > 0 and finite, got ", std_);
}

}  // namespace log_density_checks
}  // namespace softdec
