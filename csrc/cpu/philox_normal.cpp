// CPU backend of softdec.philox_normal: the Gaussian embedding noise of
// soft_mixture (soft::embed_normal), exposed so a trainer can recompute it.
//
// Element d of a row is Box-Muller, in float64, of lanes 0 and 1 of Philox
// block kNormalBlock0 + d of the row's stream, rounded to float32. The output
// must stay bit-identical to soft::embed_normal (libm log / cos / sqrt), which
// the tests and the CUDA kernel rely on. The vector path:
//   * Philox on 16 blocks at once (simd::philox_rounds with AVX-512, else the
//     structure-of-arrays loop the compiler vectorises);
//   * log and cos in float64 lanes (below), each within a few ulp of the exact
//     value, so z = sqrt(-2 log u0) cos(2 pi u1) is within ~1e-15 (relative)
//     of the libm value;
//   * z rounds to the same float32 as the libm value unless z lies within
//     kNearTie double ulps (~4e-12 relative, far above the error) of a
//     float32 rounding midpoint; those lanes (about 1 in 16000) are recomputed
//     with soft::embed_normal. Result: the scalar bits, lane for lane.
#include "capability.h"
#include "simd.h"
#include "../common.h"
#include "../philox_checks.h"
#include "softdec/soft_mixture.h"

#include <cmath>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the deliberately undefined operand inside _mm512_mul_epu32 /
// _mm512_srli_epi64 (GCC bug 105593, a false positive fixed in later releases)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace softdec {
namespace SOFTDEC_CPU_NS {
namespace {

constexpr int kBlocks = 16;  // Philox blocks (= output elements) per chunk

// Raw lanes 0 and 1 of the 16 blocks first_block + j of (seed, offset).
inline void normal_bits(uint64_t seed, uint64_t offset, uint64_t first_block, uint32_t* SOFTDEC_RESTRICT x0,
                        uint32_t* SOFTDEC_RESTRICT x1) {
#if defined(SOFTDEC_SIMD_AVX512)
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i base = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_block)));
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_block >> 32)));
  __m512i c0 = _mm512_add_epi32(base, lane);
  const __mmask16 carry = _mm512_cmp_epu32_mask(c0, base, _MM_CMPINT_LT);
  __m512i c1 = _mm512_mask_add_epi32(hi, carry, hi, _mm512_set1_epi32(1));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  simd::philox_rounds(c0, c1, c2, c3, seed);
  _mm512_storeu_si512(x0, c0);
  _mm512_storeu_si512(x1, c1);
#else
  static_assert(kBlocks == simd::kPhiloxLanes, "one philox_bits call per chunk");
  uint32_t c2[kBlocks], c3[kBlocks];
  simd::philox_bits(seed, offset, first_block, x0, x1, c2, c3);
#endif
}

#if defined(SOFTDEC_SIMD_AVX512) || defined(SOFTDEC_SIMD_AVX2)
// ------------------------------------------------------------------ float64 lanes
// kLanes float64 lanes as GCC/Clang vector types (8: one AVX-512 register, 4: one
// AVX2 register), written once for both widths: the vector extensions give the
// arithmetic, comparisons and shifts; sqrt, fma and round-to-nearest-even are the
// correctly rounded scalar builtins lane by lane (the compiler emits the packed
// instruction; -fno-math-errno), and the uint32 -> double load and the double -> float
// store are __builtin_convertvector (exact, and round-to-nearest). Every primitive is
// the correctly rounded IEEE operation, so the bits do not depend on the width.
// (The width is a constant, not a template parameter: GCC drops vector_size on a
// dependent type.)
#if defined(SOFTDEC_SIMD_AVX512)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef double V __attribute__((vector_size(8 * kLanes)));
typedef int64_t I __attribute__((vector_size(8 * kLanes)));
typedef uint64_t U __attribute__((vector_size(8 * kLanes)));
typedef uint32_t U32 __attribute__((vector_size(4 * kLanes)));
typedef float F32 __attribute__((vector_size(4 * kLanes)));

inline V splat(double x) {
  V v;
  for (int l = 0; l < kLanes; ++l) v[l] = x;
  return v;
}
inline I splati(int64_t x) {
  I v;
  for (int l = 0; l < kLanes; ++l) v[l] = x;
  return v;
}
inline V vsqrt(V x) {
  for (int l = 0; l < kLanes; ++l) x[l] = __builtin_sqrt(x[l]);
  return x;
}
inline V vround(V x) {  // to the nearest integer, ties to even (the default rounding mode)
  for (int l = 0; l < kLanes; ++l) x[l] = __builtin_nearbyint(x[l]);
  return x;
}
inline V vfma(V a, V b, V c) {
  for (int l = 0; l < kLanes; ++l) a[l] = __builtin_fma(a[l], b[l], c[l]);
  return a;
}
inline V u32_to_double(const uint32_t* p) {
  U32 x;
  std::memcpy(&x, p, sizeof(x));
  return __builtin_convertvector(x, V);
}
inline void store_float(float* p, V x) {
  const F32 f = __builtin_convertvector(x, F32);
  std::memcpy(p, &f, sizeof(f));
}

inline I as_int(V x) { return (I)x; }
inline V as_double(I x) { return (V)x; }
inline V select(I mask, V a, V b) { return as_double((mask & as_int(a)) | (~mask & as_int(b))); }

// Natural log of u in (0, 1) (normal doubles), a few ulp: u = 2^e m with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172,
// the atanh series to s^25 (truncation < 1e-20 relative).
inline V vlog_unit(V u) {
  const I bits = as_int(u);
  V m = as_double((bits & splati(0x000FFFFFFFFFFFFFLL)) | splati(0x3FF0000000000000LL));  // [1, 2)
  // e as a double, exactly: the biased exponent under the 2^52 magic number
  V e = as_double((I)((U)bits >> 52) | splati(0x4330000000000000LL)) -
        splat(4503599627370496.0 + 1023.0);
  const I big = (I)(m > splat(1.4142135623730951));
  m = select(big, m * 0.5, m);
  e = select(big, e + 1.0, e);
  const V f = m - 1.0;  // exact
  const V s = f / (f + 2.0);
  const V s2 = s * s;
  V p = splat(1.0 / 25);
  p = vfma(p, s2, splat(1.0 / 23));
  p = vfma(p, s2, splat(1.0 / 21));
  p = vfma(p, s2, splat(1.0 / 19));
  p = vfma(p, s2, splat(1.0 / 17));
  p = vfma(p, s2, splat(1.0 / 15));
  p = vfma(p, s2, splat(1.0 / 13));
  p = vfma(p, s2, splat(1.0 / 11));
  p = vfma(p, s2, splat(1.0 / 9));
  p = vfma(p, s2, splat(1.0 / 7));
  p = vfma(p, s2, splat(1.0 / 5));
  p = vfma(p, s2, splat(1.0 / 3));
  const V logm = vfma((s + s) * s2, p, s + s);  // 2s + 2s^3 (1/3 + ...)
  // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi with 32 significant bits (e * kLn2Hi exact)
  constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  return vfma(e, splat(kLn2Hi), vfma(e, splat(kLn2Lo), logm));
}

// cos x for x in [0, 2 pi], a few ulp: x = n pi/2 + r, |r| <= pi/4, r by a
// three-part pi/2 (fused, so no cancellation loss), Taylor series to r^18.
inline V vcos_turn(V x) {
  const V n = vround(x * 0.63661977236758134308);
  constexpr double kP1 = 1.57079632673412561417e+00, kP2 = 6.07710050630396597660e-11,
                   kP3 = 2.02226624871116645580e-21;
  V r = vfma(-n, splat(kP1), x);
  r = vfma(-n, splat(kP2), r);
  r = vfma(-n, splat(kP3), r);
  const V r2 = r * r;
  // cos r = sum (-1)^k r^2k / (2k)!, k <= 9; sin r = sum (-1)^k r^(2k+1) / (2k+1)!, k <= 8
  V c = splat(-1.0 / 6402373705728000.0);  // -1/18!
  c = vfma(c, r2, splat(1.0 / 20922789888000.0));
  c = vfma(c, r2, splat(-1.0 / 87178291200.0));
  c = vfma(c, r2, splat(1.0 / 479001600.0));
  c = vfma(c, r2, splat(-1.0 / 3628800.0));
  c = vfma(c, r2, splat(1.0 / 40320.0));
  c = vfma(c, r2, splat(-1.0 / 720.0));
  c = vfma(c, r2, splat(1.0 / 24.0));
  c = vfma(c, r2, splat(-0.5));
  c = vfma(c, r2, splat(1.0));
  V s = splat(1.0 / 355687428096000.0);  // 1/17!
  s = vfma(s, r2, splat(-1.0 / 1307674368000.0));
  s = vfma(s, r2, splat(1.0 / 6227020800.0));
  s = vfma(s, r2, splat(-1.0 / 39916800.0));
  s = vfma(s, r2, splat(1.0 / 362880.0));
  s = vfma(s, r2, splat(-1.0 / 5040.0));
  s = vfma(s, r2, splat(1.0 / 120.0));
  s = vfma(s, r2, splat(-1.0 / 6.0));
  s = vfma(s * r2, r, r);
  // quadrant q = n mod 4 (n = 0..4): cos(q pi/2 + r) = cos r, -sin r, -cos r, sin r
  const I q = as_int(n + 4503599627370496.0);  // low bits = n
  const I odd = -(q & splati(1));
  const I neg = -(((q + splati(1)) >> 1) & splati(1));
  const V v = select(odd, s, c);
  return as_double(as_int(v) ^ (neg & splati(static_cast<int64_t>(0x8000000000000000ULL))));
}
#endif

// out[j] = embed_normal(seed, offset, first_d + j) for j < count (<= kBlocks).
inline void normal_chunk(uint64_t seed, uint64_t offset, uint64_t first_d, int count, float* out) {
  alignas(64) uint32_t x0[kBlocks], x1[kBlocks];
  normal_bits(seed, offset, soft::kNormalBlock0 + first_d, x0, x1);
  alignas(64) float buf[kBlocks];
#if defined(SOFTDEC_SIMD_AVX512) || defined(SOFTDEC_SIMD_AVX2)
  // float32 rounding midpoint distance of z, in double ulps: the low 29
  // significand bits against 2^28; lanes nearer than kNearTie take libm's value
  constexpr int64_t kNearTie = int64_t(1) << 14;
  for (int j = 0; j < kBlocks; j += kLanes) {
    const V u0 = (u32_to_double(x0 + j) + 0.5) * (1.0 / 4294967296.0);
    const V u1 = (u32_to_double(x1 + j) + 0.5) * (1.0 / 4294967296.0);
    const V z = vsqrt(vlog_unit(u0) * -2.0) * vcos_turn(u1 * 6.283185307179586);
    store_float(buf + j, z);
    const I low = as_int(z) & splati((int64_t(1) << 29) - 1);
    const I t = low + splati(kNearTie - (int64_t(1) << 28));
    const I near = (I)((U)t < static_cast<uint64_t>(2 * kNearTie));
    alignas(64) int64_t nm[kLanes];
    std::memcpy(nm, &near, sizeof(nm));
    for (int l = 0; l < kLanes; ++l)
      if (nm[l] && j + l < count) buf[j + l] = soft::embed_normal(seed, offset, first_d + j + l);
  }
#else
  for (int j = 0; j < count; ++j) {
    const double u0 = philox::to_unit_double(x0[j]), u1 = philox::to_unit_double(x1[j]);
    buf[j] = static_cast<float>(std::sqrt(-2.0 * std::log(u0)) * std::cos(6.283185307179586 * u1));
  }
#endif
  std::memcpy(out, buf, sizeof(float) * count);
}

Tensor philox_normal_cpu(Tensor seed, Tensor offset, int64_t n) {
  const int64_t rows = philox_checks::check_stream_args(seed, offset, n, "philox_normal");
  SOFTDEC_CHECK(n <= (int64_t(1) << 62), "philox_normal: n must be <= 2^62, got ", n);
  Tensor out = new_empty(seed, {rows, n}, ScalarType::Float);
  if (rows == 0 || n == 0) return out;
  const int64_t* seeds = seed.const_data_ptr<int64_t>();
  const int64_t* offsets = offset.const_data_ptr<int64_t>();
  float* o = out.mutable_data_ptr<float>();
  // work items: chunks of kBlocks elements of one row (a row's last chunk may be short)
  const int64_t chunks_per_row = (n + kBlocks - 1) / kBlocks;
  int64_t chunks = 0;
  SOFTDEC_CHECK(checked_mul(rows, chunks_per_row, &chunks), "philox_normal: too many elements");
  torch::stable::parallel_for(0, chunks, 256, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t r = c / chunks_per_row, d = (c % chunks_per_row) * kBlocks;
      const int count = static_cast<int>(n - d < kBlocks ? n - d : kBlocks);
      normal_chunk(static_cast<uint64_t>(seeds[r]), static_cast<uint64_t>(offsets[r]), static_cast<uint64_t>(d),
                   count, o + r * n + d);
    }
  });
  return out;
}

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(philox_normal,
    {"philox_normal", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::philox_normal_cpu)})
