// CUDA backend of the soft-token log-densities (softdec.gumbel_log_density,
// dirichlet_log_density, gaussian_log_density) and their backwards; the same
// per-entry math as the CPU backend (include/softdec/log_density.h).
//
// Gumbel / Dirichlet forward: one warp per row (kRowsPerBlock rows a block);
// the lanes stride over the row's kept entries, warp reductions for the kept
// set's log-sum-exp, the sum and the count. Only the kept logits are read (the
// vocabulary normaliser cancels in the renormalised weights).
// Backward: one block per row: the dense (V,) logits gradient is zeroed with
// coalesced 16-byte stores, then warp 0 reduces the row's coefficients and
// lane 0 adds the sparse terms at the ids (serially: an id may be kept twice).
// Gaussian: one block per row, 16-byte loads of x and mean where aligned,
// warp + shared-memory reduction; backward elementwise with 16-byte accesses.
//
// Values are not checked here (reading them would synchronise the stream): a
// row with nkept outside [0, k], a kept id outside [0, V) or a non-finite kept
// y gets NaN (value and y-gradient; its logits gradient stays 0).
#include "cuda_common.cuh"
#include "../dispatch.h"
#include "../log_density_checks.h"
#include "softdec/log_density.h"

#include <cfloat>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

namespace softdec {
namespace {

using namespace logdens;
namespace ldc = log_density_checks;

constexpr int kRowsPerBlock = 4;
constexpr int kForwardThreads = 32 * kRowsPerBlock;  // sparse forward: a warp per row
constexpr int kBackwardThreads = 256;                // sparse backward: a block per row
constexpr int kGaussThreads = 256;                   // Gaussian forward / backward
constexpr int64_t kMaxGrid = 65535LL * 1024;

template <typename T>
struct AccT {
  using type = float;
};
template <>
struct AccT<double> {
  using type = double;
};

template <typename acc_t>
__device__ __forceinline__ acc_t wsum(acc_t x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <typename acc_t>
__device__ __forceinline__ acc_t wmax(acc_t x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const acc_t v = __shfl_xor_sync(0xffffffffu, x, o);
    x = v > x ? v : x;
  }
  return x;
}

template <typename acc_t>
__device__ __forceinline__ acc_t nan_of() {
  return std::numeric_limits<acc_t>::quiet_NaN();
}

// The kept set's normaliser (whole warp; every lane gets it): m = the largest
// kept logit, lse = log sum_j exp((l_j - m) / T), log pi_i = (l_i - m) / T - lse;
// and whether the row is bad (an id out of range, a kept y not finite).
template <typename acc_t>
struct Norm {
  acc_t m, lse;
};

template <typename cs_t, typename acc_t>
__device__ __forceinline__ Norm<acc_t> warp_kept_lse(const cs_t* row, const int64_t* id, const acc_t* y, int64_t n,
                                                     int64_t V, acc_t inv_t, bool check_y, bool* bad) {
  const int lane = threadIdx.x & 31;
  bool b = false;
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = lane; i < n; i += 32) {
    const int64_t j = id[i];
    if (j < 0 || j >= V) {
      b = true;
      continue;
    }
    if (check_y && !isfinite(y[i])) b = true;
    const acc_t l = static_cast<acc_t>(to_float(row[j]));
    m = l > m ? l : m;
  }
  *bad = __any_sync(0xffffffffu, b);
  m = wmax(m);
  acc_t s = 0;
  for (int64_t i = lane; i < n; i += 32) {
    const int64_t j = id[i];
    if (j >= 0 && j < V) s += ld_exp((static_cast<acc_t>(to_float(row[j])) - m) * inv_t);
  }
  s = wsum(s);
  return {m, ld_log(s)};
}

struct GumbelParams {
  double noise_scale, lo, hi, eps, min_log_weight;
  int reduction;
};

template <typename cs_t, typename acc_t>
__global__ void __launch_bounds__(kForwardThreads)
    gumbel_forward_kernel(const cs_t* __restrict__ logits, int64_t ld, int64_t V, const int64_t* __restrict__ ids,
                          int64_t k, const acc_t* __restrict__ y, const int64_t* __restrict__ nkept,
                          const double* __restrict__ temp, GumbelParams p, int64_t B, acc_t* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (b >= B) return;
  const int lane = threadIdx.x & 31;
  const int64_t nk = nkept[b];
  const int64_t n = nk < 0 ? 0 : (nk > k ? k : nk);
  const cs_t* row = logits + b * ld;
  const int64_t* id = ids + b * k;
  const acc_t* yr = y + b * k;
  const acc_t inv_t = static_cast<acc_t>(1.0 / temp[b]);
  bool bad = false;
  const Norm<acc_t> L = n > 0 ? warp_kept_lse<cs_t, acc_t>(row, id, yr, n, V, inv_t, true, &bad) : Norm<acc_t>{0, 0};
  bad = bad || nk != n;
  const acc_t inv_s = static_cast<acc_t>(1.0 / p.noise_scale), log_s = static_cast<acc_t>(log(p.noise_scale));
  const acc_t lo = static_cast<acc_t>(p.lo), hi = static_cast<acc_t>(p.hi), eps = static_cast<acc_t>(p.eps);
  const acc_t mlw = static_cast<acc_t>(p.min_log_weight);
  acc_t sum = 0, count = 0;
  for (int64_t i = lane; i < k; i += 32) {
    acc_t v = 0;
    if (bad) {
      v = nan_of<acc_t>();
    } else if (i < n) {
      acc_t lq, dy, dq;
      const acc_t log_pi = (static_cast<acc_t>(to_float(row[id[i]])) - L.m) * inv_t - L.lse;
      v = gumbel_entry<acc_t>(yr[i], log_pi, inv_s, log_s, lo, hi, eps, &lq, &dy, &dq);
      if (counted(lq, mlw)) {
        sum += v;
        count += 1;
      } else {
        v = 0;
      }
    }
    if (p.reduction == kNone) out[b * k + i] = v;
  }
  if (p.reduction == kNone) return;
  sum = wsum(sum);
  count = wsum(count);
  if (lane == 0) {
    acc_t r = p.reduction == kSum ? sum : (count > 0 ? sum / count : acc_t(0));
    out[b] = bad ? nan_of<acc_t>() : r;
  }
}

// Zero n bytes at p with 16-byte stores over the aligned middle (the block's threads).
__device__ __forceinline__ void block_zero(char* p, int64_t nbytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int64_t head = static_cast<int64_t>((16 - (a & 15)) & 15);
  if (head > nbytes) head = nbytes;
  const int64_t nvec = (nbytes - head) >> 4;
  const int64_t tail_start = head + (nvec << 4);
  for (int64_t i = threadIdx.x; i < head; i += blockDim.x) p[i] = 0;
  uint4* v = reinterpret_cast<uint4*>(p + head);
  const uint4 z = make_uint4(0, 0, 0, 0);
  for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) v[i] = z;
  for (int64_t i = tail_start + threadIdx.x; i < nbytes; i += blockDim.x) p[i] = 0;
}

// acc_t -> the storage type (float64 stays float64; cuda_common's from_float goes through float).
template <typename cs_t, typename acc_t>
__device__ __forceinline__ cs_t store_as(acc_t v) {
  if constexpr (std::is_same_v<cs_t, double>) {
    return static_cast<double>(v);
  } else {
    return from_float<cs_t>(static_cast<float>(v));
  }
}

template <typename cs_t>
__device__ __forceinline__ void add_to(cs_t* g, double v) {
  g[0] = from_float<cs_t>(static_cast<float>(static_cast<double>(to_float(g[0])) + v));
}
template <>
__device__ __forceinline__ void add_to<double>(double* g, double v) {
  g[0] += v;
}

template <typename cs_t, typename acc_t>
__global__ void __launch_bounds__(kBackwardThreads)
    gumbel_backward_kernel(const acc_t* __restrict__ grad, const cs_t* __restrict__ logits, int64_t ld, int64_t V,
                           const int64_t* __restrict__ ids, int64_t k, const acc_t* __restrict__ y,
                           const int64_t* __restrict__ nkept, const double* __restrict__ temp, GumbelParams p,
                           int64_t row0, cs_t* __restrict__ gl, acc_t* __restrict__ gy) {
  const int64_t b = row0 + blockIdx.x;
  cs_t* grow = gl + b * V;
  block_zero(reinterpret_cast<char*>(grow), V * static_cast<int64_t>(sizeof(cs_t)));
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  const int64_t nk = nkept[b];
  const int64_t n = nk < 0 ? 0 : (nk > k ? k : nk);
  const cs_t* row = logits + b * ld;
  const int64_t* id = ids + b * k;
  const acc_t* yr = y + b * k;
  acc_t* gyr = gy + b * k;
  const acc_t inv_t = static_cast<acc_t>(1.0 / temp[b]);
  bool bad = false;
  const Norm<acc_t> L = n > 0 ? warp_kept_lse<cs_t, acc_t>(row, id, yr, n, V, inv_t, true, &bad) : Norm<acc_t>{0, 0};
  bad = bad || nk != n;
  for (int64_t i = n + lane; i < k; i += 32) gyr[i] = bad ? nan_of<acc_t>() : acc_t(0);
  if (n == 0) return;
  if (bad) {
    for (int64_t i = lane; i < n; i += 32) gyr[i] = nan_of<acc_t>();
    return;
  }
  const acc_t inv_s = static_cast<acc_t>(1.0 / p.noise_scale), log_s = static_cast<acc_t>(log(p.noise_scale));
  const acc_t lo = static_cast<acc_t>(p.lo), hi = static_cast<acc_t>(p.hi), eps = static_cast<acc_t>(p.eps);
  const acc_t mlw = static_cast<acc_t>(p.min_log_weight);
  acc_t count = 0;
  for (int64_t i = lane; i < n; i += 32) {
    const acc_t log_pi = (static_cast<acc_t>(to_float(row[id[i]])) - L.m) * inv_t - L.lse;
    const acc_t lq = eps > acc_t(0) ? ld_log(ld_exp(log_pi) + eps) : log_pi;
    if (counted(lq, mlw)) count += 1;
  }
  count = wsum(count);
  const acc_t g_row = p.reduction == kSum ? grad[b] : (p.reduction == kMean ? (count > 0 ? grad[b] / count : acc_t(0)) : acc_t(0));
  // c_i = g_i dv_i/dlog(pi_i + eps) pi_i / (pi_i + eps); grad_l_j = (c_j - pi_j sum_i c_i) / T
  acc_t csum = 0;
  for (int64_t i = lane; i < n; i += 32) {
    const acc_t log_pi = (static_cast<acc_t>(to_float(row[id[i]])) - L.m) * inv_t - L.lse;
    acc_t lq, dy, dq;
    gumbel_entry<acc_t>(yr[i], log_pi, inv_s, log_s, lo, hi, eps, &lq, &dy, &dq);
    const acc_t g = counted(lq, mlw) ? (p.reduction == kNone ? grad[b * k + i] : g_row) : acc_t(0);
    csum += g * dq * (eps > acc_t(0) ? ld_exp(log_pi - lq) : acc_t(1));
    gyr[i] = g * dy;
  }
  csum = wsum(csum);
  if (lane != 0) return;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t log_pi = (static_cast<acc_t>(to_float(row[id[i]])) - L.m) * inv_t - L.lse;
    acc_t lq, dy, dq;
    gumbel_entry<acc_t>(yr[i], log_pi, inv_s, log_s, lo, hi, eps, &lq, &dy, &dq);
    const acc_t g = counted(lq, mlw) ? (p.reduction == kNone ? grad[b * k + i] : g_row) : acc_t(0);
    const acc_t c = g * dq * (eps > acc_t(0) ? ld_exp(log_pi - lq) : acc_t(1));
    add_to(grow + id[i], static_cast<double>((c - ld_exp(log_pi) * csum) * inv_t));
  }
}

// ---------------------------------------------------------------- Dirichlet (float64 per entry)
constexpr double kMinWeight = FLT_MIN;

template <typename cs_t, typename acc_t>
__global__ void __launch_bounds__(kForwardThreads)
    dirichlet_forward_kernel(const cs_t* __restrict__ logits, int64_t ld, int64_t V, const int64_t* __restrict__ ids,
                             int64_t k, const acc_t* __restrict__ w, const int64_t* __restrict__ nkept,
                             const double* __restrict__ temp, double alpha, int64_t B, acc_t* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (b >= B) return;
  const int lane = threadIdx.x & 31;
  const int64_t nk = nkept[b];
  const int64_t n = nk < 0 ? 0 : (nk > k ? k : nk);
  const cs_t* row = logits + b * ld;
  const int64_t* id = ids + b * k;
  const acc_t* wr = w + b * k;
  const double inv_t = 1.0 / temp[b];
  bool bad = false;
  const Norm<double> L = n > 0 ? warp_kept_lse<cs_t, double>(row, id, nullptr, n, V, inv_t, false, &bad) : Norm<double>{0, 0};
  bad = bad || nk != n;
  double v = 0;
  for (int64_t i = lane; i < n && !bad; i += 32) {
    const double pi = exp((static_cast<double>(to_float(row[id[i]])) - L.m) * inv_t - L.lse), a = alpha * pi;
    const double wi = static_cast<double>(wr[i]);
    v += (a - 1) * log(wi >= kMinWeight ? wi : kMinWeight) - lgamma(a);
  }
  v = wsum(v);
  if (lane == 0) out[b] = bad ? nan_of<acc_t>() : static_cast<acc_t>(n > 0 ? v + lgamma(alpha) : 0.0);
}

template <typename cs_t, typename acc_t>
__global__ void __launch_bounds__(kBackwardThreads)
    dirichlet_backward_kernel(const acc_t* __restrict__ grad, const cs_t* __restrict__ logits, int64_t ld, int64_t V,
                              const int64_t* __restrict__ ids, int64_t k, const acc_t* __restrict__ w,
                              const int64_t* __restrict__ nkept, const double* __restrict__ temp, double alpha,
                              int64_t row0, cs_t* __restrict__ gl, acc_t* __restrict__ gw) {
  const int64_t b = row0 + blockIdx.x;
  cs_t* grow = gl + b * V;
  block_zero(reinterpret_cast<char*>(grow), V * static_cast<int64_t>(sizeof(cs_t)));
  __syncthreads();
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  const int64_t nk = nkept[b];
  const int64_t n = nk < 0 ? 0 : (nk > k ? k : nk);
  const cs_t* row = logits + b * ld;
  const int64_t* id = ids + b * k;
  const acc_t* wr = w + b * k;
  acc_t* gwr = gw + b * k;
  const double inv_t = 1.0 / temp[b];
  bool bad = false;
  const Norm<double> L = n > 0 ? warp_kept_lse<cs_t, double>(row, id, nullptr, n, V, inv_t, false, &bad) : Norm<double>{0, 0};
  bad = bad || nk != n;
  for (int64_t i = n + lane; i < k; i += 32) gwr[i] = bad ? nan_of<acc_t>() : acc_t(0);
  if (n == 0) return;
  if (bad) {
    for (int64_t i = lane; i < n; i += 32) gwr[i] = nan_of<acc_t>();
    return;
  }
  const double g = static_cast<double>(grad[b]);
  double csum = 0;
  for (int64_t i = lane; i < n; i += 32) {
    const double pi = exp((static_cast<double>(to_float(row[id[i]])) - L.m) * inv_t - L.lse), a = alpha * pi;
    const double wi = static_cast<double>(wr[i]);
    const double lw = log(wi >= kMinWeight ? wi : kMinWeight);
    csum += g * alpha * (lw - digamma(a)) * pi;
    gwr[i] = static_cast<acc_t>(wi >= kMinWeight ? g * (a - 1) / wi : 0.0);
  }
  csum = wsum(csum);
  if (lane != 0) return;
  for (int64_t i = 0; i < n; ++i) {
    const double pi = exp((static_cast<double>(to_float(row[id[i]])) - L.m) * inv_t - L.lse), a = alpha * pi;
    const double wi = static_cast<double>(wr[i]);
    const double c = g * alpha * (log(wi >= kMinWeight ? wi : kMinWeight) - digamma(a)) * pi;
    add_to(grow + id[i], (c - pi * csum) * inv_t);
  }
}

// ---------------------------------------------------------------- Gaussian
template <typename cs_t>
struct Vec16 {
  static constexpr int kN = 16 / sizeof(cs_t);
};

template <typename cs_t, typename acc_t>
__global__ void __launch_bounds__(kGaussThreads)
    gaussian_forward_kernel(const cs_t* __restrict__ x, const cs_t* __restrict__ m, int64_t D, int64_t row0,
                            double inv_var, double c, acc_t* __restrict__ out) {
  const int64_t b = row0 + blockIdx.x;
  const cs_t* xr = x + b * D;
  const cs_t* mr = m + b * D;
  constexpr int kN = Vec16<cs_t>::kN;
  acc_t s = 0;
  const bool aligned = ((reinterpret_cast<uintptr_t>(xr) | reinterpret_cast<uintptr_t>(mr)) & 15) == 0;
  int64_t done = 0;
  if (aligned) {
    const int64_t nvec = D / kN;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      const uint4 rx = reinterpret_cast<const uint4*>(xr)[i];
      const uint4 rm = reinterpret_cast<const uint4*>(mr)[i];
      const cs_t* ex = reinterpret_cast<const cs_t*>(&rx);
      const cs_t* em = reinterpret_cast<const cs_t*>(&rm);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        const acc_t t = static_cast<acc_t>(to_float(ex[j])) - static_cast<acc_t>(to_float(em[j]));
        s += t * t;
      }
    }
    done = nvec * kN;
  }
  for (int64_t i = done + threadIdx.x; i < D; i += blockDim.x) {
    const acc_t t = static_cast<acc_t>(to_float(xr[i])) - static_cast<acc_t>(to_float(mr[i]));
    s += t * t;
  }
  __shared__ acc_t part[kGaussThreads / 32];
  s = wsum(s);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    acc_t t = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : acc_t(0);
    t = wsum(t);
    if (threadIdx.x == 0) out[b] = static_cast<acc_t>(c - 0.5 * inv_var * static_cast<double>(t));
  }
}

template <typename cs_t, typename acc_t>
__global__ void __launch_bounds__(kGaussThreads)
    gaussian_backward_kernel(const acc_t* __restrict__ grad, const cs_t* __restrict__ x, const cs_t* __restrict__ m,
                             int64_t B, int64_t D, double inv_var, bool aligned, cs_t* __restrict__ gx,
                             cs_t* __restrict__ gm) {
  constexpr int kN = Vec16<cs_t>::kN;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (aligned) {
    // D is a multiple of kN: a 16-byte vector never straddles two rows
    const int64_t nvec = B * D / kN;
    for (int64_t v = start; v < nvec; v += stride) {
      const int64_t b = v * kN / D;
      const acc_t s = static_cast<acc_t>(-static_cast<double>(grad[b]) * inv_var);
      const uint4 rx = reinterpret_cast<const uint4*>(x)[v];
      const uint4 rm = reinterpret_cast<const uint4*>(m)[v];
      const cs_t* ex = reinterpret_cast<const cs_t*>(&rx);
      const cs_t* em = reinterpret_cast<const cs_t*>(&rm);
      uint4 ox, om;
      cs_t* px = reinterpret_cast<cs_t*>(&ox);
      cs_t* pm = reinterpret_cast<cs_t*>(&om);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        const acc_t t = s * (static_cast<acc_t>(to_float(ex[j])) - static_cast<acc_t>(to_float(em[j])));
        px[j] = store_as<cs_t>(t);
        pm[j] = store_as<cs_t>(-t);
      }
      reinterpret_cast<uint4*>(gx)[v] = ox;
      reinterpret_cast<uint4*>(gm)[v] = om;
    }
    return;
  }
  for (int64_t e = start; e < B * D; e += stride) {
    const int64_t b = e / D;
    const acc_t s = static_cast<acc_t>(-static_cast<double>(grad[b]) * inv_var);
    const acc_t t = s * (static_cast<acc_t>(to_float(x[e])) - static_cast<acc_t>(to_float(m[e])));
    gx[e] = store_as<cs_t>(t);
    gm[e] = store_as<cs_t>(-t);
  }
}

// ---------------------------------------------------------------- entry points
#define LD_CUDA_DISPATCH(DTYPE, NAME, scalar_t, ...)                   \
  [&] {                                                                \
    if ((DTYPE) == ::softdec::ScalarType::Double) {                    \
      using scalar_t = double;                                         \
      return __VA_ARGS__();                                            \
    }                                                                  \
    return SOFTDEC_DISPATCH_FLOAT(DTYPE, NAME, scalar_t, __VA_ARGS__); \
  }()

inline unsigned row_blocks(int64_t B) { return static_cast<unsigned>((B + kRowsPerBlock - 1) / kRowsPerBlock); }

Tensor gumbel_log_density_cuda(Tensor logits, Tensor ids, Tensor y, Tensor nkept, Tensor temperature,
                               double noise_scale, double clamp_lo, double clamp_hi, double eps,
                               double min_log_weight, int64_t reduction) {
  ldc::check_sparse_inputs(logits, ids, y, "y", nkept, temperature, true);
  ldc::check_gumbel_scalars(noise_scale, clamp_lo, clamp_hi, eps, min_log_weight, reduction);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  const int64_t B = logits.size(0), V = logits.size(1), k = ids.size(1);
  const ScalarType acc = ldc::acc_dtype(logits.scalar_type());
  Tensor out = reduction == kNone ? new_empty(logits, {B, k}, acc) : new_empty(logits, {B}, acc);
  if (B == 0 || (reduction == kNone && k == 0)) return out;
  const GumbelParams p{noise_scale, clamp_lo, clamp_hi, eps, min_log_weight, static_cast<int>(reduction)};
  const int64_t ld = B > 1 ? logits.stride(0) : V;
  LD_CUDA_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    using cs_t = typename CudaNative<scalar_t>::type;
    using acc_t = typename AccT<scalar_t>::type;
    gumbel_forward_kernel<cs_t, acc_t><<<row_blocks(B), kForwardThreads, 0, current_stream(logits)>>>(
        reinterpret_cast<const cs_t*>(logits.const_data_ptr<scalar_t>()), ld, V, ids.const_data_ptr<int64_t>(), k,
        y.const_data_ptr<acc_t>(), nkept.const_data_ptr<int64_t>(), temperature.const_data_ptr<double>(), p, B,
        out.mutable_data_ptr<acc_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<Tensor, Tensor> gumbel_log_density_backward_cuda(Tensor grad, Tensor logits, Tensor ids, Tensor y,
                                                            Tensor nkept, Tensor temperature, double noise_scale,
                                                            double clamp_lo, double clamp_hi, double eps,
                                                            double min_log_weight, int64_t reduction) {
  ldc::check_sparse_inputs(logits, ids, y, "y", nkept, temperature, true);
  ldc::check_gumbel_scalars(noise_scale, clamp_lo, clamp_hi, eps, min_log_weight, reduction);
  const int64_t B = logits.size(0), V = logits.size(1), k = ids.size(1);
  ldc::check_grad(grad, logits, B, k, reduction == kNone);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  const ScalarType acc = ldc::acc_dtype(logits.scalar_type());
  Tensor gl = new_empty(logits, {B, V}, logits.scalar_type());
  Tensor gy = new_empty(logits, {B, k}, acc);
  if (B == 0) return {gl, gy};
  const GumbelParams p{noise_scale, clamp_lo, clamp_hi, eps, min_log_weight, static_cast<int>(reduction)};
  const int64_t ld = B > 1 ? logits.stride(0) : V;
  LD_CUDA_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    using cs_t = typename CudaNative<scalar_t>::type;
    using acc_t = typename AccT<scalar_t>::type;
    for (int64_t row0 = 0; row0 < B; row0 += kMaxGrid) {
      const int64_t rows = B - row0 < kMaxGrid ? B - row0 : kMaxGrid;
      gumbel_backward_kernel<cs_t, acc_t><<<static_cast<unsigned>(rows), kBackwardThreads, 0,
                                            current_stream(logits)>>>(
          grad.const_data_ptr<acc_t>(), reinterpret_cast<const cs_t*>(logits.const_data_ptr<scalar_t>()), ld, V,
          ids.const_data_ptr<int64_t>(), k, y.const_data_ptr<acc_t>(), nkept.const_data_ptr<int64_t>(),
          temperature.const_data_ptr<double>(), p, row0, reinterpret_cast<cs_t*>(gl.mutable_data_ptr<scalar_t>()),
          gy.mutable_data_ptr<acc_t>());
      SOFTDEC_CUDA_LAUNCH_CHECK();
    }
  });
  return {gl, gy};
}

Tensor dirichlet_log_density_cuda(Tensor logits, Tensor ids, Tensor weights, Tensor nkept, Tensor temperature,
                                  double alpha) {
  ldc::check_sparse_inputs(logits, ids, weights, "weights", nkept, temperature, true);
  ldc::check_alpha(alpha);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  const int64_t B = logits.size(0), V = logits.size(1), k = ids.size(1);
  Tensor out = new_empty(logits, {B}, ldc::acc_dtype(logits.scalar_type()));
  if (B == 0) return out;
  const int64_t ld = B > 1 ? logits.stride(0) : V;
  LD_CUDA_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    using cs_t = typename CudaNative<scalar_t>::type;
    using acc_t = typename AccT<scalar_t>::type;
    dirichlet_forward_kernel<cs_t, acc_t><<<row_blocks(B), kForwardThreads, 0, current_stream(logits)>>>(
        reinterpret_cast<const cs_t*>(logits.const_data_ptr<scalar_t>()), ld, V, ids.const_data_ptr<int64_t>(), k,
        weights.const_data_ptr<acc_t>(), nkept.const_data_ptr<int64_t>(), temperature.const_data_ptr<double>(),
        alpha, B, out.mutable_data_ptr<acc_t>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<Tensor, Tensor> dirichlet_log_density_backward_cuda(Tensor grad, Tensor logits, Tensor ids,
                                                               Tensor weights, Tensor nkept, Tensor temperature,
                                                               double alpha) {
  ldc::check_sparse_inputs(logits, ids, weights, "weights", nkept, temperature, true);
  ldc::check_alpha(alpha);
  const int64_t B = logits.size(0), V = logits.size(1), k = ids.size(1);
  ldc::check_grad(grad, logits, B, k, false);
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  const ScalarType acc = ldc::acc_dtype(logits.scalar_type());
  Tensor gl = new_empty(logits, {B, V}, logits.scalar_type());
  Tensor gw = new_empty(logits, {B, k}, acc);
  if (B == 0) return {gl, gw};
  const int64_t ld = B > 1 ? logits.stride(0) : V;
  LD_CUDA_DISPATCH(logits.scalar_type(), "logits", scalar_t, [&] {
    using cs_t = typename CudaNative<scalar_t>::type;
    using acc_t = typename AccT<scalar_t>::type;
    for (int64_t row0 = 0; row0 < B; row0 += kMaxGrid) {
      const int64_t rows = B - row0 < kMaxGrid ? B - row0 : kMaxGrid;
      dirichlet_backward_kernel<cs_t, acc_t><<<static_cast<unsigned>(rows), kBackwardThreads, 0,
                                               current_stream(logits)>>>(
          grad.const_data_ptr<acc_t>(), reinterpret_cast<const cs_t*>(logits.const_data_ptr<scalar_t>()), ld, V,
          ids.const_data_ptr<int64_t>(), k, weights.const_data_ptr<acc_t>(), nkept.const_data_ptr<int64_t>(),
          temperature.const_data_ptr<double>(), alpha, row0,
          reinterpret_cast<cs_t*>(gl.mutable_data_ptr<scalar_t>()), gw.mutable_data_ptr<acc_t>());
      SOFTDEC_CUDA_LAUNCH_CHECK();
    }
  });
  return {gl, gw};
}

Tensor gaussian_log_density_cuda(Tensor x, Tensor mean, double std_) {
  ldc::check_gaussian_inputs(x, mean, std_);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const int64_t B = x.size(0), D = x.size(1);
  Tensor out = new_empty(x, {B}, ldc::acc_dtype(x.scalar_type()));
  if (B == 0) return out;
  const double inv_var = 1.0 / (std_ * std_);
  const double c = -static_cast<double>(D) * (std::log(std_) + kHalfLog2Pi);
  LD_CUDA_DISPATCH(x.scalar_type(), "x", scalar_t, [&] {
    using cs_t = typename CudaNative<scalar_t>::type;
    using acc_t = typename AccT<scalar_t>::type;
    for (int64_t row0 = 0; row0 < B; row0 += kMaxGrid) {
      const int64_t rows = B - row0 < kMaxGrid ? B - row0 : kMaxGrid;
      gaussian_forward_kernel<cs_t, acc_t><<<static_cast<unsigned>(rows), kGaussThreads, 0, current_stream(x)>>>(
          reinterpret_cast<const cs_t*>(x.const_data_ptr<scalar_t>()),
          reinterpret_cast<const cs_t*>(mean.const_data_ptr<scalar_t>()), D, row0, inv_var, c,
          out.mutable_data_ptr<acc_t>());
      SOFTDEC_CUDA_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<Tensor, Tensor> gaussian_log_density_backward_cuda(Tensor grad, Tensor x, Tensor mean, double std_) {
  ldc::check_gaussian_inputs(x, mean, std_);
  const int64_t B = x.size(0), D = x.size(1);
  SOFTDEC_CHECK(grad.dim() == 1 && grad.size(0) == B, "grad must have shape (", B, ",), got ", shape_str(grad));
  check_dtype(grad, "grad", ldc::acc_dtype(x.scalar_type()));
  check_same_device(x, "x", grad, "grad");
  check_contiguous(grad, "grad");
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor gx = new_empty(x, {B, D}, x.scalar_type());
  Tensor gm = new_empty(x, {B, D}, x.scalar_type());
  if (B == 0 || D == 0) return {gx, gm};
  const double inv_var = 1.0 / (std_ * std_);
  LD_CUDA_DISPATCH(x.scalar_type(), "x", scalar_t, [&] {
    using cs_t = typename CudaNative<scalar_t>::type;
    using acc_t = typename AccT<scalar_t>::type;
    constexpr int kN = Vec16<cs_t>::kN;
    const cs_t* xp = reinterpret_cast<const cs_t*>(x.const_data_ptr<scalar_t>());
    const cs_t* mp = reinterpret_cast<const cs_t*>(mean.const_data_ptr<scalar_t>());
    cs_t* gxp = reinterpret_cast<cs_t*>(gx.mutable_data_ptr<scalar_t>());
    cs_t* gmp = reinterpret_cast<cs_t*>(gm.mutable_data_ptr<scalar_t>());
    const bool aligned = D % kN == 0 && ((reinterpret_cast<uintptr_t>(xp) | reinterpret_cast<uintptr_t>(mp) |
                                          reinterpret_cast<uintptr_t>(gxp) | reinterpret_cast<uintptr_t>(gmp)) &
                                         15) == 0;
    const int64_t work = aligned ? B * D / kN : B * D;
    int64_t grid = (work + kGaussThreads - 1) / kGaussThreads;
    grid = grid < 65535 * 8 ? grid : 65535 * 8;
    gaussian_backward_kernel<cs_t, acc_t><<<static_cast<unsigned>(grid), kGaussThreads, 0, current_stream(x)>>>(
        grad.const_data_ptr<acc_t>(), xp, mp, B, D, inv_var, aligned, gxp, gmp);
    SOFTDEC_CUDA_LAUNCH_CHECK();
  });
  return {gx, gm};
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("gumbel_log_density", TORCH_BOX(&softdec::gumbel_log_density_cuda));
  m.impl("gumbel_log_density_backward", TORCH_BOX(&softdec::gumbel_log_density_backward_cuda));
  m.impl("dirichlet_log_density", TORCH_BOX(&softdec::dirichlet_log_density_cuda));
  m.impl("dirichlet_log_density_backward", TORCH_BOX(&softdec::dirichlet_log_density_backward_cuda));
  m.impl("gaussian_log_density", TORCH_BOX(&softdec::gaussian_log_density_cuda));
  m.impl("gaussian_log_density_backward", TORCH_BOX(&softdec::gaussian_log_density_backward_cuda));
}
