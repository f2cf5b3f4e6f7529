// CPU backend of softdec.philox_normal: the Gaussian embedding noise of
// soft_mixture (soft::embed_normal), exposed so a trainer can recompute it.
#include "capability.h"
#include "../common.h"
#include "softdec/soft_mixture.h"

namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

Tensor philox_normal_cpu(Tensor seed, Tensor offset, int64_t n) {
  check_dim(seed, "seed", 1, "(rows,)");
  check_dtype(seed, "seed", ScalarType::Long);
  check_per_row(offset, "offset", seed.size(0), ScalarType::Long, seed, "seed");
  SOFTDEC_CHECK(n >= 0, "n must be non-negative, got ", n);
  SOFTDEC_CHECK(seed.numel() <= 1 || seed.stride(0) == 1, "seed must be contiguous");
  const int64_t rows = seed.size(0);
  int64_t total = 0;
  SOFTDEC_CHECK(checked_mul(rows, n, &total) && total <= (kSizeMax >> 3), "philox_normal: shape (", rows,
                ", ", n, ") has too many elements (at most 2^60 in all)");
  SOFTDEC_CHECK(n <= (int64_t(1) << 62), "philox_normal: n must be <= 2^62, got ", n);
  Tensor out = new_empty(seed, {rows, n}, ScalarType::Float);
  if (rows == 0 || n == 0) return out;
  const int64_t* seeds = seed.const_data_ptr<int64_t>();
  const int64_t* offsets = offset.const_data_ptr<int64_t>();
  float* o = out.mutable_data_ptr<float>();
  torch::stable::parallel_for(0, total, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / n, d = i % n;
      o[i] = soft::embed_normal(static_cast<uint64_t>(seeds[r]), static_cast<uint64_t>(offsets[r]),
                                static_cast<uint64_t>(d));
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
