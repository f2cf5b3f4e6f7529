// Philox4x32-10 counter-based RNG (Salmon et al., SC'11, "Parallel random
// numbers: as easy as 1, 2, 3"), the one random stream of every softdec op.
//
// Stream layout (binding: CPU and CUDA draw the same numbers):
//   key     = (lo32(seed), hi32(seed))
//   counter = (lo32(i >> 2), hi32(i >> 2), lo32(offset), hi32(offset))
//   element i of the (seed, offset) stream = lane (i & 3) of Philox(counter, key)
// A row's randomness therefore depends only on its own (seed, offset) and the
// element index i, never on the batch around it.
//
// Header-only, no torch headers; every function is __host__ __device__.
#pragma once

#include <cstdint>

#include "softdec/macros.h"

#if !defined(__CUDACC__)
#include <cmath>
#endif

namespace softdec {
namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1

struct U32x4 {
  uint32_t v[4];
};

SOFTDEC_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  *lo = a * b;
  *hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *lo = static_cast<uint32_t>(p);
  *hi = static_cast<uint32_t>(p >> 32);
#endif
}

// One application of the full 10-round Philox4x32 bijection.
SOFTDEC_HD U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kMul0, ctr.v[0], &hi0, &lo0);
    mulhilo32(kMul1, ctr.v[2], &hi1, &lo1);
    U32x4 next;
    next.v[0] = hi1 ^ ctr.v[1] ^ k0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ ctr.v[3] ^ k1;
    next.v[3] = lo0;
    ctr = next;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return ctr;
}

// The block of four stream elements [4*block, 4*block + 4) of (seed, offset).
SOFTDEC_HD U32x4 block(uint64_t seed, uint64_t offset, uint64_t block_index) {
  U32x4 ctr;
  ctr.v[0] = static_cast<uint32_t>(block_index);
  ctr.v[1] = static_cast<uint32_t>(block_index >> 32);
  ctr.v[2] = static_cast<uint32_t>(offset);
  ctr.v[3] = static_cast<uint32_t>(offset >> 32);
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Raw 32-bit element i of the (seed, offset) stream.
SOFTDEC_HD uint32_t bits(uint64_t seed, uint64_t offset, uint64_t i) {
  return block(seed, offset, i >> 2).v[i & 3];
}

// Map 32 random bits to a float strictly inside (0, 1): the top 23 bits k give
// (k + 0.5) / 2^23, exact in float32, so 2^-24 <= u <= 1 - 2^-24.
SOFTDEC_HD float to_unit_float(uint32_t x) {
  return (static_cast<float>(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// Map 32 random bits to a double strictly inside (0, 1) with 32 bits of
// resolution: (x + 0.5) / 2^32.
SOFTDEC_HD double to_unit_double(uint32_t x) {
  return (static_cast<double>(x) + 0.5) * (1.0 / 4294967296.0);
}

// Uniform element i of the (seed, offset) stream, strictly inside (0, 1).
SOFTDEC_HD float uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  return to_unit_float(bits(seed, offset, i));
}

// A double strictly inside (0, 1) with 53 random bits: 27 from element 0 and
// 26 from element 1 of the (seed, offset) stream, (k + 0.5) / 2^53. The one
// uniform of an inverse-CDF draw (softdec.sample): fine enough that no
// probability above ~1e-16 is quantised away.
SOFTDEC_HD double uniform53(uint64_t seed, uint64_t offset) {
  const U32x4 b = block(seed, offset, 0);
  const uint64_t k = (static_cast<uint64_t>(b.v[0] >> 5) << 26) | static_cast<uint64_t>(b.v[1] >> 6);
  return (static_cast<double>(k) + 0.5) * (1.0 / 9007199254740992.0);
}

// Standard Gumbel noise G = -log(-log u) for u strictly inside (0, 1); finite
// for every u the stream produces (|G| < 17).
SOFTDEC_HD float gumbel_from_uniform(float u) {
#if defined(__CUDA_ARCH__)
  return -logf(-logf(u));
#else
  return -std::log(-std::log(u));
#endif
}

// Standard exponential E = -log u (the exponential race: argmax p_i / E_i is a
// categorical draw from p).
SOFTDEC_HD float exponential_from_uniform(float u) {
#if defined(__CUDA_ARCH__)
  return -logf(u);
#else
  return -std::log(u);
#endif
}

}  // namespace philox
}  // namespace softdec
