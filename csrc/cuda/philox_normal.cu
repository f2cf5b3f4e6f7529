// CUDA backend of softdec.philox_normal (soft::embed_normal): the same numbers
// as the CPU backend, one thread per element.
#include "cuda_common.cuh"
#include "../philox_checks.h"
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
  const int64_t rows = philox_checks::check_stream_args(seed, offset, n, "philox_normal");
  const int64_t total = rows * n;  // checked: <= 2^60
  torch::stable::accelerator::DeviceGuard guard(seed.get_device_index());
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
