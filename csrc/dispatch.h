// The dtype and bool switch macros; every default is an error.
#pragma once

#include "common.h"

namespace softdec {
using bf16 = torch::headeronly::BFloat16;
using fp16 = torch::headeronly::Half;
}  // namespace softdec

// Calls the variadic body with `scalar_t` bound to float, bf16 or fp16.
#define SOFTDEC_DISPATCH_FLOAT(DTYPE, NAME, scalar_t, ...)                                 \
  [&] {                                                                                    \
    switch (DTYPE) {                                                                       \
      case ::softdec::ScalarType::Float: {                                                 \
        using scalar_t = float;                                                            \
        return __VA_ARGS__();                                                              \
      }                                                                                    \
      case ::softdec::ScalarType::BFloat16: {                                              \
        using scalar_t = ::softdec::bf16;                                                  \
        return __VA_ARGS__();                                                              \
      }                                                                                    \
      case ::softdec::ScalarType::Half: {                                                  \
        using scalar_t = ::softdec::fp16;                                                  \
        return __VA_ARGS__();                                                              \
      }                                                                                    \
      default:                                                                             \
        throw std::invalid_argument(::softdec::detail::cat(                                \
            NAME, " must be float32, bfloat16 or float16, got ",                           \
            ::softdec::dtype_name(DTYPE)));                                                \
    }                                                                                      \
  }()

// Binds the compile-time bool CONST_NAME to the runtime value COND.
#define SOFTDEC_DISPATCH_BOOL(COND, CONST_NAME, ...) \
  [&] {                                              \
    if (COND) {                                      \
      constexpr bool CONST_NAME = true;              \
      return __VA_ARGS__();                          \
    } else {                                         \
      constexpr bool CONST_NAME = false;             \
      return __VA_ARGS__();                          \
    }                                                \
  }()
