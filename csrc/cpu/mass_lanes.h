// cpu::MassLanes: the kept mass Z by the exact rule of include/softdec/filter.h ("the kept mass
// Z, exactly"), vectorised. Each mass (a float in [0, 1]; a token not kept adds 0) is cut into
// its three base-2^32 digits with exact arithmetic (x 2^32, floor, subtract, x 2^32 ...; float
// lanes, every step exact, so the digits are filter::mass_digits'), the digits are added in
// double lanes -- exact while a lane's sum stays below 2^53, i.e. for at
// most 2^20 digits of at most 2^32 each; the lanes are flushed into uint64 sums every kFlush
// adds -- so the result is filter::MassSum's, bit for bit, in any order and any split.
#pragma once

#include "simd.h"

#include "softdec/filter.h"

#include <cstdint>

namespace softdec {
namespace SOFTDEC_CPU_NS {
namespace cpu {

class MassLanes {
 public:
  // masses e[0, n) (0 for a token not kept)
  void add(const float* e, int64_t n) {
    int64_t j = 0;
#if defined(SOFTDEC_SIMD_AVX512)
    for (; j + 16 <= n; j += 16) add16(_mm512_loadu_ps(e + j));
#elif defined(SOFTDEC_SIMD_AVX2)
    for (; j + 8 <= n; j += 8) add8(_mm256_loadu_ps(e + j));
#endif
    for (; j < n; ++j) tail_.add(e[j]);
  }

#if defined(SOFTDEC_SIMD_AVX512)
  // 16 masses at once (lanes not kept hold 0). The digits are cut in float lanes: e 2^32, its floor,
  // the remainder and its scaling by 2^32 are exact in float too (e >= 2^-126 or 0: vexp's range),
  // so they equal filter::mass_digits' double steps; then widened to the double accumulators.
  void add16(__m512 e) {
    constexpr int kFloor = _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC;
    const __m512 k32 = _mm512_set1_ps(4294967296.0f);
    __m512 a = _mm512_mul_ps(e, k32);
    const __m512 d0 = _mm512_roundscale_ps(a, kFloor);
    a = _mm512_mul_ps(_mm512_sub_ps(a, d0), k32);
    const __m512 d1 = _mm512_roundscale_ps(a, kFloor);
    a = _mm512_mul_ps(_mm512_sub_ps(a, d1), k32);
    const __m512 d2 = _mm512_roundscale_ps(a, kFloor);
    a0_ = _mm512_add_pd(_mm512_add_pd(a0_, lo8(d0)), hi8(d0));
    a1_ = _mm512_add_pd(_mm512_add_pd(a1_, lo8(d1)), hi8(d1));
    a2_ = _mm512_add_pd(_mm512_add_pd(a2_, lo8(d2)), hi8(d2));
    if ((adds_ += 2) >= kFlush) flush();
  }
#elif defined(SOFTDEC_SIMD_AVX2)
  // 8 masses at once (lanes not kept hold 0); float digits as in add16
  void add8(__m256 e) {
    const __m256 k32 = _mm256_set1_ps(4294967296.0f);
    __m256 a = _mm256_mul_ps(e, k32);
    const __m256 d0 = _mm256_floor_ps(a);
    a = _mm256_mul_ps(_mm256_sub_ps(a, d0), k32);
    const __m256 d1 = _mm256_floor_ps(a);
    a = _mm256_mul_ps(_mm256_sub_ps(a, d1), k32);
    const __m256 d2 = _mm256_floor_ps(a);
    a0_ = _mm256_add_pd(_mm256_add_pd(a0_, _mm256_cvtps_pd(_mm256_castps256_ps128(d0))),
                        _mm256_cvtps_pd(_mm256_extractf128_ps(d0, 1)));
    a1_ = _mm256_add_pd(_mm256_add_pd(a1_, _mm256_cvtps_pd(_mm256_castps256_ps128(d1))),
                        _mm256_cvtps_pd(_mm256_extractf128_ps(d1, 1)));
    a2_ = _mm256_add_pd(_mm256_add_pd(a2_, _mm256_cvtps_pd(_mm256_castps256_ps128(d2))),
                        _mm256_cvtps_pd(_mm256_extractf128_ps(d2, 1)));
    if ((adds_ += 2) >= kFlush) flush();
  }
#endif

  // Z's digit sums so far (the lanes flushed into them)
  filter::MassSum sum() {
    flush();
    filter::MassSum s = tail_;
    s.merge(acc_);
    return s;
  }

 private:
  static constexpr int kFlush = 1 << 19;  // adds per lane between flushes (< 2^20: exact doubles)
  filter::MassSum acc_, tail_;
  int adds_ = 0;
#if defined(SOFTDEC_SIMD_AVX512)
  __m512d a0_ = _mm512_setzero_pd(), a1_ = _mm512_setzero_pd(), a2_ = _mm512_setzero_pd();
  static __m512d lo8(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
  static __m512d hi8(__m512 v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }
  void flush() {
    alignas(64) double b[3][8];
    _mm512_store_pd(b[0], a0_);
    _mm512_store_pd(b[1], a1_);
    _mm512_store_pd(b[2], a2_);
    for (int k = 0; k < 3; ++k)
      for (int l = 0; l < 8; ++l) acc_.d[k] += static_cast<uint64_t>(b[k][l]);
    a0_ = a1_ = a2_ = _mm512_setzero_pd();
    adds_ = 0;
  }
#elif defined(SOFTDEC_SIMD_AVX2)
  __m256d a0_ = _mm256_setzero_pd(), a1_ = _mm256_setzero_pd(), a2_ = _mm256_setzero_pd();
  void flush() {
    alignas(32) double b[3][4];
    _mm256_store_pd(b[0], a0_);
    _mm256_store_pd(b[1], a1_);
    _mm256_store_pd(b[2], a2_);
    for (int k = 0; k < 3; ++k)
      for (int l = 0; l < 4; ++l) acc_.d[k] += static_cast<uint64_t>(b[k][l]);
    a0_ = a1_ = a2_ = _mm256_setzero_pd();
    adds_ = 0;
  }
#else
  void flush() {}
#endif
};

}  // namespace cpu
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec
