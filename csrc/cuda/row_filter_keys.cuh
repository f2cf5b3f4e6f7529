// Pure (host + device) pieces of the CUDA verify row filter (row_filter.cuh), in a header
// without torch / CUDA runtime dependencies so that tests/cuda_host/row_filter_keys.cu can
// check them on the host.
#pragma once

#include <cstdint>

#include "softdec/filter.h"

namespace softdec {
namespace vcuda {

// Packed key: higher = earlier in the filter order (value desc, index asc); distinct.
__host__ __device__ __forceinline__ unsigned long long pack_key(float x, int64_t i) {
  return (static_cast<unsigned long long>(filter::order_key(x)) << 32) |
         static_cast<unsigned long long>(0xffffffffu - static_cast<uint32_t>(i));
}
__host__ __device__ __forceinline__ float key_value(unsigned long long k) {
  return filter::key_float(static_cast<uint32_t>(k >> 32));
}
__host__ __device__ __forceinline__ int64_t key_index(unsigned long long k) {
  return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(k & 0xffffffffu));
}

__host__ __device__ __forceinline__ bool in_cut(float x, int64_t i, float cv, int64_t ci) {
  return x > -filter::inf_f() && (x > cv || (x == cv && i <= ci));
}

}  // namespace vcuda
}  // namespace softdec
