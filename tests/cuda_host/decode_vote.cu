// Host-side check of the token-mode vote arithmetic of the sparse decode (csrc/cuda/decode_vote.cuh):
// a sequential emulation of the new one-pass scheme -- the scoring kernel's partition of the tokens over
// blocks, warps and lane groups, per-lane-group online (m, l), the groups merged in (warp, slot) order,
// then vote_row's merge of the block partials (lane j takes blocks j, j + 32, ..., then the xor
// butterfly) -- against
// the old three-pass arithmetic (max, then sum with the final max, then the accumulation) and a float64
// softmax. No GPU:
//   nvcc -std=c++17 -I csrc/cuda tests/cuda_host/decode_vote.cu -o /tmp/dv && /tmp/dv
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "decode_vote.cuh"

using namespace softdec::decode_vote;

#include "expect.h"

static bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// The xor butterfly of 32 lane states: after it, lane 0 holds merge(lane0, partner) at every level.
static SoftStat butterfly(std::vector<SoftStat> lanes) {
  for (int o = 16; o > 0; o >>= 1) {
    std::vector<SoftStat> next(32);
    for (int i = 0; i < 32; ++i) next[i] = softmax_merge(lanes[i], lanes[i ^ o]);
    lanes = next;
  }
  return lanes[0];
}

// token_scores_block's partition for one head: gx blocks of nw warps, kpw lane groups a warp, `two`
// tokens a lane group per step (G <= 8); each lane group pushes its tokens in order into its running
// state, and the block merges the groups' states in (warp, slot) order. Returns the block partials in
// block order.
static std::vector<SoftStat> block_partials(const std::vector<float>& s, int64_t L, int gx, int nw, int lpk,
                                            bool two) {
  const int kpw = 32 / lpk, per = two ? 2 : 1;
  const int64_t step = static_cast<int64_t>(gx) * nw * kpw;
  std::vector<SoftStat> out;
  for (int bx = 0; bx < gx; ++bx) {
    SoftStat a = softmax_empty();
    for (int warp = 0; warp < nw; ++warp)
      for (int slot = 0; slot < kpw; ++slot) {
        SoftStat st = softmax_empty();
        for (int64_t t0 = (static_cast<int64_t>(bx) * nw + warp) * per * kpw; t0 < L; t0 += per * step) {
          const int64_t ta = t0 + slot, tb = ta + kpw;
          if (ta < L) softmax_push(st, sanitize(s[ta]));
          if (two && tb < L) softmax_push(st, sanitize(s[tb]));
        }
        a = softmax_merge(a, st);
      }
    out.push_back(a);
  }
  return out;
}

// vote_row's merge of one head's block partials.
static HeadNorm merged_norm(const std::vector<SoftStat>& parts) {
  std::vector<SoftStat> lanes(32, softmax_empty());
  for (int lane = 0; lane < 32; ++lane)
    for (size_t j = lane; j < parts.size(); j += 32) lanes[lane] = softmax_merge(lanes[lane], parts[j]);
  return head_norm(butterfly(lanes));
}

// New votes (heads' scores rows s[h][0:L]) with the kernel's partition.
static std::vector<float> votes_new(const std::vector<std::vector<float>>& s, int64_t L, int gx, int nw, int lpk) {
  const int G = static_cast<int>(s.size());
  std::vector<HeadNorm> norm(G);
  for (int h = 0; h < G; ++h) norm[h] = merged_norm(block_partials(s[h], L, gx, nw, lpk, G <= 8));
  std::vector<float> v(L);
  for (int64_t t = 0; t < L; ++t) v[t] = vote_value(norm.data(), G, [&](int h) { return sanitize(s[h][t]); });
  return v;
}

// The old vote kernel's arithmetic (the sum's reduction tree approximated: cub's exact order differs,
// which the tolerance below covers).
static std::vector<float> votes_old(const std::vector<std::vector<float>>& s, int64_t L) {
  std::vector<float> v(L, 0.f);
  for (const auto& row : s) {
    float m = -INFINITY;
    for (int64_t t = 0; t < L; ++t) m = std::fmax(m, sanitize(row[t]));
    // the old block reduction's shape: 1024 thread-strided partials, then 32 warps of 32 lanes
    float l = 0.f;
    if (m != -INFINITY) {
      float warp_sums[32];
      for (int wp = 0; wp < 32; ++wp) {
        float lane_sums[32];
        for (int ln = 0; ln < 32; ++ln) {
          float x = 0.f;
          for (int64_t t = wp * 32 + ln; t < L; t += 1024) x += std::exp(sanitize(row[t]) - m);
          lane_sums[ln] = x;
        }
        for (int o = 16; o > 0; o >>= 1)
          for (int ln = 0; ln < o; ++ln) lane_sums[ln] += lane_sums[ln + o];
        warp_sums[wp] = lane_sums[0];
      }
      for (int wp = 0; wp < 32; ++wp) l += warp_sums[wp];
    }
    if (m != -INFINITY && l > 0.f) {
      const float inv = 1.f / l;
      for (int64_t t = 0; t < L; ++t) v[t] += std::exp(sanitize(row[t]) - m) * inv;
    }
  }
  return v;
}

static std::vector<double> votes_f64(const std::vector<std::vector<float>>& s, int64_t L) {
  std::vector<double> v(L, 0.0);
  for (const auto& row : s) {
    double m = -INFINITY;
    for (int64_t t = 0; t < L; ++t) m = std::fmax(m, static_cast<double>(sanitize(row[t])));
    if (m == -INFINITY) continue;
    double l = 0;
    for (int64_t t = 0; t < L; ++t) l += std::exp(static_cast<double>(sanitize(row[t])) - m);
    for (int64_t t = 0; t < L; ++t) v[t] += std::exp(static_cast<double>(sanitize(row[t])) - m) / l;
  }
  return v;
}

static void check_merge_identities() {
  const SoftStat e = softmax_empty();
  for (float m : {-3.5f, 0.f, 17.25f})
    for (float l : {1.f, 2.5f, 1000.f}) {
      const SoftStat x{m, l};
      const SoftStat a = softmax_merge(e, x), b = softmax_merge(x, e);
      EXPECT(same_bits(a.m, m) && same_bits(a.l, l), "empty then x: (%g, %g)", a.m, a.l);
      EXPECT(same_bits(b.m, m) && same_bits(b.l, l), "x then empty: (%g, %g)", b.m, b.l);
    }
  const SoftStat ee = softmax_merge(e, e);
  EXPECT(ee.m == -INFINITY && ee.l == 0.f, "empty + empty");
  SoftStat st = softmax_empty();
  softmax_push(st, 2.f);
  EXPECT(st.m == 2.f && st.l == 1.f, "first push: (%g, %g)", st.m, st.l);
  softmax_push(st, -INFINITY);
  EXPECT(st.m == 2.f && st.l == 1.f, "-inf adds nothing");
  softmax_push(st, 2.f);
  EXPECT(st.m == 2.f && st.l == 2.f, "equal push: l %g", st.l);
  softmax_push(st, 4.f);
  EXPECT(st.m == 4.f && std::fabs(st.l - (2.f * std::exp(-2.f) + 1.f)) < 1e-6f, "rescale: l %g", st.l);
  EXPECT(head_norm(softmax_empty()).inv == 0.f, "an empty head is skipped");
  SoftStat inf = softmax_empty();
  softmax_push(inf, INFINITY);
  softmax_push(inf, INFINITY);  // exp(inf - inf): NaN sum, skipped like the old kernel's NaN l
  EXPECT(head_norm(inf).inv == 0.f, "+inf scores: head skipped");
}

// Random and exact-score rows through the kernel partitions of d = 64 / 128 / 256 (lpk 8 / 16 / 32),
// G = 1 / 4 / 8 / 16, several grid sizes.
static void check_votes() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 4.f);
  std::uniform_int_distribution<int> qi(-40, 40);
  double worst_new = 0, worst_old = 0;
  for (int64_t L : {int64_t(1), int64_t(2), int64_t(31), int64_t(100), int64_t(777), int64_t(5000), int64_t(40000)})
    for (int G : {1, 4, 8, 16})
      for (int lpk : {8, 16, 32})
        for (int exact = 0; exact < 2; ++exact) {
          // the host's grid: ceil(N / (per_block * 4)) blocks, N = L here (blocks past L are empty)
          const int nw = 8, kpw = 32 / lpk, per_block = nw * kpw * (G <= 8 ? 2 : 1);
          const int gx = static_cast<int>(std::min<int64_t>((L + per_block * 4 - 1) / (per_block * 4), 4096));
          std::vector<std::vector<float>> s(G, std::vector<float>(L));
          for (int h = 0; h < G; ++h)
            for (int64_t t = 0; t < L; ++t) s[h][t] = exact ? qi(rng) / 4.f : nd(rng);
          if (exact)  // equal heads, as the exact-score CUDA tests use
            for (int h = 1; h < G; ++h) s[h] = s[0];
          const std::vector<float> vn = votes_new(s, L, gx, nw, lpk), vo = votes_old(s, L);
          const std::vector<double> v64 = votes_f64(s, L);
          for (int64_t t = 0; t < L; ++t) {
            const double en = std::fabs(vn[t] - v64[t]) / v64[t], eo = std::fabs(vo[t] - v64[t]) / v64[t];
            worst_new = std::max(worst_new, en);
            worst_old = std::max(worst_old, eo);
            // fp32 softmax of up to 40000 terms: exp's few ulp plus the sum's rounding. Relative 1e-5 (~80
            // ulp) holds for both schemes (worst seen: ~2e-6 each, printed below) and is far below the
            // e^0.25 = 1.28 ratio between the votes of exact scores 1/4 apart.
            EXPECT(en < 1e-5, "L=%lld G=%d lpk=%d exact=%d t=%lld: new rel err %g", (long long)L, G, lpk, exact,
                   (long long)t, en);
            EXPECT(eo < 1e-5, "old rel err %g", eo);
            EXPECT(std::fabs(vn[t] - vo[t]) <= 1e-5 * vo[t], "new %g vs old %g", vn[t], vo[t]);
          }
          if (exact) {  // the votes rank and tie exactly like the scores (the CUDA == CPU index tests rely on it)
            for (int64_t t = 1; t < L; ++t) {
              const float a = s[0][t - 1], b = s[0][t];
              EXPECT((a == b) == same_bits(vn[t - 1], vn[t]) && (a < b) == (vn[t - 1] < vn[t]),
                     "L=%lld G=%d t=%lld: scores %g %g votes %g %g", (long long)L, G, (long long)t, a, b, vn[t - 1],
                     vn[t]);
            }
          }
        }
  std::printf("decode_vote: worst relative error vs float64: new %.3g, old %.3g\n", worst_new, worst_old);
}

// NaN scores count as -inf (vote 0, like the old kernel); a head whose scores are all -inf adds nothing.
static void check_special() {
  const int64_t L = 300;
  std::vector<std::vector<float>> s(2, std::vector<float>(L));
  for (int64_t t = 0; t < L; ++t) {
    s[0][t] = t % 7 == 0 ? NAN : static_cast<float>(t % 13) / 4.f;
    s[1][t] = -INFINITY;
  }
  const std::vector<float> vn = votes_new(s, L, 3, 8, 16), vo = votes_old(s, L);
  for (int64_t t = 0; t < L; ++t) {
    if (t % 7 == 0) EXPECT(vn[t] == 0.f, "NaN score: vote %g", vn[t]);
    EXPECT(std::fabs(vn[t] - vo[t]) <= 1e-6f * std::fabs(vo[t]) + 1e-30f, "t=%lld new %g old %g", (long long)t, vn[t],
           vo[t]);
  }
}

int main() {
  check_merge_identities();
  check_votes();
  check_special();
  if (failures) {
    std::printf("decode_vote: %d failures\n", failures);
    return 1;
  }
  std::printf("decode_vote: OK (online softmax partials over the kernel partition == three-pass votes within "
              "tolerance, exact scores rank and tie like the votes)\n");
  return 0;
}
