// CUDA glue: current stream from the stable shim, launch checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "../common.h"
#include "../dispatch.h"

namespace softdec {

inline cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  SOFTDEC_SHIM_CHECK(
      aoti_torch_get_current_cuda_stream(static_cast<int32_t>(t.get_device()), &stream));
  return static_cast<cudaStream_t>(stream);
}

#define SOFTDEC_CUDA_CHECK(expr)                                                        \
  do {                                                                                  \
    cudaError_t err__ = (expr);                                                         \
    if (err__ != cudaSuccess) {                                                         \
      throw std::runtime_error(::softdec::detail::cat("CUDA error ", cudaGetErrorString(err__), \
                                                      " at ", __FILE__, ":", __LINE__));        \
    }                                                                                   \
  } while (0)

#define SOFTDEC_CUDA_LAUNCH_CHECK() SOFTDEC_CUDA_CHECK(cudaGetLastError())

// torch's bf16 / fp16 as the CUDA native types.
template <typename T>
struct CudaNative {
  using type = T;
};
template <>
struct CudaNative<bf16> {
  using type = __nv_bfloat16;
};
template <>
struct CudaNative<fp16> {
  using type = __half;
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ double to_float(double v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_float<double>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

}  // namespace softdec
