// CUDA backend of softdec.philox_normal (soft::embed_normal): the same numbers
// as the CPU backend, one thread per element.
#include "cuda_common.cuh"
#include "softdec/soft_mixture.h"

namespace softdec {
namespace {

constexpr int kNormalThreads = 256;

__global__ void __launch_bounds__(kNormalThreads) philox_normal_kernel(const int64_t* __restrict__ seeds,
                                                                       const int64_t* __restrict__ offsets,
                                                                       int64_t n, int64_t total,
                                                                       float* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, d = i % n;
    out[i] = soft::embed_normal(static_cast<uint64_t>(__ldg(seeds + r)), static_cast<uint64_t>(__ldg(offsets + r)),
                                static_cast<uint64_t>(d));
  }
}

Tensor philox_normal_cuda(Tensor seed, Tensor offset, int64_t n) {
  check_dim(seed, "seed", 1, "(rows,)");
  check_dtype(seed, "seed", ScalarType::Long);
  check_per_row(offset, "offset", seed.size(0), ScalarType::Long, seed, "seed");
  SOFTDEC_CHECK(n >= 0, "n must be non-negative, got ", n);
  SOFTDEC_CHECK(seed.numel() <= 1 || seed.stride(0) == 1, "seed must be contiguous");
  torch::stable::accelerator::DeviceGuard guard(seed.get_device_index());
  const int64_t rows = seed.size(0);
  int64_t total = 0;
  SOFTDEC_CHECK(checked_mul(rows, n, &total) && total <= (kSizeMax >> 3), "philox_normal: shape (", rows,
                ", ", n, ") has too many elements (at most 2^60 in all)");
  SOFTDEC_CHECK(n <= (int64_t(1) << 62), "philox_normal: n must be <= 2^62, got ", n);
  Tensor out = new_empty(seed, {rows, n}, ScalarType::Float);
  if (total == 0) return out;
  const int64_t grid = std::min<int64_t>((total + kNormalThreads - 1) / kNormalThreads, 65535 * 8);
  philox_normal_kernel<<<static_cast<unsigned>(grid), kNormalThreads, 0, current_stream(seed)>>>(
      seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(), n, total, out.mutable_data_ptr<float>());
  SOFTDEC_CUDA_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("philox_normal", TORCH_BOX(&softdec::philox_normal_cuda));
}
