// CPU backend of the soft-token log-densities (softdec.gumbel_log_density,
// dirichlet_log_density, gaussian_log_density) and their backwards.
//
// Gumbel / Dirichlet: one pass per row over its n kept entries (the policy
// weights renormalised over the kept set need only the kept logits: the
// vocabulary normaliser cancels). The backward writes the dense (B, V)
// gradient of the logits: a vectorised zero fill of the row and the n sparse
// terms at the ids, in one pass per row. Gaussian: one vectorised pass over D.
// Rows are threaded with parallel_for.
#include "capability.h"
#include "../common.h"
#include "../dispatch.h"
#include "../log_density_checks.h"
#include "simd.h"
#include "softdec/log_density.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

// float32 / bfloat16 / float16 and float64 (float64 for gradcheck).
#define LD_DISPATCH(DTYPE, NAME, scalar_t, ...)                   \
  [&] {                                                           \
    if ((DTYPE) == ::softdec::ScalarType::Double) {               \
      using scalar_t = double;                                    \
      return __VA_ARGS__();                                       \
    }                                                             \
    return SOFTDEC_DISPATCH_FLOAT(DTYPE, NAME, scalar_t, __VA_ARGS__); \
  }()

namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

using namespace logdens;
namespace ldc = log_density_checks;

template <typename T>
inline double to_d(T v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
inline double to_d<double>(double v) {
  return v;
}

template <typename T>
inline T from_d(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return static_cast<T>(static_cast<float>(v));
  }
}

// Rows per parallel_for task: about 64K elements of work.
inline int64_t grain_rows(int64_t per_row) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(per_row, 1)); }

// The values of one row checked (CPU only): nkept in [0, k], the kept ids in
// [0, V), the kept values finite (y) or on the simplex (weights).
void check_row_values(int64_t B, int64_t k, int64_t V, const int64_t* ids, const int64_t* nk, const void* vals,
                      bool f64, bool simplex) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = nk[b];
    SOFTDEC_CHECK(n >= 0 && n <= k, "nkept must be in [0, ", k, "] (the width of ids), got ", n, " at row ", b);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = ids[b * k + i];
      SOFTDEC_CHECK(id >= 0 && id < V, "ids must be in [0, ", V, ") (the vocabulary of logits), got ", id,
                    " at row ", b, ", entry ", i);
      const double v = f64 ? static_cast<const double*>(vals)[b * k + i]
                           : static_cast<double>(static_cast<const float*>(vals)[b * k + i]);
      if (simplex) {
        SOFTDEC_CHECK(std::isfinite(v) && v >= 0, "weights must lie on the simplex (finite, >= 0, summing to 1 "
                      "over the kept entries), got ", v, " at row ", b, ", entry ", i);
        sum += v;
      } else {
        SOFTDEC_CHECK(std::isfinite(v), "y must be finite in the kept entries (the first nkept of each row; -inf "
                      "marks padding beyond them), got ", v, " at row ", b, ", entry ", i);
      }
    }
    if (simplex && n > 0) {
      SOFTDEC_CHECK(std::fabs(sum - 1.0) <= 1e-3, "weights must lie on the simplex: the kept entries of row ", b,
                    " sum to ", sum, " (tolerance 1e-3)");
    }
  }
}

// The kept set's normaliser of one row (n >= 1): m = the largest kept logit,
// lse = log sum_j exp((l_j - m) / T), so log pi_i = (l_i - m) / T - lse (the
// difference of logits first: exact for nearby logits of any size).
template <typename acc_t>
struct Norm {
  acc_t m, lse;
};

template <typename scalar_t, typename acc_t>
inline Norm<acc_t> kept_lse(const scalar_t* row, const int64_t* id, int64_t n, acc_t inv_t) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<acc_t>(to_d(row[id[i]])));
  acc_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += ld_exp((static_cast<acc_t>(to_d(row[id[i]])) - m) * inv_t);
  return {m, ld_log(s)};  // all -inf: m = -inf, s = NaN: every log pi NaN
}

struct GumbelArgs {
  double noise_scale, lo, hi, eps, min_log_weight;
  int64_t reduction;
};

// ---------------------------------------------------------------- Gumbel forward
template <typename scalar_t>
void gumbel_forward_rows(const scalar_t* logits, int64_t V, int64_t ld, const int64_t* ids, int64_t k,
                         const void* y_ptr, const int64_t* nkept, const double* temp, const GumbelArgs& a,
                         void* out_ptr, int64_t B) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const acc_t* y = static_cast<const acc_t*>(y_ptr);
  acc_t* out = static_cast<acc_t*>(out_ptr);
  const acc_t inv_s = acc_t(1.0 / a.noise_scale), log_s = acc_t(std::log(a.noise_scale));
  const acc_t lo = acc_t(a.lo), hi = acc_t(a.hi), eps = acc_t(a.eps), mlw = acc_t(a.min_log_weight);
  torch::stable::parallel_for(0, B, grain_rows(k), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = nkept[b];
      const scalar_t* row = logits + b * ld;
      const int64_t* id = ids + b * k;
      const acc_t inv_t = acc_t(1.0 / temp[b]);
      const Norm<acc_t> L = n > 0 ? kept_lse<scalar_t, acc_t>(row, id, n, inv_t) : Norm<acc_t>{0, 0};
      acc_t sum = 0;
      int64_t count = 0;
      for (int64_t i = 0; i < k; ++i) {
        acc_t v = 0;
        if (i < n) {
          acc_t lq, dy, dq;
          const acc_t log_pi = (static_cast<acc_t>(to_d(row[id[i]])) - L.m) * inv_t - L.lse;
          v = gumbel_entry<acc_t>(y[b * k + i], log_pi, inv_s, log_s, lo, hi, eps, &lq, &dy, &dq);
          if (!counted(lq, mlw)) v = 0;  // excluded by min_log_weight
          else {
            sum += v;
            ++count;
          }
        }
        if (a.reduction == kNone) out[b * k + i] = v;
      }
      if (a.reduction == kSum) out[b] = sum;
      if (a.reduction == kMean) out[b] = count > 0 ? sum / acc_t(count) : acc_t(0);
    }
  });
}

// ---------------------------------------------------------------- Gumbel backward
// grad_logits[b, :] = 0 except at the kept ids: (c_j - pi_j sum_i c_i) / T with
// c_i = g_i dv_i/dlog(pi_i + eps) * pi_i / (pi_i + eps); grad_y[b, i] = g_i dv_i/dy_i.
template <typename scalar_t>
void gumbel_backward_rows(const void* grad_ptr, const scalar_t* logits, int64_t V, int64_t ld, const int64_t* ids,
                          int64_t k, const void* y_ptr, const int64_t* nkept, const double* temp,
                          const GumbelArgs& a, scalar_t* gl, void* gy_ptr, int64_t B) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const acc_t* y = static_cast<const acc_t*>(y_ptr);
  const acc_t* grad = static_cast<const acc_t*>(grad_ptr);
  acc_t* gy = static_cast<acc_t*>(gy_ptr);
  const acc_t inv_s = acc_t(1.0 / a.noise_scale), log_s = acc_t(std::log(a.noise_scale));
  const acc_t lo = acc_t(a.lo), hi = acc_t(a.hi), eps = acc_t(a.eps), mlw = acc_t(a.min_log_weight);
  torch::stable::parallel_for(0, B, grain_rows(V), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      scalar_t* grow = gl + b * V;
      std::memset(static_cast<void*>(grow), 0, sizeof(scalar_t) * static_cast<size_t>(V));
      const int64_t n = nkept[b];
      const scalar_t* row = logits + b * ld;
      const int64_t* id = ids + b * k;
      const acc_t inv_t = acc_t(1.0 / temp[b]);
      for (int64_t i = n; i < k; ++i) gy[b * k + i] = 0;
      if (n == 0) continue;
      const Norm<acc_t> L = kept_lse<scalar_t, acc_t>(row, id, n, inv_t);
      // pass 1: which entries count (for the mean), pass 2: the coefficients
      int64_t count = 0;
      for (int64_t i = 0; i < n; ++i) {
        const acc_t log_pi = (static_cast<acc_t>(to_d(row[id[i]])) - L.m) * inv_t - L.lse;
        const acc_t lq = eps > 0 ? ld_log(ld_exp(log_pi) + eps) : log_pi;
        if (counted(lq, mlw)) ++count;
      }
      const acc_t g_row = a.reduction == kSum ? grad[b]
                          : a.reduction == kMean ? (count > 0 ? grad[b] / acc_t(count) : acc_t(0))
                                                 : acc_t(0);
      acc_t csum = 0;
      for (int64_t pass = 0; pass < 2; ++pass) {
        for (int64_t i = 0; i < n; ++i) {
          const acc_t log_pi = (static_cast<acc_t>(to_d(row[id[i]])) - L.m) * inv_t - L.lse;
          acc_t lq, dy, dq;
          gumbel_entry<acc_t>(y[b * k + i], log_pi, inv_s, log_s, lo, hi, eps, &lq, &dy, &dq);
          const acc_t g = !counted(lq, mlw) ? acc_t(0) : (a.reduction == kNone ? grad[b * k + i] : g_row);
          const acc_t pi = ld_exp(log_pi);
          const acc_t c = g * dq * (eps > 0 ? ld_exp(log_pi - lq) : acc_t(1));
          if (pass == 0) {
            csum += c;
            gy[b * k + i] = g * dy;
          } else {
            // += : an id kept twice gets both terms
            grow[id[i]] = from_d<scalar_t>(to_d(grow[id[i]]) + static_cast<double>((c - pi * csum) * inv_t));
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------- Dirichlet
// log Dir(w; alpha pi) = lgamma(alpha) - sum_i lgamma(alpha pi_i) + sum_i (alpha pi_i - 1) log w_i
// (sum_i pi_i = 1), float64 per entry; log w_i with w_i clamped below at FLT_MIN
// (float32 Dirichlet draws underflow to 0 for small concentrations).
constexpr double kMinWeight = FLT_MIN;

template <typename scalar_t, typename acc_t>
inline void dirichlet_row(const scalar_t* row, const int64_t* id, const acc_t* w, int64_t n, double inv_t,
                          double alpha, double* value, double g, scalar_t* grow, acc_t* gw) {
  const Norm<double> L = kept_lse<scalar_t, double>(row, id, n, inv_t);
  double v = std::lgamma(alpha), csum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double pi = std::exp((to_d(row[id[i]]) - L.m) * inv_t - L.lse), a = alpha * pi;
    const double wi = static_cast<double>(w[i]);
    const double lw = std::log(std::max(wi, kMinWeight));
    v += (a - 1) * lw - std::lgamma(a);
    if (grow != nullptr) {
      csum += g * alpha * (lw - digamma(a)) * pi;
      gw[i] = static_cast<acc_t>(wi >= kMinWeight ? g * (a - 1) / wi : 0.0);
    }
  }
  *value = v;
  if (grow == nullptr) return;
  for (int64_t i = 0; i < n; ++i) {
    const double pi = std::exp((to_d(row[id[i]]) - L.m) * inv_t - L.lse), a = alpha * pi;
    const double lw = std::log(std::max(static_cast<double>(w[i]), kMinWeight));
    const double c = g * alpha * (lw - digamma(a)) * pi;
    grow[id[i]] = from_d<scalar_t>(to_d(grow[id[i]]) + (c - pi * csum) * inv_t);
  }
}

template <typename scalar_t>
void dirichlet_rows(const void* grad_ptr, const scalar_t* logits, int64_t V, int64_t ld, const int64_t* ids, int64_t k,
                    const void* w_ptr, const int64_t* nkept, const double* temp, double alpha, void* out_ptr,
                    scalar_t* gl, void* gw_ptr, int64_t B) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const acc_t* w = static_cast<const acc_t*>(w_ptr);
  const acc_t* grad = static_cast<const acc_t*>(grad_ptr);
  acc_t* out = static_cast<acc_t*>(out_ptr);
  acc_t* gw = static_cast<acc_t*>(gw_ptr);
  torch::stable::parallel_for(0, B, grain_rows(gl != nullptr ? V : k), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = nkept[b];
      scalar_t* grow = nullptr;
      if (gl != nullptr) {
        grow = gl + b * V;
        std::memset(static_cast<void*>(grow), 0, sizeof(scalar_t) * static_cast<size_t>(V));
        for (int64_t i = n; i < k; ++i) gw[b * k + i] = 0;
      }
      double v = 0;
      if (n > 0)
        dirichlet_row<scalar_t, acc_t>(logits + b * ld, ids + b * k, w + b * k, n, 1.0 / temp[b], alpha, &v,
                                       gl != nullptr ? static_cast<double>(grad[b]) : 0.0, grow,
                                       gl != nullptr ? gw + b * k : nullptr);
      if (out != nullptr) out[b] = static_cast<acc_t>(v);
    }
  });
}

// ---------------------------------------------------------------- Gaussian
// sum_d (x_d - m_d)^2 of one row.
template <typename scalar_t>
inline double sq_dist(const scalar_t* x, const scalar_t* m, int64_t D) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    double s = 0;
    for (int64_t d = 0; d < D; ++d) {
      const double t = x[d] - m[d];
      s += t * t;
    }
    return s;
  } else {
    int64_t d = 0;
    float s = 0;
#if defined(SOFTDEC_SIMD_AVX512)
    __m512 acc = _mm512_setzero_ps();
    for (; d + 16 <= D; d += 16) {
      const __m512 t = _mm512_sub_ps(simd::load16(x + d), simd::load16(m + d));
      acc = _mm512_fmadd_ps(t, t, acc);
    }
    if (d < D) {
      const __mmask16 tm = simd::tail_mask(D - d);
      const __m512 t = _mm512_sub_ps(simd::load16_maskz(x + d, tm), simd::load16_maskz(m + d, tm));
      acc = _mm512_fmadd_ps(t, t, acc);
      d = D;
    }
    s = simd::hsum(acc);
#elif defined(SOFTDEC_SIMD_AVX2)
    __m256 acc = _mm256_setzero_ps();
    for (; d + 8 <= D; d += 8) {
      const __m256 t = _mm256_sub_ps(simd::load8(x + d), simd::load8(m + d));
      acc = _mm256_fmadd_ps(t, t, acc);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    for (float l : lanes) s += l;
#endif
    for (; d < D; ++d) {
      const float t = static_cast<float>(x[d]) - static_cast<float>(m[d]);
      s += t * t;
    }
    return static_cast<double>(s);
  }
}

// grad_x = s (x - m), grad_mean = -grad_x of one row.
template <typename scalar_t>
inline void gaussian_grad_row(const scalar_t* xp, const scalar_t* mp, int64_t D, double s_, scalar_t* gxp,
                              scalar_t* gmp) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    for (int64_t d = 0; d < D; ++d) {
      const double t = s_ * (xp[d] - mp[d]);
      gxp[d] = t;
      gmp[d] = -t;
    }
  } else {
    const float s = static_cast<float>(s_);
    int64_t d = 0;
#if defined(SOFTDEC_SIMD_AVX512)
    const __m512 vs = _mm512_set1_ps(s);
    for (; d + 16 <= D; d += 16) {
      const __m512 t = _mm512_mul_ps(vs, _mm512_sub_ps(simd::load16(xp + d), simd::load16(mp + d)));
      simd::store16(gxp + d, t);
      simd::store16(gmp + d, _mm512_sub_ps(_mm512_setzero_ps(), t));
    }
#endif
    for (; d < D; ++d) {
      const float t = s * (static_cast<float>(xp[d]) - static_cast<float>(mp[d]));
      gxp[d] = static_cast<scalar_t>(t);
      gmp[d] = static_cast<scalar_t>(-t);
    }
  }
}

Tensor gaussian_log_density_cpu(Tensor x, Tensor mean, double std_) {
  ldc::check_gaussian_inputs(x, mean, std_);
  const int64_t B = x.size(0), D = x.size(1);
  const bool f64 = x.scalar_type() == ScalarType::Double;
  Tensor out = new_empty(x, {B}, f64 ? ScalarType::Double : ScalarType::Float);
  if (B == 0) return out;
  const double inv_var = 1.0 / (std_ * std_);
  const double c = -static_cast<double>(D) * (std::log(std_) + kHalfLog2Pi);
  LD_DISPATCH(x.scalar_type(), "x", scalar_t, [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    void* op = out.mutable_data_ptr();
    torch::stable::parallel_for(0, B, grain_rows(D), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const double v = c - 0.5 * inv_var * sq_dist(xp + b * D, mp + b * D, D);
        if (f64) static_cast<double*>(op)[b] = v;
        else static_cast<float*>(op)[b] = static_cast<float>(v);
      }
    });
  });
  return out;
}

// (grad_x, grad_mean): grad_x = -g (x - m) / std^2, grad_mean = -grad_x, in x's dtype.
std::tuple<Tensor, Tensor> gaussian_log_density_backward_cpu(Tensor grad, Tensor x, Tensor mean, double std_) {
  ldc::check_gaussian_inputs(x, mean, std_);
  const int64_t B = x.size(0), D = x.size(1);
  const bool f64 = x.scalar_type() == ScalarType::Double;
  SOFTDEC_CHECK(grad.dim() == 1 && grad.size(0) == B, "grad must have shape (", B, ",), got ", shape_str(grad));
  check_dtype(grad, "grad", f64 ? ScalarType::Double : ScalarType::Float);
  check_contiguous(grad, "grad");
  Tensor gx = new_empty(x, {B, D}, x.scalar_type());
  Tensor gm = new_empty(x, {B, D}, x.scalar_type());
  if (B == 0 || D == 0) return {gx, gm};
  const double inv_var = 1.0 / (std_ * std_);
  LD_DISPATCH(x.scalar_type(), "x", scalar_t, [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = mean.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    scalar_t* gmp = gm.mutable_data_ptr<scalar_t>();
    const void* gp = grad.const_data_ptr();
    torch::stable::parallel_for(0, B, grain_rows(D), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const double g = f64 ? static_cast<const double*>(gp)[b] : static_cast<double>(static_cast<const float*>(gp)[b]);
        gaussian_grad_row(xp + b * D, mp + b * D, D, -g * inv_var, gxp + b * D, gmp + b * D);
      }
    });
  });
  return {gx, gm};
}

// ---------------------------------------------------------------- entry points
Tensor gumbel_log_density_cpu(Tensor logits, Tensor ids, Tensor y, Tensor nkept, Tensor temperature,
                              double noise_scale, double clamp_lo, double clamp_hi, double eps,
                              double min_log_weight, int64_t reduction) {
  ldc::check_sparse_inputs(logits, ids, y, "y", nkept, temperature, false);
  ldc::check_gumbel_scalars(noise_scale, clamp_lo, clamp_hi, eps, min_log_weight, reduction);
  const int64_t B = logits.size(0), V = logits.size(1), k = ids.size(1);
  const ScalarType acc = ldc::acc_dtype(logits.scalar_type());
  Tensor out = reduction == kNone ? new_empty(logits, {B, k}, acc) : new_empty(logits, {B}, acc);
  if (B == 0) return out;
  check_row_values(B, k, V, ids.const_data_ptr<int64_t>(), nkept.const_data_ptr<int64_t>(), y.const_data_ptr(),
                   acc == ScalarType::Double, false);
  const GumbelArgs a{noise_scale, clamp_lo, clamp_hi, eps, min_log_weight, reduction};
  LD_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    gumbel_forward_rows<scalar_t>(logits.const_data_ptr<scalar_t>(), V, B > 1 ? logits.stride(0) : V,
                                  ids.const_data_ptr<int64_t>(), k, y.const_data_ptr(),
                                  nkept.const_data_ptr<int64_t>(), temperature.const_data_ptr<double>(), a,
                                  out.mutable_data_ptr(), B);
  });
  return out;
}

std::tuple<Tensor, Tensor> gumbel_log_density_backward_cpu(Tensor grad, Tensor logits, Tensor ids, Tensor y,
                                                           Tensor nkept, Tensor temperature, double noise_scale,
                                                           double clamp_lo, double clamp_hi, double eps,
                                                           double min_log_weight, int64_t reduction) {
  ldc::check_sparse_inputs(logits, ids, y, "y", nkept, temperature, false);
  ldc::check_gumbel_scalars(noise_scale, clamp_lo, clamp_hi, eps, min_log_weight, reduction);
  const int64_t B = logits.size(0), V = logits.size(1), k = ids.size(1);
  ldc::check_grad(grad, logits, B, k, reduction == kNone);
  const ScalarType acc = ldc::acc_dtype(logits.scalar_type());
  Tensor gl = new_empty(logits, {B, V}, logits.scalar_type());
  Tensor gy = new_empty(logits, {B, k}, acc);
  if (B == 0) return {gl, gy};
  check_row_values(B, k, V, ids.const_data_ptr<int64_t>(), nkept.const_data_ptr<int64_t>(), y.const_data_ptr(),
                   acc == ScalarType::Double, false);
  const GumbelArgs a{noise_scale, clamp_lo, clamp_hi, eps, min_log_weight, reduction};
  LD_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    gumbel_backward_rows<scalar_t>(grad.const_data_ptr(), logits.const_data_ptr<scalar_t>(), V,
                                   B > 1 ? logits.stride(0) : V, ids.const_data_ptr<int64_t>(), k,
                                   y.const_data_ptr(), nkept.const_data_ptr<int64_t>(),
                                   temperature.const_data_ptr<double>(), a, gl.mutable_data_ptr<scalar_t>(),
                                   gy.mutable_data_ptr(), B);
  });
  return {gl, gy};
}

Tensor dirichlet_log_density_cpu(Tensor logits, Tensor ids, Tensor weights, Tensor nkept, Tensor temperature,
                                 double alpha) {
  ldc::check_sparse_inputs(logits, ids, weights, "weights", nkept, temperature, false);
  ldc::check_alpha(alpha);
  const int64_t B = logits.size(0), V = logits.size(1), k = ids.size(1);
  const ScalarType acc = ldc::acc_dtype(logits.scalar_type());
  Tensor out = new_empty(logits, {B}, acc);
  if (B == 0) return out;
  check_row_values(B, k, V, ids.const_data_ptr<int64_t>(), nkept.const_data_ptr<int64_t>(),
                   weights.const_data_ptr(), acc == ScalarType::Double, true);
  LD_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    dirichlet_rows<scalar_t>(nullptr, logits.const_data_ptr<scalar_t>(), V, B > 1 ? logits.stride(0) : V,
                             ids.const_data_ptr<int64_t>(), k, weights.const_data_ptr(),
                             nkept.const_data_ptr<int64_t>(), temperature.const_data_ptr<double>(), alpha,
                             out.mutable_data_ptr(), nullptr, nullptr, B);
  });
  return out;
}

std::tuple<Tensor, Tensor> dirichlet_log_density_backward_cpu(Tensor grad, Tensor logits, Tensor ids,
                                                              Tensor weights, Tensor nkept, Tensor temperature,
                                                              double alpha) {
  ldc::check_sparse_inputs(logits, ids, weights, "weights", nkept, temperature, false);
  ldc::check_alpha(alpha);
  const int64_t B = logits.size(0), V = logits.size(1), k = ids.size(1);
  ldc::check_grad(grad, logits, B, k, false);
  const ScalarType acc = ldc::acc_dtype(logits.scalar_type());
  Tensor gl = new_empty(logits, {B, V}, logits.scalar_type());
  Tensor gw = new_empty(logits, {B, k}, acc);
  if (B == 0) return {gl, gw};
  check_row_values(B, k, V, ids.const_data_ptr<int64_t>(), nkept.const_data_ptr<int64_t>(),
                   weights.const_data_ptr(), acc == ScalarType::Double, true);
  LD_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    dirichlet_rows<scalar_t>(grad.const_data_ptr(), logits.const_data_ptr<scalar_t>(), V,
                             B > 1 ? logits.stride(0) : V, ids.const_data_ptr<int64_t>(), k,
                             weights.const_data_ptr(), nkept.const_data_ptr<int64_t>(),
                             temperature.const_data_ptr<double>(), alpha, nullptr, gl.mutable_data_ptr<scalar_t>(),
                             gw.mutable_data_ptr(), B);
  });
  return {gl, gw};
}

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(log_density,
    {"gumbel_log_density", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::gumbel_log_density_cpu)},
    {"gumbel_log_density_backward", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::gumbel_log_density_backward_cpu)},
    {"dirichlet_log_density", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::dirichlet_log_density_cpu)},
    {"dirichlet_log_density_backward", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::dirichlet_log_density_backward_cpu)},
    {"gaussian_log_density", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::gaussian_log_density_cpu)},
    {"gaussian_log_density_backward", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::gaussian_log_density_backward_cpu)})
