// Soft Thinking concept tokens: the per-row math shared by the CPU and CUDA
// backends of softdec.soft_mixture (no torch headers; raw pointers only).
//
// Per row, with x = logits / T (the kernels scan raw logits l and scale by
// t = 1 / T):
//   online softmax state over the vocabulary, rescaled when the max grows:
//     m = max l,  S = sum e^{(l - m) t},  A = sum e^{(l - m) t} (l - m) t
//   so that  lse(x) = m t + log S,  entropy H = log S - A / S,  max p = 1 / S.
//   A running top-k of (l, id), ordered by l descending, ties lower id first
//   (the project-wide tie rule); -inf logits never enter it.
// Then finalize_row(): top-k renormalise, top-p, min-p, noise, final sort.
//
// RNG layout (binding; the float64 reference reproduces it exactly):
//   * Gumbel: the noise of kept token `id` is element `id` of the row's
//     (seed, offset) Philox stream: G = -log(-log u(seed, offset, id)),
//     then clamped to [gumbel_lo, gumbel_hi] (SofT-GRPO: [-1.5, 3]).
//     It does not depend on the token's rank.
//   * Dirichlet: Gamma(a) by Marsaglia-Tsang; attempt t (0 <= t < 16) of token
//     `id` uses the four uniforms of Philox block id * 16 + t (stream elements
//     4 (id * 16 + t) + {0, 1, 2, 3}): u0, u1 -> a normal by Box-Muller
//     (n = sqrt(-2 log u0) cos(2 pi u1)), u2 -> the acceptance test; lane 3 of
//     attempt 0 is the boost uniform for a < 1 (Gamma(a) = Gamma(a + 1) u^(1/a)).
//     When all 16 attempts are rejected (probability < 1e-20) the draw is
//     d = a' - 1/3. Computed in float64 on both backends.
#pragma once

#include <cstdint>

#include "softdec/macros.h"
#include "softdec/philox.h"

#if !defined(__CUDACC__)
#include <cmath>
#endif

namespace softdec {
namespace soft {

constexpr int kMaxTopK = 256;
// First Philox block of the embedding noise (block 2^63 + d for column d): far
// above the Gumbel (elements < V) and Dirichlet (blocks < 16 V) counters.
constexpr uint64_t kNormalBlock0 = uint64_t(1) << 63;
constexpr int kGammaAttempts = 16;

enum Noise : int32_t { kNoNoise = 0, kGumbel = 1, kDirichlet = 2 };

// Clamp for scaled log-ratios: below it e^z is 0 in T, and z * e^z stays 0
// instead of -inf * 0 = NaN.
template <typename T>
SOFTDEC_HD T z_floor();
template <>
SOFTDEC_HD float z_floor<float>() { return -150.0f; }
template <>
SOFTDEC_HD double z_floor<double>() { return -1.0e4; }

// 1 / T in T, clamped to the largest finite value: a tiny temperature (1 / T
// overflowing T) behaves as its limit instead of producing inf * 0 = NaN.
template <typename T>
SOFTDEC_HD T inv_temperature(double temperature);
template <>
SOFTDEC_HD float inv_temperature<float>(double temperature) {
  const double t = 1.0 / temperature;
  return t < 3.4028234663852886e38 ? static_cast<float>(t) : 3.4028234663852886e38f;
}
template <>
SOFTDEC_HD double inv_temperature<double>(double temperature) {
  const double t = 1.0 / temperature;
  return t < 1.7976931348623157e308 ? t : 1.7976931348623157e308;
}

template <typename T>
SOFTDEC_HD T sm_exp(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}
template <typename T>
SOFTDEC_HD T sm_log(T x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}
template <typename T>
SOFTDEC_HD T sm_max(T a, T b) { return a > b ? a : b; }

// (va, ia) ranks before (vb, ib): larger value first, ties lower id first.
template <typename T>
SOFTDEC_HD bool ranks_before(T va, int64_t ia, T vb, int64_t ib) {
  return va > vb || (va == vb && ia < ib);
}

// Insert (v, id) into the sorted list (vals, ids) of n <= k entries; returns the
// new length. Entries that would rank beyond k are dropped.
template <typename T>
SOFTDEC_HD int topk_insert(T* vals, int64_t* ids, int n, int k, T v, int64_t id) {
  if (n == k && !ranks_before(v, id, vals[k - 1], ids[k - 1])) return n;
  int j = n < k ? n : k - 1;
  while (j > 0 && ranks_before(v, id, vals[j - 1], ids[j - 1])) {
    vals[j] = vals[j - 1];
    ids[j] = ids[j - 1];
    --j;
  }
  vals[j] = v;
  ids[j] = id;
  return n < k ? n + 1 : n;
}

// The online softmax state of one vocabulary slice (see the top of the file).
template <typename T>
struct SoftmaxState {
  T m;  // max raw logit seen (lowest finite value when none)
  T s;  // sum e^{(l - m) t}
  T a;  // sum e^{(l - m) t} (l - m) t
};

// Fold state b into a (both with the same t > 0).
template <typename T>
SOFTDEC_HD void softmax_merge(SoftmaxState<T>& a, const SoftmaxState<T>& b, T t) {
  const T m = sm_max(a.m, b.m);
  const T da = sm_max((a.m - m) * t, z_floor<T>());
  const T db = sm_max((b.m - m) * t, z_floor<T>());
  const T ea = sm_exp(da), eb = sm_exp(db);
  a.a = ea * (a.a + da * a.s) + eb * (b.a + db * b.s);
  a.s = ea * a.s + eb * b.s;
  a.m = m;
}

// Entropy, max-prob and log-sum-exp of a row from its merged softmax state
// (t = 1/T; cold = T == 0, the one-hot argmax row).
template <typename T>
SOFTDEC_HD void row_stats(const SoftmaxState<T>& st, T t, bool cold, T* h, T* mp, T* lse) {
  if (cold) {
    *h = T(0);
    *mp = T(1);
    *lse = T(0);
    return;
  }
  const T logS = sm_log(st.s);
  *h = logS - st.a / st.s;
  *mp = T(1) / st.s;
  *lse = st.m * t + logS;
}

// One element into the state (the scalar path).
template <typename T>
SOFTDEC_HD void softmax_push(SoftmaxState<T>& st, T l, T t) {
  if (l > st.m) {
    const T d = sm_max((st.m - l) * t, z_floor<T>());
    const T e = sm_exp(d);
    st.a = e * (st.a + d * st.s);
    st.s = e * st.s;
    st.m = l;
  }
  const T z = sm_max((l - st.m) * t, z_floor<T>());
  const T e = sm_exp(z);
  st.s += e;
  st.a += e * z;
}

// Gamma(a) for a > 0 (0 for a <= 0) from the row's Philox stream, token `id`.
SOFTDEC_HD double soft_gamma(double a, uint64_t seed, uint64_t offset, int64_t id) {
  if (!(a > 0.0)) return 0.0;
  const bool boost = a < 1.0;
  const double ap = boost ? a + 1.0 : a;
  const double d = ap - 1.0 / 3.0;
#if defined(__CUDA_ARCH__)
  const double c = 1.0 / ::sqrt(9.0 * d);
#else
  const double c = 1.0 / std::sqrt(9.0 * d);
#endif
  double g = d;
  double boost_u = 0.5;
  for (int t = 0; t < kGammaAttempts; ++t) {
    const philox::U32x4 blk = philox::block(
        seed, offset, static_cast<uint64_t>(id) * kGammaAttempts + static_cast<uint64_t>(t));
    const double u0 = philox::to_unit_float(blk.v[0]);
    const double u1 = philox::to_unit_float(blk.v[1]);
    const double u2 = philox::to_unit_float(blk.v[2]);
    if (t == 0) boost_u = philox::to_unit_float(blk.v[3]);
#if defined(__CUDA_ARCH__)
    const double n = ::sqrt(-2.0 * ::log(u0)) * ::cos(6.283185307179586 * u1);
#else
    const double n = std::sqrt(-2.0 * std::log(u0)) * std::cos(6.283185307179586 * u1);
#endif
    const double b = 1.0 + c * n;
    const double v = b * b * b;
    if (!(v > 0.0)) continue;
    if (sm_log(u2) < 0.5 * n * n + d - d * v + d * sm_log(v)) {
      g = d * v;
      break;
    }
  }
  if (boost) {
#if defined(__CUDA_ARCH__)
    // u^(1/a) as exp(log(u) / a): ::pow's accurate path is a non-inlined callee that
    // spills on sm_90a (make cuda-check); equal to std::pow up to double rounding
    g *= ::exp(::log(boost_u) / a);
#else
    g *= std::pow(boost_u, 1.0 / a);
#endif
  }
  return g;
}

// Standard normal eps_d of column d of the row's (seed, offset) stream (the
// Gaussian embedding noise, softdec.philox_normal): Philox block 2^63 + d,
// u0, u1 = (bits + 0.5) / 2^32 of lanes 0, 1, eps = sqrt(-2 log u0) cos(2 pi u1)
// in float64, rounded to float32.
SOFTDEC_HD float embed_normal(uint64_t seed, uint64_t offset, uint64_t d) {
  const philox::U32x4 blk = philox::block(seed, offset, kNormalBlock0 + d);
  const double u0 = philox::to_unit_double(blk.v[0]);
  const double u1 = philox::to_unit_double(blk.v[1]);
#if defined(__CUDA_ARCH__)
  return static_cast<float>(::sqrt(-2.0 * ::log(u0)) * ::cos(6.283185307179586 * u1));
#else
  return static_cast<float>(std::sqrt(-2.0 * std::log(u0)) * std::cos(6.283185307179586 * u1));
#endif
}

// Per-row parameters of finalize_row.
struct RowParams {
  double temperature;  // T >= 0 (0: one-hot argmax)
  int64_t top_k;       // the output width of the row (<= k)
  int64_t filter_top_k;  // candidates kept before top-p (>= top_k; 0: the whole vocabulary)
  double vocab_mass;   // sum e^{(l - max l) t} over the vocabulary (filter_top_k = 0)
  double top_p;        // (0, 1]
  double min_p;        // [0, 1]
  uint64_t seed, offset;
  int32_t noise;       // Noise
  double tau, noise_scale, dirichlet_alpha;
  // Gumbel options (SofT-GRPO): G clamped to [gumbel_lo, gumbel_hi] (+-inf: no
  // clamp) and y = log(w + gumbel_eps) + noise_scale * G (0: log w).
  double gumbel_lo, gumbel_hi, gumbel_eps;
};

// Filtering, noise and the final order of one row.
//   cand_v/cand_id: the n (<= max(k, filter_top_k)) candidates, raw logits sorted by ranks_before;
//   all finite or +-; -inf never present.
// Writes k entries of ids / w / noisy (padding: the top id, weight 0, -inf) and
// returns the number kept (>= 1 when n >= 1).
template <typename T>
SOFTDEC_HD int finalize_row(const T* cand_v, const int64_t* cand_id, int n, int k,
                            const RowParams& p, int64_t* ids, T* w, T* noisy) {
  int kept = 0;
  const T ninf = -static_cast<T>(INFINITY);
  if (n > 0) {
    if (p.temperature == 0.0) {  // one-hot argmax
      kept = 1;
      ids[0] = cand_id[0];
      w[0] = T(1);
    } else {
      const T t = inv_temperature<T>(p.temperature);
      // The filter set: the first `limit` candidates (filter_top_k of them, or
      // all n when the filter is the whole vocabulary), with mass F; the output
      // keeps at most outk = min(top_k, limit) of them. Every stage keeps a
      // prefix of the same order, so only the cuts matter: top-p on the
      // F-renormalised weights, min-p (a ratio, renormalisation-invariant),
      // then the top_k cut. With filter_top_k == top_k (the default) this is
      // the former top-k -> top-p -> min-p chain, bit for bit.
      const bool whole = p.filter_top_k == 0;
      const int limit = (whole || n < p.filter_top_k) ? n : static_cast<int>(p.filter_top_k);
      const int outk = limit < p.top_k ? limit : static_cast<int>(p.top_k);
      T sum = 0;
      for (int i = 0; i < outk; ++i) {
        ids[i] = cand_id[i];
        w[i] = sm_exp(sm_max((cand_v[i] - cand_v[0]) * t, z_floor<T>()));
        sum += w[i];
      }
      for (int i = outk; i < limit && !whole; ++i)
        sum += sm_exp(sm_max((cand_v[i] - cand_v[0]) * t, z_floor<T>()));
      if (whole) sum = static_cast<T>(p.vocab_mass);
      for (int i = 0; i < outk; ++i) w[i] /= sum;
      kept = outk;
      bool normalised = outk == limit && !whole;  // the kept weights sum to 1
      if (p.top_p < 1.0) {  // smallest prefix whose mass reaches top_p
        T cum = 0;
        int j = 0;
        while (j < limit && cum < static_cast<T>(p.top_p)) {
          cum += j < outk ? w[j] : sm_exp(sm_max((cand_v[j] - cand_v[0]) * t, z_floor<T>())) / sum;
          ++j;
        }
        const bool reached = !(cum < static_cast<T>(p.top_p));
        if (j <= outk && (reached || !whole)) {
          kept = j;
          for (int i = 0; i < kept; ++i) w[i] /= cum;
          normalised = true;
        }
      }
      if (p.min_p > 0.0) {  // drop w < min_p * max w (a suffix: w is sorted)
        const T thr = static_cast<T>(p.min_p) * w[0];
        int j = 1;
        while (j < kept && w[j] >= thr) ++j;
        if (j < kept || !normalised) {
          kept = j;
          T s2 = 0;
          for (int i = 0; i < kept; ++i) s2 += w[i];
          for (int i = 0; i < kept; ++i) w[i] /= s2;
          normalised = true;
        }
      }
      if (!normalised) {  // the top_k cut of a wider filter set
        T s2 = 0;
        for (int i = 0; i < kept; ++i) s2 += w[i];
        for (int i = 0; i < kept; ++i) w[i] /= s2;
      }
    }
    {
      for (int i = 0; i < kept; ++i) noisy[i] = ninf;
      if (p.noise == kGumbel) {
        T ymax = ninf;
        for (int i = 0; i < kept; ++i) {
          const T u = static_cast<T>(philox::uniform(p.seed, p.offset, static_cast<uint64_t>(ids[i])));
          T g = -sm_log(-sm_log(u));
          g = g < static_cast<T>(p.gumbel_lo) ? static_cast<T>(p.gumbel_lo) : g;
          g = g > static_cast<T>(p.gumbel_hi) ? static_cast<T>(p.gumbel_hi) : g;
          noisy[i] = sm_log(w[i] + static_cast<T>(p.gumbel_eps)) + static_cast<T>(p.noise_scale) * g;
          ymax = sm_max(ymax, noisy[i]);
        }
        const T itau = T(1) / static_cast<T>(p.tau);
        T s2 = 0;
        for (int i = 0; i < kept; ++i) {
          w[i] = noisy[i] == ninf ? T(0) : sm_exp((noisy[i] - ymax) * itau);
          s2 += w[i];
        }
        for (int i = 0; i < kept; ++i) w[i] /= s2;
      } else if (p.noise == kDirichlet) {
#if defined(__CUDA_ARCH__)
        // No kMaxTopK-entry array on a GPU thread's stack (the driver reserves a thread's
        // stack for every resident thread): the gamma draws are a pure function of
        // (alpha w_i, seed, offset, id_i), so the second pass draws them again, bit for bit.
        double tot = 0;
        for (int i = 0; i < kept; ++i)
          tot += soft_gamma(p.dirichlet_alpha * static_cast<double>(w[i]), p.seed, p.offset, ids[i]);
        if (tot > 0) {
          for (int i = 0; i < kept; ++i)
            w[i] = static_cast<T>(
                soft_gamma(p.dirichlet_alpha * static_cast<double>(w[i]), p.seed, p.offset, ids[i]) / tot);
        }
#else
        double gs[kMaxTopK];
        double tot = 0;
        for (int i = 0; i < kept; ++i) {
          gs[i] = soft_gamma(p.dirichlet_alpha * static_cast<double>(w[i]), p.seed, p.offset, ids[i]);
          tot += gs[i];
        }
        if (tot > 0) {
          for (int i = 0; i < kept; ++i) w[i] = static_cast<T>(gs[i] / tot);
        }
#endif
      }
      if (p.noise != kNoNoise) {  // re-sort: weight descending, ties lower id first
        for (int i = 1; i < kept; ++i) {
          const T wv = w[i], yv = noisy[i];
          const int64_t iv = ids[i];
          int j = i;
          while (j > 0 && ranks_before(wv, iv, w[j - 1], ids[j - 1])) {
            w[j] = w[j - 1];
            ids[j] = ids[j - 1];
            noisy[j] = noisy[j - 1];
            --j;
          }
          w[j] = wv;
          ids[j] = iv;
          noisy[j] = yv;
        }
      }
    }
  }
  const int64_t pad = kept > 0 ? ids[0] : 0;
  for (int i = kept; i < k; ++i) {
    ids[i] = pad;
    w[i] = T(0);
    noisy[i] = ninf;
  }
  return kept;
}

}  // namespace soft
}  // namespace softdec
