// CPU backend of the sampling family: sample, gumbel_softmax (dense and
// top-k sparse), top_k_mask_logits, top_p_renorm_probs, min_p_renorm_probs.
//
// Exact filtered sampling without sorting the vocabulary, by inversion: one
// uniform u (philox::uniform53 of the row's (seed, offset)), and the first kept
// token, in vocabulary order, whose running mass exceeds u times the kept mass
// (masses draw_mass = 2^((x - max) log2(e) / T); the order of the sums is part
// of the definition, see sampling_kernels.h). Only the kept set's cut is computed (include/softdec/
// filter.h semantics):
//   - plain and min-p: a max pass, then a pass summing the kept masses of
//     1024-token blocks (underflowing or dropped 16-token vectors skip the
//     exponential), then a walk over the blocks and inside one block;
//   - top-k (k <= kSmallK): one pass collecting candidates above a running
//     threshold, a sort of ~k candidates, top-p/min-p on them, and the draw
//     among the kept candidates;
//   - top-p without top-k: the max pass, the O(V) top-p cut, the mass pass;
//   - large k: filter::compute_row_filter (radix selection), the mass pass.
// Greedy rows (T = 0) take one argmax pass. Rows are spread over threads; with
// fewer rows than threads the vocabulary is split into chunks whose partial
// results (argmax states, candidate lists, maxima) are merged.
#include "capability.h"
#include "../common.h"
#include "../dispatch.h"
#include "../sampling_checks.h"
#include "softdec/filter.h"
#include "softdec/philox.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "sampling_kernels.h"

namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

using namespace cpu;  // NOLINT: the shared passes of sampling_kernels.h

// kPlain: no top-k / top-p (min-p, if any, is the cut's log_min_p)
enum class Path : int { kGreedy, kPlain, kTopK, kTopP, kGeneric };

struct RowPlan {
  Path path = Path::kPlain;
  float it = 1.0f;  // 1/T
  float temp = 1.0f;
  int64_t k = 0;
  float top_p = 1.0f, min_p = 0.0f;
  uint64_t seed = 0, offset = 0;
  // phase-1 partials (one per chunk)
  std::vector<Best> best;
  std::vector<Flags> flags;
  std::vector<std::vector<Cand>> cands;
  RowFilter f;
  std::vector<double> blk;  // block masses of the inverse-CDF draw
  bool done = false;
  int64_t id = 0;
  bool valid = false;
};

void check_row_values(const float* t, const int64_t* k, const float* p, const float* mp, int64_t B) {
  for (int64_t r = 0; r < B; ++r) {
    if (t) SOFTDEC_CHECK(t[r] >= 0.0f && t[r] < kInf, "temperature must be a finite value >= 0, got ", t[r], " at row ", r);
    if (k) SOFTDEC_CHECK(k[r] >= 0, "top_k must be >= 0 (0 disables top-k), got ", k[r], " at row ", r);
    if (p) SOFTDEC_CHECK(p[r] >= 0.0f && p[r] <= 1.0f, "top_p must be in [0, 1], got ", p[r], " at row ", r);
    if (mp) SOFTDEC_CHECK(mp[r] >= 0.0f && mp[r] <= 1.0f, "min_p must be in [0, 1], got ", mp[r], " at row ", r);
  }
}

int64_t chunks_for(int64_t B, int64_t V) {
  const int64_t threads = std::max<int64_t>(1, torch::stable::get_num_threads());
  if (B >= threads) return 1;
  const int64_t want = (threads + B - 1) / B;
  return std::max<int64_t>(1, std::min<int64_t>(want, V / kMinChunk));
}

// chunk c of n over [0, V), boundaries multiples of kCdfBlock (so a chunk's
// block masses are whole blocks)
inline std::pair<int64_t, int64_t> chunk_range(int64_t V, int64_t n, int64_t c) {
  const int64_t blocks = (V + kCdfBlock - 1) / kCdfBlock;
  const int64_t g0 = blocks * c / n, g1 = blocks * (c + 1) / n;
  return {std::min(V, g0 * kCdfBlock), std::min(V, g1 * kCdfBlock)};
}

// The draw among sorted top-k candidates: the kept ones (top-p prefix n, then
// min-p) in vocabulary order, their draw masses, the running double sum.
int64_t draw_from_candidates(const std::vector<Cand>& all, int64_t n, float m, float it, float lmp, double u) {
  std::vector<std::pair<int64_t, float>> kept;
  kept.reserve(static_cast<size_t>(n));
  const float c = filter::draw_scale(it);
  for (int64_t j = 0; j < n; ++j) {
    const float v = all[static_cast<size_t>(j)].v;
    if ((v - m) * it >= lmp) kept.emplace_back(all[static_cast<size_t>(j)].i, filter::draw_mass(v, m, c));
  }
  if (kept.empty()) return all[0].i;
  std::sort(kept.begin(), kept.end());
  std::vector<float> mass(kept.size());
  double total = 0.0;
  for (size_t j = 0; j < kept.size(); ++j) {
    mass[j] = kept[j].second;
    total += static_cast<double>(mass[j]);
  }
  const int64_t j = pick_in(mass.data(), static_cast<int64_t>(mass.size()), u * total);
  return j >= 0 ? kept[static_cast<size_t>(j)].first : all[0].i;
}

template <class T>
struct SampleRows {
  const T* logits;
  int64_t row_stride, V, nc;
  std::vector<RowPlan>& plans;

  const T* row(int64_t r) const { return logits + r * row_stride; }

  // Phase 1 on chunk c of row r: maxima and flags, or top-k candidates.
  void scan(int64_t r, int64_t c) {
    RowPlan& p = plans[static_cast<size_t>(r)];
    const T* x = row(r);
    const auto [lo, hi] = chunk_range(V, nc, c);
    switch (p.path) {
      case Path::kTopK:
        topk_pass(x, lo, hi, p.k, p.cands[c], p.flags[c]);
        break;
      case Path::kGreedy:
      case Path::kTopP:
        stats_pass(x, lo, hi, p.best[c], p.flags[c]);
        break;
      case Path::kPlain:  // the max only (f.argmax is not used by these rows' draw)
        stats_pass(x, lo, hi, p.best[c], p.flags[c], /*want_index=*/false);
        break;
      case Path::kGeneric:
        if (c == 0) {
          filter::Params fp;
          fp.temperature = p.temp;
          fp.top_k = p.k;
          fp.top_p = p.top_p;
          fp.min_p = p.min_p;
          auto load = [x](int64_t i) { return to_float(x[i]); };
          p.f = filter::compute_row_filter(load, V, fp);  // inv_temp = 1/T as p.it
        }
        break;
    }
  }

  // Merge row r's chunks; decide its cut (top-k rows: the draw itself).
  void merge(int64_t r) {
    RowPlan& p = plans[static_cast<size_t>(r)];
    Flags fl;
    Best bs;
    for (int64_t c = 0; c < nc; ++c) {
      fl.merge(p.flags[c]);
      if (p.best[c].idx >= 0) bs.take(p.best[c].key, p.best[c].idx);
    }
    switch (p.path) {
      case Path::kGreedy:
        p.valid = !fl.nan && !fl.pinf && fl.finite && bs.idx >= 0;
        p.id = p.valid ? bs.idx : 0;
        p.done = true;
        break;
      case Path::kPlain:
      case Path::kTopP:
        p.valid = !fl.nan && !fl.pinf && fl.finite && bs.idx >= 0;
        if (!p.valid) {
          p.done = true;
          p.id = 0;
          break;
        }
        p.f.valid = 1;
        p.f.max_logit = bs.key;
        p.f.argmax = bs.idx;
        p.f.inv_temp = p.it;
        p.f.cut_value = -kInf;
        p.f.cut_index = std::numeric_limits<int64_t>::max();
        p.f.log_min_p = filter::log_min_p_of(p.min_p);
        break;
      case Path::kTopK: {
        std::vector<Cand> all;
        for (auto& v : p.cands) all.insert(all.end(), v.begin(), v.end());
        std::sort(all.begin(), all.end(), cand_before);
        if (static_cast<int64_t>(all.size()) > p.k) all.resize(static_cast<size_t>(p.k));
        p.valid = !fl.nan && !fl.pinf && fl.finite && !all.empty();
        p.done = true;
        if (!p.valid) {
          p.id = 0;
          break;
        }
        const int64_t n0 = static_cast<int64_t>(all.size());
        const float m = all[0].v;
        std::vector<float> mass(static_cast<size_t>(n0));
        for (int64_t j = 0; j < n0; ++j) mass[j] = filter::token_mass(all[j].v, m, p.it);
        const int64_t n = filter::top_p_prefix(mass.data(), n0, p.top_p);
        p.id = draw_from_candidates(all, n, m, p.it, filter::log_min_p_of(p.min_p),
                                    philox::uniform53(p.seed, p.offset));
        break;
      }
      case Path::kGeneric:
        p.valid = p.f.valid != 0;
        if (!p.valid) {
          p.done = true;
          p.id = 0;
        }
        break;
    }
    if (!p.done) p.blk.assign(static_cast<size_t>((V + kCdfBlock - 1) / kCdfBlock), 0.0);
  }

  bool needs_top_p(int64_t r) const {
    const RowPlan& p = plans[static_cast<size_t>(r)];
    return p.path == Path::kTopP && !p.done;
  }

  // The top-p cut of a top-p-only row (serial, O(V)).
  void top_p(int64_t r) {
    RowPlan& p = plans[static_cast<size_t>(r)];
    top_p_cut(row(r), V, p.f.max_logit, p.f.argmax, p.it, p.top_p, &p.f.cut_value, &p.f.cut_index);
  }

  // Phase 2 on chunk c of row r: the block masses of its kept tokens.
  // pf: a row to prefetch meanwhile (the thread's next row), or null.
  void masses(int64_t r, int64_t c, const T* pf = nullptr) {
    RowPlan& p = plans[static_cast<size_t>(r)];
    if (p.done) return;
    const auto [lo, hi] = chunk_range(V, nc, c);
    if (lo < hi) mass_pass(row(r), lo, hi, Cut::of(p.f), p.blk.data() + lo / kCdfBlock, pf);
  }

  void draw(int64_t r) {
    RowPlan& p = plans[static_cast<size_t>(r)];
    if (p.done) return;
    p.id = draw_from_blocks(row(r), V, Cut::of(p.f), p.blk.data(), philox::uniform53(p.seed, p.offset));
    if (p.id < 0) {  // cannot happen (the max token is kept, with mass 1); the argmax, to be safe
      Best bs;
      Flags fl;
      stats_pass(row(r), 0, V, bs, fl);
      p.id = bs.idx;
    }
    p.done = true;
  }
};

template <class T>
void sample_kernel(const T* logits, int64_t row_stride, int64_t B, int64_t V, std::vector<RowPlan>& plans,
                   int64_t* ids, bool* valid) {
  const int64_t nc = chunks_for(B, V);
  for (auto& p : plans) {
    p.best.assign(static_cast<size_t>(nc), Best{});
    p.flags.assign(static_cast<size_t>(nc), Flags{});
    if (p.path == Path::kTopK) p.cands.assign(static_cast<size_t>(nc), {});
  }
  SampleRows<T> rows{logits, row_stride, V, nc, plans};
  if (nc == 1) {
    // At least one row per thread: every pass of a row back to back in one task,
    // so the passes after the first read the row from cache, not memory.
    torch::stable::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        rows.scan(r, 0);
        rows.merge(r);
        if (rows.needs_top_p(r)) rows.top_p(r);
        rows.masses(r, 0, r + 1 < e ? rows.row(r + 1) : nullptr);
        rows.draw(r);
      }
    });
  } else {
    // Fewer rows than threads: each row's vocabulary split in nc chunks; chunk c
    // of every phase goes to the same thread (static schedule), which still has it cached.
    torch::stable::parallel_for(0, B * nc, 1, [&](int64_t b, int64_t e) {
      for (int64_t w = b; w < e; ++w) rows.scan(w / nc, w % nc);
    });
    bool any_top_p = false, any_left = false;
    for (int64_t r = 0; r < B; ++r) {
      rows.merge(r);
      any_top_p |= rows.needs_top_p(r);
      any_left |= !plans[static_cast<size_t>(r)].done;
    }
    // (parallel regions are skipped when no row needs them: each one costs a
    // thread wake-up)
    if (any_top_p) torch::stable::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        if (rows.needs_top_p(r)) rows.top_p(r);
    });
    if (any_left) torch::stable::parallel_for(0, B * nc, 1, [&](int64_t b, int64_t e) {
      for (int64_t w = b; w < e; ++w) rows.masses(w / nc, w % nc);
    });
    for (int64_t r = 0; r < B; ++r) rows.draw(r);
  }
  for (int64_t r = 0; r < B; ++r) {
    const RowPlan& p = plans[static_cast<size_t>(r)];
    ids[r] = (p.valid && p.id >= 0 && p.id < V) ? p.id : 0;
    valid[r] = p.valid;
  }
}

std::tuple<Tensor, Tensor> sample_cpu(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p,
                                      Tensor min_p, Tensor seed, Tensor offset) {
  sampling_checks::check_sample_args(logits, temperature, top_k, top_p, min_p, seed, offset);
  const int64_t B = logits.size(0), V = logits.size(1);
  const float* t = temperature.const_data_ptr<float>();
  const int64_t* k = top_k.const_data_ptr<int64_t>();
  const float* tp = top_p.const_data_ptr<float>();
  const float* mp = min_p.const_data_ptr<float>();
  check_row_values(t, k, tp, mp, B);
  Tensor ids = new_empty(logits, {B}, ScalarType::Long);
  Tensor valid = new_empty(logits, {B}, ScalarType::Bool);
  if (B == 0) return {ids, valid};
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const int64_t* of = offset.const_data_ptr<int64_t>();
  std::vector<RowPlan> plans(static_cast<size_t>(B));
  for (int64_t r = 0; r < B; ++r) {
    RowPlan& p = plans[static_cast<size_t>(r)];
    p.seed = static_cast<uint64_t>(sd[r]);
    p.offset = static_cast<uint64_t>(of[r]);
    p.k = (k[r] > 0 && k[r] < V) ? k[r] : 0;
    p.top_p = tp[r];
    p.min_p = mp[r];
    if (!(t[r] > 0.0f)) {
      p.path = Path::kGreedy;
      p.it = 0.0f;
      continue;
    }
    p.temp = t[r];
    p.it = 1.0f / t[r];
    if (p.k > 0 && p.k <= kSmallK) {
      p.path = Path::kTopK;
    } else if (p.k > 0) {
      p.path = Path::kGeneric;
    } else if (p.top_p < 1.0f) {
      p.path = Path::kTopP;
    } else {
      p.path = Path::kPlain;
    }
  }
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    sample_kernel(reinterpret_cast<const scalar_t*>(logits.const_data_ptr()), rs, B, V, plans,
                  ids.mutable_data_ptr<int64_t>(), valid.mutable_data_ptr<bool>());
  });
  return {ids, valid};
}

// ------------------------------------------------------------------ gumbel_softmax

// s_i = x_i + G_i over [lo, hi) into s (float), with argmax / flags.
template <class T>
void perturb_pass(const T* x, int64_t lo, int64_t hi, uint64_t seed, uint64_t offset, float* s,
                  Best& best, Flags& flags) {
  int64_t i = lo;
#if SOFTDEC_SIMD_AVX512
  const __m512 vninf = _mm512_set1_ps(-kInf), vpinf = _mm512_set1_ps(kInf);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 bkey = vninf;
  __m512i bidx = _mm512_set1_epi32(-1);
  bool nan = false, pinf = false, fin = false;
  for (; i < hi; i += kGroup) {
    const int64_t n = std::min<int64_t>(kGroup, hi - i);
    __m512 u[4];
    philox_group(seed, offset, static_cast<uint64_t>(i) >> 2, u);
    for (int q = 0; q < 4; ++q) {
      const int64_t left = n - 16 * q;
      if (left <= 0) break;
      const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
      const __m512 xv = left >= 16 ? load16<T>(x + i + 16 * q) : load16_mask<T>(x + i + 16 * q, lm);
      nan |= _mm512_cmp_ps_mask(xv, xv, _CMP_UNORD_Q) != 0;
      pinf |= _mm512_cmp_ps_mask(xv, vpinf, _CMP_EQ_OQ) != 0;
      const __mmask16 k = _mm512_cmp_ps_mask(xv, vninf, _CMP_GT_OQ);
      fin |= k != 0;
      const __m512 y = _mm512_add_ps(xv, vgumbel(u[q]));
      _mm512_mask_storeu_ps(s + i + 16 * q, lm, y);
      const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(i - lo + 16 * q)), lane);
      const __mmask16 better = _mm512_mask_cmp_ps_mask(k, y, bkey, _CMP_GT_OQ);
      bkey = _mm512_mask_mov_ps(bkey, better, y);
      bidx = _mm512_mask_mov_epi32(bidx, better, idx);
    }
  }
  take_lanes(best, bkey, bidx, lo);
  flags.nan |= nan;
  flags.pinf |= pinf;
  flags.finite |= fin;
  i = hi;
#endif
  for (; i < hi; ++i) {
    const float v = to_float(x[i]);
    if (v != v) flags.nan = true;
    if (v == kInf) flags.pinf = true;
    const float y = v + filter::gumbel(philox::uniform(seed, offset, static_cast<uint64_t>(i)));
    s[i] = y;
    if (v > -kInf) {
      flags.finite = true;
      best.take(y, i);
    }
  }
}

// e_i = exp((s_i - smax) * it) in place over [lo, hi), lo a multiple of
// kCdfBlock; the sum of each kCdfBlock-token block goes to blk[(block start) /
// kCdfBlock]. Fixed blocks summed in a fixed order: the row's total does not
// depend on how the row is split over threads (bit-identical results for a
// row alone, in a batch, on 1 or N threads).
void exp_pass(float* s, int64_t lo, int64_t hi, float smax, float it, double* blk) {
  for (int64_t b0 = lo; b0 < hi; b0 += kCdfBlock) {
    const int64_t b1 = std::min(hi, b0 + kCdfBlock);
    int64_t i = b0;
    double total = 0.0;
#if SOFTDEC_SIMD_AVX512
    const __m512 vm = _mm512_set1_ps(smax), vit = _mm512_set1_ps(it);
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= b1; i += 16) {
      const __m512 e = vexp(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm), vit));
      _mm512_storeu_ps(s + i, e);
      acc = _mm512_add_ps(acc, e);
    }
    total = _mm512_reduce_add_ps(acc);
#endif
    for (; i < b1; ++i) {
      const float e = filter::fexp((s[i] - smax) * it);
      s[i] = e;
      total += e;
    }
    blk[b0 / kCdfBlock] = total;
  }
}

template <class T>
void scale_store(const float* e, int64_t lo, int64_t hi, float scale, T* out) {
  for (int64_t i = lo; i < hi; ++i) out[i] = static_cast<T>(e[i] * scale);
}

// The shared tensor checks, then the tau values (CPU tensors: read directly).
void check_tau(const Tensor& logits, const Tensor& tau, const Tensor& seed, const Tensor& offset) {
  sampling_checks::check_gumbel_args(logits, tau, seed, offset);
  const int64_t B = logits.size(0);
  const float* t = tau.const_data_ptr<float>();
  for (int64_t r = 0; r < B; ++r)
    SOFTDEC_CHECK(t[r] > 0.0f && t[r] < kInf, "tau must be a finite value > 0, got ", t[r], " at row ", r);
}

std::tuple<Tensor, Tensor> gumbel_softmax_cpu(Tensor logits, Tensor tau, Tensor seed, Tensor offset) {
  check_tau(logits, tau, seed, offset);
  const int64_t B = logits.size(0), V = logits.size(1);
  Tensor out = new_empty(logits, {B, V}, logits.scalar_type());
  Tensor am = new_empty(logits, {B}, ScalarType::Long);
  if (B == 0 || V == 0) return {out, am};
  const bool f32 = logits.scalar_type() == ScalarType::Float;
  Tensor scratch = f32 ? out : new_empty(logits, {B, V}, ScalarType::Float);
  float* sp = scratch.mutable_data_ptr<float>();
  const float* taus = tau.const_data_ptr<float>();
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const int64_t* of = offset.const_data_ptr<int64_t>();
  int64_t* amp = am.mutable_data_ptr<int64_t>();
  const int64_t nc = chunks_for(B, V), rs = logits.stride(0);
  std::vector<Best> best(static_cast<size_t>(B * nc));
  std::vector<Flags> flags(static_cast<size_t>(B * nc));
  const int64_t nb = sat_ceil_div(V, kCdfBlock);  // exp-sum blocks per row (fixed: see exp_pass)
  std::vector<double> sums(static_cast<size_t>(B * nb), 0.0);
  std::vector<float> smax(static_cast<size_t>(B), 0.0f), scale(static_cast<size_t>(B), 0.0f);
  std::vector<char> ok(static_cast<size_t>(B), 0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    scalar_t* o = reinterpret_cast<scalar_t*>(out.mutable_data_ptr());
    auto perturb = [&](int64_t r, int64_t c) {
      const auto [lo, hi] = chunk_range(V, nc, c);
      perturb_pass(x + r * rs, lo, hi, static_cast<uint64_t>(sd[r]), static_cast<uint64_t>(of[r]), sp + r * V,
                   best[r * nc + c], flags[r * nc + c]);
    };
    auto merge = [&](int64_t r) {
      Flags fl;
      Best bs;
      for (int64_t c = 0; c < nc; ++c) {
        fl.merge(flags[r * nc + c]);
        if (best[r * nc + c].idx >= 0) bs.take(best[r * nc + c].key, best[r * nc + c].idx);
      }
      ok[r] = !fl.nan && !fl.pinf && fl.finite && bs.idx >= 0;
      amp[r] = ok[r] ? bs.idx : 0;
      smax[r] = ok[r] ? bs.key : 0.0f;
    };
    auto exps = [&](int64_t r, int64_t c) {
      if (!ok[r]) return;
      const auto [lo, hi] = chunk_range(V, nc, c);
      exp_pass(sp + r * V, lo, hi, smax[r], 1.0f / taus[r], sums.data() + r * nb);
    };
    auto total = [&](int64_t r) {
      double t = 0.0;
      for (int64_t c = 0; c < nb; ++c) t += sums[r * nb + c];
      scale[r] = ok[r] ? static_cast<float>(1.0 / t) : 0.0f;
    };
    auto store = [&](int64_t r, int64_t c) {
      const auto [lo, hi] = chunk_range(V, nc, c);
      if (!ok[r]) {
        for (int64_t i = lo; i < hi; ++i) o[r * V + i] = static_cast<scalar_t>(0.0f);
        return;
      }
      scale_store(sp + r * V, lo, hi, scale[r], o + r * V);
    };
    if (nc == 1) {
      // a row per task, its three passes back to back (the row stays in cache)
      torch::stable::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          perturb(r, 0);
          merge(r);
          exps(r, 0);
          total(r);
          store(r, 0);
        }
      });
    } else {
      torch::stable::parallel_for(0, B * nc, 1, [&](int64_t b, int64_t e) {
        for (int64_t w = b; w < e; ++w) perturb(w / nc, w % nc);
      });
      for (int64_t r = 0; r < B; ++r) merge(r);
      torch::stable::parallel_for(0, B * nc, 1, [&](int64_t b, int64_t e) {
        for (int64_t w = b; w < e; ++w) exps(w / nc, w % nc);
      });
      for (int64_t r = 0; r < B; ++r) total(r);
      torch::stable::parallel_for(0, B * nc, 1, [&](int64_t b, int64_t e) {
        for (int64_t w = b; w < e; ++w) store(w / nc, w % nc);
      });
    }
  });
  return {out, am};
}

std::tuple<Tensor, Tensor> gumbel_softmax_topk_cpu(Tensor logits, Tensor tau, int64_t k, Tensor seed,
                                                   Tensor offset) {
  check_tau(logits, tau, seed, offset);
  sampling_checks::check_gumbel_topk_k(logits, k);
  const int64_t B = logits.size(0), V = logits.size(1);
  Tensor ids = new_empty(logits, {B, k}, ScalarType::Long);
  Tensor w = new_empty(logits, {B, k}, ScalarType::Float);
  if (B == 0) return {w, ids};
  const float* taus = tau.const_data_ptr<float>();
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const int64_t* of = offset.const_data_ptr<int64_t>();
  int64_t* idp = ids.mutable_data_ptr<int64_t>();
  float* wp = w.mutable_data_ptr<float>();
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    torch::stable::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      std::vector<float> s(static_cast<size_t>(V));
      std::vector<Cand> cand;
      for (int64_t r = b; r < e; ++r) {
        Best bs;
        Flags fl;
        perturb_pass(x + r * rs, 0, V, static_cast<uint64_t>(sd[r]), static_cast<uint64_t>(of[r]), s.data(),
                     bs, fl);
        int64_t* ir = idp + r * k;
        float* wr = wp + r * k;
        if (fl.nan || fl.pinf || !fl.finite) {
          for (int64_t j = 0; j < k; ++j) {
            ir[j] = 0;
            wr[j] = 0.0f;
          }
          continue;
        }
        Flags f2;
        topk_pass(s.data(), 0, V, k, cand, f2);
        const int64_t n = static_cast<int64_t>(cand.size());
        const float it = 1.0f / taus[r];
        double tot = 0.0;
        for (int64_t j = 0; j < n; ++j) tot += filter::fexp((cand[j].v - cand[0].v) * it);
        for (int64_t j = 0; j < k; ++j) {
          if (j < n) {
            ir[j] = cand[j].i;
            wr[j] = static_cast<float>(filter::fexp((cand[j].v - cand[0].v) * it) / tot);
          } else {
            ir[j] = cand[0].i;
            wr[j] = 0.0f;
          }
        }
      }
    });
  });
  return {w, ids};
}

// ------------------------------------------------------------------ filter ops

// Whether a row holds a NaN (vectorised; 64 entries a step).
template <class T>
bool row_has_nan(const T* x, int64_t V) {
  int64_t i = 0;
#if SOFTDEC_SIMD_AVX512
  __mmask16 m = 0;
  for (; i + 64 <= V; i += 64) {
    const __m512 v0 = load16<T>(x + i), v1 = load16<T>(x + i + 16);
    const __m512 v2 = load16<T>(x + i + 32), v3 = load16<T>(x + i + 48);
    m |= _mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v2, v3, _CMP_UNORD_Q);
  }
  if (m) return true;
#endif
  bool nan = false;
  for (; i < V; ++i) {
    const float v = to_float(x[i]);
    nan |= v != v;
  }
  return nan;
}

Tensor top_k_mask_logits_cpu(Tensor logits, Tensor top_k) {
  sampling_checks::check_top_k_mask_args(logits, top_k);
  const int64_t B = logits.size(0), V = logits.size(1);
  const int64_t* kp = top_k.const_data_ptr<int64_t>();
  check_row_values(nullptr, kp, nullptr, nullptr, B);
  Tensor out = new_empty(logits, {B, V}, logits.scalar_type());
  if (B == 0 || V == 0) return out;
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    scalar_t* o = reinterpret_cast<scalar_t*>(out.mutable_data_ptr());
    torch::stable::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      std::vector<Cand> cand;
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* xr = x + r * rs;
        scalar_t* orow = o + r * V;
        const int64_t k = kp[r];
        float cv = -kInf;
        int64_t ci = std::numeric_limits<int64_t>::max();
        bool nan = false;
        if (k > 0 && k < V) {
          Flags fl;
          topk_pass(xr, 0, V, k, cand, fl);
          nan = fl.nan;
          if (!cand.empty() && static_cast<int64_t>(cand.size()) == k) {
            cv = cand.back().v;
            ci = cand.back().i;
          }
        } else {
          nan = row_has_nan(xr, V);
        }
        const scalar_t ninf = static_cast<scalar_t>(-kInf);
        if (nan) {
          // a row with a NaN is invalid: all -inf (what a row with no valid entry gives)
          std::fill(orow, orow + V, ninf);
          continue;
        }
        int64_t i0 = 0;
#if SOFTDEC_SIMD_AVX512
        if constexpr (std::is_same_v<scalar_t, float>) {
          // kept = not NaN and (x > cv or (x == cv and i <= ci)); the rest -> -inf
          const __m512 vni = _mm512_set1_ps(-kInf);
          for (; i0 + 16 <= V; i0 += 16) {
            const __m512 v = _mm512_loadu_ps(reinterpret_cast<const float*>(xr) + i0);
            const __mmask16 keep = above_cut(v, cv, ci, i0);
            _mm512_storeu_ps(reinterpret_cast<float*>(orow) + i0, _mm512_mask_blend_ps(keep, vni, v));
          }
        }
#endif
        for (int64_t i = i0; i < V; ++i) {
          const float v = to_float(xr[i]);
          const bool keep = v == v && (v > cv || (v == cv && i <= ci));
          orow[i] = keep ? xr[i] : ninf;
        }
      }
    });
  });
  return out;
}

// ------------------------------------------------------------------ renormalisation of probability rows
// filter::compute_prob_filter's semantics (a row is valid iff no entry is
// negative, NaN or inf and one is > 0; zeros are never kept; kept_probs), with
// vectorised passes: stats, the top-p cut (top_p_cut<true>), the kept sum, the write.

// Validity, max and (want_index) its first index of a probability row.
template <class T>
void prob_stats(const T* x, int64_t V, filter::ProbFilter& f, bool want_index) {
  bool bad = false;
  float m = 0.0f;
  int64_t i = 0;
#if SOFTDEC_SIMD_AVX512
  const __m512 zero = _mm512_setzero_ps(), pinf = _mm512_set1_ps(kInf);
  __m512 mx = zero;
  __mmask16 badm = 0;
  for (; i + 16 <= V; i += 16) {
    const __m512 v = load16<T>(x + i);
    badm |= _mm512_cmp_ps_mask(v, zero, _CMP_NGE_UQ) | _mm512_cmp_ps_mask(v, pinf, _CMP_EQ_OQ);
    mx = _mm512_max_ps(mx, v);
  }
  bad = badm != 0;
  m = hmax(mx);
#endif
  for (; i < V; ++i) {
    const float v = to_float(x[i]);
    if (!(v >= 0.0f) || v == kInf) bad = true;
    if (v > m) m = v;
  }
  f.valid = (!bad && m > 0.0f) ? 1 : 0;
  if (!f.valid) return;
  f.max_prob = m;
  if (!want_index) return;
  int64_t j = 0;
#if SOFTDEC_SIMD_AVX512
  const __m512 vm = _mm512_set1_ps(m);
  for (; j + 16 <= V; j += 16) {
    const __mmask16 eq = _mm512_cmp_ps_mask(load16<T>(x + j), vm, _CMP_EQ_OQ);
    if (eq) {
      f.argmax = j + __builtin_ctz(eq);
      return;
    }
  }
#endif
  for (; j < V; ++j)
    if (to_float(x[j]) == m) {
      f.argmax = j;
      return;
    }
}

#if SOFTDEC_SIMD_AVX512
inline __mmask16 kept_probs16(const filter::ProbFilter& f, __m512 v, int64_t base) {
  if (!f.valid) return 0;  // as filter::kept_probs (an invalid row's +inf entries must not be kept)
  __mmask16 k = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ) &
                _mm512_cmp_ps_mask(v, _mm512_set1_ps(f.min_prob), _CMP_GE_OQ);
  if (f.cut_value > 0.0f) k &= above_cut(v, f.cut_value, f.cut_index, base);
  return k;
}
#endif

// Sum (double) of the kept entries.
template <class T>
double kept_sum(const T* x, int64_t V, const filter::ProbFilter& f) {
  double s = 0.0;
  int64_t i = 0;
#if SOFTDEC_SIMD_AVX512
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (; i + 16 <= V; i += 16) {
    const __m512 v = load16<T>(x + i);
    const __m512 e = _mm512_maskz_mov_ps(kept_probs16(f, v, i), v);
    a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  s = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#endif
  for (; i < V; ++i) {
    const float v = to_float(x[i]);
    if (filter::kept_probs(f, v, i)) s += v;
  }
  return s;
}

// out[i] = kept ? (x[i] * pre) * scale : 0. pre is a power of two (exact), > 1
// only when the kept sum is tiny (renorm_scale).
template <class T>
void write_renorm(const T* x, int64_t V, const filter::ProbFilter& f, float pre, float scale, T* out) {
  int64_t i = 0;
#if SOFTDEC_SIMD_AVX512
  if constexpr (std::is_same_v<T, float>) {
    const __m512 vs = _mm512_set1_ps(scale), vp = _mm512_set1_ps(pre);
    for (; i + 16 <= V; i += 16) {
      const __m512 v = _mm512_loadu_ps(x + i);
      _mm512_storeu_ps(out + i, _mm512_maskz_mul_ps(kept_probs16(f, v, i), _mm512_mul_ps(v, vp), vs));
    }
  }
#endif
  for (; i < V; ++i) {
    const float v = to_float(x[i]);
    out[i] = static_cast<T>(filter::kept_probs(f, v, i) ? (v * pre) * scale : 0.0f);
  }
}

template <bool kTopP>
Tensor renorm_probs_cpu(Tensor probs, Tensor param, const char* pname) {
  sampling_checks::check_renorm_args(probs, param, pname);
  const int64_t B = probs.size(0), V = probs.size(1);
  const float* pp = param.const_data_ptr<float>();
  if (kTopP) check_row_values(nullptr, nullptr, pp, nullptr, B);
  else check_row_values(nullptr, nullptr, nullptr, pp, B);
  Tensor out = new_empty(probs, {B, V}, probs.scalar_type());
  if (B == 0 || V == 0) return out;
  const int64_t rs = probs.stride(0);
  SOFTDEC_DISPATCH_FLOAT(probs.scalar_type(), "probs", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(probs.const_data_ptr());
    scalar_t* o = reinterpret_cast<scalar_t*>(out.mutable_data_ptr());
    torch::stable::parallel_for(0, B, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* xr = x + r * rs;
        filter::ProbFilter f;
        prob_stats(xr, V, f, /*want_index=*/kTopP);
        f.cut_value = -kInf;
        f.cut_index = V;
        f.min_prob = kTopP ? 0.0f : pp[r] * f.max_prob;
        if (f.valid && kTopP && pp[r] < 1.0f)
          top_p_cut<true>(xr, V, f.max_prob, f.argmax, 1.0f, pp[r], &f.cut_value, &f.cut_index);
        f.norm = f.valid ? kept_sum(xr, V, f) : 0.0;
        float pre = 1.0f, scale = 0.0f;
        if (f.valid && f.norm > 0.0) filter::renorm_scale(f.norm, &pre, &scale);
        write_renorm(xr, V, f, pre, scale, o + r * V);
      }
    });
  });
  return out;
}

Tensor top_p_renorm_probs_cpu(Tensor probs, Tensor top_p) { return renorm_probs_cpu<true>(probs, top_p, "top_p"); }
Tensor min_p_renorm_probs_cpu(Tensor probs, Tensor min_p) { return renorm_probs_cpu<false>(probs, min_p, "min_p"); }

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(sampling,
    {"sample", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::sample_cpu)},
    {"gumbel_softmax", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::gumbel_softmax_cpu)},
    {"gumbel_softmax_topk", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::gumbel_softmax_topk_cpu)},
    {"top_k_mask_logits", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::top_k_mask_logits_cpu)},
    {"top_p_renorm_probs", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::top_p_renorm_probs_cpu)},
    {"min_p_renorm_probs", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::min_p_renorm_probs_cpu)})
