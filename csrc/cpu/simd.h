// CPU SIMD building blocks shared by the CPU kernels (sampling, verification,
// soft mixture, sparse attention, philox_uniform). One copy of each:
//
//   philox_blocks(seed, offset, first_block, out[64])  portable structure-of-arrays
//        Philox (16 blocks = 64 consecutive stream elements; the compiler vectorises it)
//   philox_bits(seed, offset, first_block, c0..c3[16])  the same rounds, raw lanes out
//   SOFTDEC_SIMD_AVX512 (AVX-512 F+BW+VL):
//     load16<T>(p)            16 float/bf16/fp16 -> __m512 (also with AVX-512F alone)
//     load16_zero_tail(p, n)  first n (< 16) elements, 0 in the other lanes (AVX-512F alone too)
//     load16_mask(p, k)       masked load, lanes outside k read as -inf
//     load16_maskz(p, k)      masked load, lanes outside k read as 0
//     tail_mask(n)            mask of the first min(n, 16) lanes
//     store16(p, v)           16 floats -> float/bf16/fp16 (round to nearest even, as static_cast)
//     vlog(x)                 filter::flog lane for lane (bit-identical)
//     vexp(x)                 filter::fexp lane for lane (bit-identical, 0 at or below -87 and for NaN)
//     vexp2(x)                filter::fexp2 lane for lane (2^x, 0 at or below -125 and for NaN):
//                             sample's draw masses and soft_mixture's base-2 softmax
//     vexp2_in_range(x)       the same for x in (-125, 0] (no clamps; the caller masks)
//     vexp2_poly(x, c)        2^round(x) * Horner(c, x - round(x)), the shared shape of both
//     philox_group(...)       uniforms of 64 consecutive stream elements (bit-identical to philox.h)
//     vgumbel(u)              filter::gumbel lane for lane
//     hmax(v), hsum(v)        horizontal max / sum
//   SOFTDEC_SIMD_AVX2 (AVX2+FMA+F16C, e.g. x86-64-v3, when not SOFTDEC_SIMD_AVX512):
//     load8, vexp8, vlog8 (same bits as vexp / vlog).
//   philox_chunk(seed, offset, first_block, out[64])  philox_group or philox_blocks
//
// Not here on purpose: sparse_attention's exp16, an approximate exp with one
// caller and its own accuracy contract, stays next to its kernel.
#pragma once

#include "capability.h"

#include "../dispatch.h"
#include "softdec/macros.h"
#include "softdec/philox.h"

#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SOFTDEC_SIMD_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SOFTDEC_SIMD_AVX2 1
#endif

namespace softdec {
namespace SOFTDEC_CPU_NS {
namespace simd {

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return static_cast<float>(x); }
inline float to_float(fp16 x) { return static_cast<float>(x); }

// ------------------------------------------------------------------ portable Philox, 64 uniforms at once
// 16 Philox blocks (64 consecutive stream elements), structure-of-arrays so the
// compiler vectorises the ten rounds (vpmuludq does the 32x32->64 products).
constexpr int kPhiloxLanes = 16;
constexpr int64_t kPhiloxChunk = kPhiloxLanes * 4;  // uniforms per philox_blocks call

// The raw lanes c0..c3 [kPhiloxLanes] of blocks first_block + j (also used by
// philox_normal, which needs lanes 0 and 1 as bits).
__attribute__((always_inline)) inline void philox_bits(uint64_t seed, uint64_t offset, uint64_t first_block,
                                                       uint32_t* SOFTDEC_RESTRICT c0, uint32_t* SOFTDEC_RESTRICT c1,
                                                       uint32_t* SOFTDEC_RESTRICT c2, uint32_t* SOFTDEC_RESTRICT c3) {
  for (int j = 0; j < kPhiloxLanes; ++j) {
    const uint64_t b = first_block + j;
    c0[j] = static_cast<uint32_t>(b);
    c1[j] = static_cast<uint32_t>(b >> 32);
    c2[j] = static_cast<uint32_t>(offset);
    c3[j] = static_cast<uint32_t>(offset >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
#pragma GCC ivdep
    for (int j = 0; j < kPhiloxLanes; ++j) {
      const uint64_t p0 = static_cast<uint64_t>(philox::kMul0) * c0[j];
      const uint64_t p1 = static_cast<uint64_t>(philox::kMul1) * c2[j];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[j] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[j] ^ k1;
      c1[j] = static_cast<uint32_t>(p1);
      c3[j] = static_cast<uint32_t>(p0);
      c0[j] = n0;
      c2[j] = n2;
    }
    k0 += philox::kWeyl0;
    k1 += philox::kWeyl1;
  }
}

inline void philox_blocks(uint64_t seed, uint64_t offset, uint64_t first_block,
                          float* SOFTDEC_RESTRICT out /* [kPhiloxChunk] */) {
  uint32_t c0[kPhiloxLanes], c1[kPhiloxLanes], c2[kPhiloxLanes], c3[kPhiloxLanes];
  philox_bits(seed, offset, first_block, c0, c1, c2, c3);
  for (int j = 0; j < kPhiloxLanes; ++j) {
    out[4 * j + 0] = philox::to_unit_float(c0[j]);
    out[4 * j + 1] = philox::to_unit_float(c1[j]);
    out[4 * j + 2] = philox::to_unit_float(c2[j]);
    out[4 * j + 3] = philox::to_unit_float(c3[j]);
  }
}

// ------------------------------------------------------------------ AVX-512 loads (AVX-512F suffices)
#if defined(__AVX512F__)

template <class T>
inline __m512 load16(const T* p);
template <>
inline __m512 load16<float>(const float* p) { return _mm512_loadu_ps(p); }
template <>
inline __m512 load16<bf16>(const bf16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline __m512 load16<fp16>(const fp16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The first n (0 <= n < 16) elements, 0.0f in the other lanes.
template <class T>
inline __m512 load16_zero_tail(const T* p, int64_t n) {
  alignas(64) T tmp[16];
  std::memset(static_cast<void*>(tmp), 0, sizeof(tmp));
  std::memcpy(static_cast<void*>(tmp), p, n * sizeof(T));
  return load16<T>(tmp);
}

#endif  // __AVX512F__

// ------------------------------------------------------------------ AVX-512 (F+BW+VL)
#if defined(SOFTDEC_SIMD_AVX512)

constexpr float kNegInfF = -std::numeric_limits<float>::infinity();

// Masked load; lanes outside the mask read as -inf.
template <class T>
inline __m512 load16_mask(const T* p, __mmask16 k);
template <>
inline __m512 load16_mask<float>(const float* p, __mmask16 k) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(kNegInfF), k, p);
}
// bf16 / fp16: the masked-out 16-bit lanes are filled with that type's -inf
// (0xFF80 / 0xFC00), which converts to float -inf.
template <>
inline __m512 load16_mask<bf16>(const bf16* p, __mmask16 k) {
  const __m256i h = _mm256_mask_loadu_epi16(_mm256_set1_epi16(static_cast<short>(0xFF80)), k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline __m512 load16_mask<fp16>(const fp16* p, __mmask16 k) {
  return _mm512_cvtph_ps(_mm256_mask_loadu_epi16(_mm256_set1_epi16(static_cast<short>(0xFC00)), k, p));
}

// Masked load; lanes outside the mask read as 0.
inline __m512 load16_maskz(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16_maskz(const bf16* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16_maskz(const fp16* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// 16 floats stored as float / bf16 / fp16, rounded to nearest even like a
// static_cast of each lane (bf16: NaN becomes 0x7FC0, as in c10::BFloat16).
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(bf16* p, __m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
inline void store16(fp16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Mask of the first min(n, 16) lanes (n >= 0).
inline __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// filter::flog, op for op (bit-identical).
inline __m512 vlog(__m512 x) {
  const __m512i b = _mm512_castps_si512(x);
  __m512i e = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(b, 23), _mm512_set1_epi32(0xff)),
                               _mm512_set1_epi32(127));
  __m512 m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi32(0x007fffff)),
                                                 _mm512_set1_epi32(0x3f800000)));
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_epi32(e, big, e, _mm512_set1_epi32(1));
  const __m512 f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 y = _mm512_set1_ps(7.0376836292e-2f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.1514610310e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.1676998740e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.2420140846e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.4249322787e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-1.6668057665e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.0000714765e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(-2.4999993993e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(3.3333331174e-1f));
  const __m512 fe = _mm512_cvtepi32_ps(e);
  y = _mm512_mul_ps(_mm512_mul_ps(y, f), z);
  y = _mm512_fmadd_ps(fe, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fmadd_ps(_mm512_set1_ps(-0.5f), z, y);
  __m512 r = _mm512_add_ps(f, y);
  r = _mm512_fmadd_ps(fe, _mm512_set1_ps(0.693359375f), r);
  return r;
}

// filter::fexp, op for op (bit-identical): 0 for x <= -87 and for NaN, x clamped
// to 88. (verify.cpp's former vfexp also clamped x below at -87 and converted n
// with truncation; n is integral and the clamped lanes are zeroed, so the bits
// are the same for every input.)
inline __m512 vexp(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NGT_UQ);
  x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  const __m512 r2 = _mm512_mul_ps(r, r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, r2, r);
  p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
  const __m512i ni = _mm512_cvtps_epi32(n);
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), p, scale);
}

// 2^x = 2^n * p(r), n = round(x), r = x - n in [-1/2, 1/2], p a polynomial
// evaluated by Horner's rule (coefficients highest degree first) and scaled
// exactly by 2^n (scalef; subnormal or 0 below -126). No clamps: the caller
// keeps x in range.
template <size_t N>
__attribute__((always_inline)) inline __m512 vexp2_poly(__m512 x, const float (&c)[N]) {
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(c[0]);
#pragma GCC unroll 8
  for (size_t i = 1; i < N; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c[i]));
  return _mm512_scalef_ps(p, n);
}

// filter::fexp2 on 16 lanes for x in (-125, 0] (the caller knows the range):
// its degree-6 polynomial and the exact scaling by 2^n (n >= -124 keeps the
// result normal), without fexp2's clamps.
inline __m512 vexp2_in_range(__m512 x) {
  static constexpr float kFexp2[] = {1.5403530393381609e-4f, 1.3333558146428443e-3f, 9.6181291076284772e-3f,
                                     5.5504108664821580e-2f, 2.4022650695910071e-1f, 6.9314718055994531e-1f,
                                     1.0f};
  return vexp2_poly(x, kFexp2);
}

// filter::fexp2 on 16 lanes, bit for bit (lanes with x <= -125, or NaN, give 0).
inline __m512 vexp2(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.0f), _CMP_GT_OQ);
  return _mm512_maskz_mov_ps(live, vexp2_in_range(_mm512_min_ps(x, _mm512_setzero_ps())));
}

inline __m512i mulhi32(__m512i a, __m512i m) {
  const __m512i pe = _mm512_mul_epu32(a, m);
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
}
inline __m512i mullo32(__m512i a, __m512i m) {
  const __m512i pe = _mm512_mul_epu32(a, m);
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  return _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
}

// The ten Philox-4x32 rounds on 16 counters (c0..c3 in, bits out), key = seed.
inline void philox_rounds(__m512i& c0, __m512i& c1, __m512i& c2, __m512i& c3, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(philox::kMul0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(philox::kMul1));
  for (int r = 0; r < 10; ++r) {
    const __m512i hi0 = mulhi32(c0, m0), lo0 = mullo32(c0, m0);
    const __m512i hi1 = mulhi32(c2, m1), lo1 = mullo32(c2, m1);
    const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
    const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += philox::kWeyl0;
    k1 += philox::kWeyl1;
  }
}

// Uniforms of stream elements [64 g, 64 g + 64) in element order (4 x 16).
inline void philox_group(uint64_t seed, uint64_t offset, uint64_t first_block, __m512 out[4]) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // block indices first_block + j; the high word only changes past 2^32 blocks
  const __m512i lo = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_block))), lane);
  const __mmask16 carry = _mm512_cmp_epu32_mask(lo, _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first_block))), _MM_CMPINT_LT);
  __m512i c0 = lo;
  __m512i c1 = _mm512_mask_add_epi32(_mm512_set1_epi32(static_cast<int>(first_block >> 32)), carry,
                                     _mm512_set1_epi32(static_cast<int>(first_block >> 32)), _mm512_set1_epi32(1));
  __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  __m512i c3 = _mm512_set1_epi32(static_cast<int>(offset >> 32));
  philox_rounds(c0, c1, c2, c3, seed);
  // transpose lanes (block j, lane l) -> element 4 j + l
  const __m512i a01 = _mm512_unpacklo_epi32(c0, c1), b01 = _mm512_unpackhi_epi32(c0, c1);
  const __m512i a23 = _mm512_unpacklo_epi32(c2, c3), b23 = _mm512_unpackhi_epi32(c2, c3);
  const __m512i w0 = _mm512_unpacklo_epi64(a01, a23), w1 = _mm512_unpackhi_epi64(a01, a23);
  const __m512i w2 = _mm512_unpacklo_epi64(b01, b23), w3 = _mm512_unpackhi_epi64(b01, b23);
  const __m512i P = _mm512_shuffle_i32x4(w0, w1, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i Q = _mm512_shuffle_i32x4(w2, w3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i R = _mm512_shuffle_i32x4(w0, w1, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i S = _mm512_shuffle_i32x4(w2, w3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i e[4] = {_mm512_shuffle_i32x4(P, Q, _MM_SHUFFLE(2, 0, 2, 0)),
                        _mm512_shuffle_i32x4(P, Q, _MM_SHUFFLE(3, 1, 3, 1)),
                        _mm512_shuffle_i32x4(R, S, _MM_SHUFFLE(2, 0, 2, 0)),
                        _mm512_shuffle_i32x4(R, S, _MM_SHUFFLE(3, 1, 3, 1))};
  // ((bits >> 9) + 0.5) * 2^-23, exact
  for (int q = 0; q < 4; ++q) {
    const __m512 f = _mm512_cvtepi32_ps(_mm512_srli_epi32(e[q], 9));
    out[q] = _mm512_mul_ps(_mm512_add_ps(f, _mm512_set1_ps(0.5f)), _mm512_set1_ps(1.0f / 8388608.0f));
  }
}

inline __m512 vgumbel(__m512 u) {
  return _mm512_sub_ps(_mm512_setzero_ps(),
                       vlog(_mm512_sub_ps(_mm512_setzero_ps(), vlog(u))));
}

inline float hmax(__m512 v) { return _mm512_reduce_max_ps(v); }
inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

#endif  // SOFTDEC_SIMD_AVX512

// ------------------------------------------------------------------ AVX2 (x86-64-v3)
#if defined(SOFTDEC_SIMD_AVX2)
// 8 lanes, full vectors only; callers finish the tails with scalar loops.

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const bf16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline __m256 load8(const fp16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// filter::fexp, lane for lane.
inline __m256 vexp8(__m256 x) {
  const __m256 ok = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  const __m256 n = _mm256_floor_ps(t);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, r2, r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvttps_epi32(n);
  const __m256 scale =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
  return _mm256_and_ps(_mm256_mul_ps(p, scale), ok);
}

// filter::flog for x in (0, 1], lane for lane.
inline __m256 vlog8(__m256 x) {
  const __m256i b = _mm256_castps_si256(x);
  __m256i e = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(0xff)),
                               _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x007fffff)),
                                                 _mm256_set1_epi32(0x3f800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_add_epi32(e, _mm256_and_si256(_mm256_castps_si256(big), _mm256_set1_epi32(1)));
  const __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  const __m256 z = _mm256_mul_ps(f, f);
  __m256 y = _mm256_set1_ps(7.0376836292e-2f);
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.1514610310e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.1676998740e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.2420140846e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.4249322787e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-1.6668057665e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(2.0000714765e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(-2.4999993993e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(3.3333331174e-1f));
  const __m256 fe = _mm256_cvtepi32_ps(e);
  y = _mm256_mul_ps(_mm256_mul_ps(y, f), z);
  y = _mm256_fmadd_ps(fe, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fmadd_ps(_mm256_set1_ps(-0.5f), z, y);
  __m256 r = _mm256_add_ps(f, y);
  r = _mm256_fmadd_ps(fe, _mm256_set1_ps(0.693359375f), r);
  return r;
}
#endif  // SOFTDEC_SIMD_AVX2

// ------------------------------------------------------------------ 64 uniforms, best path
// Stream elements [4 first_block, 4 first_block + 64) into out[64] (64-byte
// aligned): philox_group where AVX-512 is available (explicit vpmuludq rounds
// and an in-register transpose; ~1.8x the SoA loop in a -O3 micro-benchmark on
// the shared dev machine), else philox_blocks. Same bits either way.
inline void philox_chunk(uint64_t seed, uint64_t offset, uint64_t first_block,
                         float* SOFTDEC_RESTRICT out) {
#if defined(SOFTDEC_SIMD_AVX512)
  __m512 u[4];
  philox_group(seed, offset, first_block, u);
  for (int q = 0; q < 4; ++q) _mm512_store_ps(out + 16 * q, u[q]);
#else
  philox_blocks(seed, offset, first_block, out);
#endif
}

}  // namespace simd
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec
