// CUDA glue: current stream from the stable shim, launch checks.
#pragma once

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>

#include "../common.h"

namespace softdec {

inline cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(
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

}  // namespace softdec
