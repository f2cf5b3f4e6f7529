// Host-side check of the pure pieces of the CUDA shard ops (csrc/cuda/distributed_walk.cuh,
// used by csrc/cuda/distributed.cu), no GPU:
//  1. DrawWalk fed block by block (in chunks, stopping once a block is chosen, as the kernel
//     does) gives block_draw_target_cpu's block and target bit for bit: the CPU's three loops
//     (total, pick_in, the sum of the blocks before the chosen one) are restated here from
//     csrc/cpu/distributed.cpp / sampling_kernels.h; rows with zero blocks, tiny and huge
//     sums, targets at the rounding edge (u close to 1: the fallback to the last block with mass),
//     no mass at all;
//  2. merge_position / real_candidates put the ranks' candidates where merge_partials_cpu's
//     sort by id puts them (distinct ids), and where a stable sort by (id, rank) puts them
//     when ranks repeat ids; padding (2^62) is never placed.
//   nvcc -std=c++17 --expt-relaxed-constexpr -I include -I csrc/cuda tests/cuda_host/distributed_walk.cu -o /tmp/dw && /tmp/dw
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "distributed_walk.cuh"

using namespace softdec;
using dist_walk::kNoId;

#include "expect.h"

static bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// block_draw_target_cpu's arithmetic for one row (total, then pick_in, then before), given u.
static void cpu_target(const std::vector<double>& row, double u, int64_t* block, double* target, double* tg_out) {
  const int64_t nb = static_cast<int64_t>(row.size());
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) total += row[b];
  *block = -1;
  *target = 0.0;
  *tg_out = 0.0;
  if (!(total > 0.0)) return;
  const double tg = u * total;
  *tg_out = tg;
  double run = 0.0;
  int64_t last = -1, b = -1;
  for (int64_t j = 0; j < nb; ++j) {  // pick_in
    if (!(row[j] > 0.0)) continue;
    run += row[j];
    last = j;
    if (run > tg) {
      b = j;
      break;
    }
  }
  if (b < 0) b = last;
  if (b < 0) return;
  double before = 0.0;
  for (int64_t j = 0; j < b; ++j) before += row[j];
  *block = b;
  *target = tg - before;
}

int main() {
  std::mt19937_64 rng(19);
  std::uniform_real_distribution<double> U(0.0, 1.0);
  // 1. the walk
  int fallbacks = 0;
  for (int t = 0; t < 200000; ++t) {
    const int64_t nb = 1 + static_cast<int64_t>(rng() % 600);
    std::vector<double> row(nb);
    const int kind = static_cast<int>(rng() % 5);
    for (auto& v : row) {
      const double z = U(rng);
      v = kind == 0 ? z : kind == 1 ? (z < 0.7 ? 0.0 : z * 1024.0)
          : kind == 2 ? std::ldexp(z, -static_cast<int>(rng() % 1000))
          : kind == 3 ? (z < 0.99 ? 0.0 : std::ldexp(z, static_cast<int>(rng() % 40)))
                      : 0.0;  // no mass
    }
    // u: uniform, or at the top end (the running sum may stay <= target: the fallback)
    const double u = (t % 3 == 0) ? 1.0 - std::ldexp(U(rng), -50) : U(rng);
    int64_t want_b;
    double want_t, tg;
    cpu_target(row, u, &want_b, &want_t, &tg);
    double total = 0.0;
    for (double v : row) total += v;
    int64_t got_b = -1;
    double got_t = 0.0;
    if (total > 0.0) {
      dist_walk::DrawWalk w;
      const int64_t chunk = 1 + static_cast<int64_t>(rng() % 300);  // the kernel stages 256 at a time
      bool done = false;
      for (int64_t c0 = 0; c0 < nb && !done; c0 += chunk)
        for (int64_t j = c0; j < std::min(nb, c0 + chunk) && !done; ++j) done = w.feed(row[j], j, tg);
      if (!done) ++fallbacks;
      w.finish(tg, &got_b, &got_t);
    }
    EXPECT(got_b == want_b && same_bits(got_t, want_t), "t=%d nb=%lld kind=%d: block %lld vs %lld, target %.17g vs %.17g",
           t, static_cast<long long>(nb), kind, static_cast<long long>(got_b), static_cast<long long>(want_b), got_t,
           want_t);
  }
  EXPECT(fallbacks > 100, "the fallback (no running sum above the target) was hit %d times", fallbacks);

  // 2. the merge positions
  for (int t = 0; t < 20000; ++t) {
    const int64_t W = 1 + static_cast<int64_t>(rng() % 8), c = static_cast<int64_t>(rng() % 40);
    const bool dups = t % 4 == 0;  // ranks repeating ids (overlapping shards: not a valid layout)
    std::vector<std::vector<double>> lists(W);
    std::vector<std::pair<double, int64_t>> all;  // (id, rank) of every real candidate
    for (int64_t w = 0; w < W; ++w) {
      const int64_t m = c ? static_cast<int64_t>(rng() % (c + 1)) : 0;
      std::vector<double> ids;
      while (static_cast<int64_t>(ids.size()) < m) {
        const double id = dups ? static_cast<double>(rng() % 64) : static_cast<double>(w + W * (rng() % 5000));
        if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
      }
      std::sort(ids.begin(), ids.end());
      for (double id : ids) all.emplace_back(id, w);
      ids.resize(c, kNoId);
      lists[w] = ids;
    }
    std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    const auto of = [&](int64_t w) { return lists[w].data(); };
    EXPECT(dist_walk::real_candidates(of, W, c) == static_cast<int64_t>(all.size()), "t=%d: candidate count", t);
    std::vector<int> hit(all.size(), 0);
    for (int64_t w = 0; w < W; ++w)
      for (int64_t j = 0; j < c; ++j) {
        const double id = lists[w][j];
        if (!(id < kNoId)) continue;
        const int64_t pos = dist_walk::merge_position(of, W, c, w, id);
        const bool ok = pos >= 0 && pos < static_cast<int64_t>(all.size()) && all[pos].first == id &&
                        all[pos].second == w;
        EXPECT(ok, "t=%d: rank %lld id %.0f placed at %lld", t, static_cast<long long>(w), id,
               static_cast<long long>(pos));
        if (ok) ++hit[pos];
      }
    for (size_t i = 0; i < hit.size(); ++i) EXPECT(hit[i] == 1, "t=%d: slot %zu filled %d times", t, i, hit[i]);
  }
  if (failures) {
    std::printf("distributed_walk: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("distributed_walk: OK (the draw walk on 200000 rows, %d fallbacks; 20000 merges)\n", fallbacks);
  return 0;
}
