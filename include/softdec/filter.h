// Project-wide filtering semantics of a row of logits: temperature softmax,
// then top-k, then top-p, then min-p, each followed by renormalisation.
// Shared by sampling, verification and soft mixtures so that every op keeps the
// same token set. Header-only, no torch headers; SOFTDEC_HD (host + device).
//
// ---------------------------------------------------------------------------
// Semantics (binding for every softdec op that filters):
//
//   z_i = x_i / T                   (T > 0; T = 0 means greedy, see below)
//   p_i = softmax(z)_i
//   order: i comes before j iff x_i > x_j, or x_i == x_j and i < j
//          (value descending, ties: lower vocabulary index first; -0.0 == +0.0)
//   1. top-k (k in [1, V)): keep the first k tokens of the order; k = 0 or
//      k >= V keeps every token (k > V is treated as V).
//   2. top-p (top_p < 1): on the top-k-renormalised distribution, keep the
//      smallest prefix of the order whose mass reaches top_p * (top-k mass);
//      at least one token (top_p = 0 keeps the top token).
//   3. min-p (min_p > 0): keep p_i >= min_p * max p, evaluated as
//      (x_i - m) * (1/T) >= log(min_p) with m the row max (min_p = 1 keeps the
//      tokens equal to the max).
//   The kept set is a prefix of the order intersected with the min-p set, so
//   it is described by one cut (cut_value, cut_index) plus the min-p bound:
//
//      kept(i) = x_i finite
//                && (x_i > cut_value || (x_i == cut_value && i <= cut_index))
//                && (x_i - m) * inv_temp >= log_min_p
//
//   Filtered probability: p'(i) = exp((x_i - m) * inv_temp - log_norm) if kept.
//
//   Greedy (T = 0): the kept set is the argmax alone (lowest index among ties).
//   Invalid rows: a row with a NaN, a +inf, or no finite logit has valid = 0;
//   its argmax is 0, nothing is kept (kept() is false everywhere).
//
// Numerics: token masses are e_i = fexp((x_i - m) * inv_temp) in float32
// (fexp below: one bit-exact formula on CPU and CUDA). The top-p decisions of
// the O(V) cuts (detail::generic_cut / select_nth, the CPU's top_p_cut and the
// CUDA block selection) sum them in fixed point (see "top-p masses in fixed
// point"): q_i = floor(e_i * 2^shift) as uint64, integer sums that are exact in
// any order, compared with ceil(top_p * total) exactly -- so every backend and
// every thread layout finds the same cut (a token's mass below 2^-shift of the
// scale counts as 0; shift >= 31 for V < 2^31, about 45 at V = 151936). The
// top-k candidate rule (top_p_prefix, at most a few thousand sorted masses)
// sums in double in the filter order. The normaliser Z of the kept set (norm,
// log_norm) is summed exactly (MassSum: integer digit sums, rounded once), so
// it too is the same on every backend, path and thread layout.
//
// ---------------------------------------------------------------------------
// API (stable; extend, don't break):
//
//   struct Params { float temperature; int64_t top_k; float top_p; float min_p; }
//   struct RowFilter { valid, argmax, max_logit, inv_temp, cut_value, cut_index,
//                      log_min_p, num_kept, log_norm, norm }
//   MassSum / mass_digits / inv_norm   the kept mass Z by the exact rule (see "the kept
//                      mass Z, exactly"): one value on every path, backend and split
//
//   compute_row_filter<Load>(load, V, params)     -> RowFilter   (serial, generic)
//   compute_prob_filter<Load>(load, V, k, top_p, min_p) -> ProbFilter
//       the same on a row of probabilities (mass = value itself, no softmax;
//       zeros never kept); test membership with kept_probs(f, p, i), the kept
//       mass is f.norm.
//   token_mass(x, m, inv_temp) -> float   fexp((x - m) * inv_temp), the mass unit
//   log_min_p_of(min_p)        -> float   flog(min_p), -inf for min_p = 0
//   finish_from_sorted(f, values, indices, n, min_p)
//   finish_from_sorted_by(f, value_at, index_at, n, min_p)  (accessor form, same arithmetic)
//       fill the cut / log_norm from a kept prefix given as sorted candidates
//   detail::select_nth(...)    radix selection by count or by mass (reusable)
//   kept(f, x, i)          -> bool     is token i (logit x) in the kept set
//   log_prob(f, x, i)      -> float    log p'(i), -inf when filtered out
//   prob(f, x, i)          -> float    p'(i), 0 when filtered out
//   order_key(x)           -> uint32   monotone key of x (for radix selection)
//   before(xa, ia, xb, ib) -> bool     the total order above
//   top_p_prefix(masses, n, top_p) -> int64   prefix length for sorted masses
//   top_p_prefix_by(mass_at, n, top_p)          (accessor form, same arithmetic)
//   flog / fexp            bit-identical float log / exp on host and device
//   gumbel(u) = -flog(-flog(u))       the Gumbel noise every op uses
//
// `Load` is any callable `float load(int64_t i)` returning logit i as float
// (so bf16/fp16/strided rows work unchanged). compute_row_filter does a few
// O(V) passes with radix selection (256-bucket histograms, no allocation) and
// is the reference-grade implementation usable anywhere, including one CUDA
// thread; fast kernels may compute the same cut differently (e.g. from a
// sorted candidate list) and fill RowFilter with finish_from_sorted().
#pragma once

#include <cstdint>

#include "softdec/macros.h"

#if !defined(__CUDACC__)
#include <cmath>
#include <cstring>
#include <limits>
#endif

namespace softdec {
namespace filter {

// ------------------------------------------------------------------ float utils

SOFTDEC_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

SOFTDEC_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

SOFTDEC_HD float ffma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

SOFTDEC_HD float inf_f() { return bits_float(0x7f800000u); }
SOFTDEC_HD bool is_finite_f(float x) { return (float_bits(x) & 0x7f800000u) != 0x7f800000u; }
SOFTDEC_HD bool is_nan_f(float x) { return x != x; }

// Monotone unsigned key: x < y  <=>  order_key(x) < order_key(y) (with -0.0
// mapped to +0.0 so they tie). NaN is never passed here.
SOFTDEC_HD uint32_t order_key(float x) {
  uint32_t u = float_bits(x + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

SOFTDEC_HD float key_float(uint32_t k) {
  return bits_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The total order of the filter: value descending, then index ascending.
SOFTDEC_HD bool before(float xa, int64_t ia, float xb, int64_t ib) {
  return xa > xb || (xa == xb && ia < ib);
}

// Natural log of a positive normal float (Cephes logf polynomial), written with
// explicit fused multiply-adds so the CPU scalar, CPU AVX-512 (sampling.cpp
// mirrors it op for op) and CUDA results are bit-identical.
SOFTDEC_HD float flog(float x) {
  const uint32_t b = float_bits(x);
  int e = static_cast<int>((b >> 23) & 0xffu) - 127;
  float m = bits_float((b & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  if (m > 1.41421356f) {
    m = m * 0.5f;
    e += 1;
  }
  const float f = m - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = ffma(y, f, -1.1514610310e-1f);
  y = ffma(y, f, 1.1676998740e-1f);
  y = ffma(y, f, -1.2420140846e-1f);
  y = ffma(y, f, 1.4249322787e-1f);
  y = ffma(y, f, -1.6668057665e-1f);
  y = ffma(y, f, 2.0000714765e-1f);
  y = ffma(y, f, -2.4999993993e-1f);
  y = ffma(y, f, 3.3333331174e-1f);
  const float fe = static_cast<float>(e);
  y = (y * f) * z;
  y = ffma(fe, -2.12194440e-4f, y);
  y = ffma(-0.5f, z, y);
  float r = f + y;
  r = ffma(fe, 0.693359375f, r);
  return r;
}

// exp(x) for x <= 0 (Cephes expf polynomial, explicit FMAs); 0 below -87.
SOFTDEC_HD float fexp(float x) {
  if (!(x > -87.0f)) return 0.0f;
  if (x > 88.0f) x = 88.0f;
  const float t = ffma(x, 1.44269504088896341f, 0.5f);
  int ti = static_cast<int>(t);  // truncation, then floor
  if (static_cast<float>(ti) > t) --ti;
  const float n = static_cast<float>(ti);
  float r = ffma(n, -0.693359375f, x);
  r = ffma(n, 2.12194440e-4f, r);
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = ffma(p, r, 1.3981999507e-3f);
  p = ffma(p, r, 8.3334519073e-3f);
  p = ffma(p, r, 4.1665795894e-2f);
  p = ffma(p, r, 1.6666665459e-1f);
  p = ffma(p, r, 5.0000001201e-1f);
  p = ffma(p, r2, r);
  p = p + 1.0f;
  const int ni = static_cast<int>(n);
  return p * bits_float(static_cast<uint32_t>(ni + 127) << 23);
}

// 2^x (Cephes exp2f polynomial on [-1/2, 1/2], explicit FMAs, ~1 ulp) for
// x <= 0; exactly 0 for x <= -125 (so results are never subnormal).
SOFTDEC_HD float fexp2(float x) {
  if (!(x > -125.0f)) return 0.0f;
  if (x > 0.0f) x = 0.0f;
#if defined(__CUDA_ARCH__)
  const float n = rintf(x);  // nearest, ties to even
#else
  const float n = std::nearbyint(x);
#endif
  const float r = x - n;  // exact, |r| <= 1/2
  float p = 1.5403530393381609e-4f;
  p = ffma(p, r, 1.3333558146428443e-3f);
  p = ffma(p, r, 9.6181291076284772e-3f);
  p = ffma(p, r, 5.5504108664821580e-2f);
  p = ffma(p, r, 2.4022650695910071e-1f);
  p = ffma(p, r, 6.9314718055994531e-1f);
  p = ffma(p, r, 1.0f);
  return p * bits_float(static_cast<uint32_t>(static_cast<int>(n) + 127) << 23);
}

// The mass softdec.sample draws a token with: 2^((x - m) * c), c = draw_scale(1/T).
SOFTDEC_HD float draw_scale(float inv_temp) { return inv_temp * 1.44269504088896341f; }
SOFTDEC_HD float draw_mass(float x, float m, float c) { return fexp2((x - m) * c); }

// Standard Gumbel noise of a uniform u in (0, 1) (the Philox stream's range).
SOFTDEC_HD float gumbel(float u) { return -flog(-flog(u)); }

// ------------------------------------------------------------------ parameters

struct Params {
  float temperature = 1.0f;  // >= 0; 0 = greedy
  int64_t top_k = 0;         // 0 = off; >= V = off
  float top_p = 1.0f;        // in [0, 1]; 1 = off
  float min_p = 0.0f;        // in [0, 1]; 0 = off
};

struct RowFilter {
  int32_t valid = 0;        // 0: NaN / +inf / no finite logit
  int64_t argmax = 0;       // index of the max logit, lowest among ties (0 if invalid)
  float max_logit = 0.0f;   // m
  float inv_temp = 1.0f;    // 1/T (0 for greedy)
  float cut_value = 0.0f;   // last kept token of the top-k/top-p prefix: its logit ...
  int64_t cut_index = -1;   // ... and its index (ties at cut_value kept up to it)
  float log_min_p = 0.0f;   // -inf when min-p is off
  int64_t num_kept = 0;     // |kept set|
  double log_norm = 0.0;    // log sum_{kept} exp((x_i - m) * inv_temp)
  double norm = 0.0;        // Z = sum_{kept} token_mass, by the exact rule (MassSum): log_norm = log Z
  int32_t greedy = 0;       // T == 0
};

SOFTDEC_HD bool kept(const RowFilter& f, float x, int64_t i) {
  if (!f.valid) return false;
  if (f.greedy) return i == f.argmax;
  if (!(x > -inf_f())) return false;  // -inf and NaN
  if (!(x > f.cut_value || (x == f.cut_value && i <= f.cut_index))) return false;
  return (x - f.max_logit) * f.inv_temp >= f.log_min_p;
}

SOFTDEC_HD float log_prob(const RowFilter& f, float x, int64_t i) {
  if (!kept(f, x, i)) return -inf_f();
  if (f.greedy) return 0.0f;
  return static_cast<float>(static_cast<double>((x - f.max_logit) * f.inv_temp) - f.log_norm);
}

SOFTDEC_HD float prob(const RowFilter& f, float x, int64_t i) {
  if (!kept(f, x, i)) return 0.0f;
  if (f.greedy) return 1.0f;
#if defined(__CUDA_ARCH__)
  return static_cast<float>(::exp(static_cast<double>((x - f.max_logit) * f.inv_temp) - f.log_norm));
#else
  return static_cast<float>(std::exp(static_cast<double>((x - f.max_logit) * f.inv_temp) - f.log_norm));
#endif
}

// Mass of a token in logit mode (float32, bit-identical everywhere).
SOFTDEC_HD float token_mass(float x, float m, float inv_temp) { return fexp((x - m) * inv_temp); }

// Smallest n >= 1 with sum(masses[0:n]) >= top_p * sum(masses[0:len]) for masses
// sorted in the filter order (descending). top_p >= 1 returns len.
// mass_at(j) -> float: the j-th mass (the CUDA verify reads packed sorted keys).
template <class MassAt>
SOFTDEC_HD int64_t top_p_prefix_by(const MassAt& mass_at, int64_t len, float top_p) {
  if (len <= 0) return 0;
  if (!(top_p < 1.0f)) return len;
  double total = 0.0;
  for (int64_t j = 0; j < len; ++j) total += mass_at(j);
  const double target = static_cast<double>(top_p) * total;
  double acc = 0.0;
  for (int64_t j = 0; j < len; ++j) {
    acc += mass_at(j);
    if (acc >= target) return j + 1;
  }
  return len;
}

// ------------------------------------------------------------------ top-p masses in fixed point
// A row's masses m_i (in [0, max_mass]) become q_i = floor(m_i * 2^shift), shift
// = mass_shift(V, max_mass): max_mass < 2^E, q_i < 2^(63 - bitlen(V)), so a sum
// of at most V of them is < 2^63 and uint64 addition is exact in any order (CUDA
// threads may add them in any order, atomically or not, with the same result).
// The multiply by 2^shift is exact (a double power of two, no under/overflow
// for float masses); the conversion truncates.

SOFTDEC_HD int bit_length(uint64_t v) {
  int n = 0;
  while (v) {
    ++n;
    v >>= 1;
  }
  return n;
}

SOFTDEC_HD double pow2_d(int e) {  // 2^e for e in [-1022, 1023]
  const uint64_t b = static_cast<uint64_t>(e + 1023) << 52;
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(b));
#else
  double d;
  std::memcpy(&d, &b, sizeof(d));
  return d;
#endif
}

// shift for a row of V tokens whose largest mass is max_mass (> 0, finite).
SOFTDEC_HD int mass_shift(int64_t V, double max_mass) {
  uint64_t b;
#if defined(__CUDA_ARCH__)
  b = static_cast<uint64_t>(__double_as_longlong(max_mass));
#else
  std::memcpy(&b, &max_mass, sizeof(b));
#endif
  // max_mass = 1.f * 2^(e - 1023) < 2^E, E = e - 1022 (max_mass is a float: normal in double)
  const int E = max_mass > 0.0 ? static_cast<int>((b >> 52) & 0x7ffu) - 1022 : 1;
  return (63 - bit_length(static_cast<uint64_t>(V > 0 ? V : 1))) - E;
}

SOFTDEC_HD uint64_t to_fixed(double mass, int shift) {
  if (!(mass > 0.0)) return 0;
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double2ull_rz(__dmul_rn(mass, pow2_d(shift))));
#else
  return static_cast<uint64_t>(mass * pow2_d(shift));
#endif
}

// ceil(top_p * total), exactly (top_p a float in [0, 1), total < 2^63): the
// smallest integer running mass R with R >= top_p * total.
SOFTDEC_HD uint64_t fixed_target(float top_p, uint64_t total) {
  if (!(top_p > 0.0f) || total == 0) return 0;
  const uint32_t bits = float_bits(top_p);
  const uint32_t be = (bits >> 23) & 0xffu;
  const uint64_t mant = be ? ((bits & 0x7fffffu) | 0x800000u) : (bits & 0x7fffffu);
  const int s = (be ? 150 - static_cast<int>(be) : 149);  // top_p = mant * 2^-s, s >= 24
  // P = mant * total < 2^87 as (hi, lo)
  const uint64_t p1 = (total & 0xffffffffu) * mant, p2 = (total >> 32) * mant;
  const uint64_t lo = p1 + (p2 << 32);
  const uint64_t hi = (p2 >> 32) + (lo < p1 ? 1u : 0u);
  uint64_t q;
  bool rem;
  if (s >= 128) {
    q = 0;
    rem = true;  // P > 0
  } else if (s >= 64) {
    const int t = s - 64;
    q = t ? (hi >> t) : hi;
    rem = lo != 0 || (t && (hi & ((uint64_t{1} << t) - 1)) != 0);
  } else {
    q = (lo >> s) | (hi << (64 - s));  // s >= 24: hi < 2^23 fits
    rem = (lo & ((uint64_t{1} << s) - 1)) != 0;
  }
  return q + (rem ? 1u : 0u);
}

// How many tokens of fixed mass q (> 0) bring macc to target: ceil((target - macc) / q), 0 if reached.
SOFTDEC_HD uint64_t fixed_take(uint64_t target, uint64_t macc, uint64_t q) {
  return target > macc ? (target - macc + q - 1) / q : 0;
}

// ------------------------------------------------------------------ the kept mass Z, exactly
// The normaliser of a filtered target (Z = sum of the kept masses e_i; log_norm = log Z, the
// filtered p_i = e_i * inv_norm(Z)) is ONE number for a given kept set on every backend, every
// code path (candidates, radix cut, plain / min-p pass), every thread layout and every
// vocabulary split (the shards of softdec.distributed): each mass e (a float in [0, 1]) is cut
// into three base-2^32 digits below the binary point,
//     e = d0 2^-32 + d1 2^-64 + d2 2^-96 + (a rest below 2^-96, dropped),
// d0 = floor(e 2^32) in [0, 2^32], d1, d2 in [0, 2^32) (mass_digits: double arithmetic in which
// every step is exact -- e 2^32, the subtraction of a floor, the scaling by 2^32 -- so FMA
// contraction and the compiler cannot change a digit), the digits are summed as integers
// (S_k < 2^63 for fewer than 2^31 tokens: exact in any order and any split), and
//     Z = (S0 2^64 + S1 2^32 + S2) 2^-96 rounded to the nearest double, ties to even
// (fixed128_to_double). The dropped rests total below V 2^-96 (Z >= 1 whenever the row's top
// token is kept), so Z is the exact sum of the masses rounded once, up to that. A fast kernel
// may accumulate the digits as doubles while the sum stays below 2^53 (at most 2^20 digits
// per accumulator), then convert them to uint64 (exact integers) and merge.

// The three digits of a mass e in [0, 1] (exact; doubles holding integers).
SOFTDEC_HD void mass_digits(float e, double* d0, double* d1, double* d2) {
  constexpr double k32 = 4294967296.0;  // 2^32
#if defined(__CUDA_ARCH__)
  double a = __dmul_rn(static_cast<double>(e), k32);
  *d0 = ::floor(a);
  a = __dmul_rn(__dsub_rn(a, *d0), k32);
  *d1 = ::floor(a);
  a = __dmul_rn(__dsub_rn(a, *d1), k32);
  *d2 = ::floor(a);
#else
  double a = static_cast<double>(e) * k32;
  *d0 = std::floor(a);
  a = (a - *d0) * k32;
  *d1 = std::floor(a);
  a = (a - *d1) * k32;
  *d2 = std::floor(a);
#endif
}

// N 2^-scale rounded to the nearest double (ties to even), N = hi 2^64 + lo < 2^128.
SOFTDEC_HD double fixed128_to_double(uint64_t hi, uint64_t lo, int scale) {
  if (hi == 0 && lo < (uint64_t{1} << 53)) return static_cast<double>(lo) * pow2_d(-scale);  // exact
  const int L = hi ? 64 + bit_length(hi) : bit_length(lo);  // > 53
  const int s = L - 53;                                      // bits dropped, in [1, 75]
  uint64_t M = s >= 64 ? (hi >> (s - 64)) : ((lo >> s) | (hi << (64 - s)));  // < 2^53
  const int hp = s - 1;  // the half bit
  const bool half = hp >= 64 ? ((hi >> (hp - 64)) & 1u) != 0 : ((lo >> hp) & 1u) != 0;
  bool sticky;  // any bit below the half bit
  if (hp <= 64) {
    sticky = hp == 64 ? lo != 0 : (lo & ((uint64_t{1} << hp) - 1)) != 0;
  } else {
    sticky = lo != 0 || (hi & ((uint64_t{1} << (hp - 64)) - 1)) != 0;
  }
  if (half && (sticky || (M & 1u))) ++M;  // M <= 2^53: still exact in a double
  return static_cast<double>(M) * pow2_d(s - scale);
}

// Integer digit sums of a set of masses; value() = Z.
struct MassSum {
  uint64_t d[3] = {0, 0, 0};
  SOFTDEC_HD void add(float e) {
    double a, b, c;
    mass_digits(e, &a, &b, &c);
    d[0] += static_cast<uint64_t>(a);
    d[1] += static_cast<uint64_t>(b);
    d[2] += static_cast<uint64_t>(c);
  }
  SOFTDEC_HD void merge(const MassSum& o) {
    d[0] += o.d[0];
    d[1] += o.d[1];
    d[2] += o.d[2];
  }
  SOFTDEC_HD double value() const { return digits_to_double(d[0], d[1], d[2]); }
  // Z from the three digit sums (each < 2^63)
  SOFTDEC_HD static double digits_to_double(uint64_t s0, uint64_t s1, uint64_t s2) {
    const uint64_t t = s1 << 32;
    const uint64_t lo = s2 + t;
    const uint64_t hi = s0 + (s1 >> 32) + (lo < t ? 1u : 0u);
    return fixed128_to_double(hi, lo, 96);
  }
};

// float(1 / Z), correctly rounded in double, then to float: the factor p_i = e_i * inv_norm(Z)
// of every verify path (IEEE division on host and device: the same bits).
SOFTDEC_HD float inv_norm(double Z) {
#if defined(__CUDA_ARCH__)
  return __double2float_rn(__drcp_rn(Z));
#else
  return static_cast<float>(1.0 / Z);
#endif
}

// log Z (the C library's log on the host, CUDA's on the device: log_norm is a tolerance matter)
SOFTDEC_HD double log_of(double z) {
#if defined(__CUDA_ARCH__)
  return ::log(z);
#else
  return std::log(z);
#endif
}

SOFTDEC_HD int64_t top_p_prefix(const float* masses, int64_t len, float top_p) {
  return top_p_prefix_by([masses](int64_t j) -> float { return masses[j]; }, len, top_p);
}

SOFTDEC_HD float log_min_p_of(float min_p) { return min_p > 0.0f ? flog(min_p) : -inf_f(); }

// Fills a RowFilter from the kept prefix given as sorted candidates
// (values[0..n) descending in the filter order, with their indices), after
// top-k and top-p have been decided by the caller: the cut is candidate n-1,
// min-p is applied here, log_norm is summed over the kept candidates.
// Row statistics (valid, argmax, max_logit) must already be set in `f`.
template <class ValueAt, class IndexAt>
SOFTDEC_HD void finish_from_sorted_by(RowFilter& f, const ValueAt& value_at, const IndexAt& index_at, int64_t n,
                                      float min_p) {
  f.log_min_p = log_min_p_of(min_p);
  if (!f.valid || n <= 0) {
    f.num_kept = 0;
    return;
  }
  f.cut_value = value_at(n - 1);
  f.cut_index = index_at(n - 1);
  MassSum z;
  int64_t cnt = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float v = value_at(j);
    if ((v - f.max_logit) * f.inv_temp >= f.log_min_p) {
      z.add(token_mass(v, f.max_logit, f.inv_temp));
      ++cnt;
    }
  }
  f.num_kept = cnt;
  f.norm = z.value();
  f.log_norm = log_of(f.norm);
}

SOFTDEC_HD void finish_from_sorted(RowFilter& f, const float* values, const int64_t* indices,
                                   int64_t n, float min_p) {
  finish_from_sorted_by(
      f, [values](int64_t j) -> float { return values[j]; }, [indices](int64_t j) -> int64_t { return indices[j]; },
      n, min_p);
}

// ------------------------------------------------------------------ generic serial implementation

namespace detail {

// Pass 1: validity, max and argmax (lowest index among ties).
template <class Load>
SOFTDEC_HD void row_stats(const Load& load, int64_t V, RowFilter& f) {
  bool nan = false, pinf = false, any = false;
  float m = -inf_f();
  int64_t am = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load(i);
    if (is_nan_f(x)) {
      nan = true;
      break;
    }
    if (x > m) {
      m = x;
      am = i;
      any = true;
    }
  }
  pinf = any && !is_finite_f(m);
  f.valid = (!nan && any && !pinf) ? 1 : 0;
  f.max_logit = f.valid ? m : 0.0f;
  f.argmax = f.valid ? am : 0;
}

// In prefix test for the current (value, index) cut.
SOFTDEC_HD bool in_prefix(float x, int64_t i, float cv, int64_t ci) {
  return x > cv || (x == cv && i <= ci);
}

// The histograms of select_nth (4 KB). The overloads without one keep it on the
// stack; a GPU kernel passes one in shared memory instead (a 4 KB per-thread
// stack would make the driver reserve 4 KB of local memory for every resident
// thread of the device).
struct SelectScratch {
  int64_t cnt[256];
  uint64_t mass[256];  // fixed-point masses (see "top-p masses in fixed point")
};

// The n-th (1-based) finite token of the order among those in the prefix
// (cv, ci) [cv = -inf, ci = V means the whole row]: radix selection on
// order_key, 4 rounds of 8 bits, then one pass for the tie index.
// mass_mode: select by mass instead of count: the first token of the order
// at which the running mass reaches `target` (masses from mass_of(x): fixed
// point, uint64; target from fixed_target; exact integer sums).
template <class Load, class MassOf>
SOFTDEC_HD void select_nth(const Load& load, int64_t V, float cv, int64_t ci, bool mass_mode,
                           int64_t n, uint64_t target, const MassOf& mass_of, float* out_value,
                           int64_t* out_index, SelectScratch& scratch) {
  uint32_t prefix = 0, mask = 0;
  int64_t remaining = n;
  uint64_t macc = 0;  // mass of tokens strictly above the selected key prefix
  int64_t* cnt = scratch.cnt;
  uint64_t* mass = scratch.mass;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = 0; b < 256; ++b) {
      cnt[b] = 0;
      mass[b] = 0;
    }
    for (int64_t i = 0; i < V; ++i) {
      const float x = load(i);
      if (!(x > -inf_f()) || !in_prefix(x, i, cv, ci)) continue;
      const uint32_t k = order_key(x);
      if ((k & mask) != prefix) continue;
      const int b = static_cast<int>((k >> shift) & 0xffu);
      cnt[b] += 1;
      if (mass_mode) mass[b] += static_cast<uint64_t>(mass_of(x));
    }
    int chosen = -1, last_nonempty = -1;
    for (int b = 255; b >= 0; --b) {
      if (cnt[b] == 0) continue;
      last_nonempty = b;
      if (mass_mode) {
        if (macc + mass[b] >= target) {
          chosen = b;
          break;
        }
        macc += mass[b];
      } else {
        if (cnt[b] >= remaining) {
          chosen = b;
          break;
        }
        remaining -= cnt[b];
      }
    }
    if (chosen < 0 && last_nonempty >= 0) {
      // Rounding left the target just out of reach: take the last non-empty
      // bucket (its mass/count was consumed by the scan; give it back).
      chosen = last_nonempty;
      if (mass_mode) {
        macc -= mass[chosen];
      } else {
        remaining += cnt[chosen];
      }
    }
    if (chosen < 0) {  // no token in the prefix (cannot happen for a valid row)
      *out_value = cv;
      *out_index = ci;
      return;
    }
    prefix |= static_cast<uint32_t>(chosen) << shift;
    mask |= 0xffu << shift;
  }
  const float value = key_float(prefix);
  // Tokens tied at `value`: how many to take (lower index first).
  int64_t take;
  int64_t ties = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load(i);
    if (x > -inf_f() && x == value && in_prefix(x, i, cv, ci)) ++ties;
  }
  if (mass_mode) {
    const uint64_t e = static_cast<uint64_t>(mass_of(value));
    take = ties;
    if (e > 0) {
      const uint64_t t = fixed_take(target, macc, e);
      take = t < static_cast<uint64_t>(ties) ? static_cast<int64_t>(t) : ties;
    }
    if (take < 1) take = 1;
    if (take > ties) take = ties;
  } else {
    take = remaining < 1 ? 1 : (remaining > ties ? ties : remaining);
  }
  int64_t seen = 0, idx = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load(i);
    if (x > -inf_f() && x == value && in_prefix(x, i, cv, ci)) {
      if (++seen == take) {
        idx = i;
        break;
      }
    }
  }
  *out_value = value;
  *out_index = idx;
}

template <class Load, class MassOf>
SOFTDEC_HD void select_nth(const Load& load, int64_t V, float cv, int64_t ci, bool mass_mode,
                           int64_t n, uint64_t target, const MassOf& mass_of, float* out_value,
                           int64_t* out_index) {
  SelectScratch scratch;
  select_nth(load, V, cv, ci, mass_mode, n, target, mass_of, out_value, out_index, scratch);
}

template <class Load, class MassOf>
SOFTDEC_HD void generic_cut(const Load& load, int64_t V, int64_t top_k, float top_p,
                            const MassOf& mass_of, RowFilter& f, SelectScratch& scratch) {
  int64_t finite = 0;
  for (int64_t i = 0; i < V; ++i)
    if (load(i) > -inf_f()) ++finite;
  float cv = -inf_f();
  int64_t ci = V;  // the whole row: every finite token is in the prefix
  bool limited = false;
  if (top_k > 0 && top_k < finite) {
    select_nth(load, V, cv, ci, false, top_k, 0, mass_of, &cv, &ci, scratch);
    limited = true;
  }
  if (top_p < 1.0f) {
    uint64_t total = 0;  // fixed point: exact
    for (int64_t i = 0; i < V; ++i) {
      const float x = load(i);
      if (x > -inf_f() && (!limited || in_prefix(x, i, cv, ci))) total += static_cast<uint64_t>(mass_of(x));
    }
    const uint64_t target = fixed_target(top_p, total);
    if (target == 0) {
      cv = f.max_logit;  // top_p = 0: the top token
      ci = f.argmax;
    } else {
      select_nth(load, V, cv, ci, true, 0, target, mass_of, &cv, &ci, scratch);
    }
    limited = true;
  }
  if (!limited) {
    cv = -inf_f();
    ci = V;
  }
  f.cut_value = cv;
  f.cut_index = ci;
}

template <class Load, class MassOf>
SOFTDEC_HD void generic_cut(const Load& load, int64_t V, int64_t top_k, float top_p,
                            const MassOf& mass_of, RowFilter& f) {
  SelectScratch scratch;
  generic_cut(load, V, top_k, top_p, mass_of, f, scratch);
}

}  // namespace detail

// T = 0 on a valid row (max_logit / argmax set): the one-hot argmax.
SOFTDEC_HD void set_greedy(RowFilter& f) {
  f.greedy = 1;
  f.inv_temp = 0.0f;
  f.cut_value = f.max_logit;
  f.cut_index = f.argmax;
  f.num_kept = 1;
  f.log_norm = 0.0;
  f.norm = 1.0;
}

// Reference-grade filter of one row of logits (any Load, serial); `scratch`
// holds the selection histograms (see SelectScratch).
template <class Load>
SOFTDEC_HD RowFilter compute_row_filter(const Load& load, int64_t V, Params p, detail::SelectScratch& scratch) {
  RowFilter f;
  detail::row_stats(load, V, f);
  f.log_min_p = log_min_p_of(p.min_p);
  if (!f.valid) return f;
  if (!(p.temperature > 0.0f)) {
    set_greedy(f);
    return f;
  }
  f.inv_temp = 1.0f / p.temperature;
  const float m = f.max_logit, it = f.inv_temp;
  const int sh = mass_shift(V, static_cast<double>(token_mass(m, m, it)));
  auto mass_of = [m, it, sh](float x) -> uint64_t { return to_fixed(static_cast<double>(token_mass(x, m, it)), sh); };
  detail::generic_cut(load, V, p.top_k, p.top_p, mass_of, f, scratch);
  MassSum z;  // the exact rule: the same Z as every other path
  int64_t cnt = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load(i);
    if (kept(f, x, i)) {
      z.add(token_mass(x, m, it));
      ++cnt;
    }
  }
  f.num_kept = cnt;
  f.norm = z.value();
  f.log_norm = log_of(f.norm);
  return f;
}

template <class Load>
SOFTDEC_HD RowFilter compute_row_filter(const Load& load, int64_t V, Params p) {
  detail::SelectScratch scratch;
  return compute_row_filter(load, V, p, scratch);
}

// Factors of the renormalisation x -> x / norm (norm > 0, the kept sum of
// float entries): out = (x * pre) * scale. pre is a power of two (an exact
// multiply), 2^64 when norm < 2^-64 so that 1 / norm cannot overflow float
// (a kept mass of subnormal entries), else 1 (then out = x * (1 / norm)).
SOFTDEC_HD void renorm_scale(double norm, float* pre, float* scale) {
  const bool tiny = norm < 0x1p-64;
  *pre = tiny ? 0x1p64f : 1.0f;
  *scale = static_cast<float>(1.0 / (tiny ? norm * 0x1p64 : norm));
}

// The same filter on a row of probabilities (FlashInfer's *_renorm_probs):
// mass = the value itself, inv_temp = 1, max_logit = max prob, and the min-p
// test is p_i >= min_p * max p. In the returned RowFilter use kept_probs()
// (not kept()); log_norm is log(sum of kept probabilities).
struct ProbFilter {
  int32_t valid = 0;        // 0: NaN, inf or negative entry, or all zero
  float max_prob = 0.0f;
  int64_t argmax = 0;
  float cut_value = 0.0f;
  int64_t cut_index = -1;
  float min_prob = 0.0f;    // min_p * max_prob
  double norm = 0.0;        // sum of kept probabilities
  int64_t num_kept = 0;
};

SOFTDEC_HD bool kept_probs(const ProbFilter& f, float p, int64_t i) {
  return f.valid && p > 0.0f && (p > f.cut_value || (p == f.cut_value && i <= f.cut_index)) &&
         p >= f.min_prob;
}

template <class Load>
SOFTDEC_HD ProbFilter compute_prob_filter(const Load& load, int64_t V, int64_t top_k, float top_p,
                                          float min_p) {
  ProbFilter f;
  bool bad = false, any = false;
  float m = 0.0f;
  int64_t am = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load(i);
    if (!(x >= 0.0f) || !is_finite_f(x)) {
      bad = true;
      break;
    }
    if (x > m) {
      m = x;
      am = i;
      any = true;
    }
  }
  f.valid = (!bad && any) ? 1 : 0;
  if (!f.valid) return f;
  f.max_prob = m;
  f.argmax = am;
  // zeros are never kept: treat them like -inf logits in the generic cut
  auto lp = [&load](int64_t i) -> float {
    const float x = load(i);
    return x > 0.0f ? x : -inf_f();
  };
  const int sh = mass_shift(V, static_cast<double>(m));
  auto mass_of = [sh](float x) -> uint64_t { return to_fixed(static_cast<double>(x), sh); };
  RowFilter tmp;
  tmp.valid = 1;
  tmp.max_logit = m;
  tmp.argmax = am;
  detail::generic_cut(lp, V, top_k, top_p, mass_of, tmp);
  f.cut_value = tmp.cut_value;
  f.cut_index = tmp.cut_index;
  f.min_prob = min_p * m;
  double s = 0.0;
  int64_t cnt = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load(i);
    if (kept_probs(f, x, i)) {
      s += x;
      ++cnt;
    }
  }
  f.norm = s;
  f.num_kept = cnt;
  return f;
}

}  // namespace filter
}  // namespace softdec
