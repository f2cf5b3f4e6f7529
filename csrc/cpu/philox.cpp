// CPU backend of the Philox stream (philox_uniform).
#include "../common.h"
#include "softdec/philox.h"

#include <algorithm>

namespace softdec {
namespace {

// 16 Philox blocks (64 uniforms) at once, structure-of-arrays so the compiler
// vectorises the ten rounds (vpmuludq does the 32x32->64 products).
constexpr int kLanes = 16;

inline void philox_blocks(uint64_t seed, uint64_t offset, uint64_t first_block,
                          float* SOFTDEC_RESTRICT out /* [kLanes * 4] */) {
  uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    const uint64_t b = first_block + j;
    c0[j] = static_cast<uint32_t>(b);
    c1[j] = static_cast<uint32_t>(b >> 32);
    c2[j] = static_cast<uint32_t>(offset);
    c3[j] = static_cast<uint32_t>(offset >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
#pragma GCC ivdep
    for (int j = 0; j < kLanes; ++j) {
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
  for (int j = 0; j < kLanes; ++j) {
    out[4 * j + 0] = philox::to_unit_float(c0[j]);
    out[4 * j + 1] = philox::to_unit_float(c1[j]);
    out[4 * j + 2] = philox::to_unit_float(c2[j]);
    out[4 * j + 3] = philox::to_unit_float(c3[j]);
  }
}

Tensor philox_uniform_cpu(Tensor seed, Tensor offset, int64_t n) {
  check_dim(seed, "seed", 1, "(rows,)");
  check_dtype(seed, "seed", ScalarType::Long);
  check_per_row(offset, "offset", seed.size(0), ScalarType::Long, seed, "seed");
  SOFTDEC_CHECK(n >= 0, "n must be non-negative, got ", n);
  SOFTDEC_CHECK(seed.numel() <= 1 || seed.stride(0) == 1, "seed must be contiguous");
  const int64_t rows = seed.size(0);
  Tensor out = new_empty(seed, {rows, n}, ScalarType::Float);
  if (rows == 0 || n == 0) return out;
  const int64_t* seeds = seed.const_data_ptr<int64_t>();
  const int64_t* offsets = offset.const_data_ptr<int64_t>();
  float* o = out.mutable_data_ptr<float>();
  constexpr int64_t kChunk = kLanes * 4;  // uniforms per philox_blocks call
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  // Work item = (row, chunk); grain of 64 chunks (4096 uniforms).
  torch::stable::parallel_for(0, rows * chunks, 64, [&](int64_t begin, int64_t end) {
    alignas(64) float buf[kChunk];
    for (int64_t w = begin; w < end; ++w) {
      const int64_t r = w / chunks, c = w % chunks;
      const int64_t start = c * kChunk;
      philox_blocks(static_cast<uint64_t>(seeds[r]), static_cast<uint64_t>(offsets[r]),
                    static_cast<uint64_t>(start / 4), buf);
      const int64_t len = std::min<int64_t>(kChunk, n - start);
      std::copy(buf, buf + len, o + r * n + start);
    }
  });
  return out;
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CPU, m) {
  m.impl("philox_uniform", TORCH_BOX(&softdec::philox_uniform_cpu));
}
