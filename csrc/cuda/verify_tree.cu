// CUDA backend of token-tree verification (softdec.verify_tree): one thread
// block per row walks the tree from the root. At each visited node: a
// block-wide max/argmax pass, the block-wide top-k / top-p filter of
// row_filter.cuh when one is set (skipped by method "greedy"), and a mass pass (16-byte loads, warp-shuffle
// reductions), then the children are tried in index order with the
// recursive-rejection rule of csrc/cpu/verify_tree.cpp (decisions on one
// thread). One-hot and sparse drafts keep the residual as p plus a short list
// of touched entries in shared memory (only the k sparse entries of each
// rejected sibling change); dense drafts materialise the residual in a
// per-row global workspace, updated block-wide after each rejection. The stop
// token is one exponential-race pass (each thread owns whole Philox blocks)
// on the Philox streams of include/softdec/verify.h.
//
// The target's normaliser Z is the exact rule of filter.h ("the kept mass Z,
// exactly": per-thread MassSum digits, an integer block sum in mass_sum.cuh,
// rounded once) and inv_z = filter::inv_norm(Z): bit-identical to the CPU's
// (csrc/cpu/verify_tree.cpp target_at: cpu::fast_row_filter's Z), so p_i =
// fexp((x_i - m) / T) * inv_z has the CPU's bits. The residual masses after a
// rejection: one-hot / sparse drafts update Z on thread 0 in the CPU's order
// (same arithmetic); the dense draft's block-wide R <- max(0, fma(-Z, q, R)) (an
// explicit FMA, as the CPU's residual_update at every level) sums its mass by the
// same exact rule: the CPU's residual and its mass bit for bit.
#include <cuda_fp16.h>

#include "cuda_common.cuh"
#include "verify_common.cuh"
#include "row_filter.cuh"
#include "mass_sum.cuh"
#include "../dispatch.h"
#include "../verify_tree_checks.h"
#include "softdec/filter.h"
#include "softdec/philox.h"
#include "softdec/verify.h"

namespace softdec {
namespace {

using filter::RowFilter;
using vcuda::KI;
using vcuda::block_best;
using vcuda::finish_target_norm;
using vcuda::ki_better;
using vcuda::load4;
using vcuda::to_f;
using vcuda::FilterScratch;
using vcuda::block_row_filter;
using vcuda::block_row_max;
using vcuda::in_sorted;
using vcuda::p_of;
using vcuda::RowMax;
using vcuda::unfiltered_row;
using block_mass::block_mass_sum;
using block_mass::MassRed;

// 256 threads: the tree walk keeps more state live than verify's kernel (255 registers, no spills)
constexpr int kTreeThreads = 256;
constexpr int kTreeWarps = kTreeThreads / 32;

struct TParams {
  int32_t method, kind;
  int64_t V, N, ks, touch_cap;
  float post_thr, post_alpha, delta;
  bool vec_logits, vec_q;
};

enum TAction : int32_t { kTAccept = 0, kTStop = 1, kTRace = 2, kTNext = 3 };

struct TShared {
  RowFilter f;
  float inv_z;
  double entropy;
  double Z;         // residual mass
  int32_t action;
  int64_t acc;      // accepted child
  int64_t cur;      // current node
  int64_t nacc;
  int64_t n_touch;  // touched entries (sorted by id before the race)
  int32_t n_soft;
  bool dense_r;     // the workspace holds the residual
};

template <typename T, typename Q>
__global__ void __launch_bounds__(kTreeThreads) verify_tree_kernel(
    const T* __restrict__ logits, int64_t ls0, int64_t ls1, const int64_t* __restrict__ tree_tokens,
    const int64_t* __restrict__ tree_parents, const Q* __restrict__ dprobs, int64_t ds0, int64_t ds1,
    const int64_t* __restrict__ sids, const float* __restrict__ sw, const float* __restrict__ temps,
    const int64_t* __restrict__ topks, const float* __restrict__ topps, const float* __restrict__ minps,
    const int64_t* __restrict__ seeds, const int64_t* __restrict__ offs, TParams P, float* __restrict__ work,
    int64_t* __restrict__ out_nodes, int64_t* __restrict__ out_tokens, int64_t* __restrict__ nacc_out,
    int64_t* __restrict__ soft_ids, float* __restrict__ soft_w) {
  // dynamic shared memory: touched ids [touch_cap], soft ids [ks], touched values [touch_cap], soft values [ks]
  extern __shared__ int64_t dyn[];
  int64_t* touch_id = dyn;
  int64_t* soft_idx = dyn + P.touch_cap;
  float* touch_val = reinterpret_cast<float*>(soft_idx + P.ks);
  float* soft_val = touch_val + P.touch_cap;
  __shared__ __align__(16) unsigned char sh_raw[sizeof(TShared)];
  TShared& sh = *reinterpret_cast<TShared*>(sh_raw);
  __shared__ KI red_ki[kTreeWarps];
  __shared__ MassRed<kTreeWarps> red_m;       // the target's exact kept mass (mass_sum.cuh)
  // the block-wide top-k / top-p filter's scratch (row_filter.cuh)
  __shared__ FilterScratch<kTreeWarps> fs;

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t V = P.V, N = P.N, ks = P.ks;
  const int64_t* tok_in = tree_tokens + b * N;
  const int64_t* par = tree_parents + b * N;
  int64_t* nodes = out_nodes + b * N;
  int64_t* tok = out_tokens + b * N;
  float* R = work ? work + b * V : nullptr;
  for (int64_t j = tid; j < N; j += kTreeThreads) nodes[j] = -1, tok[j] = -1;
  const uint64_t seed = static_cast<uint64_t>(seeds[b]), off = static_cast<uint64_t>(offs[b]);
  const float temp = temps[b], top_p = topps[b], min_p = minps[b];
  const int64_t top_k0 = topks[b];
  const bool soft = P.method == verify::kSoft;
  const int64_t top_k = soft ? (top_k0 > 0 ? (top_k0 < ks ? top_k0 : ks) : ks) : top_k0;
  const int64_t nblk = (V + 3) / 4;
  if (tid == 0) sh.nacc = 0, sh.cur = 0;
  __syncthreads();

  for (;;) {
    const int64_t cur = sh.cur;
    const T* x = logits + b * ls0 + cur * ls1;
    // ---- pass 1: validity, max, argmax
    const RowMax rm = block_row_max<kTreeWarps>(x, V, P.vec_logits, red_ki);
    const KI mx = rm.mx;
    const bool row_ok = rm.ok;
    const bool topk_on = top_k > 0 && top_k < V, topp_on = top_p < 1.0f;
    // greedy verification needs the argmax only: no filter, no mass pass
    const bool argmax_only = P.method == verify::kGreedy;
    const bool filtered = row_ok && temp > 0.0f && !argmax_only && (topk_on || topp_on);
    // block-wide cut (all threads); `final_norm`: log_norm already set (candidate rule)
    const bool final_norm = filtered && block_row_filter<kTreeWarps>(x, V, P.vec_logits, temp, top_k, top_p,
                                                                     min_p, mx.k, mx.i, fs);
    if (tid == 0) sh.f = filtered ? fs.f() : unfiltered_row(rm, temp, min_p, argmax_only, V);
    __syncthreads();
    // ---- pass 2: mass (and entropy) over the kept set. Z by the exact rule (MassSum digits per
    // thread, integer block sum): the CPU's fast_row_filter Z bit for bit, inv_z = inv_norm(Z).
    // The entropy's float64 sum: tolerance only.
    const bool want_h = P.method == verify::kTypical;
    if (sh.f.valid && !sh.f.greedy) {
      const RowFilter f = sh.f;
      filter::MassSum z;
      double hs = 0.0;
      for (int64_t blk = tid; blk < nblk; blk += kTreeThreads) {
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
      const filter::MassSum tot = block_mass_sum<kTreeWarps>(z, hs, red_m);
      if (tid == 0) finish_target_norm(tot, hs, final_norm, sh.f, sh.inv_z, sh.entropy);
    } else if (tid == 0) {
      sh.inv_z = 1.0f;
      sh.entropy = 0.0;
    }
    if (tid == 0) {
      sh.n_soft = 0;
      sh.n_touch = 0;
      sh.Z = 1.0;
      sh.dense_r = false;
      sh.acc = -1;
    }
    __syncthreads();
    // ---- soft: collect the kept set (at most ks tokens)
    if (soft && sh.f.valid && !sh.f.greedy) {
      const RowFilter f = sh.f;
      for (int64_t blk = tid; blk < nblk; blk += kTreeThreads) {
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
    // ---- decisions that need no residual (invalid, soft, greedy, typical, greedy target)
    if (tid == 0) {
      const RowFilter& f = sh.f;
      sh.action = kTRace;
      if (!f.valid) {
        tok[sh.nacc] = -1;
        if (soft)
          for (int64_t c = 0; c < ks; ++c) soft_ids[b * ks + c] = 0, soft_w[b * ks + c] = 0.0f;
        sh.action = kTStop;
      } else if (soft) {
        int64_t cnt;
        if (f.greedy) {
          soft_idx[0] = f.argmax;
          soft_val[0] = 1.0f;
          cnt = 1;
        } else {
          cnt = sh.n_soft < ks ? sh.n_soft : ks;
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
        for (int64_t c = cnt; c < ks; ++c) soft_idx[c] = soft_idx[0], soft_val[c] = 0.0f;
        for (int64_t k = cur + 1; k < N; ++k) {
          if (par[k] != cur) continue;
          const double tv = verify::soft_tv(soft_idx, soft_val, ks, sids + (b * N + k) * ks, sw + (b * N + k) * ks, ks);
          if (tv <= static_cast<double>(P.delta) + verify::kSoftTvSlack) {
            sh.acc = k;
            break;
          }
        }
        if (sh.acc >= 0) {
          sh.action = kTAccept;
        } else {
          for (int64_t c = 0; c < ks; ++c) soft_ids[b * ks + c] = soft_idx[c], soft_w[b * ks + c] = soft_val[c];
          tok[sh.nacc] = soft_idx[0];
          sh.action = kTStop;
        }
      } else if (P.method == verify::kGreedy || P.method == verify::kTypical) {
        for (int64_t k = cur + 1; k < N && sh.acc < 0; ++k) {
          if (par[k] != cur) continue;
          int64_t xk = tok_in[k];
          xk = xk < 0 ? 0 : (xk >= V ? V - 1 : xk);
          const bool ok = P.method == verify::kGreedy
                              ? xk == f.argmax
                              : verify::accept_typical(p_of(x, f, sh.inv_z, xk), sh.entropy, P.post_thr, P.post_alpha);
          if (ok) sh.acc = k;
        }
        if (sh.acc >= 0) {
          sh.action = kTAccept;
        } else if (P.method == verify::kGreedy || f.greedy) {
          tok[sh.nacc] = f.argmax;
          sh.action = kTStop;
        }
      }
    }
    __syncthreads();
    // ---- exact: the children in order, with the residual
    if (sh.action == kTRace && P.method == verify::kExact) {
      for (int64_t k = cur + 1; k < N; ++k) {
        if (par[k] != cur) continue;
        if (tid == 0) {
          sh.action = kTNext;
          const RowFilter& f = sh.f;
          const float inv_z = sh.inv_z;
          const double Z = sh.Z;
          if (!(Z > 0.0)) {
            sh.action = kTRace;  // residual gone (rounding): stop trying
          } else {
            int64_t xk = tok_in[k];
            xk = xk < 0 ? 0 : (xk >= V ? V - 1 : xk);  // the host checked; never read out of range
            const int64_t* pid = sids ? sids + (b * N + k) * ks : nullptr;
            const float* pw = sw ? sw + (b * N + k) * ks : nullptr;
            auto q_at = [&](int64_t y) -> float {
              if (P.kind == verify::kDense) return to_f(dprobs + b * ds0 + k * ds1, y);
              if (P.kind == verify::kSparse) {
                float q = 0.0f;
                for (int64_t s = 0; s < ks; ++s)
                  if (pid[s] == y) q += pw[s];
                return q;
              }
              return y == xk ? 1.0f : 0.0f;
            };
            auto r_at = [&](int64_t y) -> float {
              if (sh.dense_r) return R[y];
              for (int64_t t = 0; t < sh.n_touch; ++t)
                if (touch_id[t] == y) return touch_val[t];
              return p_of(x, f, inv_z, y);
            };
            const float zq = static_cast<float>(Z * static_cast<double>(q_at(xk)));
            const float u = verify::accept_uniform(seed, off, k - 1);
            if (verify::accept_exact(u, r_at(xk), zq)) {
              sh.acc = k;
              sh.action = kTAccept;
            } else if (P.kind != verify::kDense) {
              double removed = 0.0;
              const int64_t nsp = P.kind == verify::kOneHot ? 1 : ks;
              for (int64_t c = 0; c < nsp; ++c) {
                const int64_t y = P.kind == verify::kOneHot ? xk : pid[c];
                bool dup = false;
                for (int64_t t = 0; t < c && !dup; ++t) dup = pid[t] == y;
                if (dup) continue;
                const float old = r_at(y);
                const float d = old - static_cast<float>(Z * static_cast<double>(q_at(y)));
                const float nw = d > 0.0f ? d : 0.0f;
                int64_t t = 0;
                while (t < sh.n_touch && touch_id[t] != y) ++t;
                if (t == sh.n_touch && t < P.touch_cap) {
                  touch_id[t] = y;
                  sh.n_touch = t + 1;
                }
                if (t < P.touch_cap) touch_val[t] = nw;
                removed += static_cast<double>(old) - nw;
              }
              sh.Z = Z - removed;
            }
          }
        }
        __syncthreads();
        const int32_t act = sh.action;
        __syncthreads();  // every thread has read it before thread 0 writes the next child's
        if (act != kTNext) break;
        if (P.kind == verify::kDense) {
          // R <- max(0, R - Z q_k) block-wide (R = p before the first rejection); Z <- its mass
          const RowFilter f = sh.f;
          const float inv_z = sh.inv_z;
          const float zf = static_cast<float>(sh.Z);
          const bool first = !sh.dense_r;
          const Q* q = dprobs + b * ds0 + k * ds1;
          // one rounding (explicit FMA, as the CPU's residual_update at every level); the new mass
          // by the exact rule (MassSum digits, integer block sum): the CPU's Z bit for bit
          filter::MassSum zs;
          for (int64_t i = tid; i < V; i += kTreeThreads) {
            const float r0 = first ? p_of(x, f, inv_z, i) : R[i];
            const float d = __fmaf_rn(-zf, to_f(q, i), r0);
            const float r = d > 0.0f ? d : 0.0f;
            R[i] = r;
            zs.add(r);
          }
          zs = block_mass::block_mass_sum<kTreeWarps>(zs, red_m);
          if (tid == 0) {
            sh.Z = zs.value();
            sh.dense_r = true;
          }
          __syncthreads();
        }
      }
      if (tid == 0 && sh.action == kTNext) sh.action = kTRace;
      if (tid == 0 && sh.action == kTRace && sh.f.greedy) {
        tok[sh.nacc] = sh.f.argmax;
        sh.action = kTStop;
      }
      if (tid == 0 && sh.action == kTRace) {  // sort the touched ids for the race's exclusion test
        const int64_t n = sh.n_touch;
        for (int64_t s = 1; s < n; ++s) {
          const int64_t id = touch_id[s];
          const float v = touch_val[s];
          int64_t t = s;
          while (t > 0 && touch_id[t - 1] > id) {
            touch_id[t] = touch_id[t - 1];
            touch_val[t] = touch_val[t - 1];
            --t;
          }
          touch_id[t] = id;
          touch_val[t] = v;
        }
      }
    }
    __syncthreads();
    const int32_t action = sh.action;
    if (action == kTAccept) {
      if (tid == 0) {
        const int64_t k = sh.acc;
        nodes[sh.nacc] = k;
        tok[sh.nacc] = tok_in[k];
        sh.nacc += 1;
        sh.cur = k;
      }
      __syncthreads();
      continue;
    }
    if (action == kTStop) break;
    // ---- the race over the residual (dense workspace, or p minus the touched entries)
    const RowFilter f = sh.f;
    const float inv_z = sh.inv_z;
    const uint64_t stream = verify::draw_stream(off, cur);
    const bool use_r = sh.dense_r;
    const int64_t nt = sh.n_touch;
    auto race = [&](bool with_r, int64_t nex) -> KI {
      KI mine{0.0f, -1};
      for (int64_t blk = tid; blk < nblk; blk += kTreeThreads) {
        float v[4];
        load4(x, blk, V, P.vec_logits, -filter::inf_f(), v);
        const philox::U32x4 bits = philox::block(seed, stream, static_cast<uint64_t>(blk));
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t i = 4 * blk + e;
          if (i >= V) continue;
          float r;
          if (with_r) {
            r = R[i];
          } else {
            if (!filter::kept(f, v[e], i)) continue;
            r = filter::fexp((v[e] - f.max_logit) * f.inv_temp) * inv_z;
          }
          if (!(r > 0.0f)) continue;
          const KI cand{verify::race_key(r, philox::to_unit_float(bits.v[e])), i};
          if (!ki_better(cand, mine)) continue;
          if (nex > 0 && in_sorted(touch_id, nex, i)) continue;
          mine = cand;
        }
      }
      return block_best<kTreeWarps>(mine, red_ki);
    };
    KI win = race(use_r, use_r ? 0 : nt);
    if (tid == 0) {
      if (!use_r)
        for (int64_t t = 0; t < nt; ++t) {
          const float r = touch_val[t];
          if (r > 0.0f) {
            const KI cand{verify::race_key(r, philox::uniform(seed, stream, static_cast<uint64_t>(touch_id[t]))),
                          touch_id[t]};
            if (ki_better(cand, win)) win = cand;
          }
        }
      red_ki[0] = win;
    }
    __syncthreads();
    win = red_ki[0];
    __syncthreads();
    if (win.i < 0) win = race(false, 0);  // residual zero through rounding: race over p
    if (tid == 0) tok[sh.nacc] = win.i >= 0 ? win.i : f.argmax;
    break;
  }
  if (tid == 0) nacc_out[b] = sh.nacc;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> verify_tree_cuda(
    Tensor target_logits, Tensor tree_tokens, Tensor tree_parents, std::optional<Tensor> draft_probs,
    std::optional<Tensor> sparse_ids, std::optional<Tensor> sparse_weights, int64_t method, Tensor temperature,
    Tensor top_k, Tensor top_p, Tensor min_p, double posterior_threshold, double posterior_alpha, double delta,
    Tensor seed, Tensor offset) {
  const verify_tree_checks::TreeArgs a = verify_tree_checks::check_tree_args(
      target_logits, tree_tokens, tree_parents, draft_probs, sparse_ids, sparse_weights, method, temperature, top_k,
      top_p, min_p, seed, offset);
  const int64_t B = a.B, N = a.N, V = a.V;
  TParams P{};
  P.method = a.method;
  P.kind = a.kind;
  P.V = V;
  P.N = N;
  P.ks = a.ks;
  P.post_thr = static_cast<float>(posterior_threshold);
  P.post_alpha = static_cast<float>(posterior_alpha);
  P.delta = static_cast<float>(delta);
  // touched residual entries: every rejected sibling of one node adds at most its k ids (1 when one-hot)
  P.touch_cap = a.kind == verify::kDense ? 0 : (N > 1 ? N - 1 : 1) * (a.ks > 0 ? a.ks : 1);
  const size_t smem = static_cast<size_t>(P.touch_cap + P.ks) * (sizeof(int64_t) + sizeof(float));

  torch::stable::accelerator::DeviceGuard guard(target_logits.get_device_index());
  const int64_t ks_out = P.method == verify::kSoft ? P.ks : 0;
  Tensor nodes = new_empty(target_logits, {B, N}, ScalarType::Long);
  Tensor tokens = new_empty(target_logits, {B, N}, ScalarType::Long);
  Tensor nacc = new_empty(target_logits, {B}, ScalarType::Long);
  Tensor soft_ids = new_empty(target_logits, {B, ks_out}, ScalarType::Long);
  Tensor soft_w = new_empty(target_logits, {B, ks_out}, ScalarType::Float);
  if (B == 0) return {nodes, tokens, nacc, soft_ids, soft_w};
  const bool dense = a.kind == verify::kDense && a.method == verify::kExact;
  Tensor work = new_empty(target_logits, {dense ? B : 0, dense ? V : 0}, ScalarType::Float);
  cudaStream_t stream = current_stream(target_logits);
  const int64_t ls0 = target_logits.stride(0), ls1 = target_logits.stride(1);
  const int64_t elem = target_logits.element_size();
  P.vec_logits = (reinterpret_cast<uintptr_t>(target_logits.data_ptr()) % 16 == 0) && ((ls0 * elem) % 16 == 0) &&
                 ((ls1 * elem) % 16 == 0);
  SOFTDEC_DISPATCH_FLOAT(target_logits.scalar_type(), "target_logits", scalar_t, [&] {
    auto launch = [&](auto qtag) {
      using Q = decltype(qtag);
      const Q* dp = nullptr;
      int64_t ds0 = 0, ds1 = 0;
      if (P.kind == verify::kDense) {
        dp = draft_probs->const_data_ptr<Q>();
        ds0 = draft_probs->stride(0);
        ds1 = draft_probs->stride(1);
      }
      // dynamic + static shared memory (the filter scratch) within the default 48 KB
      cudaFuncAttributes fa{};
      SOFTDEC_CUDA_CHECK(cudaFuncGetAttributes(&fa, verify_tree_kernel<scalar_t, Q>));
      SOFTDEC_CHECK(smem + fa.sharedSizeBytes <= 48 * 1024, "verify_tree on CUDA: (nodes - 1) x the sparse draft's k (",
                    P.touch_cap, ") plus k is too large for shared memory; at most about 3000 in total");
      verify_tree_kernel<scalar_t, Q><<<static_cast<unsigned>(B), kTreeThreads, smem, stream>>>(
          target_logits.const_data_ptr<scalar_t>(), ls0, ls1, tree_tokens.const_data_ptr<int64_t>(),
          tree_parents.const_data_ptr<int64_t>(), dp, ds0, ds1,
          P.kind == verify::kSparse ? sparse_ids->const_data_ptr<int64_t>() : nullptr,
          P.kind == verify::kSparse ? sparse_weights->const_data_ptr<float>() : nullptr,
          temperature.const_data_ptr<float>(), top_k.const_data_ptr<int64_t>(), top_p.const_data_ptr<float>(),
          min_p.const_data_ptr<float>(), seed.const_data_ptr<int64_t>(), offset.const_data_ptr<int64_t>(), P,
          dense ? work.mutable_data_ptr<float>() : nullptr, nodes.mutable_data_ptr<int64_t>(),
          tokens.mutable_data_ptr<int64_t>(), nacc.mutable_data_ptr<int64_t>(),
          ks_out ? soft_ids.mutable_data_ptr<int64_t>() : nullptr, ks_out ? soft_w.mutable_data_ptr<float>() : nullptr);
      SOFTDEC_CUDA_LAUNCH_CHECK();
    };
    if (P.kind == verify::kDense && draft_probs->scalar_type() == ScalarType::Float) {
      launch(float{});
    } else {
      launch(scalar_t{});
    }
  });
  return {nodes, tokens, nacc, soft_ids, soft_w};
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("verify_tree", TORCH_BOX(&softdec::verify_tree_cuda));
}
