// Host harness for include/softdec/filter.h's exact normaliser (tests/test_exact_norm.py
// compiles and runs it; the test checks every line against Python's exact integers).
//   mode "sum":   lines "n e_1 .. e_n | S0 S1 S2 | Z" for random float masses (hex floats), the
//                 digit sums added in two orders (must agree) and MassSum::value()
//   mode "round": lines "hi lo | Z" for random 128-bit integers, many of them exact ties
//   mode "inv":   lines "Z | inv_norm(Z)"
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "softdec/filter.h"

using namespace softdec::filter;

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "sum";
  std::mt19937_64 g(12345);
  if (!std::strcmp(mode, "sum")) {
    for (int t = 0; t < 3000; ++t) {
      const int n = 1 + static_cast<int>(g() % 400);
      std::vector<float> e(static_cast<size_t>(n));
      MassSum a, b;
      for (int i = 0; i < n; ++i) {
        float v;
        switch (g() % 5) {
          case 0: v = std::uniform_real_distribution<float>(0.0f, 1.0f)(g); break;
          case 1: v = std::ldexp(std::uniform_real_distribution<float>(0.5f, 1.0f)(g), -static_cast<int>(g() % 140)); break;
          case 2: v = 1.0f; break;
          case 3: v = std::ldexp(1.0f, -static_cast<int>(g() % 150)); break;
          default: v = 0.0f; break;
        }
        e[static_cast<size_t>(i)] = v;
        a.add(v);
      }
      for (int i = n - 1; i >= 0; --i) b.add(e[static_cast<size_t>(i)]);
      if (a.d[0] != b.d[0] || a.d[1] != b.d[1] || a.d[2] != b.d[2]) {
        std::printf("ORDER\n");
        return 1;
      }
      std::printf("%d", n);
      for (float v : e) std::printf(" %a", static_cast<double>(v));
      std::printf(" | %" PRIu64 " %" PRIu64 " %" PRIu64 " | %a\n", a.d[0], a.d[1], a.d[2], a.value());
    }
    // digit sums near their bound (fewer than 2^31 tokens: each < 2^63)
    const uint64_t big[3][3] = {{(1ull << 62) + 12345, 0xffffffffffffull, (1ull << 62) + 7},
                                {(1ull << 63) - 1, (1ull << 63) - 1, (1ull << 63) - 1},
                                {0, (1ull << 63) - 1, 3}};
    for (const auto& d : big)
      std::printf("0 | %" PRIu64 " %" PRIu64 " %" PRIu64 " | %a\n", d[0], d[1], d[2],
                  MassSum::digits_to_double(d[0], d[1], d[2]));
  } else if (!std::strcmp(mode, "round")) {
    for (int t = 0; t < 20000; ++t) {
      const int L = 1 + static_cast<int>(g() % 128);
      unsigned __int128 N = 0;
      for (int i = 0; i < L; ++i) N = (N << 1) | (g() & 1u);
      N |= static_cast<unsigned __int128>(1) << (L - 1);
      const int kind = static_cast<int>(g() % 4);
      if (L > 54 && kind == 1) {  // an exact tie: the dropped bits are 100..0
        const int s = L - 53;
        N = ((N >> s) << s) | (static_cast<unsigned __int128>(1) << (s - 1));
      } else if (L > 54 && kind == 2) {  // exactly representable
        const int s = L - 53;
        N = (N >> s) << s;
      }
      const uint64_t hi = static_cast<uint64_t>(N >> 64), lo = static_cast<uint64_t>(N);
      std::printf("%" PRIu64 " %" PRIu64 " | %a\n", hi, lo, fixed128_to_double(hi, lo, 96));
    }
  } else {
    for (int t = 0; t < 5000; ++t) {
      const double z = 1.0 + std::uniform_real_distribution<double>(0.0, 1.0)(g) * std::ldexp(1.0, static_cast<int>(g() % 18));
      std::printf("%a | %a\n", z, static_cast<double>(inv_norm(z)));
    }
  }
  return 0;
}
