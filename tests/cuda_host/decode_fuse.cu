// Host-side check of the fused sparse decode's pure logic (csrc/cuda/decode_fuse.cuh): the launch plan
// (path per budget and switch, launches per call), the "last block done" counter rule under every
// arrival order (exactly one merger, the counter back at 0, a second call from there), and the
// split-KV merge arithmetic (against a float64 softmax and, bit for bit, the plain chunk-by-chunk loop; one chunk gives acc * (1 / l) exactly; trailing
// empty chunks change no bit; empty and NaN states). No GPU:
//   nvcc -std=c++17 -I csrc/cuda tests/cuda_host/decode_fuse.cu -o /tmp/df && /tmp/df
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "decode_fuse.cuh"

using namespace softdec::decode_fuse;

#include "expect.h"

static void check_plan() {
  const int C = 64;
  EXPECT(num_chunks(0, C) == 1 && num_chunks(1, C) == 1 && num_chunks(64, C) == 1, "one chunk up to 64");
  EXPECT(num_chunks(65, C) == 2 && num_chunks(128, C) == 2 && num_chunks(129, C) == 3, "ceil");
  EXPECT(num_chunks(2048, C) == 32, "2048 / 64");
  for (int64_t M : {0, 1, 63, 64, 65, 1000, 32768}) {
    EXPECT(choose_path(M, C, false) == Path::kUnfused, "M=%lld switch off", (long long)M);
    EXPECT(choose_path(M, C, true) == (M <= C ? Path::kSingleBlock : Path::kFusedMerge), "M=%lld", (long long)M);
  }
  // launches per call: page mode (summaries given) 4 unfused -> 2 (split) / 1 (one block); token mode
  // 5 -> 2 / 1 (selection fused into scoring, votes into its last block)
  EXPECT(launches(Path::kUnfused, true, false) == 4 && launches(Path::kFusedMerge, true, false) == 2 &&
             launches(Path::kSingleBlock, true, false) == 1,
         "page mode");
  EXPECT(launches(Path::kUnfused, true, true) == 5 && launches(Path::kFusedMerge, true, true) == 3 &&
             launches(Path::kSingleBlock, true, true) == 2,
         "page mode + summaries");
  EXPECT(launches(Path::kUnfused, false, false) == 5 && launches(Path::kFusedMerge, false, false) == 2 &&
             launches(Path::kSingleBlock, false, false) == 1 && launches(Path::kSingleBlock, false, true) == 1,
         "token mode (summaries never built)");
  // counters: the split path always (its chunk blocks), the one-block path only with several scoring blocks
  EXPECT(!counters_needed(Path::kUnfused, 1) && !counters_needed(Path::kUnfused, 64), "unfused: none");
  EXPECT(counters_needed(Path::kFusedMerge, 1) && counters_needed(Path::kFusedMerge, 7), "split-KV: always");
  EXPECT(!counters_needed(Path::kSingleBlock, 1) && counters_needed(Path::kSingleBlock, 2), "one block");
}

// Every arrival order of `chunks` blocks (all permutations up to 7 blocks), two calls in a row on the
// same counter: the atomicAdd returns the count before the increment.
static void check_arrivals() {
  for (int chunks = 1; chunks <= 7; ++chunks) {
    std::vector<int> order(chunks);
    for (int i = 0; i < chunks; ++i) order[i] = i;
    int ctr = 0, perms = 0;
    do {
      for (int call = 0; call < 2; ++call) {
        int mergers = 0, merger = -1;
        for (int a = 0; a < chunks; ++a) {
          const int before = ctr++;
          if (arrived_last(before, chunks)) {
            ++mergers;
            merger = a;
            ctr = 0;  // the last block's reset
          }
        }
        EXPECT(mergers == 1, "chunks=%d: %d mergers", chunks, mergers);
        EXPECT(merger == chunks - 1, "chunks=%d: the merger is the last arrival (%d)", chunks, merger);
        EXPECT(ctr == 0, "chunks=%d: counter %d after the call", chunks, ctr);
      }
      ++perms;
    } while (std::next_permutation(order.begin(), order.end()));
    EXPECT(perms > 0, "chunks=%d", chunks);
  }
}

struct Plain {
  __host__ __device__ float operator()(const float* p) const { return *p; }
};

// Chunk states as decode_attn_kernel computes them (fp32; the sums' order is not the kernel's, which
// does not matter here: the merge is checked against float64, and the exact checks use these states).
static std::vector<float> chunk_states(const std::vector<float>& s, const std::vector<float>& v, int n, int d,
                                       int chunks, int C) {
  std::vector<float> part(static_cast<size_t>(chunks) * (d + 2), 0.f);
  for (int c = 0; c < chunks; ++c) {
    float* pt = part.data() + static_cast<size_t>(c) * (d + 2);
    const int j0 = c * C, j1 = std::min(n, j0 + C);
    if (j1 <= j0) {
      pt[0] = -INFINITY;
      pt[1] = 0.f;
      continue;
    }
    float m = -INFINITY;
    for (int j = j0; j < j1; ++j) m = std::fmax(m, s[j]);
    float l = 0.f;
    for (int j = j0; j < j1; ++j) {
      const float p = m == -INFINITY ? 0.f : std::exp(s[j] - m);
      l += p;
      for (int i = 0; i < d; ++i) pt[2 + i] = std::fma(p, v[static_cast<size_t>(j) * d + i], pt[2 + i]);
    }
    pt[0] = m;
    pt[1] = l;
  }
  return part;
}

static std::vector<float> merged(const std::vector<float>& part, int d, int chunks) {
  const MergeStats st = merge_stats(part.data(), d + 2, chunks, Plain{});
  std::vector<float> o(d);
  for (int i = 0; i < d; ++i) o[i] = merge_elem(part.data(), d + 2, chunks, st, i, Plain{});
  return o;
}

// The plain sequential merge (decode_merge_kernel's loops, chunk by chunk): merge_stats / merge_elem load
// the chunks in groups but must apply them in this order, with these operations.
static std::vector<float> merged_sequential(const std::vector<float>& part, int d, int chunks) {
  const int64_t cs = d + 2;
  float m = -INFINITY;
  bool nan = false;
  for (int c = 0; c < chunks; ++c) {
    m = fmaxf(m, part[c * cs]);
    nan |= part[c * cs] != part[c * cs] || part[c * cs + 1] != part[c * cs + 1];
  }
  float l = 0.f;
  if (m != -INFINITY)
    for (int c = 0; c < chunks; ++c)
      if (part[c * cs] != -INFINITY) l = fmaf(expf(part[c * cs] - m), part[c * cs + 1], l);
  const float inv = l > 0.f ? 1.f / l : 0.f;
  std::vector<float> o(d);
  for (int i = 0; i < d; ++i) {
    float acc = 0.f;
    if (m != -INFINITY)
      for (int c = 0; c < chunks; ++c)
        if (part[c * cs] != -INFINITY) acc = fmaf(expf(part[c * cs] - m), part[c * cs + 2 + i], acc);
    o[i] = nan ? NAN : acc * inv;
  }
  return o;
}

static void check_merge() {
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int C = 64, d = 24;
  for (int n : {1, 5, 64, 65, 128, 200, 513, 577, 1000, 2080}) {
    for (float spread : {0.5f, 4.f, 30.f}) {
      std::vector<float> s(n), v(static_cast<size_t>(n) * d);
      for (auto& x : s) x = spread * nd(rng);
      for (auto& x : v) x = nd(rng);
      if (n > 70) s[3] = s[70] = -INFINITY;  // masked tokens
      const int chunks = static_cast<int>(num_chunks(n, C));
      const std::vector<float> part = chunk_states(s, v, n, d, chunks, C);
      const std::vector<float> o = merged(part, d, chunks);
      const std::vector<float> os = merged_sequential(part, d, chunks);
      EXPECT(std::memcmp(o.data(), os.data(), sizeof(float) * d) == 0, "n=%d spread=%g: grouped loads changed bits",
             n, spread);
      // float64 softmax over all tokens
      double m = -INFINITY;
      for (float x : s) m = std::max(m, static_cast<double>(x));
      double l = 0;
      std::vector<double> ref(d, 0.0);
      for (int j = 0; j < n; ++j) {
        const double p = std::exp(static_cast<double>(s[j]) - m);
        l += p;
        for (int i = 0; i < d; ++i) ref[i] += p * v[static_cast<size_t>(j) * d + i];
      }
      double err = 0;
      for (int i = 0; i < d; ++i) err = std::max(err, std::fabs(o[i] - ref[i] / l));
      EXPECT(err < 2e-5, "n=%d spread=%g: max error %g vs float64", n, spread, err);
      // trailing empty chunks (M > the row's count): the same bits
      std::vector<float> more = part;
      for (int extra = 0; extra < 3; ++extra) {
        more.push_back(-INFINITY);
        more.push_back(0.f);
        more.insert(more.end(), d, 0.f);
      }
      const std::vector<float> o2 = merged(more, d, chunks + 3);
      EXPECT(std::memcmp(o.data(), o2.data(), sizeof(float) * d) == 0, "n=%d: empty chunks changed bits", n);
      if (chunks == 1)  // the one-block path: the merge of one chunk is acc * (1 / l), exactly
        for (int i = 0; i < d; ++i) {
          const float want = part[2 + i] * (1.f / part[1]);
          EXPECT(std::memcmp(&o[i], &want, sizeof(float)) == 0, "n=%d i=%d: one chunk %g vs %g", n, i, o[i], want);
        }
    }
  }
  // every chunk empty (seq_len 0): zeros; a NaN state: NaN everywhere
  {
    std::vector<float> part(3 * (d + 2), 0.f);
    for (int c = 0; c < 3; ++c) part[c * (d + 2)] = -INFINITY;
    const std::vector<float> o = merged(part, d, 3);
    for (int i = 0; i < d; ++i) EXPECT(o[i] == 0.f && !std::signbit(o[i]), "empty row: %g", o[i]);
    part[1 * (d + 2)] = NAN;
    part[1 * (d + 2) + 1] = NAN;
    const std::vector<float> on = merged(part, d, 3);
    for (int i = 0; i < d; ++i) EXPECT(std::isnan(on[i]), "NaN state: %g", on[i]);
  }
}

int main() {
  check_plan();
  check_arrivals();
  check_merge();
  if (failures) {
    std::printf("decode_fuse: %d failures\n", failures);
    return 1;
  }
  std::printf("decode_fuse: OK (launch plan, last-block counter under every arrival order, split-KV merge)\n");
  return 0;
}
