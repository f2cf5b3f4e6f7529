// CPU backend of token-tree speculative verification (softdec.verify_tree).
//
// One task per row (parallel_for over rows); each row walks its tree from the
// root, computing the target filter only at the nodes it visits (the accepted
// path and the node where it stops), with early exit at the first node whose
// children are all rejected. The target filter is sampling's fast_row_filter
// (vectorised passes); the residual draw is an AVX-512 exponential race with
// the Philox layout of include/softdec/verify.h, so a chain given as a tree
// reproduces softdec.verify bit for bit.
//
// Exact rule (recursive rejection over siblings; SpecInfer / SpecTr's
// multi-draft rule): at node c with target p and children x_1..x_m (index
// order) drafted from q_1..q_m, keep an unnormalised residual R (R = p at
// first) of mass Z (1 at first); child i is accepted iff u_i * Z * q_i(x_i) <
// R(x_i) (probability min(1, r(x_i) / q_i(x_i)) with r = R / Z); on rejection
// R <- max(0, R - Z q_i) and Z <- its mass. If every child is rejected, the
// correction is a draw from R. One-hot and sparse drafts touch only their k
// entries (R = p elsewhere, a small list of touched entries), dense drafts
// materialise R once.
#include "capability.h"
#include "../common.h"
#include "../dispatch.h"
#include "../verify_tree_checks.h"
#include "mass_lanes.h"
#include "race.h"
#include "sampling_kernels.h"
#include "softdec/filter.h"
#include "softdec/philox.h"
#include "softdec/verify.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

using filter::RowFilter;
using namespace ::softdec::SOFTDEC_CPU_NS::simd;  // NOLINT
constexpr int64_t kChunkT = kPhiloxChunk;

// The race winner and the AVX-512 race lanes are shared with verify.cpp (race.h).
using Win = cpu::RaceWin;

// Exponential race over [lo, hi): r_i = R[i] when R is given (a dense
// residual, 0 off the kept set), else the filtered target p_i (inv_z the
// normaliser). Only r_i > 0 take part; the uniform of token i is element i of
// the (seed, stream) stream. Same keys as verify.cpp's race (vexp / vlog are
// filter::fexp / flog bit for bit).
// Indices in the sorted list skip[0..nskip) do not take part (the touched entries of a
// one-hot / sparse residual, raced separately).
template <typename T>
Win race(const T* x, const float* R, int64_t lo, int64_t hi, const RowFilter& f, float inv_z, uint64_t seed,
         uint64_t stream, const int64_t* skip, int64_t nskip) {
  Win best;
  if (lo >= hi) return best;
  int64_t sk = static_cast<int64_t>(std::lower_bound(skip, skip + nskip, lo) - skip);
  alignas(64) float u[kChunkT];
#if defined(SOFTDEC_SIMD_AVX512)
  cpu::RaceLanes16 lanes(f, inv_z);
#endif
  for (int64_t c0 = (lo / kChunkT) * kChunkT; c0 < hi; c0 += kChunkT) {
    philox_chunk(seed, stream, static_cast<uint64_t>(c0 / 4), u);
    const int64_t a = std::max(lo, c0), b = std::min(hi, c0 + kChunkT);
#if defined(SOFTDEC_SIMD_AVX512)
    if (!f.greedy) {
      for (int64_t i = a; i < b; i += 16) {
        const __mmask16 tm = tail_mask(b - i);
        const __m512i gi = lanes.index(i);
        __m512 r = _mm512_setzero_ps(), sc = _mm512_setzero_ps();
        __mmask16 keep;
        if (R) {
          r = _mm512_maskz_loadu_ps(tm, R + i);
          keep = _mm512_mask_cmp_ps_mask(tm, r, _mm512_setzero_ps(), _CMP_GT_OQ);
        } else {
          const __m512 v = load16_maskz(x + i, tm);
          sc = lanes.score(v);
          keep = lanes.kept(v, sc, gi, tm);
        }
        for (; sk < nskip && skip[sk] < std::min<int64_t>(i + 16, b); ++sk) keep &= static_cast<__mmask16>(~(1u << (skip[sk] - i)));
        if (!keep) continue;
        if (!R) r = lanes.p(sc);
        lanes.offer(keep, r, u + (i - c0), tm, gi);
      }
      continue;
    }
#endif
    for (int64_t i = a; i < b; ++i) {
      if (sk < nskip && skip[sk] == i) {
        ++sk;
        continue;
      }
      float r;
      if (R) {
        r = R[i];
      } else {
        const float v = to_float(x[i]);
        if (!filter::kept(f, v, i)) continue;
        r = f.greedy ? 1.0f : filter::fexp((v - f.max_logit) * f.inv_temp) * inv_z;
      }
      if (!(r > 0.0f)) continue;
      best.take(verify::race_key(r, u[i - c0]), i);
    }
  }
#if defined(SOFTDEC_SIMD_AVX512)
  lanes.fold(best);
#endif
  return best;
}

// race() over [0, V) minus the sorted unique indices skip[0..nskip), in the fixed pieces of
// cpu::for_pieces (run by torch's threads when `par`: a batch too small to keep the threads busy
// with rows). race_better is a total order on (key, index), so the merged winner is the one
// race over [0, V) would find, whatever the split.
template <typename T>
Win race_par(const T* x, const float* R, int64_t V, const RowFilter& f, float inv_z, uint64_t seed,
             uint64_t stream, bool par, const int64_t* skip = nullptr, int64_t nskip = 0) {
  std::vector<Win> part(static_cast<size_t>((V + cpu::kFilterPiece - 1) / cpu::kFilterPiece));
  cpu::for_pieces(V, par, [&](int64_t i, int64_t lo, int64_t hi) {
    part[static_cast<size_t>(i)] = race(x, R, lo, hi, f, inv_z, seed, stream, skip, nskip);
  });
  Win best;
  for (const Win& w : part) best.take(w.key, w.idx);
  return best;
}

struct Target {
  RowFilter f;
  float inv_z = 1.0f;
};

// R[i] = p_i, the filtered target, over [0, V) (the dense residual before the first rejection),
// in fixed pieces (torch's threads when par).
template <typename T>
void fill_target(const T* x, int64_t V, const Target& t, float* R, bool par) {
  cpu::for_pieces(V, par, [&](int64_t, int64_t lo, int64_t hi) {
    if (t.f.greedy) {
      for (int64_t i = lo; i < hi; ++i) R[i] = filter::kept(t.f, to_float(x[i]), i) ? 1.0f : 0.0f;
      return;
    }
    for (int64_t base = lo; base < hi; base += 1024) {
      const int64_t n = std::min<int64_t>(1024, hi - base);
      cpu::masses(x + base, n, t.f.max_logit, t.f.inv_temp, R + base);  // fexp((x - m) / T), as p_of
      for (int64_t j = 0; j < n; ++j)
        R[base + j] = filter::kept(t.f, to_float(x[base + j]), base + j) ? R[base + j] * t.inv_z : 0.0f;
    }
  });
}

// R <- max(0, fma(-zf, q, R)) over [0, V) (one rounding: an explicit FMA at every CPU level and
// on CUDA, where a contracted or uncontracted R - zf * q would depend on the compiler); returns
// the new mass by the exact rule of filter.h (MassSum digit sums: the same value in any split,
// on one thread or on torch's threads, and on CUDA).
template <typename Q>
double residual_update(float* R, const Q* q, float zf, int64_t V, bool par) {
  const int64_t np = (V + cpu::kFilterPiece - 1) / cpu::kFilterPiece;
  std::vector<filter::MassSum> part(static_cast<size_t>(np));
  cpu::for_pieces(V, par, [&](int64_t pi, int64_t lo, int64_t hi) {
    filter::MassSum z;
#if defined(SOFTDEC_SIMD_AVX512)
    cpu::MassLanes lanes;
    const __m512 vz = _mm512_set1_ps(zf), zero = _mm512_setzero_ps();
    for (int64_t i = lo; i < hi; i += 16) {
      const __mmask16 tm = tail_mask(hi - i);
      const __m512 d = _mm512_fnmadd_ps(vz, load16_maskz(q + i, tm), _mm512_maskz_loadu_ps(tm, R + i));
      const __m512 r = _mm512_max_ps(d, zero);  // lanes past hi: 0
      _mm512_mask_storeu_ps(R + i, tm, r);
      lanes.add16(r);
    }
    z = lanes.sum();
#else
    for (int64_t i = lo; i < hi; ++i) {
      const float d = std::fma(-zf, static_cast<float>(q[i]), R[i]);
      const float r = d > 0.0f ? d : 0.0f;
      R[i] = r;
      z.add(r);
    }
#endif
    part[static_cast<size_t>(pi)] = z;
  });
  filter::MassSum z;
  for (const filter::MassSum& v : part) z.merge(v);
  return z.value();
}

struct Params {
  int32_t method = 0, kind = 0;
  int64_t V = 0, N = 0, ks = 0;
  float post_thr = 0.09f, post_alpha = 0.3f, delta = 0.1f;
  bool par = false;  // one row: the vocabulary-wide races use torch's threads (race_par)
};

template <typename T>
Target target_at(const T* x, int64_t V, float temp, int64_t top_k, float top_p, float min_p, bool par) {
  Target t;
  // top-k candidates up to kVerifyCandK as verify and the CUDA row filter (kFilterCand) do;
  // larger k by filter.h's radix selection
  t.f = cpu::fast_row_filter(x, V, filter::Params{temp, top_k, top_p, min_p}, par, cpu::kVerifyCandK);
  if (t.f.valid && !t.f.greedy) t.inv_z = filter::inv_norm(t.f.norm);  // float(1 / Z), Z by the exact rule
  return t;
}

template <typename T>
inline float p_of(const T* x, const Target& t, int64_t i) {
  const float v = to_float(x[i]);
  if (!filter::kept(t.f, v, i)) return 0.0f;
  if (t.f.greedy) return 1.0f;
  return filter::fexp((v - t.f.max_logit) * t.f.inv_temp) * t.inv_z;
}

// Entropy of the filtered target (method typical).
template <typename T>
double entropy_of(const T* x, int64_t V, const Target& t) {
  if (t.f.greedy) return 0.0;
  double z = 0.0, s = 0.0;
  alignas(64) float e[1024];
  for (int64_t base = 0; base < V; base += 1024) {
    const int64_t n = std::min<int64_t>(1024, V - base);
    cpu::masses(x + base, n, t.f.max_logit, t.f.inv_temp, e);
    for (int64_t j = 0; j < n; ++j) {
      const float v = to_float(x[base + j]);
      if (!filter::kept(t.f, v, base + j) || !(e[j] > 0.0f)) continue;
      z += e[j];
      s += static_cast<double>(e[j]) * ((v - t.f.max_logit) * t.f.inv_temp);
    }
  }
  return std::log(z) - s / z;
}

template <typename T, typename Q>
struct Row {
  const T* logits;  // (B, N, V) with strides ls0, ls1
  int64_t ls0, ls1;
  const int64_t* tokens;   // (B, N)
  const int64_t* parents;  // (B, N)
  const Q* dprobs;         // dense (B, N, V) strides ds0, ds1
  int64_t ds0, ds1;
  const int64_t* sids;  // sparse (B, N, ks)
  const float* sw;
  const float *temp, *top_p, *min_p;
  const int64_t *top_k, *seed, *offset;
  int64_t *out_nodes, *out_tokens, *out_nacc, *soft_ids;
  float* soft_w;
};

template <typename T, typename Q>
void tree_row(int64_t b, const Row<T, Q>& c, const Params& P) {
  const int64_t V = P.V, N = P.N, ks = P.ks;
  const int64_t* tok_in = c.tokens + b * N;
  const int64_t* par = c.parents + b * N;
  int64_t* nodes = c.out_nodes + b * N;
  int64_t* tok = c.out_tokens + b * N;
  for (int64_t j = 0; j < N; ++j) nodes[j] = tok[j] = -1;
  // children lists in index order
  std::vector<int64_t> head(static_cast<size_t>(N), -1), next(static_cast<size_t>(N), -1);
  for (int64_t n = N - 1; n >= 1; --n) {
    const int64_t p = par[n];
    if (p < 0) continue;
    next[static_cast<size_t>(n)] = head[static_cast<size_t>(p)];
    head[static_cast<size_t>(p)] = n;
  }
  const float temp = c.temp[b], top_p = c.top_p[b], min_p = c.min_p[b];
  const int64_t top_k = c.top_k[b];
  const uint64_t seed = static_cast<uint64_t>(c.seed[b]), off = static_cast<uint64_t>(c.offset[b]);
  int64_t nacc = 0, cur = 0;
  std::vector<float> Rbuf;
  std::vector<std::pair<int64_t, float>> touched;
  std::vector<int64_t> skip;
  for (;;) {
    const T* x = c.logits + b * c.ls0 + cur * c.ls1;
    if (P.method == verify::kSoft) {
      const int64_t kk = top_k > 0 ? std::min(top_k, ks) : ks;
      const Target t = target_at(x, V, temp, kk, top_p, min_p, P.par);
      int64_t* oi = c.soft_ids + b * ks;
      float* ow = c.soft_w + b * ks;
      if (!t.f.valid) {
        for (int64_t s = 0; s < ks; ++s) oi[s] = 0, ow[s] = 0.0f;
        tok[nacc] = -1;
        break;
      }
      std::vector<float> kv(static_cast<size_t>(ks), 0.0f), tw(static_cast<size_t>(ks), 0.0f);
      std::vector<int64_t> ti(static_cast<size_t>(ks), 0);
      int64_t cnt = 0;
      if (t.f.greedy) {
        kv[0] = 1.0f;
        ti[0] = t.f.argmax;
        cnt = 1;
        tw[0] = 1.0f;
      } else {
        for (int64_t i = 0; i < V; ++i) {
          const float v = to_float(x[i]);
          if (!filter::kept(t.f, v, i)) continue;
          cnt = verify::topk_insert(kv.data(), ti.data(), cnt, ks, v, i);
        }
        for (int64_t s = 0; s < cnt; ++s)
          tw[static_cast<size_t>(s)] = filter::prob(t.f, kv[static_cast<size_t>(s)], ti[static_cast<size_t>(s)]);
      }
      for (int64_t s = cnt; s < ks; ++s) ti[static_cast<size_t>(s)] = ti[0], tw[static_cast<size_t>(s)] = 0.0f;
      int64_t acc = -1;
      for (int64_t k = head[static_cast<size_t>(cur)]; k >= 0; k = next[static_cast<size_t>(k)]) {
        const double tv = verify::soft_tv(ti.data(), tw.data(), ks, c.sids + (b * N + k) * ks,
                                          c.sw + (b * N + k) * ks, ks);
        if (tv <= static_cast<double>(P.delta) + verify::kSoftTvSlack) {
          acc = k;
          break;
        }
      }
      if (acc >= 0) {
        nodes[nacc] = acc;
        tok[nacc] = tok_in[acc];
        ++nacc;
        cur = acc;
        continue;
      }
      for (int64_t s = 0; s < ks; ++s) oi[s] = ti[static_cast<size_t>(s)], ow[s] = tw[static_cast<size_t>(s)];
      tok[nacc] = ti[0];
      break;
    }

    const Target t = target_at(x, V, temp, top_k, top_p, min_p, P.par);
    if (!t.f.valid) {
      tok[nacc] = -1;
      break;
    }
    const uint64_t stream = verify::draw_stream(off, cur);
    const int64_t first = head[static_cast<size_t>(cur)];
    if (P.method == verify::kGreedy || (first < 0 && t.f.greedy)) {
      int64_t acc = -1;
      for (int64_t k = first; k >= 0; k = next[static_cast<size_t>(k)])
        if (tok_in[k] == t.f.argmax) {
          acc = k;
          break;
        }
      if (acc >= 0) {
        nodes[nacc] = acc;
        tok[nacc] = tok_in[acc];
        ++nacc;
        cur = acc;
        continue;
      }
      tok[nacc] = t.f.argmax;
      break;
    }
    int64_t acc = -1;
    bool dense_r = false;  // Rbuf holds the residual
    touched.clear();
    double Z = 1.0;
    if (P.method == verify::kTypical) {
      const double h = entropy_of(x, V, t);
      for (int64_t k = first; k >= 0; k = next[static_cast<size_t>(k)])
        if (verify::accept_typical(p_of(x, t, tok_in[k]), h, P.post_thr, P.post_alpha)) {
          acc = k;
          break;
        }
    } else {
      for (int64_t k = first; k >= 0; k = next[static_cast<size_t>(k)]) {
        if (!(Z > 0.0)) break;  // no residual mass left (rounding): fall back to p below
        const int64_t xk = tok_in[k];
        const int64_t* pid = c.sids ? c.sids + (b * N + k) * ks : nullptr;
        const float* pw = c.sw ? c.sw + (b * N + k) * ks : nullptr;
        auto q_at = [&](int64_t y) -> float {
          if (P.kind == verify::kDense) return static_cast<float>(c.dprobs[b * c.ds0 + k * c.ds1 + y]);
          if (P.kind == verify::kSparse) {
            float q = 0.0f;
            for (int64_t s = 0; s < ks; ++s)
              if (pid[s] == y) q += pw[s];
            return q;
          }
          return y == xk ? 1.0f : 0.0f;
        };
        auto r_at = [&](int64_t y) -> float {
          if (dense_r) return Rbuf[static_cast<size_t>(y)];
          for (const auto& e : touched)
            if (e.first == y) return e.second;
          return p_of(x, t, y);
        };
        const float zf = static_cast<float>(Z);
        const float zq = static_cast<float>(Z * static_cast<double>(q_at(xk)));
        const float u = verify::accept_uniform(seed, off, k - 1);
        if (verify::accept_exact(u, r_at(xk), zq)) {
          acc = k;
          break;
        }
        // rejected: R <- max(0, R - Z q), Z <- its mass
        if (P.kind == verify::kDense) {
          if (!dense_r) {
            Rbuf.resize(static_cast<size_t>(V));
            fill_target(x, V, t, Rbuf.data(), P.par);
            dense_r = true;
          }
          Z = residual_update(Rbuf.data(), c.dprobs + b * c.ds0 + k * c.ds1, zf, V, P.par);
        } else {
          auto update = [&](int64_t y, float qy) {
            const float old = r_at(y);
            const float d = old - static_cast<float>(Z * static_cast<double>(qy));
            const float nw = d > 0.0f ? d : 0.0f;
            bool found = false;
            for (auto& e : touched)
              if (e.first == y) e.second = nw, found = true;
            if (!found) touched.emplace_back(y, nw);
            return static_cast<double>(old) - nw;
          };
          double removed = 0.0;
          if (P.kind == verify::kSparse) {
            for (int64_t s = 0; s < ks; ++s) {
              bool dup = false;
              for (int64_t s2 = 0; s2 < s; ++s2) dup |= pid[s2] == pid[s];
              if (!dup) removed += update(pid[s], q_at(pid[s]));
            }
          } else {
            removed += update(xk, 1.0f);
          }
          Z -= removed;
        }
      }
    }
    if (acc >= 0) {
      nodes[nacc] = acc;
      tok[nacc] = tok_in[acc];
      ++nacc;
      cur = acc;
      continue;
    }
    // every child rejected (or a leaf): draw the correction / bonus from R
    if (t.f.greedy) {
      tok[nacc] = t.f.argmax;
      break;
    }
    Win w;
    if (dense_r) {
      w = race_par(x, static_cast<const float*>(Rbuf.data()), V, t.f, t.inv_z, seed, stream, P.par);
    } else if (!touched.empty()) {
      skip.clear();
      for (const auto& e : touched) skip.push_back(e.first);
      std::sort(skip.begin(), skip.end());
      w = race_par(x, static_cast<const float*>(nullptr), V, t.f, t.inv_z, seed, stream, P.par, skip.data(),
                   static_cast<int64_t>(skip.size()));
      std::sort(touched.begin(), touched.end());
      for (const auto& e : touched)
        if (e.second > 0.0f)
          w.take(verify::race_key(e.second, philox::uniform(seed, stream, static_cast<uint64_t>(e.first))), e.first);
    }
    if (w.idx < 0) w = race_par(x, static_cast<const float*>(nullptr), V, t.f, t.inv_z, seed, stream, P.par);
    tok[nacc] = w.idx >= 0 ? w.idx : t.f.argmax;
    break;
  }
  c.out_nacc[b] = nacc;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> verify_tree_cpu(
    Tensor target_logits, Tensor tree_tokens, Tensor tree_parents, std::optional<Tensor> draft_probs,
    std::optional<Tensor> sparse_ids, std::optional<Tensor> sparse_weights, int64_t method, Tensor temperature,
    Tensor top_k, Tensor top_p, Tensor min_p, double posterior_threshold, double posterior_alpha, double delta,
    Tensor seed, Tensor offset) {
  const verify_tree_checks::TreeArgs a = verify_tree_checks::check_tree_args(
      target_logits, tree_tokens, tree_parents, draft_probs, sparse_ids, sparse_weights, method, temperature, top_k,
      top_p, min_p, seed, offset);
  const int64_t B = a.B, N = a.N, V = a.V;
  Params P;
  P.method = a.method;
  P.kind = a.kind;
  P.V = V;
  P.N = N;
  P.ks = a.ks;
  P.post_thr = static_cast<float>(posterior_threshold);
  P.post_alpha = static_cast<float>(posterior_alpha);
  P.delta = static_cast<float>(delta);
  const int64_t ks_out = P.method == verify::kSoft ? P.ks : 0;
  Tensor nodes = new_empty(target_logits, {B, N}, ScalarType::Long);
  Tensor tokens = new_empty(target_logits, {B, N}, ScalarType::Long);
  Tensor nacc = new_empty(target_logits, {B}, ScalarType::Long);
  Tensor soft_ids = new_empty(target_logits, {B, ks_out}, ScalarType::Long);
  Tensor soft_w = new_empty(target_logits, {B, ks_out}, ScalarType::Float);
  if (B == 0) return {nodes, tokens, nacc, soft_ids, soft_w};

  const int64_t* tt = tree_tokens.const_data_ptr<int64_t>();
  const int64_t* tpar = tree_parents.const_data_ptr<int64_t>();
  const int64_t* sid = P.kind == verify::kSparse ? sparse_ids->const_data_ptr<int64_t>() : nullptr;
  const float* swp = P.kind == verify::kSparse ? sparse_weights->const_data_ptr<float>() : nullptr;
  for (int64_t b = 0; b < B; ++b)
    verify_tree_checks::check_tree_row(b, N, V, tpar + b * N, tt + b * N, sid ? sid + b * N * P.ks : nullptr, P.ks,
                                       P.method == verify::kSoft);
  const float* tp = temperature.const_data_ptr<float>();
  const int64_t* tk = top_k.const_data_ptr<int64_t>();
  const float* tpp = top_p.const_data_ptr<float>();
  const float* mpp = min_p.const_data_ptr<float>();
  draft_checks::check_row_settings(tp, tk, tpp, mpp, B);
  SOFTDEC_DISPATCH_FLOAT(target_logits.scalar_type(), "target_logits", scalar_t, [&] {
    auto run = [&](auto qtag) {
      using Q = decltype(qtag);
      Row<scalar_t, Q> c{};
      c.logits = target_logits.const_data_ptr<scalar_t>();
      c.ls0 = target_logits.stride(0);
      c.ls1 = target_logits.stride(1);
      c.tokens = tt;
      c.parents = tpar;
      c.dprobs = nullptr;
      if (P.kind == verify::kDense) {
        c.dprobs = draft_probs->const_data_ptr<Q>();
        c.ds0 = draft_probs->stride(0);
        c.ds1 = draft_probs->stride(1);
      }
      c.sids = sid;
      c.sw = swp;
      c.temp = tp;
      c.top_p = tpp;
      c.min_p = mpp;
      c.top_k = tk;
      c.seed = seed.const_data_ptr<int64_t>();
      c.offset = offset.const_data_ptr<int64_t>();
      c.out_nodes = nodes.mutable_data_ptr<int64_t>();
      c.out_tokens = tokens.mutable_data_ptr<int64_t>();
      c.out_nacc = nacc.mutable_data_ptr<int64_t>();
      c.soft_ids = ks_out ? soft_ids.mutable_data_ptr<int64_t>() : nullptr;
      c.soft_w = ks_out ? soft_w.mutable_data_ptr<float>() : nullptr;
      if (B == 1) {  // one row: parallel inside the row (race_par) instead of over rows
        Params P1 = P;
        P1.par = true;
        tree_row<scalar_t, Q>(0, c, P1);
      } else {
        torch::stable::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
          for (int64_t b = lo; b < hi; ++b) tree_row<scalar_t, Q>(b, c, P);
        });
      }
    };
    if (P.kind == verify::kDense && draft_probs->scalar_type() == ScalarType::Float) {
      run(float{});
    } else {
      run(scalar_t{});
    }
  });
  return {nodes, tokens, nacc, soft_ids, soft_w};
}

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(verify_tree,
    {"verify_tree", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::verify_tree_cpu)})
