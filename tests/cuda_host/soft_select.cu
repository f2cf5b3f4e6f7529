// Host-side check of soft_mixture's CUDA top-k select and embedding-gradient sort logic
// (csrc/cuda/soft_select.cuh, csrc/cuda/soft_mixture.cu), no GPU:
//   nvcc -std=c++17 -I include -I csrc/cuda tests/cuda_host/soft_select.cu -o /tmp/soft_select && /tmp/soft_select
// 1. order_key / key_value: order-preserving and inverse (float, double), -0 == +0.
// 2. radix_select_seq + keep_entry keep exactly the kc best (value, id) (soft::ranks_before).
// 3. A sequential emulation of scan_kernel's per-slice candidate logic (first threshold once
//    more than kc candidates are in, compaction when a tile might not fit, final rank sort)
//    against a full sort, over many shapes, tie-heavy and -inf-heavy slices.
// 5. A sequential emulation of finalize_kernel's merge of the C slice lists (live slots of the
//    flat buffer, the two selects and keep_entry when more than kc, rank_among) against the
//    former one-thread soft::topk_insert merge: the same list, entry for entry.
// 4. A sequential emulation of the embedding gradient's LSD radix sort (tile histograms,
//    digit-major exclusive scan, in-tile stable ranks) against std::stable_sort.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "soft_select.cuh"
#include "softdec/soft_mixture.h"

using namespace softdec;
using namespace softdec::soft_select;

#include "expect.h"

template <typename T>
void check_keys(std::mt19937_64& rng) {
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> v = {-inf, inf, T(0), -T(0), T(1), T(-1), std::numeric_limits<T>::denorm_min(),
                      -std::numeric_limits<T>::denorm_min(), std::numeric_limits<T>::max(),
                      std::numeric_limits<T>::lowest(), std::numeric_limits<T>::min(), T(1e-30), T(-1e-30)};
  std::normal_distribution<double> nd(0.0, 30.0);
  for (int i = 0; i < 2000; ++i) v.push_back(static_cast<T>(nd(rng)));
  for (size_t i = 0; i < v.size(); ++i) {
    const auto ki = order_key(v[i]);
    const T back = key_value(ki);
    EXPECT(back == v[i] && !std::signbit(back) == !(std::signbit(v[i]) && v[i] != T(0)),
           "key_value(order_key(%g)) = %g", double(v[i]), double(back));
    for (size_t j = 0; j < v.size(); j += 7) {
      const auto kj = order_key(v[j]);
      EXPECT((v[i] > v[j]) == (ki > kj) && (v[i] == v[j]) == (ki == kj), "order of %g, %g",
             double(v[i]), double(v[j]));
    }
  }
}

struct Entry {
  float v;
  int32_t id;
};

static bool before(const Entry& a, const Entry& b) {
  return soft::ranks_before(a.v, int64_t(a.id), b.v, int64_t(b.id));
}

// Exactly the kc best of `e` (distinct ids) via the two selects and the keep rule.
static std::vector<Entry> select_keep(const std::vector<Entry>& e, int kc, float* thr) {
  const int n = static_cast<int>(e.size());
  std::vector<uint32_t> keys(n);
  for (int i = 0; i < n; ++i) keys[i] = order_key(e[i].v);
  int rest = 0, equal = 0;
  const uint32_t kth = radix_select_seq(keys.data(), n, kc, &rest, &equal);
  int32_t id_max = INT32_MAX;
  const bool all_ties = rest == equal;
  if (!all_ties) {
    std::vector<uint32_t> ik;
    for (int i = 0; i < n; ++i)
      if (keys[i] == kth) ik.push_back(id_key(e[i].id));
    int r2 = 0, e2 = 0;
    id_max = key_id(radix_select_seq(ik.data(), static_cast<int>(ik.size()), rest, &r2, &e2));
    EXPECT(r2 == 1 && e2 == 1, "id select: rest %d equal %d", r2, e2);
  }
  std::vector<Entry> out;
  for (int i = 0; i < n; ++i)
    if (keep_entry(keys[i], e[i].id, kth, all_ties, id_max)) out.push_back(e[i]);
  *thr = key_value(kth);
  return out;
}

static void check_select(std::mt19937_64& rng) {
  for (int trial = 0; trial < 400; ++trial) {
    const int n = 2 + static_cast<int>(rng() % 3000);
    const int kc = 1 + static_cast<int>(rng() % std::min(n - 1, 256));
    const int distinct = 1 + static_cast<int>(rng() % 50);  // tie-heavy values
    std::vector<Entry> e(n);
    std::vector<int32_t> ids(n);
    for (int i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(i * 3 + 7);
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int i = 0; i < n; ++i) {
      float v = trial % 2 ? static_cast<float>(static_cast<int>(rng() % distinct)) - 20.0f
                          : std::ldexp(static_cast<float>(rng() % 100000) - 50000.0f, -7);
      if (v == 0.0f && rng() % 2) v = -0.0f;
      e[i] = {v, ids[i]};
    }
    float thr = 0;
    std::vector<Entry> got = select_keep(e, kc, &thr);
    std::vector<Entry> want = e;
    std::sort(want.begin(), want.end(), before);
    want.resize(kc);
    std::sort(got.begin(), got.end(), before);
    EXPECT(got.size() == want.size(), "n %d kc %d: kept %zu", n, kc, got.size());
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i)
      EXPECT(got[i].id == want[i].id, "n %d kc %d: rank %zu id %d vs %d", n, kc, i, got[i].id, want[i].id);
    EXPECT(thr == want[kc - 1].v, "n %d kc %d: threshold %g vs %g", n, kc, thr, want[kc - 1].v);
  }
}

// scan_kernel's candidate logic for one slice [v0, v1) of `row`, sequentially (kTile elements
// per tile, kCap buffer), returning the sorted kc best.
static std::vector<Entry> emulate_slice(const std::vector<float>& row, int v0, int v1, int kc, int kTile,
                                        int kThreads, int* max_cnt) {
  const int kCap = 2 * kTile;
  std::vector<Entry> buf;
  float thr = -std::numeric_limits<float>::infinity();
  bool have_thr = false;
  for (int base = v0; base < v1; base += kTile) {
    for (int e = base; e < std::min(v1, base + kTile); ++e)
      if (row[e] > thr) buf.push_back({row[e], e});
    *max_cnt = std::max(*max_cnt, static_cast<int>(buf.size()));
    EXPECT(static_cast<int>(buf.size()) <= kCap, "buffer overflow %zu > %d", buf.size(), kCap);
    const int cnt = static_cast<int>(buf.size());
    const bool last = base + kTile >= v1;
    if (cnt > kc && (!have_thr || cnt > kCap - kTile || (last && cnt > kThreads))) {
      buf = select_keep(buf, kc, &thr);
      have_thr = true;
    }
  }
  EXPECT(static_cast<int>(buf.size()) <= kThreads, "rank sort over %zu > %d entries", buf.size(), kThreads);
  // rank sort: rank r = number of entries ranking before; keep r < kc
  const int cnt = static_cast<int>(buf.size());
  std::vector<Entry> out(std::min(cnt, kc));
  std::vector<int> seen(out.size(), 0);
  for (int i = 0; i < cnt; ++i) {
    int r = 0;
    for (int j = 0; j < cnt; ++j) r += before(buf[j], buf[i]);
    if (r < kc) {
      out[r] = buf[i];
      ++seen[r];
    }
  }
  for (size_t r = 0; r < seen.size(); ++r) EXPECT(seen[r] == 1, "rank %zu written %d times", r, seen[r]);
  return out;
}

static void check_scan(std::mt19937_64& rng) {
  const int kThreads = 256;
  const int tiles[] = {512, 1024, 2048};  // float64, float32, 16-bit
  const int kcs[] = {1, 10, 30, 256};
  int max_cnt = 0;
  for (int trial = 0; trial < 240; ++trial) {
    const int kTile = tiles[trial % 3];
    const int kc = kcs[(trial / 3) % 4];
    const int kind = (trial / 12) % 5;
    const int len = trial % 7 == 0 ? 1 + static_cast<int>(rng() % 300) : 1 + static_cast<int>(rng() % (16 * kTile));
    std::vector<float> row(len);
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (int i = 0; i < len; ++i) {
      switch (kind) {
        case 0: row[i] = nd(rng); break;                                             // random
        case 1: row[i] = 1.5f; break;                                                // all equal
        case 2: row[i] = rng() % 10 ? -INFINITY : nd(rng); break;                   // -inf heavy
        case 3: row[i] = static_cast<float>(i) * 0.01f; break;                       // increasing
        default: row[i] = static_cast<float>(static_cast<int>(rng() % 4)); break;   // few values
      }
    }
    std::vector<Entry> got = emulate_slice(row, 0, len, kc, kTile, kThreads, &max_cnt);
    std::vector<Entry> want;
    for (int i = 0; i < len; ++i)
      if (row[i] > -INFINITY) want.push_back({row[i], i});
    std::sort(want.begin(), want.end(), before);
    if (static_cast<int>(want.size()) > kc) want.resize(kc);
    EXPECT(got.size() == want.size(), "scan len %d kc %d kind %d tile %d: %zu vs %zu", len, kc, kind, kTile,
           got.size(), want.size());
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i)
      EXPECT(got[i].id == want[i].id && got[i].v == want[i].v, "scan len %d kc %d kind %d: rank %zu id %d vs %d",
             len, kc, kind, i, got[i].id, want[i].id);
  }
  std::printf("scan emulation: largest buffer %d\n", max_cnt);
}

static void check_lsd(std::mt19937_64& rng) {
  const int kThreads = 256;
  for (int trial = 0; trial < 60; ++trial) {
    const int N = 1 + static_cast<int>(rng() % 5000);
    const uint32_t Ve = 1 + static_cast<uint32_t>(rng() % (trial % 2 ? 200 : 300000));
    std::vector<uint32_t> key(N);
    std::vector<int32_t> val(N);
    for (int i = 0; i < N; ++i) {
      key[i] = rng() % 5 == 0 ? Ve : static_cast<uint32_t>(rng() % Ve);  // sentinel: dropped
      val[i] = i;
    }
    int end_bit = 1;
    while (end_bit < 32 && (Ve >> end_bit) != 0u) ++end_bit;
    const int tiles = (N + kThreads - 1) / kThreads;
    std::vector<uint32_t> kin = key, kout(N);
    std::vector<int32_t> vin = val, vout(N);
    for (int shift = 0; shift < end_bit; shift += kRadixBits) {
      std::vector<int32_t> hist(static_cast<size_t>(kBuckets) * tiles, 0);
      for (int i = 0; i < N; ++i) ++hist[((kin[i] >> shift) & 0xffu) * tiles + i / kThreads];
      int32_t run = 0;
      for (auto& h : hist) {
        const int32_t x = h;
        h = run;
        run += x;
      }
      for (int i = 0; i < N; ++i) {
        const int t = i / kThreads, d = static_cast<int>((kin[i] >> shift) & 0xffu);
        int r = 0;
        for (int j = t * kThreads; j < i; ++j) r += static_cast<int>((kin[j] >> shift) & 0xffu) == d;
        const int pos = hist[d * tiles + t] + r;
        kout[pos] = kin[i];
        vout[pos] = vin[i];
      }
      std::swap(kin, kout);
      std::swap(vin, vout);
    }
    std::vector<int32_t> idx(N);
    for (int i = 0; i < N; ++i) idx[i] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return key[a] < key[b]; });
    for (int i = 0; i < N; ++i)
      EXPECT(vin[i] == idx[i] && kin[i] == key[idx[i]], "lsd N %d Ve %u: position %d", N, Ve, i);
  }
}

// finalize_kernel's merge, sequentially: C slices of kc slots, slice c's part_n[c] best first.
static void check_merge(std::mt19937_64& rng) {
  for (int trial = 0; trial < 300; ++trial) {
    const int C = 1 + static_cast<int>(rng() % 12);
    const int kc = 1 + static_cast<int>(rng() % 256);
    const int distinct = 1 + static_cast<int>(rng() % 40);
    std::vector<float> fv(static_cast<size_t>(C) * kc, 0.0f);
    std::vector<int64_t> fi(static_cast<size_t>(C) * kc, -1);
    std::vector<int32_t> pn(C);
    int total = 0;
    for (int c = 0; c < C; ++c) {
      // a slice's sorted best: random count (often < kc: -inf-heavy slices), distinct ids
      const int len = 1 + static_cast<int>(rng() % 600);
      std::vector<Entry> e(len);
      for (int i = 0; i < len; ++i) {
        float v = trial % 3 == 0 ? static_cast<float>(static_cast<int>(rng() % distinct)) - 5.0f
                                 : std::ldexp(static_cast<float>(rng() % 20000) - 10000.0f, -6);
        if (v == 0.0f && rng() % 2) v = -0.0f;
        e[i] = {v, c * 1000 + i};
      }
      std::sort(e.begin(), e.end(), before);
      pn[c] = std::min(len, kc);
      if (rng() % 4 == 0) pn[c] = static_cast<int32_t>(rng() % (pn[c] + 1));  // empty / short slices
      for (int i = 0; i < pn[c]; ++i) {
        fv[static_cast<size_t>(c) * kc + i] = e[i].v;
        fi[static_cast<size_t>(c) * kc + i] = e[i].id;
      }
      total += pn[c];
    }
    // the former merge: slice 0's list, the others inserted in slice order
    std::vector<float> mv(fv.begin(), fv.begin() + kc);
    std::vector<int64_t> mi(fi.begin(), fi.begin() + kc);
    int n = pn[0];
    for (int c = 1; c < C; ++c)
      for (int i = 0; i < pn[c]; ++i)
        n = soft::topk_insert(mv.data(), mi.data(), n, kc, fv[static_cast<size_t>(c) * kc + i],
                              fi[static_cast<size_t>(c) * kc + i]);
    // the block merge: live slots, select + keep when more than kc, rank sort
    const int nflat = C * kc;
    std::vector<Entry> live;
    for (int i = 0; i < nflat; ++i)
      if (slice_slot_live(i, kc, pn.data())) live.push_back({fv[i], static_cast<int32_t>(fi[i])});
    EXPECT(static_cast<int>(live.size()) == total, "live slots %zu vs %d", live.size(), total);
    std::vector<Entry> kept = live;
    if (total > kc) {
      float thr = 0;
      kept = select_keep(live, kc, &thr);
    }
    std::shuffle(kept.begin(), kept.end(), rng);  // warp_append: no fixed order
    const int m = static_cast<int>(kept.size());
    std::vector<float> kv(m);
    std::vector<int32_t> ki(m);
    for (int i = 0; i < m; ++i) kv[i] = kept[i].v, ki[i] = kept[i].id;
    std::vector<float> gv(m);
    std::vector<int64_t> gi(m, -1);
    for (int t = 0; t < m; ++t) {
      const int r = rank_among(kv.data(), ki.data(), m, kv[t], ki[t]);
      EXPECT(r >= 0 && r < m && gi[r] == -1, "rank %d of %d taken twice or out of range", r, m);
      if (r >= 0 && r < m) gv[r] = kv[t], gi[r] = ki[t];
    }
    EXPECT(m == n, "C %d kc %d: merged %d vs %d", C, kc, m, n);
    for (int i = 0; i < std::min(m, n); ++i) {
      EXPECT(gi[i] == mi[i], "C %d kc %d: slot %d id %lld vs %lld", C, kc, i, (long long)gi[i], (long long)mi[i]);
      EXPECT(std::memcmp(&gv[i], &mv[i], sizeof(float)) == 0, "C %d kc %d: slot %d value bits differ", C, kc, i);
    }
  }
}

int main() {
  std::mt19937_64 rng(20261129);
  check_keys<float>(rng);
  check_keys<double>(rng);
  check_select(rng);
  check_scan(rng);
  check_lsd(rng);
  check_merge(rng);
  if (failures) {
    std::printf("soft_select: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("soft_select: OK\n");
  return 0;
}
