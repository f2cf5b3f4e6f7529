// CUDA backend of the Philox stream (philox_uniform): the same numbers as the
// CPU backend, one thread per Philox block of four uniforms.
#include "cuda_common.cuh"
#include "../philox_checks.h"
#include "softdec/philox.h"

namespace softdec {
namespace {

constexpr int kPhiloxThreads = 256;

__global__ void __launch_bounds__(kPhiloxThreads) philox_uniform_kernel(const int64_t* __restrict__ seeds,
                                      const int64_t* __restrict__ offsets, int64_t n,
                                      int64_t blocks_per_row, int64_t rows,
                                      float* __restrict__ out) {
  const int64_t total = rows * blocks_per_row;
  for (int64_t w = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; w < total;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = w / blocks_per_row, b = w % blocks_per_row;
    const philox::U32x4 x = philox::block(static_cast<uint64_t>(__ldg(seeds + r)),
                                          static_cast<uint64_t>(__ldg(offsets + r)),
                                          static_cast<uint64_t>(b));
    float* o = out + r * n + 4 * b;
    const int64_t left = n - 4 * b;
    if (left >= 4 && (n & 3) == 0) {
      // 16-byte store: rows are float4-aligned when n is a multiple of 4.
      *reinterpret_cast<float4*>(o) =
          make_float4(philox::to_unit_float(x.v[0]), philox::to_unit_float(x.v[1]),
                      philox::to_unit_float(x.v[2]), philox::to_unit_float(x.v[3]));
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (j < left) o[j] = philox::to_unit_float(x.v[j]);
    }
  }
}

Tensor philox_uniform_cuda(Tensor seed, Tensor offset, int64_t n) {
  const int64_t rows = philox_checks::check_stream_args(seed, offset, n, "philox_uniform");
  torch::stable::accelerator::DeviceGuard guard(seed.get_device_index());
  Tensor out = new_empty(seed, {rows, n}, ScalarType::Float);
  if (rows == 0 || n == 0) return out;
  const int64_t blocks_per_row = sat_ceil_div(n, 4);
  const int64_t total = rows * blocks_per_row;
  const int64_t grid = std::min<int64_t>((total + kPhiloxThreads - 1) / kPhiloxThreads, 65535 * 8);
  philox_uniform_kernel<<<static_cast<unsigned>(grid), kPhiloxThreads, 0, current_stream(seed)>>>(
      seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(), n, blocks_per_row, rows,
      out.mutable_data_ptr<float>());
  SOFTDEC_CUDA_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("philox_uniform", TORCH_BOX(&softdec::philox_uniform_cuda));
}
