// CUDA backend of speculative verification (softdec.verify): one thread block
// per row walks the drafted positions in order and stops at the first
// rejection. Per position: a block-wide max/argmax pass and a mass pass
// (16-byte loads, warp-shuffle reductions), the acceptance decision on one
// thread, and at the stop position one exponential-race pass in which each
// thread owns whole Philox blocks (4 vocabulary entries per Philox call).
// The RNG layout and the acceptance rules are those of include/softdec/verify.h.
// The normaliser Z of the filtered target is the exact rule of filter.h ("the kept
// mass Z, exactly": per-thread MassSum digits, an integer block sum in mass_sum.cuh,
// rounded once), and p_i = fexp((x_i - m) / T) * inv_norm(Z) in float, as in
// csrc/cpu/verify.cpp target_at / p_of: the same Z, the same inv_z and the same p_i
// bits as the CPU on every path (plain / min-p, candidate rule, radix cut), hence the
// same accept / reject decisions and race winners (method "exact"). The entropy of
// method "typical" (a float64 sum in the block's order) is a tolerance-level quantity.
//
// Filtering with top-k or top-p is block-wide (row_filter.cuh: the CPU's
// candidate rule for k <= 1024, a block radix selection otherwise); method
// "greedy" needs only the argmax and skips the filter and the mass pass.
//
// Method "soft" with filter_top_k (fk; 0 = the whole vocabulary): the target's soft
// token is soft_mixture's chain, as on the CPU (csrc/cpu/verify.cpp
// soft_filtered_target): the cap = max(ks, fk) (whole: ks) first finite tokens of the
// filter order by a block count selection + gather + bitonic sort (row_filter.cuh
// block_top_candidates), the whole-vocabulary mass sum e^{(l - max) / T} when fk = 0
// (a block pass, float exponentials, summed by the exact rule: the CPU's value), then
// soft::finalize_row -- the very function the CPU calls -- on thread 0 over the <= cap
// sorted candidates (O(cap), cap <= 1024; never a pass over the vocabulary).
#include <cuda_fp16.h>

#include "cuda_common.cuh"
#include "verify_common.cuh"
#include "row_filter.cuh"
#include "mass_sum.cuh"
#include "../dispatch.h"
#include "../verify_checks.h"
#include "softdec/filter.h"
#include "softdec/philox.h"
#include "softdec/soft_mixture.h"
#include "softdec/verify.h"

namespace softdec {
namespace {

using filter::RowFilter;

// kThreads / kWarps, the loads (Tag, to_f, load4), the block reductions (KI, ki_better,
// block_best), the unfiltered RowFilter (RowMax, unfiltered_row), p_of and
// in_sorted are shared with verify_tree.cu.
using namespace vcuda;  // NOLINT
using block_mass::block_mass_sum;
using block_mass::MassRed;

// ------------------------------------------------------------------ kernel

struct Params {
  int32_t method, kind;
  int64_t V, K, ks, nb_m, excl_cap;
  int64_t fcap;  // filter_top_k given: candidates per row (max(ks, soft::kMaxTopK)), else 0
  float post_thr, post_alpha, delta;
  bool vec_logits, vec_q;
};

enum Action : int32_t { kAccept = 0, kStop = 1, kRace = 2 };

struct Shared {
  RowFilter f;
  float inv_z;
  double entropy;
  int32_t action;
  int64_t n_excl;
  int32_t n_soft;
  int32_t n_fc;        // filter_top_k: sorted candidates in fc_v / fc_i
  double vocab_mass;   // filter_top_k = 0: sum e^{(l - max) / T} over the finite logits (exact rule)
  int64_t nacc;
  bool use_q;  // residual against the dense q
};

__device__ __forceinline__ void sort_unique(int64_t* a, int64_t& n) {
  for (int64_t s = 1; s < n; ++s) {  // insertion sort (small lists)
    const int64_t v = a[s];
    int64_t t = s;
    while (t > 0 && a[t - 1] > v) {
      a[t] = a[t - 1];
      --t;
    }
    a[t] = v;
  }
  int64_t w = 0;
  for (int64_t s = 0; s < n; ++s)
    if (w == 0 || a[w - 1] != a[s]) a[w++] = a[s];
  n = w;
}

// Thread 0's soft_mixture chain of method "soft" with filter_top_k: soft::finalize_row (the
// CPU's function) on the n sorted candidates, writing ks ids / weights (padding: the top id,
// weight 0). Not inlined: its registers stay out of the kernel's block-wide passes (inlined,
// the float32 kernel spilled at 128 registers).
__device__ __noinline__ int soft_chain(const float* cand_v, const int64_t* cand_i, int n, int ks, float temp,
                                       int64_t top_k, int64_t fk, float top_p, float min_p, double vocab_mass,
                                       int64_t* ids, float* w, float* noisy) {
  soft::RowParams rp{};
  rp.temperature = static_cast<double>(temp);
  rp.top_k = top_k;
  rp.filter_top_k = fk;
  rp.top_p = static_cast<double>(top_p);
  rp.min_p = static_cast<double>(min_p);
  rp.noise = soft::kNoNoise;
  rp.vocab_mass = vocab_mass;
  return soft::finalize_row<float>(cand_v, cand_i, n, ks, rp, ids, w, noisy);
}

template <typename T, typename Q>
__global__ void __launch_bounds__(kThreads) verify_kernel(
    const T* __restrict__ logits, int64_t ls0, int64_t ls1, const int64_t* __restrict__ draft,
    const int64_t* __restrict__ num_draft, const Q* __restrict__ dprobs, int64_t ds0, int64_t ds1,
    const int64_t* __restrict__ sids, const float* __restrict__ sw, const int64_t* __restrict__ nbrs,
    const int64_t* __restrict__ ftk,
    const float* __restrict__ temps, const int64_t* __restrict__ topks, const float* __restrict__ topps,
    const float* __restrict__ minps, const int64_t* __restrict__ seeds, const int64_t* __restrict__ offs,
    Params P, int64_t* __restrict__ tokens, int64_t* __restrict__ nacc_out, int64_t* __restrict__ soft_ids,
    float* __restrict__ soft_w) {
  // dynamic: int64 exclusion list [excl_cap], soft ids [ks], filter_top_k candidate ids
  // [fcap]; then float soft values [ks], candidate values [fcap], finalize_row's noisy [ks]
  extern __shared__ int64_t dyn[];
  int64_t* excl = dyn;
  int64_t* soft_idx = dyn + P.excl_cap;      // [ks]
  int64_t* fc_i = soft_idx + P.ks;           // [fcap]
  float* soft_val = reinterpret_cast<float*>(fc_i + P.fcap);  // [ks]
  float* fc_v = soft_val + P.ks;             // [fcap]
  float* fc_noisy = fc_v + P.fcap;           // [ks] (finalize_row's noise output: unused)
  // raw storage: RowFilter has default member initialisers, which __shared__ cannot run
  __shared__ __align__(16) unsigned char sh_raw[sizeof(Shared)];
  Shared& sh = *reinterpret_cast<Shared*>(sh_raw);
  __shared__ KI red_ki[kWarps];
  __shared__ MassRed<kWarps> red_m;  // exact kept-mass sums (mass_sum.cuh)
  // the block-wide top-k / top-p filter's scratch (row_filter.cuh)
  __shared__ FilterScratch<kWarps> fs;

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t V = P.V, K = P.K, ks = P.ks;
  int64_t* tok = tokens + b * (K + 1);
  for (int64_t j = tid; j <= K; j += kThreads) tok[j] = -1;
  int64_t n = num_draft[b];
  n = n < 0 ? 0 : (n > K ? K : n);
  const uint64_t seed = static_cast<uint64_t>(seeds[b]), off = static_cast<uint64_t>(offs[b]);
  const float temp = temps[b], top_p = topps[b], min_p = minps[b];
  const int64_t top_k0 = topks[b];
  const int64_t nblk = (V + 3) / 4;
  if (tid == 0) sh.nacc = 0;
  __syncthreads();

  for (int64_t j = 0; j <= n; ++j) {
    const T* x = logits + b * ls0 + j * ls1;
    const bool bonus = j == n;
    const bool soft = P.method == verify::kSoft;
    const int64_t top_k = soft ? (top_k0 > 0 ? (top_k0 < ks ? top_k0 : ks) : ks) : top_k0;
    // method "soft" with filter_top_k: soft_mixture's chain (see the top of the file)
    const bool fsoft = soft && ftk != nullptr;
    // ---- pass 1: validity, max, argmax. The loop of vcuda::block_row_max (verify_tree's), written
    // out: through that function, even force-inlined, this kernel took 2-3 more registers on
    // sm_90a (124 -> 126 half / bf16, 119 -> 122 float; nvcc 13), verify_tree_kernel 2 fewer.
    KI best{-filter::inf_f(), -1};
    bool nan = false;
    for (int64_t blk = tid; blk < nblk; blk += kThreads) {
      float v[4];
      load4(x, blk, V, P.vec_logits, -filter::inf_f(), v);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (v[e] != v[e]) nan = true;
        else if (v[e] > best.k) best = KI{v[e], 4 * blk + e};
      }
    }
    nan = __syncthreads_or(nan);
    const KI mx = block_best(best, red_ki);
    const bool topk_on = top_k > 0 && top_k < V, topp_on = top_p < 1.0f;
    const bool row_ok = !nan && mx.i >= 0 && mx.k != filter::inf_f();
    const RowMax rm{mx, row_ok};  // for unfiltered_row
    // greedy verification needs the argmax only: no filter, no mass pass
    const bool argmax_only = P.method == verify::kGreedy;
    const bool filtered = row_ok && temp > 0.0f && !argmax_only && !fsoft && (topk_on || topp_on);
    // block-wide cut (all threads); `final_norm`: log_norm already set (candidate rule)
    const bool final_norm =
        filtered && block_row_filter<kWarps>(x, V, P.vec_logits, temp, top_k, top_p, min_p, mx.k, mx.i, fs);
    if (tid == 0) sh.f = filtered ? fs.f() : unfiltered_row(rm, temp, min_p, argmax_only, V);
    __syncthreads();
    if (fsoft && row_ok) {
      // The cap first finite tokens of the order; the wrapper checked fk (0, >= V, or in
      // [top_k, kMaxTopK]); the clamps only keep a bad value inside the buffers.
      int64_t fk = ftk[b];
      if (fk < 0 || fk >= V) fk = 0;
      const bool whole = fk == 0;
      if (fk > soft::kMaxTopK) fk = soft::kMaxTopK;
      const int64_t cap = whole || fk < ks ? ks : fk;  // <= fcap <= kFilterCand (host check)
      if (temp > 0.0f) {
        const int nc = block_top_candidates<kWarps>(x, V, P.vec_logits, cap, fs);
        for (int c = tid; c < nc; c += kThreads) {
          const int64_t i = key_index(fs.cand[c]);
          fc_i[c] = i;
          fc_v[c] = to_f(x, i);  // the logit itself (the key folds -0 into +0)
        }
        if (tid == 0) sh.n_fc = nc;
        if (whole) {
          // the CPU's mass_range(...).z.value(): fexp((l - max) * t) in float over the finite
          // logits, summed by the exact rule (MassSum digits, integer block sum): its bits
          const float it = soft::inv_temperature<float>(static_cast<double>(temp));
          filter::MassSum z;
          for (int64_t blk = tid; blk < nblk; blk += kThreads) {
            float v[4];
            load4(x, blk, V, P.vec_logits, -filter::inf_f(), v);
#pragma unroll
            for (int e = 0; e < 4; ++e)
              if (v[e] > -filter::inf_f()) z.add(filter::fexp((v[e] - mx.k) * it));
          }
          const filter::MassSum tot = block_mass_sum<kWarps>(z, red_m);
          if (tid == 0) sh.vocab_mass = tot.value();
        } else if (tid == 0) {
          sh.vocab_mass = 0.0;
        }
      } else if (tid == 0) {  // T = 0: finalize_row's one-hot argmax needs the top token only
        fc_i[0] = mx.i;
        fc_v[0] = mx.k;
        sh.n_fc = 1;
        sh.vocab_mass = 0.0;
      }
      __syncthreads();
    }
    // ---- pass 2: mass (and entropy) over the kept set. Z by the exact rule: every thread adds
    // the MassSum digits of its kept masses, the block adds them as integers (mass_sum.cuh), so
    // Z is the CPU's (target_at: mass_range / compute_row_filter / finish_from_sorted) bit for
    // bit, and inv_z = filter::inv_norm(Z) too. The entropy's float64 sum: tolerance only.
    const bool want_h = P.method == verify::kTypical;
    if (!fsoft && sh.f.valid && !sh.f.greedy) {
      const RowFilter f = sh.f;
      filter::MassSum z;
      double hs = 0.0;
      for (int64_t blk = tid; blk < nblk; blk += kThreads) {
        float v[4];
        load4(x, blk, V, P.vec_logits, -filter::inf_f(), v);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (!filter::kept(f, v[e], 4 * blk + e)) continue;
          const float sc = (v[e] - f.max_logit) * f.inv_temp;
          const float m = filter::fexp(sc);
          z.add(m);
          if (want_h && m > 0.0f) hs += static_cast<double>(m) * sc;
        }
      }
      const filter::MassSum tot = block_mass_sum<kWarps>(z, hs, red_m);
      if (tid == 0) finish_target_norm(tot, hs, final_norm, sh.f, sh.inv_z, sh.entropy);
    } else if (tid == 0) {
      sh.inv_z = 1.0f;
      sh.entropy = 0.0;
    }
    if (soft && tid == 0) sh.n_soft = 0;
    __syncthreads();
    // ---- soft: collect the kept set (at most ks tokens)
    if (soft && !fsoft && sh.f.valid && !sh.f.greedy) {
      const RowFilter f = sh.f;
      for (int64_t blk = tid; blk < nblk; blk += kThreads) {
        float v[4];
        load4(x, blk, V, P.vec_logits, -filter::inf_f(), v);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (!filter::kept(f, v[e], 4 * blk + e)) continue;
          const int s = atomicAdd(&sh.n_soft, 1);
          if (s < ks) {
            soft_idx[s] = 4 * blk + e;
            soft_val[s] = v[e];
          }
        }
      }
    }
    __syncthreads();
    // ---- decision (one thread)
    if (tid == 0) {
      const RowFilter& f = sh.f;
      sh.action = kStop;
      sh.n_excl = 0;
      sh.use_q = false;
      if (fsoft && f.valid) {
        // soft_mixture's chain on the sorted candidates: ks entries (padding: the top id,
        // weight 0), exactly the CPU's soft_filtered_target
        int64_t fk = ftk[b];
        if (fk < 0 || fk >= V) fk = 0;
        if (fk > soft::kMaxTopK) fk = soft::kMaxTopK;
        const int kept = soft_chain(fc_v, fc_i, sh.n_fc, static_cast<int>(ks), temp, top_k, fk, top_p, min_p,
                                    sh.vocab_mass, soft_idx, soft_val, fc_noisy);
        for (int64_t c = kept > 1 ? kept : 1; c < ks; ++c) {
          soft_idx[c] = soft_idx[0];
          soft_val[c] = 0.0f;
        }
      }
      if (!f.valid) {
        tok[j] = -1;
        if (soft) {
          for (int64_t c = 0; c < ks; ++c) soft_ids[b * ks + c] = 0, soft_w[b * ks + c] = 0.0f;
        }
      } else if (soft) {
        int64_t cnt = ks;
        if (fsoft) {
          // soft_idx / soft_val hold the ks entries (above)
        } else if (f.greedy) {
          soft_idx[0] = f.argmax;
          soft_val[0] = 1.0f;
          cnt = 1;
        } else {
          cnt = sh.n_soft < ks ? sh.n_soft : ks;
          // order: value descending, lower index first; then weights
          for (int64_t s = 1; s < cnt; ++s) {
            const float v = soft_val[s];
            const int64_t i = soft_idx[s];
            int64_t t = s;
            while (t > 0 && filter::before(v, i, soft_val[t - 1], soft_idx[t - 1])) {
              soft_val[t] = soft_val[t - 1];
              soft_idx[t] = soft_idx[t - 1];
              --t;
            }
            soft_val[t] = v;
            soft_idx[t] = i;
          }
          for (int64_t c = 0; c < cnt; ++c) soft_val[c] = filter::prob(f, soft_val[c], soft_idx[c]);
        }
        for (int64_t c = cnt; c < ks; ++c) {
          soft_idx[c] = soft_idx[0];
          soft_val[c] = 0.0f;
        }
        bool acc = false;
        if (!bonus) {
          const double tv = verify::soft_tv(soft_idx, soft_val, ks, sids + (b * K + j) * ks,
                                            sw + (b * K + j) * ks, ks);
          acc = tv <= static_cast<double>(P.delta) + verify::kSoftTvSlack;
        }
        if (acc) {
          tok[j] = draft[b * K + j];
          sh.nacc += 1;
          sh.action = kAccept;
        } else {
          for (int64_t c = 0; c < ks; ++c) soft_ids[b * ks + c] = soft_idx[c], soft_w[b * ks + c] = soft_val[c];
          tok[j] = soft_idx[0];
        }
      } else if (bonus || P.method == verify::kGreedy) {
        const int64_t xj = bonus ? -1 : draft[b * K + j];
        if (!bonus && xj == f.argmax) {
          tok[j] = xj;
          sh.nacc += 1;
          sh.action = kAccept;
        } else if (P.method == verify::kGreedy || f.greedy) {
          tok[j] = f.argmax;
        } else {
          sh.action = kRace;
        }
      } else {
        int64_t xj = draft[b * K + j];
        xj = xj < 0 ? 0 : (xj >= V ? V - 1 : xj);  // the host checked; never read out of range
        const float px = p_of(x, f, sh.inv_z, xj);
        const int64_t* pid = sids ? sids + (b * K + j) * ks : nullptr;
        const float* pw = sw ? sw + (b * K + j) * ks : nullptr;
        float qx = 1.0f;
        if (P.kind == verify::kDense) {
          qx = static_cast<float>(to_f(dprobs + b * ds0 + j * ds1, xj));
        } else if (P.kind == verify::kSparse) {
          qx = 0.0f;
          for (int64_t c = 0; c < ks; ++c)
            if (pid[c] == xj) qx += pw[c];
        }
        bool acc;
        int64_t ne = 0;
        if (P.method == verify::kTypical) {
          acc = verify::accept_typical(px, sh.entropy, P.post_thr, P.post_alpha);
        } else {
          float extra = 0.0f;
          if (P.method == verify::kRelaxed) {
            // A(x) goes to excl[0 .. ne); x itself is "seen" first
            const int64_t* nb = nbrs + xj * P.nb_m;
            for (int64_t c = 0; c < P.nb_m; ++c) {
              const int64_t y = nb[c];
              if (y < 0 || y >= V || y == xj) continue;
              bool seen = false;
              for (int64_t t = 0; t < ne && !seen; ++t) seen = excl[t] == y;
              if (seen) continue;
              const float py = p_of(x, f, sh.inv_z, y);
              if (!(extra + py <= P.delta)) break;
              extra += py;
              excl[ne++] = y;
            }
          }
          acc = verify::accept_exact(verify::accept_uniform(seed, off, j), px + extra, qx);
        }
        if (acc) {
          tok[j] = xj;
          sh.nacc += 1;
          sh.action = kAccept;
        } else if (f.greedy) {
          tok[j] = f.argmax;
        } else {
          if (P.method == verify::kTypical) {
            ne = 0;
          } else if (P.kind == verify::kDense) {
            sh.use_q = true;
          } else if (P.kind == verify::kOneHot) {
            excl[ne++] = xj;
          } else {
            for (int64_t c = 0; c < ks; ++c) excl[ne++] = pid[c];
          }
          sort_unique(excl, ne);
          sh.n_excl = ne;
          sh.action = kRace;
        }
      }
    }
    __syncthreads();
    const int32_t action = sh.action;
    if (action == kAccept) continue;
    if (action == kStop) break;
    // ---- the race: residual (or p) over the vocabulary, every thread owns Philox blocks
    const RowFilter f = sh.f;
    const float inv_z = sh.inv_z;
    const uint64_t stream = verify::draw_stream(off, j);
    const Q* q = sh.use_q ? dprobs + b * ds0 + j * ds1 : nullptr;
    const int64_t ne = sh.n_excl;
    // Block-wide race over kept tokens; residual against q when given; tokens
    // in the sorted exclusion list excl[0, ne) are skipped.
    auto race = [&](const Q* qrow, int64_t nex) -> KI {
      KI mine{0.0f, -1};
      for (int64_t blk = tid; blk < nblk; blk += kThreads) {
        float v[4], qq[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        load4(x, blk, V, P.vec_logits, -filter::inf_f(), v);
        if (qrow != nullptr) load4(qrow, blk, V, P.vec_q, 0.0f, qq);
        const philox::U32x4 bits = philox::block(seed, stream, static_cast<uint64_t>(blk));
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t i = 4 * blk + e;
          if (!filter::kept(f, v[e], i)) continue;
          float r = filter::fexp((v[e] - f.max_logit) * f.inv_temp) * inv_z;
          if (qrow != nullptr) r = fmaxf(r - qq[e], 0.0f);
          if (!(r > 0.0f)) continue;
          const KI cand{verify::race_key(r, philox::to_unit_float(bits.v[e])), i};
          if (!ki_better(cand, mine)) continue;
          if (nex > 0 && in_sorted(excl, nex, i)) continue;
          mine = cand;
        }
      }
      return block_best(mine, red_ki);
    };
    KI win = race(q, ne);
    if (tid == 0) {
      if (ne > 0 && P.kind != verify::kDense && P.method != verify::kTypical) {
        // the draft's own entries (one-hot x, sparse ids) outside A(x), with their residual
        const int64_t* pid = sids ? sids + (b * K + j) * ks : nullptr;
        const float* pw = sw ? sw + (b * K + j) * ks : nullptr;
        const int64_t xj = draft[b * K + j];
        const int64_t nsp = P.kind == verify::kOneHot ? 1 : ks;
        for (int64_t c = 0; c < nsp; ++c) {
          const int64_t s = P.kind == verify::kOneHot ? xj : pid[c];
          bool dup = false;
          for (int64_t t = 0; t < c && !dup; ++t) dup = pid[t] == s;
          if (dup) continue;
          bool in_a = false;
          if (P.method == verify::kRelaxed) {  // A(x) membership, the decision's rule
            const int64_t* nb = nbrs + xj * P.nb_m;
            float extra = 0.0f;
            for (int64_t t = 0; t < P.nb_m && !in_a; ++t) {
              const int64_t y = nb[t];
              if (y < 0 || y >= V || y == xj) continue;
              bool seen = false;
              for (int64_t u = 0; u < t && !seen; ++u) seen = nb[u] == y;
              if (seen) continue;
              const float py = p_of(x, f, inv_z, y);
              if (!(extra + py <= P.delta)) break;
              extra += py;
              in_a = y == s;
            }
          }
          if (in_a) continue;
          float qs = 1.0f;
          if (P.kind == verify::kSparse) {
            qs = 0.0f;
            for (int64_t t = 0; t < ks; ++t)
              if (pid[t] == s) qs += pw[t];
          }
          const float r = fmaxf(p_of(x, f, inv_z, s) - qs, 0.0f);
          if (r > 0.0f) {
            const KI cand{verify::race_key(r, philox::uniform(seed, stream, static_cast<uint64_t>(s))), s};
            if (ki_better(cand, win)) win = cand;
          }
        }
      }
      red_ki[0] = win;
    }
    __syncthreads();
    win = red_ki[0];
    __syncthreads();
    if (win.i < 0) win = race(nullptr, 0);  // residual zero through rounding: race over p
    if (tid == 0) tok[j] = win.i >= 0 ? win.i : f.argmax;
    break;
  }
  if (tid == 0) nacc_out[b] = sh.nacc;
}

// ------------------------------------------------------------------ entry point

std::tuple<Tensor, Tensor, Tensor, Tensor> verify_cuda(
    Tensor target_logits, Tensor draft_ids, Tensor num_draft, std::optional<Tensor> draft_probs,
    std::optional<Tensor> sparse_ids, std::optional<Tensor> sparse_weights,
    std::optional<Tensor> neighbours, int64_t method, Tensor temperature, Tensor top_k, Tensor top_p,
    Tensor min_p, double posterior_threshold, double posterior_alpha, double delta, Tensor seed,
    Tensor offset, std::optional<Tensor> filter_top_k) {
  const verify_checks::VerifyArgs a = verify_checks::check_verify_args(
      target_logits, draft_ids, num_draft, draft_probs, sparse_ids, sparse_weights, neighbours, method,
      temperature, top_k, top_p, min_p, seed, offset, filter_top_k);
  const int64_t B = a.B, K1 = a.K1;
  Params P{};
  verify_checks::pack_params(P, a, posterior_threshold, posterior_alpha, delta);
  // exclusion list: A(x) (<= m) plus the draft's own entries (<= k, or 1)
  P.excl_cap = P.nb_m + (P.ks > 0 ? P.ks : 1) + 1;
  // filter_top_k (method "soft"): the candidates of a row are the max(ks, fk) best, fk <= kMaxTopK
  // (the per-row values were checked by the wrapper; reading them here would synchronise)
  if (filter_top_k.has_value()) {
    SOFTDEC_CHECK(P.ks <= vcuda::kFilterCand, "filter_top_k on CUDA needs the sparse draft's k (the soft token "
                  "width) <= ", vcuda::kFilterCand, ", got ", P.ks);
    P.fcap = P.ks > soft::kMaxTopK ? P.ks : soft::kMaxTopK;
  }
  const size_t smem = static_cast<size_t>(P.excl_cap + P.ks + P.fcap) * sizeof(int64_t) +
                      static_cast<size_t>(2 * P.ks + P.fcap) * sizeof(float);

  torch::stable::accelerator::DeviceGuard guard(target_logits.get_device_index());
  const int64_t ks_out = P.method == verify::kSoft ? P.ks : 0;
  Tensor tokens = new_empty(target_logits, {B, K1}, ScalarType::Long);
  Tensor nacc = new_empty(target_logits, {B}, ScalarType::Long);
  Tensor soft_ids = new_empty(target_logits, {B, ks_out}, ScalarType::Long);
  Tensor soft_w = new_empty(target_logits, {B, ks_out}, ScalarType::Float);
  if (B == 0) return {tokens, nacc, soft_ids, soft_w};
  cudaStream_t stream = current_stream(target_logits);
  const int64_t ls0 = target_logits.stride(0), ls1 = target_logits.stride(1);
  const int64_t elem = target_logits.element_size();
  P.vec_logits = (reinterpret_cast<uintptr_t>(target_logits.data_ptr()) % 16 == 0) &&
                 ((ls0 * elem) % 16 == 0) && ((ls1 * elem) % 16 == 0);
  SOFTDEC_DISPATCH_FLOAT(target_logits.scalar_type(), "target_logits", scalar_t, [&] {
    auto launch = [&](auto qtag) {
      using Q = decltype(qtag);
      const Q* dp = nullptr;
      int64_t ds0 = 0, ds1 = 0;
      if (P.kind == verify::kDense) {
        dp = draft_probs->const_data_ptr<Q>();
        ds0 = draft_probs->stride(0);
        ds1 = draft_probs->stride(1);
        const int64_t qe = draft_probs->element_size();
        P.vec_q = (reinterpret_cast<uintptr_t>(dp) % 16 == 0) && ((ds0 * qe) % 16 == 0) && ((ds1 * qe) % 16 == 0);
      }
      // dynamic + static shared memory (the filter scratch) within the default 48 KB
      cudaFuncAttributes fa{};
      SOFTDEC_CUDA_CHECK(cudaFuncGetAttributes(&fa, verify_kernel<scalar_t, Q>));
      SOFTDEC_CHECK(smem + fa.sharedSizeBytes <= 48 * 1024,
                    "neighbours width plus the sparse draft's k is too large for the CUDA kernel (", P.nb_m, " + ",
                    P.ks, "); at most about 4500 in total");
      verify_kernel<scalar_t, Q><<<static_cast<unsigned>(B), kThreads, smem, stream>>>(
          target_logits.const_data_ptr<scalar_t>(), ls0, ls1, draft_ids.const_data_ptr<int64_t>(),
          num_draft.const_data_ptr<int64_t>(), dp, ds0, ds1,
          P.kind == verify::kSparse ? sparse_ids->const_data_ptr<int64_t>() : nullptr,
          P.kind == verify::kSparse ? sparse_weights->const_data_ptr<float>() : nullptr,
          P.method == verify::kRelaxed ? neighbours->const_data_ptr<int64_t>() : nullptr,
          filter_top_k.has_value() ? filter_top_k->const_data_ptr<int64_t>() : nullptr,
          temperature.const_data_ptr<float>(), top_k.const_data_ptr<int64_t>(), top_p.const_data_ptr<float>(),
          min_p.const_data_ptr<float>(), seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(), P,
          tokens.mutable_data_ptr<int64_t>(), nacc.mutable_data_ptr<int64_t>(),
          ks_out ? soft_ids.mutable_data_ptr<int64_t>() : nullptr,
          ks_out ? soft_w.mutable_data_ptr<float>() : nullptr);
      SOFTDEC_CUDA_LAUNCH_CHECK();
    };
    if (P.kind == verify::kDense && draft_probs->scalar_type() == ScalarType::Float) {
      launch(float{});
    } else {
      launch(scalar_t{});
    }
  });
  return {tokens, nacc, soft_ids, soft_w};
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("verify", TORCH_BOX(&softdec::verify_cuda));
}
