// Host-side check of the pure pieces of the CUDA verify row filter (csrc/cuda/row_filter_keys.cuh, used by row_filter.cuh), no GPU:
//  1. the packed 64-bit candidate keys sort (descending) exactly in filter.h's order (value descending,
//     lower index first; -0.0 == +0.0), and unpack to the value / index;
//  2. the candidate rule as the kernel runs it (the first min(k, finite) tokens of the order as packed
//     keys, sorted descending, then filter::top_p_prefix_by + filter::finish_from_sorted_by) gives the
//     kept set and cut of filter::compute_row_filter, and bit-for-bit the RowFilter of the CPU's
//     candidate path (finish_from_sorted on value / index arrays), on rows with many ties.
//   nvcc -std=c++17 --expt-relaxed-constexpr -I csrc/cuda -I include tests/cuda_host/row_filter_keys.cu \
//     -o /tmp/row_filter_keys && /tmp/row_filter_keys
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "row_filter_keys.cuh"

using namespace softdec;

#include "expect.h"

static bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

int main() {
  std::mt19937_64 rng(17);
  // 1. key order == filter order
  const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 1e-30f, -1e-30f, 3.4e38f, -3.4e38f, 1.5f, -2.25f};
  for (int t = 0; t < 200000; ++t) {
    auto pick = [&](float& x, int64_t& i) {
      const int r = static_cast<int>(rng() % 4);
      if (r == 0) x = specials[rng() % 10];
      else if (r == 1) x = static_cast<float>(static_cast<int>(rng() % 7) - 3);
      else x = std::uniform_real_distribution<float>(-50.0f, 50.0f)(rng);
      i = (rng() % 3 == 0) ? static_cast<int64_t>(rng() % 4) : static_cast<int64_t>(rng() % 0xfffffffeull);
    };
    float xa, xb;
    int64_t ia, ib;
    pick(xa, ia);
    pick(xb, ib);
    const unsigned long long ka = vcuda::pack_key(xa, ia), kb = vcuda::pack_key(xb, ib);
    EXPECT((ka > kb) == filter::before(xa, ia, xb, ib), "%g@%lld vs %g@%lld", xa, (long long)ia, xb, (long long)ib);
    EXPECT(vcuda::key_value(ka) == xa && vcuda::key_index(ka) == ia, "unpack %g@%lld", xa, (long long)ia);
  }
  // 2. candidate rule vs compute_row_filter / the CPU candidate path
  for (int t = 0; t < 3000; ++t) {
    const int64_t V = 1 + static_cast<int64_t>(rng() % 300);
    std::vector<float> x(V);
    const bool ties = t % 2 == 0;
    for (auto& v : x) {
      v = ties ? static_cast<float>(static_cast<int>(rng() % 6)) * 0.5f
               : std::normal_distribution<float>(0.0f, 2.0f)(rng);
      if (rng() % 17 == 0) v = -filter::inf_f();
    }
    x[rng() % V] = 1.0f;  // at least one finite
    const float temp = 0.25f + static_cast<float>(rng() % 8) * 0.25f;
    const int64_t k = 1 + static_cast<int64_t>(rng() % (V + 2));
    const float top_p = (rng() % 4 == 0) ? 1.0f : static_cast<float>(rng() % 11) / 10.0f;
    const float min_p = (rng() % 3 == 0) ? 0.0f : static_cast<float>(rng() % 5) / 20.0f;
    auto load = [&x](int64_t i) { return x[static_cast<size_t>(i)]; };
    const filter::RowFilter want = filter::compute_row_filter(load, V, filter::Params{temp, k, top_p, min_p});
    if (!want.valid) continue;
    // the kernel's candidate rule
    std::vector<unsigned long long> keys;
    for (int64_t i = 0; i < V; ++i)
      if (x[i] > -filter::inf_f()) keys.push_back(vcuda::pack_key(x[i], i));
    std::sort(keys.begin(), keys.end(), [](auto a, auto b) { return a > b; });
    const int64_t n = std::min<int64_t>(k, static_cast<int64_t>(keys.size()));
    filter::RowFilter got;
    got.valid = 1;
    got.max_logit = want.max_logit;
    got.argmax = want.argmax;
    got.inv_temp = 1.0f / temp;
    const float m = got.max_logit, it = got.inv_temp;
    auto mass_at = [&](int64_t j) { return filter::token_mass(vcuda::key_value(keys[j]), m, it); };
    const int64_t keep = filter::top_p_prefix_by(mass_at, n, top_p);
    filter::finish_from_sorted_by(
        got, [&](int64_t j) { return vcuda::key_value(keys[j]); }, [&](int64_t j) { return vcuda::key_index(keys[j]); },
        keep, min_p);
    // the CPU's candidate path: arrays in the filter order
    std::vector<float> vals(n), mass(n);
    std::vector<int64_t> idx(n);
    for (int64_t j = 0; j < n; ++j) {
      vals[j] = vcuda::key_value(keys[j]);
      idx[j] = vcuda::key_index(keys[j]);
      mass[j] = filter::token_mass(vals[j], m, it);
    }
    filter::RowFilter cpu = got;
    const int64_t keep_cpu = filter::top_p_prefix(mass.data(), n, top_p);
    filter::finish_from_sorted(cpu, vals.data(), idx.data(), keep_cpu, min_p);
    EXPECT(keep == keep_cpu && got.cut_index == cpu.cut_index && got.num_kept == cpu.num_kept &&
               same_bits(got.log_norm, cpu.log_norm),
           "candidate rule != CPU candidate path (V %lld k %lld)", (long long)V, (long long)k);
    int64_t kept_want = 0, mismatch = 0;
    for (int64_t i = 0; i < V; ++i) {
      const bool a = filter::kept(want, x[i], i), b = filter::kept(got, x[i], i);
      kept_want += a;
      mismatch += a != b;
    }
    EXPECT(mismatch == 0 && kept_want == got.num_kept,
           "kept set != compute_row_filter (V %lld k %lld top_p %g min_p %g): %lld mismatches", (long long)V,
           (long long)k, top_p, min_p, (long long)mismatch);
  }
  if (failures) {
    std::printf("row_filter_keys: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("row_filter_keys: OK\n");
  return 0;
}
