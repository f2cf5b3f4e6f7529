// CPU backend of the Philox stream (philox_uniform).
#include "capability.h"
#include "../common.h"
#include "softdec/philox.h"
#include "simd.h"

#include <algorithm>

namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

// 64 consecutive uniforms (16 Philox blocks) per simd::philox_chunk call: the
// AVX-512 philox_group where available, else the portable SoA loop (same bits).
constexpr int64_t kChunk = simd::kPhiloxChunk;

Tensor philox_uniform_cpu(Tensor seed, Tensor offset, int64_t n) {
  check_dim(seed, "seed", 1, "(rows,)");
  check_dtype(seed, "seed", ScalarType::Long);
  check_per_row(offset, "offset", seed.size(0), ScalarType::Long, seed, "seed");
  SOFTDEC_CHECK(n >= 0, "n must be non-negative, got ", n);
  SOFTDEC_CHECK(seed.numel() <= 1 || seed.stride(0) == 1, "seed must be contiguous");
  const int64_t rows = seed.size(0);
  int64_t total = 0;
  SOFTDEC_CHECK(checked_mul(rows, n, &total) && total <= (kSizeMax >> 3), "philox_uniform: shape (",
                rows, ", ", n, ") has too many elements (", rows, " rows of ", n,
                " uniforms; at most 2^60 in all)");
  Tensor out = new_empty(seed, {rows, n}, ScalarType::Float);
  if (rows == 0 || n == 0) return out;
  const int64_t* seeds = seed.const_data_ptr<int64_t>();
  const int64_t* offsets = offset.const_data_ptr<int64_t>();
  float* o = out.mutable_data_ptr<float>();
  const int64_t chunks = sat_ceil_div(n, kChunk);
  // Work item = (row, chunk); grain of 64 chunks (4096 uniforms).
  torch::stable::parallel_for(0, rows * chunks, 64, [&](int64_t begin, int64_t end) {
    alignas(64) float buf[kChunk];
    for (int64_t w = begin; w < end; ++w) {
      const int64_t r = w / chunks, c = w % chunks;
      const int64_t start = c * kChunk;
      simd::philox_chunk(static_cast<uint64_t>(seeds[r]), static_cast<uint64_t>(offsets[r]),
                         static_cast<uint64_t>(start / 4), buf);
      const int64_t len = std::min<int64_t>(kChunk, n - start);
      std::copy(buf, buf + len, o + r * n + start);
    }
  });
  return out;
}

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(philox,
    {"philox_uniform", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::philox_uniform_cpu)})
