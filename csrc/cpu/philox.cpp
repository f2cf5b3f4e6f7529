// CPU backend of the Philox stream (philox_uniform).
#include "capability.h"
#include "../common.h"
#include "../philox_checks.h"
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
  const int64_t rows = philox_checks::check_stream_args(seed, offset, n, "philox_uniform");
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
