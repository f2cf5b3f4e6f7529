// The host tests' check macro (tests/cuda_host/*.cu, compiled and run by `make cuda-check`):
// EXPECT(cond, fmt, ...) counts a failure and prints the first 20.
#pragma once

#include <cstdio>

static int failures = 0;
#define EXPECT(cond, ...)                \
  do {                                   \
    if (!(cond)) {                       \
      if (failures < 20) {               \
        std::printf("FAIL %s: ", #cond); \
        std::printf(__VA_ARGS__);        \
        std::printf("\n");               \
      }                                  \
      ++failures;                        \
    }                                    \
  } while (0)
