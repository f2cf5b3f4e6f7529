// Host-side check of the pure pieces of the CUDA top-p / exact-verify shard ops
// (csrc/cuda/distributed.cu), no GPU:
//  1. shard_nth_tie's numbering: the kernel walks a row in chunks of kThreads 4-token groups,
//     numbers the ties of a chunk by an exclusive scan over the threads' counts and lets
//     dist_walk::nth_in_group pick the lane; replayed here (thread order, chunk order, the
//     early stop once `want` ties are seen) against shard_nth_tie_cpu's serial loop (the
//     want-th tie in id order, -1 if none): rows with no, few and many ties, want 0, 1, the
//     last tie and past it, rows not divisible by 4;
//  2. block_arg::arg_take (shard_verify_race's and shard_partials' block (key, id) max) in any
//     reduction order (shuffled serial order, the warp-shuffle butterfly and the per-warp fold)
//     equals the CPU race's serial scan in id order (`bi < 0 || verify::race_better(...)`),
//     keys with many exact ties, +inf keys;
//  3. fixed_hist::hi_with_carry: 64-bit fixed-point masses added as (lo, hi) uint32 pairs with
//     the carry taken from the low add's old value, in random order, end at the uint64 sum.
//   nvcc -std=c++17 -O2 -arch=sm_80 --expt-relaxed-constexpr -I include -I csrc/cuda tests/cuda_host/distributed_cut.cu \
//     -o /tmp/dc && /tmp/dc   (sm_80: fixed_hist.cuh uses __reduce_add_sync)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>  // (filter.h, through verify.h, uses std::memcpy)
#include <limits>
#include <random>
#include <vector>

#include "block_argmax.cuh"
#include "distributed_walk.cuh"
#include "fixed_hist.cuh"
#include "softdec/verify.h"

using namespace softdec;

#include "expect.h"

constexpr int kThreads = 512;  // distributed.cu kPartThreads

// shard_nth_tie_cpu: the want-th (1-based) tie in id order, -1 if want < 1 or fewer ties.
static int64_t cpu_nth(const std::vector<bool>& tie, int64_t want) {
  if (want < 1) return -1;
  int64_t seen = 0;
  for (size_t i = 0; i < tie.size(); ++i)
    if (tie[i] && ++seen == want) return static_cast<int64_t>(i);
  return -1;
}

// shard_nth_tie_kernel's numbering, thread by thread (the block scan as an exclusive prefix sum).
static int64_t kernel_nth(const std::vector<bool>& tie, int64_t want) {
  if (want < 1) return -1;
  const int64_t n = static_cast<int64_t>(tie.size()), groups = (n + 3) / 4;
  int64_t found = -1, seen = 0;
  int hits = 0;
  for (int64_t g0 = 0; g0 < groups && seen < want; g0 += kThreads) {
    int64_t before = 0;  // exclusive scan over the threads of the chunk
    for (int t = 0; t < kThreads; ++t) {
      const int64_t g = g0 + t;
      bool eq[4];
      int ne = 0;
      for (int l = 0; l < 4; ++l) {
        const int64_t i = 4 * g + l;
        eq[l] = g < groups && i < n && tie[i];
        ne += eq[l] ? 1 : 0;
      }
      const int l = ne ? dist_walk::nth_in_group(seen + before, want, eq) : -1;
      if (l >= 0) {
        found = 4 * g + l;
        ++hits;
      }
      before += ne;
    }
    seen += before;
  }
  EXPECT(hits <= 1, "two threads claimed the tie (want %lld)", static_cast<long long>(want));
  return found;
}

static void check_nth(std::mt19937_64& rng) {
  int rows = 0;
  for (int64_t n : {1LL, 3LL, 4LL, 5LL, 2047LL, 2048LL, 2049LL, 6001LL, 75968LL}) {
    for (double dens : {0.0, 0.0005, 0.05, 0.5, 1.0}) {
      std::bernoulli_distribution b(dens);
      std::vector<bool> tie(static_cast<size_t>(n));
      int64_t ties = 0;
      for (auto&& t : tie) {
        t = b(rng);
        ties += t ? 1 : 0;
      }
      std::vector<int64_t> wants = {0, 1, 2, ties, ties + 1, ties / 2, ties > 0 ? ties - 1 : 0};
      for (int k = 0; k < 4; ++k) wants.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(ties + 2)));
      for (int64_t w : wants) {
        const int64_t a = cpu_nth(tie, w), c = kernel_nth(tie, w);
        EXPECT(a == c, "nth tie n=%lld density %g want %lld: cpu %lld kernel %lld", static_cast<long long>(n), dens,
               static_cast<long long>(w), static_cast<long long>(a), static_cast<long long>(c));
        ++rows;
      }
    }
  }
  std::printf("distributed_cut: nth tie on %d (row, want) pairs\n", rows);
}

// The CPU race's serial scan (shard_verify_race_cpu): tokens in id order.
static block_arg::Arg cpu_race(const std::vector<float>& key, const std::vector<int64_t>& id) {
  float bk = 0.0f;
  int64_t bi = -1;
  for (size_t j = 0; j < key.size(); ++j)
    if (bi < 0 || verify::race_better(key[j], id[j], bk, bi)) {
      bk = key[j];
      bi = id[j];
    }
  return {bk, bi};
}

static void check_argmax(std::mt19937_64& rng) {
  int cases = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 3000);
    std::vector<float> key(n);
    std::vector<int64_t> id(n);
    const int levels = 1 + static_cast<int>(rng() % 8);  // few distinct keys: many exact ties
    for (int j = 0; j < n; ++j) {
      id[j] = 1000 + 3 * j;  // ascending ids, as the CPU scans them
      const int q = static_cast<int>(rng() % levels);
      key[j] = q == 7 ? std::numeric_limits<float>::infinity() : 0.25f * static_cast<float>(q) + 1e-3f;
    }
    const block_arg::Arg want = cpu_race(key, id);
    // (a) a shuffled serial order
    std::vector<int> perm(n);
    for (int j = 0; j < n; ++j) perm[j] = j;
    std::shuffle(perm.begin(), perm.end(), rng);
    block_arg::Arg a{0.0f, -1};
    for (int j : perm) block_arg::arg_take(a, key[j], id[j]);
    // (b) the kernel's order: thread t takes entries t, t + kThreads, ...; the butterfly over
    // each warp; the per-warp results folded in warp order (an empty thread holds idx -1)
    std::vector<block_arg::Arg> th(kThreads, block_arg::Arg{0.0f, -1});
    for (int j = 0; j < n; ++j) block_arg::arg_take(th[j % kThreads], key[j], id[j]);
    for (int o = 16; o; o >>= 1) {
      std::vector<block_arg::Arg> nx = th;
      for (int t = 0; t < kThreads; ++t) block_arg::arg_take(nx[t], th[t ^ o].key, th[t ^ o].idx);
      th = nx;
    }
    block_arg::Arg b{-std::numeric_limits<float>::infinity(), -1};
    for (int w = 0; w < kThreads / 32; ++w) block_arg::arg_take(b, th[32 * w].key, th[32 * w].idx);
    EXPECT(a.idx == want.idx && a.key == want.key, "shuffled order: id %lld vs %lld", static_cast<long long>(a.idx),
           static_cast<long long>(want.idx));
    EXPECT(b.idx == want.idx && b.key == want.key, "block order: id %lld vs %lld", static_cast<long long>(b.idx),
           static_cast<long long>(want.idx));
    ++cases;
  }
  std::printf("distributed_cut: (key, id) max on %d rows\n", cases);
}

static void check_carry(std::mt19937_64& rng) {
  int cases = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 4000);
    const int bits = 20 + static_cast<int>(rng() % 40);  // q < 2^bits, n q < 2^63
    std::vector<uint64_t> q(n);
    uint64_t sum = 0;
    for (auto& v : q) {
      v = rng() >> (64 - bits);
      sum += v;
    }
    std::shuffle(q.begin(), q.end(), rng);
    uint32_t lo = 0, hi = 0;
    for (uint64_t v : q) {
      const uint32_t l = static_cast<uint32_t>(v), h = static_cast<uint32_t>(v >> 32);
      const uint32_t old = lo;  // atomicAdd(&hlo[b], l)'s return
      lo = old + l;
      hi += fixed_hist::hi_with_carry(old, l, h);
    }
    const uint64_t got = (static_cast<uint64_t>(hi) << 32) | lo;
    EXPECT(got == sum, "lo/hi sum %llu vs %llu", static_cast<unsigned long long>(got),
           static_cast<unsigned long long>(sum));
    ++cases;
  }
  std::printf("distributed_cut: lo/hi fixed-point sums on %d rows\n", cases);
}

int main() {
  std::mt19937_64 rng(20261129);
  check_nth(rng);
  check_argmax(rng);
  check_carry(rng);
  if (failures) {
    std::printf("distributed_cut: %d failures\n", failures);
    return 1;
  }
  std::printf("distributed_cut: OK\n");
  return 0;
}
