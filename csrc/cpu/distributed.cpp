// CPU helpers of softdec.distributed (python/softdec/distributed.py): the
// pieces of softdec.sample's inverse-CDF draw (csrc/cpu/sampling_kernels.h)
// that a rank computes on its vocabulary shard, so that plain and min-p rows
// are drawn on shards with the single-device op's id exactly.
//
// The single-device draw sums the kept draw masses in global 1024-token blocks
// (block b = tokens [1024 b, 1024 b + 1024) of the full row; 16 float lanes in
// token order, added in double), adds the block sums in double in block order,
// and walks the blocks, then the tokens of one block. Every block sum depends
// on that block's tokens only, so a rank computes the sums of the blocks that
// lie entirely in its shard (shard_block_masses), the ranks exchange them, every
// rank finds the block and what is left of the target (block_draw_target, the
// same double arithmetic as draw_from_blocks), and the rank holding that block
// picks the token in it (shard_block_pick). Blocks split between shards are
// assembled from the ranks' boundary tokens by the caller and go through the
// same two kernels as a one-block shard.
#include "capability.h"
#include "../common.h"
#include "../dispatch.h"
#include "softdec/filter.h"
#include "softdec/philox.h"
#include "softdec/verify.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../distributed_checks.h"
#include "sampling_kernels.h"

namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

using namespace cpu;  // NOLINT: the shared passes of sampling_kernels.h

// The blocks of [0, V) lying entirely in the shard [offset, offset + n): [b_lo, b_hi).
std::pair<int64_t, int64_t> inner_blocks(int64_t offset, int64_t n, int64_t V) {
  const int64_t end = offset + n;
  const int64_t b_lo = (offset + kCdfBlock - 1) / kCdfBlock;
  // the last block of the row ends at V (it may be shorter than kCdfBlock)
  const int64_t b_hi = end == V ? (V + kCdfBlock - 1) / kCdfBlock : end / kCdfBlock;
  return {b_lo, std::max(b_lo, b_hi)};
}

using distributed_checks::check_shard_args;  // shared with csrc/cuda/distributed.cu

// The cut of a plain / min-p row of softdec.sample (sample_cpu's RowPlan -> Cut::of).
Cut row_cut(float m, float t, float min_p) {
  Cut c(1.0f / t);
  c.m = m;
  c.lmp = filter::log_min_p_of(min_p);
  return c;
}

// Per-row cut of the draw's kept set beyond the min-p bound: (cut_value, cut_index) of a
// top-p / large-k row (the global index of the cut token; ties at cut_value are kept up to
// it), or none (plain / min-p rows).
struct RowCuts {
  const float* cv = nullptr;
  const int64_t* ci = nullptr;
  Cut at(int64_t r, float m, float t, float min_p) const {
    Cut c = row_cut(m, t, min_p);
    if (cv) {
      c.cv = cv[r];
      c.ci = ci[r];
    }
    return c;
  }
};

using distributed_checks::check_cut_args;  // shared with the CUDA entry points

// Sums of the kept draw masses of the blocks lying entirely in the shard:
// float64 (rows, b_hi - b_lo), column j = block b_lo + j.
Tensor block_masses(const Tensor& logits, int64_t offset, int64_t V, const Tensor& m, const Tensor& t,
                    const Tensor& mp, RowCuts cuts) {
  const int64_t R = logits.size(0), n = logits.size(1);
  const auto [b_lo, b_hi] = inner_blocks(offset, n, V);
  const int64_t nb = b_hi - b_lo;
  Tensor out = new_empty(logits, {R, nb}, ScalarType::Double);
  if (R == 0 || nb == 0) return out;
  const float* mm = m.const_data_ptr<float>();
  const float* tt = t.const_data_ptr<float>();
  const float* pp = mp.const_data_ptr<float>();
  for (int64_t r = 0; r < R; ++r)
    SOFTDEC_CHECK(tt[r] > 0.0f && tt[r] < kInf, "temperature must be finite and > 0, got ", tt[r], " at row ", r);
  double* o = out.mutable_data_ptr<double>();
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    // 16 blocks (64 KiB of float logits) per task
    torch::stable::parallel_for(0, R * nb, 16, [&](int64_t b, int64_t e) {
      for (int64_t w = b; w < e; ++w) {
        const int64_t r = w / nb, j = w % nb;
        const int64_t b0 = (b_lo + j) * kCdfBlock, len = std::min(kCdfBlock, V - b0);
        const Cut cut = cuts.at(r, mm[r], tt[r], pp[r]);
        // mass_pass's indices are relative to the pointer: shift the cut index with it
        Cut local = cut;
        if (local.cv > -kInf) local.ci = cut.ci == std::numeric_limits<int64_t>::max() ? cut.ci : cut.ci - b0;
        mass_pass(x + r * rs + (b0 - offset), 0, len, local, o + w);
      }
    });
  });
  return out;
}

Tensor shard_block_masses_cpu(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor mp) {
  check_shard_args(logits, offset, V, m, t, mp);
  return block_masses(logits, offset, V, m, t, mp, RowCuts{});
}

// The same with a per-row cut (top-p / large-k rows; cut_index global).
Tensor shard_cut_block_masses_cpu(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor mp,
                                  Tensor cv, Tensor ci) {
  check_shard_args(logits, offset, V, m, t, mp);
  check_cut_args(logits, cv, ci);
  return block_masses(logits, offset, V, m, t, mp, RowCuts{cv.const_data_ptr<float>(), ci.const_data_ptr<int64_t>()});
}

// The token drawn in block `block[r]` with `target[r]` left of the draw's target
// (block_draw_target): its global id if that block lies entirely in the shard, else -1.
Tensor block_pick(const Tensor& logits, int64_t offset, int64_t V, const Tensor& m, const Tensor& t,
                  const Tensor& mp, const Tensor& block, const Tensor& target, RowCuts cuts) {
  const int64_t R = logits.size(0), n = logits.size(1);
  check_per_row(block, "block", R, ScalarType::Long, logits, "logits");
  check_per_row(target, "target", R, ScalarType::Double, logits, "logits");
  const auto [b_lo, b_hi] = inner_blocks(offset, n, V);
  Tensor out = new_empty(logits, {R}, ScalarType::Long);
  if (R == 0) return out;
  const float* mm = m.const_data_ptr<float>();
  const float* tt = t.const_data_ptr<float>();
  const float* pp = mp.const_data_ptr<float>();
  const int64_t* bb = block.const_data_ptr<int64_t>();
  const double* tg = target.const_data_ptr<double>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    torch::stable::parallel_for(0, R, 4, [&](int64_t b, int64_t e) {
      alignas(64) float mass[kCdfBlock];
      for (int64_t r = b; r < e; ++r) {
        o[r] = -1;
        if (bb[r] < b_lo || bb[r] >= b_hi || !(tt[r] > 0.0f)) continue;
        const int64_t b0 = bb[r] * kCdfBlock, len = std::min(kCdfBlock, V - b0);
        const Cut cut = cuts.at(r, mm[r], tt[r], pp[r]);
        draw_masses(x + r * rs + (b0 - offset), b0, len, cut, mass);
        const int64_t j = pick_in(mass, len, tg[r]);
        o[r] = j < 0 ? -1 : b0 + j;
      }
    });
  });
  return out;
}

Tensor shard_block_pick_cpu(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor mp,
                            Tensor block, Tensor target) {
  check_shard_args(logits, offset, V, m, t, mp);
  return block_pick(logits, offset, V, m, t, mp, block, target, RowCuts{});
}

Tensor shard_cut_block_pick_cpu(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor mp,
                                Tensor cv, Tensor ci, Tensor block, Tensor target) {
  check_shard_args(logits, offset, V, m, t, mp);
  check_cut_args(logits, cv, ci);
  return block_pick(logits, offset, V, m, t, mp, block, target,
                    RowCuts{cv.const_data_ptr<float>(), ci.const_data_ptr<int64_t>()});
}

// draw_from_blocks' walk over the block sums blk (rows, nb) of whole rows, with
// u = philox::uniform53(seed, offset): (the chosen block, -1 if the row has no
// mass; what is left of the target inside it).
std::tuple<Tensor, Tensor> block_draw_target_cpu(Tensor blk, Tensor seed, Tensor offset) {
  check_dim(blk, "blk", 2, "(rows, blocks)");
  check_dtype(blk, "blk", ScalarType::Double);
  check_contiguous(blk, "blk");
  const int64_t R = blk.size(0), nb = blk.size(1);
  check_per_row(seed, "seed", R, ScalarType::Long, blk, "blk");
  check_per_row(offset, "offset", R, ScalarType::Long, blk, "blk");
  Tensor block = new_empty(blk, {R}, ScalarType::Long);
  Tensor target = new_empty(blk, {R}, ScalarType::Double);
  const double* s = blk.const_data_ptr<double>();
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const int64_t* of = offset.const_data_ptr<int64_t>();
  int64_t* ob = block.mutable_data_ptr<int64_t>();
  double* ot = target.mutable_data_ptr<double>();
  for (int64_t r = 0; r < R; ++r) {
    const double* row = s + r * nb;
    double total = 0.0;
    for (int64_t b = 0; b < nb; ++b) total += row[b];
    ob[r] = -1;
    ot[r] = 0.0;
    if (!(total > 0.0)) continue;
    double tg = philox::uniform53(static_cast<uint64_t>(sd[r]), static_cast<uint64_t>(of[r])) * total;
    const int64_t b = pick_in(row, nb, tg);
    if (b < 0) continue;
    double before = 0.0;
    for (int64_t j = 0; j < b; ++j) before += row[j];
    ob[r] = b;
    ot[r] = tg - before;
  }
  return {block, target};
}

// ------------------------------------------------------------------ the top-p / top-k cut on shards
// softdec.sample's O(V) cuts (top_p_cut, filter::detail::generic_cut) find the first token
// of the filter order (logit descending, lower id first) at which the running count, or
// the running fixed-point mass (filter.h: q_i = to_fixed(fexp((x_i - m) / T), mass_shift(V,
// 1)), uint64 sums, exact in any order), reaches a target. Integer histograms merge across
// shards by a sum, so the ranks run the same radix selection on order_key (4 rounds of 8
// bits): each rank counts its own tokens (shard_radix_hist) with the row's global max, 1/T
// and V, the histograms are summed (all_reduce), every rank picks the same bucket; the tie
// index at the selected value comes from the ranks' tie counts (shard_nth_tie).

constexpr int64_t kRadix = 256;
constexpr int64_t kHistChunk = 16384;  // tokens per task

// Histograms of the shard's finite tokens inside the prefix (x > cut_value, or x ==
// cut_value at a global id <= cut_index) whose order_key agrees with prefix[r] on the bits
// above `shift` + 8: bucket (key >> shift) & 255. int64 (rows, 512): the fixed-point
// masses (columns 0..255) and the counts (256..511).
Tensor shard_radix_hist_cpu(Tensor logits, int64_t offset, int64_t V, Tensor m, Tensor t, Tensor cv, Tensor ci,
                            Tensor prefix, int64_t shift) {
  const Tensor mp = m;  // (unused: no min-p in the cut) -- check_shard_args wants a float row
  check_shard_args(logits, offset, V, m, t, mp);
  check_cut_args(logits, cv, ci);
  const int64_t R = logits.size(0), n = logits.size(1);
  distributed_checks::check_hist_args(logits, prefix, shift);
  Tensor out = new_empty(logits, {R, 2 * kRadix}, ScalarType::Long);
  if (R == 0) return out;
  const float* mm = m.const_data_ptr<float>();
  const float* tt = t.const_data_ptr<float>();
  const float* cvp = cv.const_data_ptr<float>();
  const int64_t* cip = ci.const_data_ptr<int64_t>();
  const int64_t* pre = prefix.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    SOFTDEC_CHECK(tt[r] > 0.0f && tt[r] < kInf, "temperature must be finite and > 0, got ", tt[r], " at row ", r);
    SOFTDEC_CHECK(pre[r] >= 0 && pre[r] <= 0xffffffffLL, "prefix must hold a 32-bit key, got ", pre[r], " at row ",
                  r);
  }
  const int64_t nch = std::max<int64_t>(1, (n + kHistChunk - 1) / kHistChunk);
  std::vector<int64_t> part(static_cast<size_t>(R * nch * 2 * kRadix), 0);
  const uint32_t mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    torch::stable::parallel_for(0, R * nch, 1, [&](int64_t b, int64_t e) {
      for (int64_t w = b; w < e; ++w) {
        const int64_t r = w / nch, c = w % nch;
        const int64_t lo = c * kHistChunk, hi = std::min(n, lo + kHistChunk);
        const scalar_t* xr = x + r * rs;
        const float mx = mm[r], it = 1.0f / tt[r], cvr = cvp[r];
        const int64_t cir = cip[r];
        const int sh = filter::mass_shift(V, static_cast<double>(filter::token_mass(mx, mx, it)));
        const uint32_t want = static_cast<uint32_t>(pre[r]) & mask;
        uint64_t* hm = reinterpret_cast<uint64_t*>(part.data() + w * 2 * kRadix);
        int64_t* hc = part.data() + w * 2 * kRadix + kRadix;
        // one token under the prefix: v its logit, e its mass (float), gi its global id
        auto add = [&](float v, float e, int64_t gi) {
          if (!filter::detail::in_prefix(v, gi, cvr, cir)) return;
          const int bk = static_cast<int>((filter::order_key(v) >> shift) & 0xffu);
          hm[bk] += filter::to_fixed(static_cast<double>(e), sh);
          hc[bk] += 1;
        };
        int64_t i = lo;
#if SOFTDEC_SIMD_AVX512
        // 16 tokens a step: keys and the prefix test in vectors, masses (vexp: filter::fexp's
        // bits) for the steps with a token under the prefix, the histogram adds per token
        const __m512 vm = _mm512_set1_ps(mx), vit = _mm512_set1_ps(it), vninf = _mm512_set1_ps(-kInf);
        const __m512i vmask = _mm512_set1_epi32(static_cast<int>(mask)), vwant = _mm512_set1_epi32(static_cast<int>(want));
        const __m512i vtop = _mm512_set1_epi32(static_cast<int>(0x80000000u)), vones = _mm512_set1_epi32(-1);
        const __m512d vscale = _mm512_set1_pd(filter::pow2_d(sh));
        // four copies of the histograms (lane l adds to copy l % 4): fewer dependent
        // read-modify-writes of one bucket in a row; summed below (integers: exact)
        uint64_t qm[4][kRadix] = {};
        int64_t qc[4][kRadix] = {};
        alignas(64) uint32_t bks[16];
        alignas(64) uint64_t qs[16];
        for (; i < hi; i += 16) {
          const int64_t left = hi - i;
          const __mmask16 lm = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
          const __m512 xv = left >= 16 ? load16<scalar_t>(xr + i) : load16_mask<scalar_t>(xr + i, lm);
          const __mmask16 fin = _mm512_mask_cmp_ps_mask(lm, xv, vninf, _CMP_GT_OQ);
          if (!fin) continue;
          // order_key: x + 0 (-0 -> +0), negative: ~bits, else bits | 2^31
          const __m512i u = _mm512_castps_si512(_mm512_add_ps(xv, _mm512_setzero_ps()));
          const __mmask16 neg = _mm512_cmplt_epi32_mask(u, _mm512_setzero_si512());
          const __m512i key = _mm512_mask_xor_epi32(_mm512_or_si512(u, vtop), neg, u, vones);
          __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(fin, _mm512_and_si512(key, vmask), vwant);
          if (hit && cvr > -kInf) hit &= above_cut(xv, cvr, cir, offset + i);
          if (!hit) continue;
          // masses (vexp: filter::fexp's bits), then filter::to_fixed: e * 2^sh in double, truncated
          const __m512 ev = vexp(_mm512_mul_ps(_mm512_sub_ps(xv, vm), vit));
          const __m512d e0 = _mm512_cvtps_pd(_mm512_castps512_ps256(ev));
          const __m512d e1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(ev), 1)));
          _mm512_store_si512(qs, _mm512_cvttpd_epu64(_mm512_mul_pd(e0, vscale)));
          _mm512_store_si512(qs + 8, _mm512_cvttpd_epu64(_mm512_mul_pd(e1, vscale)));
          _mm512_store_si512(bks, _mm512_and_si512(_mm512_srli_epi32(key, static_cast<unsigned>(shift)),
                                                   _mm512_set1_epi32(0xff)));
          while (hit) {
            const int l = __builtin_ctz(hit);
            hit &= static_cast<__mmask16>(hit - 1);
            qm[l & 3][bks[l]] += qs[l];
            qc[l & 3][bks[l]] += 1;
          }
        }
        for (int q = 0; q < 4; ++q)
          for (int64_t bk = 0; bk < kRadix; ++bk) {
            hm[bk] += qm[q][bk];
            hc[bk] += qc[q][bk];
          }
#endif
        for (; i < hi; ++i) {
          const float v = to_float(xr[i]);
          if (!(v > -kInf) || (filter::order_key(v) & mask) != want) continue;
          add(v, filter::token_mass(v, mx, it), offset + i);
        }
      }
    });
  });
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    uint64_t* om = reinterpret_cast<uint64_t*>(o + r * 2 * kRadix);
    int64_t* oc = o + r * 2 * kRadix + kRadix;
    for (int64_t b = 0; b < kRadix; ++b) {
      om[b] = 0;
      oc[b] = 0;
    }
    for (int64_t c = 0; c < nch; ++c) {
      const int64_t* p = part.data() + (r * nch + c) * 2 * kRadix;
      for (int64_t b = 0; b < kRadix; ++b) {
        om[b] += static_cast<uint64_t>(p[b]);
        oc[b] += p[kRadix + b];
      }
    }
  }
  return out;
}

// The global id of the n[r]-th (1-based, id order) finite token of the shard equal to
// value[r] inside the prefix (cut_value, cut_index); -1 if n[r] < 1 or the shard holds
// fewer such tokens.
Tensor shard_nth_tie_cpu(Tensor logits, int64_t offset, Tensor value, Tensor cv, Tensor ci, Tensor nth) {
  distributed_checks::check_tie_args(logits, offset, value, cv, ci, nth);
  const int64_t R = logits.size(0), n = logits.size(1);
  Tensor out = new_empty(logits, {R}, ScalarType::Long);
  if (R == 0) return out;
  const float* vp = value.const_data_ptr<float>();
  const float* cvp = cv.const_data_ptr<float>();
  const int64_t* cip = ci.const_data_ptr<int64_t>();
  const int64_t* np = nth.const_data_ptr<int64_t>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    torch::stable::parallel_for(0, R, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        o[r] = -1;
        if (np[r] < 1) continue;
        const float val = vp[r];
        int64_t seen = 0;
        for (int64_t i = 0; i < n; ++i) {
          const float v = to_float(x[r * rs + i]);
          if (v > -kInf && v == val && filter::detail::in_prefix(v, offset + i, cvp[r], cip[r]) && ++seen == np[r]) {
            o[r] = offset + i;
            break;
          }
        }
      }
    });
  });
  return out;
}

// ------------------------------------------------------------------ verify(method="exact") on shards
// The filtered target of a position: kept(i) = filter::kept with (max_logit, 1/T, min-p, the
// cut), p_i = fexp((x_i - m) / T) * inv_z in float (verify.cpp p_of), inv_z = filter::inv_norm(Z)
// with Z the kept masses' sum by the exact rule (filter.h MassSum: integer digit sums, exact in
// any split), the rule every single-device path uses: each rank sums its own tokens' digits
// (shard_kept_mass), one all_reduce adds the ranks' sums, then each rank races its own tokens as
// verify.cpp's race_range does (shard_verify_race: key = p_i / -flog(u_i), u_i element i of the
// (seed, stream) stream; larger key wins, lower id on ties).

RowFilter position_filter(float m, float t, float min_p, float cv, int64_t ci) {
  RowFilter f;
  f.valid = 1;
  f.max_logit = m;
  f.inv_temp = 1.0f / t;
  f.cut_value = cv;
  f.cut_index = ci;
  f.log_min_p = filter::log_min_p_of(min_p);
  return f;
}

void check_position_args(const Tensor& logits, int64_t offset, const Tensor& m, const Tensor& t, const Tensor& mp,
                         const Tensor& cv, const Tensor& ci) {
  distributed_checks::check_position_args(logits, offset, m, t, mp, cv, ci);  // shapes (shared with CUDA)
  const int64_t R = logits.size(0);
  const float* tt = t.const_data_ptr<float>();
  for (int64_t r = 0; r < R; ++r)
    SOFTDEC_CHECK(tt[r] > 0.0f && tt[r] < kInf, "temperature must be finite and > 0, got ", tt[r], " at row ", r);
}

// The digit sums (int64 [R, 3], filter::MassSum) of the shard's kept masses, and the mass
// (float) of token want[r]: 0 if not kept, -1 if the shard does not hold it. Per row, the
// kept-mass pass of fast_row_filter (cpu::kept_mass: masses, kept test, MassLanes digits).
std::tuple<Tensor, Tensor> shard_kept_mass_cpu(Tensor logits, int64_t offset, Tensor m, Tensor t, Tensor mp,
                                               Tensor cv, Tensor ci, Tensor want) {
  check_position_args(logits, offset, m, t, mp, cv, ci);
  const int64_t R = logits.size(0), n = logits.size(1);
  distributed_checks::check_kept_mass_args(logits, want);
  Tensor out = new_empty(logits, {R, 3}, ScalarType::Long);
  Tensor ew = new_empty(logits, {R}, ScalarType::Float);
  if (R == 0) return {out, ew};
  const float* mm = m.const_data_ptr<float>();
  const float* tt = t.const_data_ptr<float>();
  const float* pp = mp.const_data_ptr<float>();
  const float* cvp = cv.const_data_ptr<float>();
  const int64_t* cip = ci.const_data_ptr<int64_t>();
  const int64_t* wp = want.const_data_ptr<int64_t>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  float* oe = ew.mutable_data_ptr<float>();
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    torch::stable::parallel_for(0, R, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const RowFilter f = position_filter(mm[r], tt[r], pp[r], cvp[r], cip[r]);
        const scalar_t* xr = x + r * rs;
        int64_t kept_count = 0;
        const filter::MassSum z = kept_mass(xr, 0, n, f, &kept_count, offset);  // fast_row_filter's pass
        for (int k = 0; k < 3; ++k) o[3 * r + k] = static_cast<int64_t>(z.d[k]);
        const int64_t w = wp[r] - offset;
        oe[r] = -1.0f;
        if (w >= 0 && w < n) {
          const float v = to_float(xr[w]);
          oe[r] = filter::kept(f, v, wp[r]) ? filter::token_mass(v, f.max_logit, f.inv_temp) : 0.0f;
        }
      }
    });
  });
  return {out, ew};
}

// The shard's race winner of each position: (key, global id; -1 and key 0 when no kept token
// of the shard has p > 0), skipping token skip[r] (the one-hot draft's own residual is 0;
// -1: none), and p of token skip[r] (-1 when the shard does not hold it).
std::tuple<Tensor, Tensor, Tensor> shard_verify_race_cpu(Tensor logits, int64_t offset, Tensor m, Tensor t, Tensor mp,
                                                         Tensor cv, Tensor ci, Tensor inv_z, Tensor seed,
                                                         Tensor stream, Tensor skip) {
  check_position_args(logits, offset, m, t, mp, cv, ci);
  const int64_t R = logits.size(0), n = logits.size(1);
  distributed_checks::check_race_args(logits, inv_z, seed, stream, skip);
  Tensor key = new_empty(logits, {R}, ScalarType::Float);
  Tensor id = new_empty(logits, {R}, ScalarType::Long);
  Tensor psk = new_empty(logits, {R}, ScalarType::Float);
  if (R == 0) return {key, id, psk};
  const float* mm = m.const_data_ptr<float>();
  const float* tt = t.const_data_ptr<float>();
  const float* pp = mp.const_data_ptr<float>();
  const float* cvp = cv.const_data_ptr<float>();
  const int64_t* cip = ci.const_data_ptr<int64_t>();
  const float* iz = inv_z.const_data_ptr<float>();
  const int64_t* sd = seed.const_data_ptr<int64_t>();
  const int64_t* sm = stream.const_data_ptr<int64_t>();
  const int64_t* sk = skip.const_data_ptr<int64_t>();
  float* ok = key.mutable_data_ptr<float>();
  int64_t* oi = id.mutable_data_ptr<int64_t>();
  float* op = psk.mutable_data_ptr<float>();
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    torch::stable::parallel_for(0, R, 1, [&](int64_t b, int64_t e) {
      alignas(64) float ms[kGroup], u[kGroup];
      for (int64_t r = b; r < e; ++r) {
        const RowFilter f = position_filter(mm[r], tt[r], pp[r], cvp[r], cip[r]);
        const scalar_t* xr = x + r * rs;
        float bk = 0.0f;
        int64_t bi = -1;
        op[r] = -1.0f;
        // 64-token groups of the stream (philox_chunk: elements [g0, g0 + 64)); a group's
        // uniforms are drawn only when one of its tokens has p > 0
        for (int64_t g0 = offset / kGroup * kGroup; g0 < offset + n; g0 += kGroup) {
          const int64_t a = std::max(g0, offset), z = std::min(g0 + kGroup, offset + n);
          masses(xr + (a - offset), z - a, f.max_logit, f.inv_temp, ms);  // ms[i - a]: filter::fexp's bits
          bool any = false;
          for (int64_t i = a; i < z; ++i) {
            const float v = to_float(xr[i - offset]);
            const float p = filter::kept(f, v, i) ? ms[i - a] * iz[r] : 0.0f;
            ms[i - a] = p;
            if (i == sk[r]) {
              op[r] = p;
              ms[i - a] = 0.0f;  // not in the race
            }
            any |= ms[i - a] > 0.0f;
          }
          if (!any) continue;
          philox_chunk(static_cast<uint64_t>(sd[r]), static_cast<uint64_t>(sm[r]), static_cast<uint64_t>(g0 / 4), u);
          for (int64_t i = a; i < z; ++i) {
            const float p = ms[i - a];
            if (!(p > 0.0f)) continue;
            const float k = verify::race_key(p, u[i - g0]);
            if (bi < 0 || verify::race_better(k, i, bk, bi)) {
              bk = k;
              bi = i;
            }
          }
        }
        ok[r] = bi < 0 ? 0.0f : bk;
        oi[r] = bi;
      }
    });
  });
  return {key, id, psk};
}

// ------------------------------------------------------------------ shard partials and their merge

constexpr double kNoId = 4611686018427387904.0;  // 2^62: id of an empty candidate slot (sorts last)
constexpr int64_t kHead = 8;                      // header columns (python/softdec/distributed.py _HEAD)

// Partials of each row of a shard at global offset `offset` (python _local_stats, no
// temperature): float64 (rows, 8 + 2c) = (any NaN, any +inf, any > -inf, max, its global
// id (lowest among ties), 0, 0, 0, the shard's first c tokens in the filter order -- logit
// descending, lower id first -- listed in id order: c values (-inf padding), c global ids
// (2^62 padding)).
Tensor shard_partials_cpu(Tensor logits, int64_t offset, int64_t c) {
  distributed_checks::check_partials_args(logits, offset, c);
  const int64_t R = logits.size(0), n = logits.size(1), W = kHead + 2 * c;
  Tensor out = new_empty(logits, {R, W}, ScalarType::Double);
  if (R == 0) return out;
  double* o = out.mutable_data_ptr<double>();
  const int64_t rs = logits.stride(0);
  SOFTDEC_DISPATCH_FLOAT(logits.scalar_type(), "logits", scalar_t, [&] {
    const scalar_t* x = reinterpret_cast<const scalar_t*>(logits.const_data_ptr());
    torch::stable::parallel_for(0, R, 1, [&](int64_t b, int64_t e) {
      std::vector<Cand> top;
      for (int64_t r = b; r < e; ++r) {
        double* row = o + r * W;
        Flags fl;
        top.clear();
        if (n > 0) topk_pass(x + r * rs, 0, n, std::max<int64_t>(c, 1), top, fl);
        std::sort(top.begin(), top.end(), cand_before);
        row[0] = fl.nan ? 1.0 : 0.0;
        row[1] = fl.pinf ? 1.0 : 0.0;
        row[2] = top.empty() ? 0.0 : 1.0;
        row[3] = top.empty() ? -static_cast<double>(kInf) : static_cast<double>(top[0].v);
        row[4] = top.empty() ? kNoId : static_cast<double>(top[0].i + offset);
        row[5] = row[6] = row[7] = 0.0;
        const int64_t m = std::min<int64_t>(c, static_cast<int64_t>(top.size()));
        std::sort(top.begin(), top.begin() + m, [](const Cand& a, const Cand& bb) { return a.i < bb.i; });
        for (int64_t j = 0; j < c; ++j) {
          row[kHead + j] = j < m ? static_cast<double>(top[j].v) : -static_cast<double>(kInf);
          row[kHead + c + j] = j < m ? static_cast<double>(top[j].i + offset) : kNoId;
        }
      }
    });
  });
  return out;
}

// Merge of the gathered partials g (world, rows, 8 + 2c): (valid, max, argmax -- 0 where
// invalid --, the compact row: the world * c candidates in global-id order plus one -inf
// column, NaN where the row is invalid (float32), their global ids (-1 for padding)).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> merge_partials_cpu(Tensor g, int64_t c) {
  check_dim(g, "g", 3, "(world, rows, 8 + 2c)");
  check_dtype(g, "g", ScalarType::Double);
  check_contiguous(g, "g");
  const int64_t Wd = g.size(0), R = g.size(1), W = g.size(2);
  SOFTDEC_CHECK(c >= 0 && W == kHead + 2 * c, "g must have 8 + 2c = ", kHead + 2 * c, " columns, got ", W);
  const int64_t nc = Wd * c + 1;
  Tensor valid = new_empty(g, {R}, ScalarType::Bool);
  Tensor mx = new_empty(g, {R}, ScalarType::Double);
  Tensor am = new_empty(g, {R}, ScalarType::Long);
  Tensor cv = new_empty(g, {R, nc}, ScalarType::Float);
  Tensor ci = new_empty(g, {R, nc}, ScalarType::Long);
  const double* gg = g.const_data_ptr<double>();
  bool* ov = valid.mutable_data_ptr<bool>();
  double* om = mx.mutable_data_ptr<double>();
  int64_t* oa = am.mutable_data_ptr<int64_t>();
  float* ocv = cv.mutable_data_ptr<float>();
  int64_t* oci = ci.mutable_data_ptr<int64_t>();
  torch::stable::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
    std::vector<std::pair<double, float>> cand;
    for (int64_t r = b; r < e; ++r) {
      bool nan = false, pinf = false, fin = false;
      double m = -static_cast<double>(kInf), a = kNoId;
      cand.clear();
      for (int64_t w = 0; w < Wd; ++w) {
        const double* p = gg + (w * R + r) * W;
        nan |= p[0] > 0.0;
        pinf |= p[1] > 0.0;
        fin |= p[2] > 0.0;
        if (p[3] > m) {
          m = p[3];
          a = p[4];
        } else if (p[3] == m && p[4] < a) {
          a = p[4];
        }
        for (int64_t j = 0; j < c; ++j)
          if (p[kHead + c + j] < kNoId) cand.emplace_back(p[kHead + c + j], static_cast<float>(p[kHead + j]));
      }
      std::sort(cand.begin(), cand.end(), [](const auto& u, const auto& v) { return u.first < v.first; });
      const bool ok = !nan && !pinf && fin;
      ov[r] = ok;
      om[r] = m;
      oa[r] = ok && a < kNoId ? static_cast<int64_t>(a) : 0;
      float* rv = ocv + r * nc;
      int64_t* ri = oci + r * nc;
      for (int64_t j = 0; j < nc; ++j) {
        const bool have = j < static_cast<int64_t>(cand.size());
        rv[j] = !ok ? std::numeric_limits<float>::quiet_NaN() : (have ? cand[j].second : -kInf);
        ri[j] = have ? static_cast<int64_t>(cand[j].first) : -1;
      }
    }
  });
  return {valid, mx, am, cv, ci};
}

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(distributed,
    {"shard_block_masses", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_block_masses_cpu)},
    {"shard_block_pick", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_block_pick_cpu)},
    {"block_draw_target", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::block_draw_target_cpu)},
    {"shard_partials", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_partials_cpu)},
    {"merge_partials", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::merge_partials_cpu)},
    {"shard_radix_hist", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_radix_hist_cpu)},
    {"shard_nth_tie", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_nth_tie_cpu)},
    {"shard_cut_block_masses", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_cut_block_masses_cpu)},
    {"shard_cut_block_pick", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_cut_block_pick_cpu)},
    {"shard_kept_mass", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_kept_mass_cpu)},
    {"shard_verify_race", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::shard_verify_race_cpu)})
