// Shared glue for csrc/: the only layer that touches torch::stable::Tensor.
// Input checks with full-sentence messages, dtype helpers, stream lookup.
#pragma once

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "softdec/sizes.h"

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace softdec {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;

namespace detail {
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream oss;
  ((oss << args), ...);
  return oss.str();
}
}  // namespace detail

// A user error: the message names the argument, the expected and the actual value.
#define SOFTDEC_CHECK(cond, ...)                                        \
  do {                                                                  \
    if (!(cond)) {                                                      \
      throw std::invalid_argument(::softdec::detail::cat(__VA_ARGS__)); \
    }                                                                   \
  } while (0)

// An invariant the code itself guarantees (not a user error).
#define SOFTDEC_ASSERT(cond)                                                       \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      throw std::logic_error(::softdec::detail::cat("softdec internal error: ",    \
                                                    #cond, " at ", __FILE__, ":", \
                                                    __LINE__));                    \
    }                                                                              \
  } while (0)

// A call into torch's C shim (aoti_torch_*) that must succeed. Ours, not torch's: its
// STABLE_TORCH_ERROR_CODE_CHECK exists only from torch 2.13, and TORCH_ERROR_CODE_CHECK is a
// bare `if` (a dangling-else hazard). This one reads the same on every torch >= 2.10.
#define SOFTDEC_SHIM_CHECK(call)                                                             \
  do {                                                                                       \
    if ((call) != AOTI_TORCH_SUCCESS) {                                                      \
      throw std::runtime_error(::softdec::detail::cat("softdec: torch C shim call ", #call,    \
                                                      " failed at ", __FILE__, ":", __LINE__)); \
    }                                                                                        \
  } while (0)

inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Half: return "float16";
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    case ScalarType::Bool: return "bool";
    case ScalarType::Byte: return "uint8";
    default: return "an unsupported dtype";
  }
}

// n values as a Python tuple: "(3, 4)", "(3,)", "()"; get(i) gives the i-th.
template <typename Get>
std::string tuple_str(int64_t n, Get get) {
  std::ostringstream oss;
  oss << "(";
  for (int64_t i = 0; i < n; ++i) oss << (i ? ", " : "") << get(i);
  oss << (n == 1 ? ",)" : ")");
  return oss.str();
}

inline std::string shape_str(const Tensor& t) {
  return tuple_str(t.dim(), [&](int64_t i) { return t.size(i); });
}

inline std::string strides_str(const Tensor& t) {
  return tuple_str(t.dim(), [&](int64_t i) { return t.stride(i); });
}

inline std::string device_str(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  if (t.is_cuda()) return detail::cat("cuda:", static_cast<int>(t.get_device()));
  return "an unsupported device";
}

inline void check_dim(const Tensor& t, const char* name, int64_t dim, const char* layout) {
  SOFTDEC_CHECK(t.dim() == dim, name, " must be a ", dim, "-D tensor ", layout, ", got shape ",
                shape_str(t));
}

inline bool is_float_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::BFloat16 || t == ScalarType::Half;
}

inline void check_float(const Tensor& t, const char* name) {
  SOFTDEC_CHECK(is_float_dtype(t.scalar_type()), name,
                " must be float32, bfloat16 or float16, got ", dtype_name(t.scalar_type()));
}

inline void check_dtype(const Tensor& t, const char* name, ScalarType want) {
  SOFTDEC_CHECK(t.scalar_type() == want, name, " must be ", dtype_name(want), ", got ",
                dtype_name(t.scalar_type()));
}

inline void check_same_device(const Tensor& a, const char* an, const Tensor& b, const char* bn) {
  SOFTDEC_CHECK(a.is_cpu() == b.is_cpu() && a.get_device() == b.get_device(), bn,
                " must be on the same device as ", an, " (", device_str(a), "), got ",
                device_str(b));
}

// torch's definition of a contiguous tensor: row-major strides over the
// dimensions of size > 1 (a size-1 dimension's stride is never used to
// address an element), and every empty tensor is contiguous.
inline bool is_contiguous(const Tensor& t) {
  if (t.numel() == 0) return true;
  int64_t expected = 1;
  for (int64_t i = t.dim() - 1; i >= 0; --i) {
    if (t.size(i) == 1) continue;
    if (t.stride(i) != expected) return false;
    expected *= t.size(i);
  }
  return true;
}

inline void check_contiguous(const Tensor& t, const char* name) {
  SOFTDEC_CHECK(is_contiguous(t), name, " must be contiguous, got shape ", shape_str(t), " and strides ",
                strides_str(t));
}

// The last dimension is contiguous (size <= 1 or stride 1; an empty tensor
// always is, as in torch: no element is addressed).
inline void check_last_contiguous(const Tensor& t, const char* name) {
  SOFTDEC_CHECK(t.dim() == 0 || t.numel() == 0 || t.size(t.dim() - 1) <= 1 || t.stride(t.dim() - 1) == 1, name,
                " must be contiguous in its last dimension, got stride ",
                t.dim() ? t.stride(t.dim() - 1) : 0);
}

// A per-row parameter tensor: 1-D of length `rows` and the given dtype.
inline void check_per_row(const Tensor& t, const char* name, int64_t rows, ScalarType want,
                          const Tensor& ref, const char* ref_name) {
  check_dtype(t, name, want);
  SOFTDEC_CHECK(t.dim() == 1 && t.size(0) == rows, name, " must have shape (", rows,
                ",) (one value per row of ", ref_name, "), got ", shape_str(t));
  check_same_device(ref, ref_name, t, name);
  check_contiguous(t, name);
}

// An output written in place must not alias itself: no dimension of size > 1
// with stride 0 (an expand()ed tensor), which torch also refuses to write.
inline void check_no_internal_overlap(const Tensor& t, const char* name) {
  for (int64_t i = 0; i < t.dim(); ++i)
    SOFTDEC_CHECK(t.size(i) <= 1 || t.stride(i) != 0, name,
                  " is written in place and must not overlap itself (no stride 0 on a dimension of size > 1;"
                  " pass a contiguous tensor, not an expand()ed one), got shape ", shape_str(t), " and strides ",
                  strides_str(t));
}

// An uninitialised contiguous tensor of `sizes` and `dtype` on `like`'s device.
// Straight to the shim's empty_strided: torch::stable::new_empty goes through
// the boxed dispatcher (about 1 us a tensor on CPU, which was most of the
// fixed cost of a B = 1 call of an op with many outputs).
inline Tensor new_empty(const Tensor& like, std::initializer_list<int64_t> sizes, ScalarType dtype) {
  constexpr size_t kMaxDim = 8;
  SOFTDEC_ASSERT(sizes.size() <= kMaxDim);
  int64_t sz[kMaxDim], st[kMaxDim];
  const int64_t nd = static_cast<int64_t>(sizes.size());
  int64_t i = 0;
  for (int64_t s : sizes) sz[i++] = s;
  int64_t stride = 1;
  bool fits = true;
  for (int64_t j = nd - 1; j >= 0; --j) {
    st[j] = stride;
    fits = fits && checked_mul(stride, sz[j] > 1 ? sz[j] : 1, &stride);
  }
  // numel * 8 bytes must fit in int64 (the allocator's byte count)
  fits = fits && stride <= (kSizeMax >> 3);
  if (!fits) {
    throw std::invalid_argument(detail::cat("cannot allocate an output of shape ",
                                            tuple_str(nd, [&](int64_t j) { return sz[j]; }),
                                            ": too many elements"));
  }
  int32_t device_type = 0;
  SOFTDEC_SHIM_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  const int32_t device_index = like.is_cpu() ? 0 : static_cast<int32_t>(like.get_device_index());
  AtenTensorHandle out = nullptr;
  SOFTDEC_SHIM_CHECK(aoti_torch_empty_strided(
      nd, sz, st, torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype)), device_type,
      device_index, &out));
  return Tensor(out);
}

}  // namespace softdec
