// Portable qualifiers shared by the CPU and CUDA backends. No torch headers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SOFTDEC_HD __host__ __device__ __forceinline__
#define SOFTDEC_DEVICE __device__ __forceinline__
#else
#define SOFTDEC_HD inline
#define SOFTDEC_DEVICE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SOFTDEC_LIKELY(x) __builtin_expect(!!(x), 1)
#define SOFTDEC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define SOFTDEC_RESTRICT __restrict__
#else
#define SOFTDEC_LIKELY(x) (x)
#define SOFTDEC_UNLIKELY(x) (x)
#define SOFTDEC_RESTRICT
#endif

namespace softdec {

// Status codes returned by header-only math (it never throws).
enum class Status : int32_t {
  kOk = 0,
  kInvalidArgument = 1,
};

}  // namespace softdec
