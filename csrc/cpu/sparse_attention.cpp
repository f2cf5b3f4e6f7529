// CPU backend of token-sparse attention: page summaries (build, incremental
// update), sparse decode attention (page bounds or exact token votes, then a
// split-KV attention over the selected tokens with a log-sum-exp merge) and
// token-sparse prefill (window scoring, coverage drop, gathered causal
// flash attention, scatter back).
//
// Selection: an O(n) radix select (11/11/10-bit passes on order-preserving
// float keys) finds the budget-th score; one pass in index order then takes
// the larger scores and the first ties (ties: lower index), already sorted.
// Hot loops: AVX-512 (bf16/fp16 -> fp32 conversion in registers, FMA dot
// products, a polynomial exp) with a scalar fallback. Threads: parallel_for
// over (row, KV head, page/token chunk) for scoring, (row, KV head) for the
// top-k, (row, KV head, chunk) for split-KV attention, (row, head) for prefill.
#include "capability.h"
#include "../dispatch.h"
#include "softdec/attn_sparse.h"
#include "attn_checks.h"
#include "simd.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>


namespace softdec {
namespace SOFTDEC_CPU_NS {  // this CPU level's copy (capability.h)
namespace {

using namespace attn_checks;
using namespace ::softdec::SOFTDEC_CPU_NS::simd;  // NOLINT: load16, load16_zero_tail

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

template <typename T>
inline float tof(T x) {
  return static_cast<float>(x);
}

// ------------------------------------------------------------------ vector helpers
#if defined(__AVX512F__)
// exp on 16 lanes: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n by
// scalef. Relative error ~2e-7; exp(-inf) -> 0 (clamped to -104, scalef underflows).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
#endif

// x[i] = exp(x[i] - m) for i < n; returns the sum.
inline float exp_sub_sum(float* x, int64_t n, float m) {
  int64_t i = 0;
  float s = 0.f;
#if defined(__AVX512F__)
  const __m512 mv = _mm512_set1_ps(m);
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
    _mm512_storeu_ps(x + i, e);
    acc = _mm512_add_ps(acc, e);
  }
  s = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  return s;
}

// max of x[0:n]; NaN if any element is NaN; -inf when n == 0.
inline float max_of(const float* x, int64_t n) {
  float m = kNegInf;
  bool nan = false;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 mv = _mm512_set1_ps(kNegInf);
  __mmask16 un = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    un |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    mv = _mm512_max_ps(mv, v);
  }
  m = _mm512_reduce_max_ps(mv);
  nan = un != 0;
#endif
  for (; i < n; ++i) {
    nan |= std::isnan(x[i]);
    m = std::max(m, x[i]);
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : m;
}

// dst[0:d] = float(src[0:d]); dst[d:dp] = 0.
template <typename T>
inline void convert_row(const T* src, int64_t d, int64_t dp, float* dst) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= d; i += 16) _mm512_storeu_ps(dst + i, load16(src + i));
#endif
  for (; i < d; ++i) dst[i] = tof(src[i]);
  for (; i < dp; ++i) dst[i] = 0.f;
}

// acc[0:n] = acc * a + p * v  (n a multiple of 16 on the AVX-512 path).
inline void axpy(float p, const float* v, float* acc, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 pv = _mm512_set1_ps(p);
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(pv, _mm512_loadu_ps(v + i), _mm512_loadu_ps(acc + i)));
#endif
  for (; i < n; ++i) acc[i] += p * v[i];
}

// out[h] = sum_i q[h*qs + i] * k[i] for h < G (q float, zero-padded to a
// multiple of 16; k of dtype T with d elements).
template <typename T>
inline void dots(const float* q, int64_t qs, int64_t G, const T* k, int64_t d, float* out) {
#if defined(__AVX512F__)
  const int64_t full = d / 16 * 16;
  int64_t h = 0;
  for (; h + 4 <= G; h += 4) {
    const float* q0 = q + h * qs;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i < full; i += 16) {
      const __m512 kv = load16(k + i);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + i), kv, a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + qs + i), kv, a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + 2 * qs + i), kv, a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + 3 * qs + i), kv, a3);
    }
    if (i < d) {
      const __m512 kv = load16_zero_tail(k + i, d - i);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + i), kv, a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + qs + i), kv, a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + 2 * qs + i), kv, a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + 3 * qs + i), kv, a3);
    }
    out[h] = _mm512_reduce_add_ps(a0);
    out[h + 1] = _mm512_reduce_add_ps(a1);
    out[h + 2] = _mm512_reduce_add_ps(a2);
    out[h + 3] = _mm512_reduce_add_ps(a3);
  }
  for (; h < G; ++h) {
    const float* q0 = q + h * qs;
    __m512 a0 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i < full; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + i), load16(k + i), a0);
    if (i < d) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + i), load16_zero_tail(k + i, d - i), a0);
    out[h] = _mm512_reduce_add_ps(a0);
  }
#else
  for (int64_t h = 0; h < G; ++h) {
    float s = 0.f;
    for (int64_t i = 0; i < d; ++i) s += q[h * qs + i] * tof(k[i]);
    out[h] = s;
  }
#endif
}

#if defined(__AVX512F__)
// Horizontal sums of four vectors: {sum a0, sum a1, sum a2, sum a3}.
inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  auto half = [](__m512 a) {
    return _mm256_add_ps(_mm512_castps512_ps256(a),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
  };
  auto quarter = [](__m256 b) { return _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1)); };
  const __m128 c0 = quarter(half(a0)), c1 = quarter(half(a1)), c2 = quarter(half(a2)), c3 = quarter(half(a3));
  return _mm_hadd_ps(_mm_hadd_ps(c0, c1), _mm_hadd_ps(c2, c3));
}
#endif

// Two keys at once (the token-scoring loop): out0[h] = q_h . k0, out1[h] = q_h . k1.
// The query vectors are loaded once per pair; four heads reduce together.
template <typename T>
inline void dots2(const float* q, int64_t qs, int64_t G, const T* k0, const T* k1, int64_t d, float* out0,
                  float* out1) {
#if defined(__AVX512F__)
  if (G % 4 == 0 && d % 16 == 0) {
    for (int64_t h = 0; h < G; h += 4) {
      const float* q0 = q + h * qs;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (int64_t i = 0; i < d; i += 16) {
        const __m512 x = load16(k0 + i), y = load16(k1 + i);
        const __m512 w0 = _mm512_loadu_ps(q0 + i), w1 = _mm512_loadu_ps(q0 + qs + i);
        const __m512 w2 = _mm512_loadu_ps(q0 + 2 * qs + i), w3 = _mm512_loadu_ps(q0 + 3 * qs + i);
        a0 = _mm512_fmadd_ps(w0, x, a0);
        a1 = _mm512_fmadd_ps(w1, x, a1);
        a2 = _mm512_fmadd_ps(w2, x, a2);
        a3 = _mm512_fmadd_ps(w3, x, a3);
        b0 = _mm512_fmadd_ps(w0, y, b0);
        b1 = _mm512_fmadd_ps(w1, y, b1);
        b2 = _mm512_fmadd_ps(w2, y, b2);
        b3 = _mm512_fmadd_ps(w3, y, b3);
      }
      _mm_storeu_ps(out0 + h, reduce4(a0, a1, a2, a3));
      _mm_storeu_ps(out1 + h, reduce4(b0, b1, b2, b3));
    }
    return;
  }
#endif
  dots(q, qs, G, k0, d, out0);
  dots(q, qs, G, k1, d, out1);
}

// out[h] = sum_i max(q_i * mn_i, q_i * mx_i) for h < G: the Quest page bound.
template <typename T>
inline void page_bounds(const float* q, int64_t qs, int64_t G, const T* mn, const T* mx, int64_t d,
                        float* out) {
#if defined(__AVX512F__)
  for (int64_t h = 0; h < G; ++h) out[h] = 0.f;
  int64_t i = 0;
  constexpr int64_t kMaxG = 16;
  for (int64_t h0 = 0; h0 < G; h0 += kMaxG) {
    const int64_t g = std::min<int64_t>(kMaxG, G - h0);
    __m512 acc[kMaxG];
    for (int64_t h = 0; h < g; ++h) acc[h] = _mm512_setzero_ps();
    for (i = 0; i < d; i += 16) {
      const bool tail = i + 16 > d;
      const __m512 a = tail ? load16_zero_tail(mn + i, d - i) : load16(mn + i);
      const __m512 b = tail ? load16_zero_tail(mx + i, d - i) : load16(mx + i);
      for (int64_t h = 0; h < g; ++h) {
        // max(q mn, q mx) = q * (q > 0 ? mx : mn), as mx >= mn
        const __m512 qv = _mm512_loadu_ps(q + (h0 + h) * qs + i);
        const __mmask16 pos = _mm512_cmp_ps_mask(qv, _mm512_setzero_ps(), _CMP_GT_OQ);
        acc[h] = _mm512_fmadd_ps(qv, _mm512_mask_blend_ps(pos, a, b), acc[h]);
      }
    }
    for (int64_t h = 0; h < g; ++h) out[h0 + h] = _mm512_reduce_add_ps(acc[h]);
  }
#else
  for (int64_t h = 0; h < G; ++h) {
    float s = 0.f;
    for (int64_t i = 0; i < d; ++i)
      s += attn::page_bound_term(q[h * qs + i], tof(mn[i]), tof(mx[i]));
    out[h] = s;
  }
#endif
}

// acc[h*astride + 0:dp] += sum_{j < nb} p[h*pstride + j] * vb[j*dp + 0:dp] for h < G:
// the P.V update of a block of value rows (fp32, rows 64-byte aligned), with
// up to 8 independent accumulator chains held in registers per 128 columns.
#if defined(__AVX512F__)
template <int NC>
inline void pv_cols(const float* p, const float* vb, int64_t nb, int64_t dp, float* acc) {
  __m512 o[NC];
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) o[c] = _mm512_load_ps(acc + 16 * c);
  for (int64_t j = 0; j < nb; ++j) {
    const __m512 pj = _mm512_set1_ps(p[j]);
    const float* vr = vb + j * dp;
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) o[c] = _mm512_fmadd_ps(pj, _mm512_load_ps(vr + 16 * c), o[c]);
  }
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) _mm512_store_ps(acc + 16 * c, o[c]);
}
#endif

inline void pv_block(const float* p, int64_t pstride, int64_t G, const float* vb, int64_t nb, int64_t dp,
                     float* acc, int64_t astride) {
  for (int64_t h = 0; h < G; ++h) {
    const float* ph = p + h * pstride;
    float* ah = acc + h * astride;
#if defined(__AVX512F__)
    int64_t c0 = 0;
    for (; c0 + 128 <= dp; c0 += 128) pv_cols<8>(ph, vb + c0, nb, dp, ah + c0);
    for (; c0 + 64 <= dp; c0 += 64) pv_cols<4>(ph, vb + c0, nb, dp, ah + c0);
    for (; c0 < dp; c0 += 16) pv_cols<1>(ph, vb + c0, nb, dp, ah + c0);
#else
    for (int64_t j = 0; j < nb; ++j) axpy(ph[j], vb + j * dp, ah, dp);
#endif
  }
}

// A float buffer whose data() is 64-byte aligned.
struct AlignedBuf {
  std::vector<float> raw;
  float* ptr = nullptr;
  void resize(int64_t n) {
    raw.assign(n + 16, 0.f);
    const uintptr_t a = reinterpret_cast<uintptr_t>(raw.data());
    ptr = raw.data() + ((64 - a % 64) % 64) / sizeof(float);
  }
  float* data() { return ptr; }
};

inline float sanitize(float s) { return std::isnan(s) ? kNegInf : s; }

// ------------------------------------------------------------------ page summaries
// Recompute pages [p0, p1) of (b, g) from tokens [p*ps, min((p+1)*ps, len)).
template <typename T>
void summarise_pages(const T* k, Strides4 ks, T* mn, T* mx, Strides4 ss, int64_t b, int64_t g,
                     int64_t p0, int64_t p1, int64_t ps, int64_t len, int64_t d) {
  std::vector<float> lo(d), hi(d);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t t0 = p * ps, t1 = std::min(t0 + ps, len);
    T* omn = mn + b * ss.b + g * ss.h + p * ss.n;
    T* omx = mx + b * ss.b + g * ss.h + p * ss.n;
    if (t1 <= t0) {  // an empty page: zeros
      for (int64_t i = 0; i < d; ++i) omn[i] = omx[i] = T(0.f);
      continue;
    }
    std::fill(lo.begin(), lo.end(), std::numeric_limits<float>::infinity());
    std::fill(hi.begin(), hi.end(), kNegInf);
    for (int64_t t = t0; t < t1; ++t) {
      const T* kr = k + b * ks.b + g * ks.h + t * ks.n;
      for (int64_t i = 0; i < d; ++i) {
        const float v = tof(kr[i]);
        // NaN propagates (as torch.amin / amax); std::min / max would drop it
        lo[i] = (v < lo[i] || v != v) ? v : lo[i];
        hi[i] = (v > hi[i] || v != v) ? v : hi[i];
      }
    }
    // min/max of T values are T values: the conversion back is exact.
    for (int64_t i = 0; i < d; ++i) {
      omn[i] = T(lo[i]);
      omx[i] = T(hi[i]);
    }
  }
}

std::tuple<Tensor, Tensor> page_summary_cpu(Tensor k_cache, int64_t page_size, Tensor seq_lens) {
  check_cache(k_cache, "k_cache");
  SOFTDEC_CHECK(page_size > 0 && (page_size & (page_size - 1)) == 0,
                "page_size must be a power of two, got ", page_size);
  const int64_t B = k_cache.size(0), H = k_cache.size(1), N = k_cache.size(2), d = k_cache.size(3);
  check_lens(seq_lens, "seq_lens", B, N, k_cache);
  const int64_t P = attn::ceil_div(N, page_size);
  Tensor mn = new_empty(k_cache, {B, H, P, d}, k_cache.scalar_type());
  Tensor mx = new_empty(k_cache, {B, H, P, d}, k_cache.scalar_type());
  if (B * H * P * d == 0) return {mn, mx};
  const int64_t* lens = seq_lens.const_data_ptr<int64_t>();
  SOFTDEC_DISPATCH_FLOAT(k_cache.scalar_type(), "k_cache", scalar_t, [&] {
    const scalar_t* k = k_cache.const_data_ptr<scalar_t>();
    scalar_t* a = mn.mutable_data_ptr<scalar_t>();
    scalar_t* c = mx.mutable_data_ptr<scalar_t>();
    const Strides4 ks = strides4(k_cache), ss = strides4(mn);
    constexpr int64_t kPagesPerItem = 64;
    const int64_t chunks = attn::ceil_div(P, kPagesPerItem);
    torch::stable::parallel_for(0, B * H * chunks, 1, [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / (H * chunks), g = (w / chunks) % H, ch = w % chunks;
        const int64_t p0 = ch * kPagesPerItem, p1 = std::min(P, p0 + kPagesPerItem);
        summarise_pages(k, ks, a, c, ss, b, g, p0, p1, page_size, lens[b], d);
      }
    });
  });
  return {mn, mx};
}

void page_summary_update_cpu(Tensor kmin, Tensor kmax, Tensor k_cache, Tensor start, Tensor end) {
  check_cache(k_cache, "k_cache");
  check_summary(kmin, "kmin", k_cache, 0);
  check_summary(kmax, "kmax", k_cache, 0);
  check_no_internal_overlap(kmin, "kmin");
  check_no_internal_overlap(kmax, "kmax");
  SOFTDEC_CHECK(kmax.size(2) == kmin.size(2), "kmax must have the shape of kmin ", shape_str(kmin),
                ", got ", shape_str(kmax));
  const int64_t B = k_cache.size(0), H = k_cache.size(1), N = k_cache.size(2), d = k_cache.size(3);
  const int64_t P = kmin.size(2);
  SOFTDEC_CHECK(P > 0 && N > 0 && attn::ceil_div(N, P) <= N, "kmin must have at least one page");
  // page_size is recovered from the page count: the smallest power of two with P * ps >= N.
  int64_t ps = 1;
  while (attn::ceil_div(N, ps) > P) ps <<= 1;
  SOFTDEC_CHECK(attn::ceil_div(N, ps) == P, "kmin has ", P,
                " pages, which matches no power-of-two page size for ", N, " tokens");
  check_lens(start, "start", B, N, k_cache);
  check_lens(end, "end", B, N, k_cache);
  const int64_t* s = start.const_data_ptr<int64_t>();
  const int64_t* e = end.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    SOFTDEC_CHECK(s[b] <= e[b], "start must be <= end, got start ", s[b], " > end ", e[b],
                  " at row ", b);
  SOFTDEC_DISPATCH_FLOAT(k_cache.scalar_type(), "k_cache", scalar_t, [&] {
    const scalar_t* k = k_cache.const_data_ptr<scalar_t>();
    scalar_t* a = kmin.mutable_data_ptr<scalar_t>();
    scalar_t* c = kmax.mutable_data_ptr<scalar_t>();
    const Strides4 ks = strides4(k_cache), sa = strides4(kmin), sc = strides4(kmax);
    SOFTDEC_CHECK(sa.b == sc.b && sa.h == sc.h && sa.n == sc.n, "kmax must have the strides of kmin");
    torch::stable::parallel_for(0, B * H, 1, [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / H, g = w % H;
        if (e[b] <= s[b]) continue;
        // Pages touched by the appended tokens, recomputed from their first token:
        // exact and idempotent (the page's earlier tokens are already in the cache).
        summarise_pages(k, ks, a, c, sa, b, g, s[b] / ps, (e[b] - 1) / ps + 1, ps, e[b], d);
      }
    });
  });
}

// ------------------------------------------------------------------ sparse decode
struct DecodeArgs {
  int64_t B, Hq, Hkv, G, N, d, dp;
  int64_t budget, page_size, sink, window, M;
  bool page_mode;
  float scale;
};

// Order-preserving key of a float (larger float -> larger key); NaN -> the key of -inf.
inline uint32_t order_key(float f) {
  if (std::isnan(f)) f = kNegInf;
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The top `need` of candidates first .. first + n - 1 (scores sc[0:n]) by
// (score desc, index asc), written to `cand` in ascending index order. A
// 3-pass radix select (11/11/10 bits) finds the need-th largest key, then one
// pass in index order takes every larger key and the first ties: O(n), no sort.
inline void top_candidates(std::vector<int64_t>& cand, const float* sc, int64_t n, int64_t first,
                           int64_t need, std::vector<uint32_t>& keys) {
  cand.clear();
  if (need >= n) {
    for (int64_t i = 0; i < n; ++i) cand.push_back(first + i);
    return;
  }
  keys.resize(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = order_key(sc[i]);
  uint32_t prefix = 0, mask = 0;
  int64_t above = 0;  // keys strictly greater than the selected prefix range
  static constexpr int kShift[3] = {21, 10, 0};
  static constexpr int kBits[3] = {11, 11, 10};
  uint32_t hist[2048];
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = kShift[pass], nb = 1 << kBits[pass];
    std::memset(hist, 0, sizeof(uint32_t) * nb);
    const uint32_t bm = static_cast<uint32_t>(nb - 1);
    if (pass == 0) {
      for (int64_t i = 0; i < n; ++i) ++hist[keys[i] >> shift];
    } else {
      for (int64_t i = 0; i < n; ++i)
        if ((keys[i] & mask) == prefix) ++hist[(keys[i] >> shift) & bm];
    }
    int bin = nb - 1;
    for (; bin > 0; --bin) {
      if (above + hist[bin] >= need) break;
      above += hist[bin];
    }
    prefix |= static_cast<uint32_t>(bin) << shift;
    mask |= bm << shift;
  }
  const uint32_t kth = prefix;
  int64_t ties = need - above;
  cand.reserve(need);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t key = keys[i];
    if (key > kth || (key == kth && ties-- > 0)) cand.push_back(first + i);
  }
}

template <typename T>
void sparse_decode_impl(const DecodeArgs& A, const T* q, const int64_t* qst, const T* k,
                        Strides4 ks, const T* v, Strides4 vs, const int64_t* lens, const T* kmin,
                        const T* kmax, Strides4 ss, T* out, int64_t* idx_out) {
  const int64_t B = A.B, Hq = A.Hq, Hkv = A.Hkv, G = A.G, N = A.N, d = A.d, dp = A.dp, M = A.M;
  // Scaled queries in fp32, zero-padded to dp.
  std::vector<float> qs(B * Hq * dp);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      float* dst = qs.data() + (b * Hq + h) * dp;
      convert_row(q + b * qst[0] + h * qst[1], d, dp, dst);
      for (int64_t i = 0; i < d; ++i) dst[i] *= A.scale;
    }
  // Selected tokens per (b, g), ascending, and their count.
  std::vector<int32_t> sel(B * Hkv * std::max<int64_t>(M, 1));
  std::vector<int64_t> cnt(B * Hkv, 0);
  // Token mode keeps every score for the attention pass: [B, Hq, N].
  std::unique_ptr<float[]> scores;
  const int64_t P = attn::ceil_div(N, A.page_size);

  // Scoring runs over (b, g, chunk) work items; the item that finishes the last
  // chunk of a (b, g) runs its selection (one parallel region for both).
  std::vector<std::atomic<int64_t>> remaining(B * Hkv);
  struct Scratch {
    std::vector<float> tmp, tmp2, vote, p;
    std::vector<int64_t> cand;
    std::vector<uint32_t> keys;
  };
  if (A.page_mode) {
    // Bounds of the candidate pages, max over the query group: [B, Hkv, P].
    std::vector<float> bound(B * Hkv * P, kNegInf);
    constexpr int64_t kPages = 256;
    const int64_t chunks = attn::ceil_div(P, kPages);
    for (auto& x : remaining) x.store(chunks);
    torch::stable::parallel_for(0, B * Hkv * chunks, 1, [&](int64_t w0, int64_t w1) {
      Scratch sc;
      sc.tmp.resize(G);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / (Hkv * chunks), g = (w / chunks) % Hkv, ch = w % chunks;
        const attn::Region r = attn::decode_region(lens[b], A.sink, A.window);
        int64_t first, last;
        attn::candidate_pages(r, A.page_size, &first, &last);
        const int64_t p0 = std::max(first, ch * kPages), p1 = std::min(last, (ch + 1) * kPages);
        const float* qg = qs.data() + (b * Hq + g * G) * dp;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t o = b * ss.b + g * ss.h + p * ss.n;
          page_bounds(qg, dp, G, kmin + o, kmax + o, d, sc.tmp.data());
          float m = kNegInf;
          for (int64_t h = 0; h < G; ++h) m = std::max(m, sanitize(sc.tmp[h]));
          bound[(b * Hkv + g) * P + p] = m;
        }
        const int64_t bg = b * Hkv + g;
        if (remaining[bg].fetch_sub(1, std::memory_order_acq_rel) != 1) continue;
        // selection of (b, g): every chunk's bounds are visible here
        top_candidates(sc.cand, bound.data() + bg * P + first, last - first, first,
                       attn::pages_for_budget(A.budget, A.page_size), sc.keys);
        int32_t* s = sel.data() + bg * M;
        int64_t c = 0;
        for (int64_t t = 0; t < r.sink_end; ++t) s[c++] = static_cast<int32_t>(t);
        for (int64_t pg : sc.cand) {
          int64_t lo, hi;
          attn::page_middle(r, A.page_size, pg, &lo, &hi);
          for (int64_t t = lo; t < hi; ++t) s[c++] = static_cast<int32_t>(t);
        }
        for (int64_t t = r.win_start; t < r.len; ++t) s[c++] = static_cast<int32_t>(t);
        SOFTDEC_ASSERT(c <= M);
        cnt[bg] = c;
      }
    });
  } else {
    scores.reset(new float[B * Hq * N]);
    constexpr int64_t kTok = 1024;
    const int64_t chunks = attn::ceil_div(N, kTok);
    for (auto& x : remaining) x.store(chunks);
    torch::stable::parallel_for(0, B * Hkv * chunks, 1, [&](int64_t w0, int64_t w1) {
      Scratch sc;
      sc.tmp.resize(G);
      sc.tmp2.resize(G);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / (Hkv * chunks), g = (w / chunks) % Hkv, ch = w % chunks;
        const int64_t t0 = ch * kTok, t1 = std::min(lens[b], t0 + kTok);
        const float* qg = qs.data() + (b * Hq + g * G) * dp;
        float* sg = scores.get() + (b * Hq + g * G) * N;
        int64_t t = t0;
        const int64_t row_bytes = d * static_cast<int64_t>(sizeof(T));
        for (; t + 2 <= t1; t += 2) {
          const T* kr = k + b * ks.b + g * ks.h + t * ks.n;
          if (t + 18 <= t1) {  // keys stream from memory: ask for the pair 16 tokens ahead
            for (int64_t x = 0; x < row_bytes; x += 64) {
              __builtin_prefetch(reinterpret_cast<const char*>(kr + 16 * ks.n) + x);
              __builtin_prefetch(reinterpret_cast<const char*>(kr + 17 * ks.n) + x);
            }
          }
          dots2(qg, dp, G, kr, kr + ks.n, d, sc.tmp.data(), sc.tmp2.data());
          for (int64_t h = 0; h < G; ++h) {
            sg[h * N + t] = sc.tmp[h];
            sg[h * N + t + 1] = sc.tmp2[h];
          }
        }
        for (; t < t1; ++t) {
          dots(qg, dp, G, k + b * ks.b + g * ks.h + t * ks.n, d, sc.tmp.data());
          for (int64_t h = 0; h < G; ++h) sg[h * N + t] = sc.tmp[h];
        }
        const int64_t bg = b * Hkv + g;
        if (remaining[bg].fetch_sub(1, std::memory_order_acq_rel) != 1) continue;
        // selection of (b, g): every chunk's scores are visible here
        const attn::Region r = attn::decode_region(lens[b], A.sink, A.window);
        const int64_t L = r.len, mid = r.win_start - r.sink_end;
        if (mid > A.budget) {
          // Soft votes: per query head a softmax over all L valid tokens, summed
          // over the heads of the group (TokenSelect).
          sc.vote.assign(mid, 0.f);
          sc.p.resize(L);
          for (int64_t h = 0; h < G; ++h) {
            const float* sh = scores.get() + (b * Hq + g * G + h) * N;
            for (int64_t x = 0; x < L; ++x) sc.p[x] = sanitize(sh[x]);
            const float m = max_of(sc.p.data(), L);
            if (m == kNegInf) continue;
            const float inv = 1.f / exp_sub_sum(sc.p.data(), L, m);
            for (int64_t x = 0; x < mid; ++x) sc.vote[x] += sc.p[r.sink_end + x] * inv;
          }
          top_candidates(sc.cand, sc.vote.data(), mid, r.sink_end, A.budget, sc.keys);
        } else {
          sc.cand.resize(mid);
          std::iota(sc.cand.begin(), sc.cand.end(), r.sink_end);
        }
        int32_t* s = sel.data() + bg * M;
        int64_t c = 0;
        for (int64_t x = 0; x < r.sink_end; ++x) s[c++] = static_cast<int32_t>(x);
        for (int64_t x : sc.cand) s[c++] = static_cast<int32_t>(x);
        for (int64_t x = r.win_start; x < L; ++x) s[c++] = static_cast<int32_t>(x);
        SOFTDEC_ASSERT(c <= M);
        cnt[bg] = c;
      }
    });
  }

  if (idx_out) {
    for (int64_t w = 0; w < B * Hkv; ++w)
      for (int64_t j = 0; j < M; ++j) idx_out[w * M + j] = j < cnt[w] ? sel[w * M + j] : -1;
  }

  // Split-KV attention over the selected tokens: work item (b, g, chunk).
  // Partial state per (item, head): acc[0:dp] (64-byte aligned), then m, l.
  constexpr int64_t kChunk = 256, kSub = 16;
  const int64_t chunks = std::max<int64_t>(1, attn::ceil_div(M, kChunk));
  const int64_t hstride = dp + 16;
  const int64_t stride_part = G * hstride;
  AlignedBuf part;
  part.resize(B * Hkv * chunks * stride_part);
  const bool token_scores = !A.page_mode;
  torch::stable::parallel_for(0, B * Hkv * chunks, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> s(G * kChunk), tmp(G), tmp2(G);
    AlignedBuf vbuf;
    vbuf.resize(kSub * dp);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t bg = w / chunks, ch = w % chunks;
      const int64_t b = bg / Hkv, g = bg % Hkv;
      const int64_t j0 = ch * kChunk, j1 = std::min(cnt[bg], j0 + kChunk), n = j1 - j0;
      float* pt = part.data() + w * stride_part;
      for (int64_t h = 0; h < G; ++h) {
        float* st = pt + h * hstride;
        std::fill(st, st + dp, 0.f);
        st[dp] = kNegInf;
        st[dp + 1] = 0.f;
      }
      if (n <= 0) continue;
      const int32_t* idx = sel.data() + bg * M + j0;
      const float* qg = qs.data() + (b * Hq + g * G) * dp;
      if (token_scores) {
        for (int64_t h = 0; h < G; ++h) {
          const float* sh = scores.get() + (b * Hq + g * G + h) * N;
          for (int64_t j = 0; j < n; ++j) s[h * kChunk + j] = sh[idx[j]];
        }
      } else {
        const T* kb = k + b * ks.b + g * ks.h;
        const T* vb = v + b * vs.b + g * vs.h;
        int64_t j = 0;
        for (; j + 2 <= n; j += 2) {
          if (j + 8 < n) {  // gathered rows: prefetch K and V a few tokens ahead
            for (int64_t x = 0; x < d * static_cast<int64_t>(sizeof(T)); x += 64) {
              __builtin_prefetch(reinterpret_cast<const char*>(kb + idx[j + 8] * ks.n) + x);
              __builtin_prefetch(reinterpret_cast<const char*>(vb + idx[j + 8] * vs.n) + x);
            }
          }
          dots2(qg, dp, G, kb + idx[j] * ks.n, kb + idx[j + 1] * ks.n, d, tmp.data(), tmp2.data());
          for (int64_t h = 0; h < G; ++h) {
            s[h * kChunk + j] = tmp[h];
            s[h * kChunk + j + 1] = tmp2[h];
          }
        }
        for (; j < n; ++j) {
          dots(qg, dp, G, kb + idx[j] * ks.n, d, tmp.data());
          for (int64_t h = 0; h < G; ++h) s[h * kChunk + j] = tmp[h];
        }
      }
      for (int64_t h = 0; h < G; ++h) {
        float* sh = s.data() + h * kChunk;
        const float m = max_of(sh, n);
        float* st = pt + h * hstride;
        st[dp] = m;
        if (m == kNegInf || std::isnan(m)) {
          // every score -inf (or NaN): a NaN row propagates NaN
          if (std::isnan(m)) st[dp + 1] = std::numeric_limits<float>::quiet_NaN();
          for (int64_t j = 0; j < n; ++j) sh[j] = 0.f;
          continue;
        }
        st[dp + 1] = exp_sub_sum(sh, n, m);
      }
      for (int64_t js = 0; js < n; js += kSub) {
        const int64_t nb = std::min(kSub, n - js);
        for (int64_t j = 0; j < nb; ++j)
          convert_row(v + b * vs.b + g * vs.h + idx[js + j] * vs.n, d, dp, vbuf.data() + j * dp);
        pv_block(s.data() + js, kChunk, G, vbuf.data(), nb, dp, pt, hstride);
      }
    }
  });
  // Log-sum-exp merge of the chunks: out[b, h].
  torch::stable::parallel_for(0, B * Hq, 64, [&](int64_t w0, int64_t w1) {
    std::vector<float> acc(dp);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / Hq, h = w % Hq, g = h / G, hh = h % G;
      const float* base = part.data() + (b * Hkv + g) * chunks * stride_part + hh * hstride;
      float m = kNegInf;
      bool nan = false;
      for (int64_t c = 0; c < chunks; ++c) {
        const float* st = base + c * stride_part;
        m = std::max(m, st[dp]);
        nan |= std::isnan(st[dp + 1]) || std::isnan(st[dp]);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      float l = 0.f;
      if (m != kNegInf) {
        for (int64_t c = 0; c < chunks; ++c) {
          const float* st = base + c * stride_part;
          if (st[dp] == kNegInf) continue;
          const float a = std::exp(st[dp] - m);
          l += a * st[dp + 1];
          axpy(a, st, acc.data(), dp);
        }
      }
      T* o = out + (b * Hq + h) * d;
      const float inv = l > 0.f ? 1.f / l : 0.f;
      for (int64_t i = 0; i < d; ++i)
        o[i] = T(nan ? std::numeric_limits<float>::quiet_NaN() : acc[i] * inv);
    }
  });
}

std::tuple<Tensor, Tensor> sparse_decode_attention_cpu(
    Tensor q, Tensor k_cache, Tensor v_cache, Tensor seq_lens, int64_t budget, int64_t select,
    int64_t page_size, int64_t sink, int64_t window, double scale, std::optional<Tensor> kmin,
    std::optional<Tensor> kmax, bool return_indices) {
  check_decode_args(q, k_cache, v_cache, budget, select, page_size, sink, window, scale);
  const int64_t B = q.size(0), Hq = q.size(1), d = q.size(2);
  const int64_t Hkv = k_cache.size(1), N = k_cache.size(2);
  check_lens(seq_lens, "seq_lens", B, N, k_cache);
  const bool page_mode = select == 0;
  SOFTDEC_CHECK(kmin.has_value() == kmax.has_value(), "kmin and kmax must be given together");
  if (kmin) {
    check_summary(*kmin, "kmin", k_cache, page_size);
    check_summary(*kmax, "kmax", k_cache, page_size);
    SOFTDEC_CHECK(kmin->stride(0) == kmax->stride(0) && kmin->stride(1) == kmax->stride(1) &&
                      kmin->stride(2) == kmax->stride(2),
                  "kmax must have the strides of kmin");
  }
  DecodeArgs A;
  A.B = B; A.Hq = Hq; A.Hkv = Hkv; A.G = Hkv ? Hq / Hkv : 1; A.N = N; A.d = d;
  A.dp = round_up(std::max<int64_t>(d, 1), 16);
  A.budget = budget; A.page_size = page_size; A.sink = sink; A.window = window;
  A.page_mode = page_mode;
  A.M = attn::max_selected(N, budget, page_mode, page_size, sink, window);
  A.scale = static_cast<float>(scale);
  Tensor out = new_empty(q, {B, Hq, d}, q.scalar_type());
  Tensor idx = new_empty(q, {return_indices ? B : 0, Hkv, A.M}, ScalarType::Long);
  if (B == 0 || Hq == 0 || d == 0) return {out, idx};
  Tensor mn, mx;
  if (page_mode) {
    if (kmin) {
      mn = *kmin;
      mx = *kmax;
    } else {
      std::tie(mn, mx) = page_summary_cpu(k_cache, page_size, seq_lens);
    }
  }
  const int64_t qst[2] = {q.stride(0), q.stride(1)};
  SOFTDEC_DISPATCH_FLOAT(q.scalar_type(), "q", scalar_t, [&] {
    sparse_decode_impl<scalar_t>(
        A, q.const_data_ptr<scalar_t>(), qst, k_cache.const_data_ptr<scalar_t>(),
        strides4(k_cache), v_cache.const_data_ptr<scalar_t>(), strides4(v_cache),
        seq_lens.const_data_ptr<int64_t>(), page_mode ? mn.const_data_ptr<scalar_t>() : nullptr,
        page_mode ? mx.const_data_ptr<scalar_t>() : nullptr,
        page_mode ? strides4(mn) : Strides4{0, 0, 0}, out.mutable_data_ptr<scalar_t>(),
        return_indices ? idx.mutable_data_ptr<int64_t>() : nullptr);
  });
  return {out, idx};
}

// ------------------------------------------------------------------ token-sparse prefill
// Flash attention over gathered fp32 buffers: Q [n][dp] (pre-scaled), Kt
// [dp][np] (keys transposed, zero-padded to np), V [n][dp]; out [n][dp].
constexpr int64_t kR = 8;    // query rows per tile
constexpr int64_t kKB = 64;  // keys per tile

void flash_gathered(const float* Q, const float* Kt, int64_t np, const float* V, int64_t n,
                    int64_t dp, bool causal, float* O) {
  alignas(64) float S[kR][kKB];
  for (int64_t a0 = 0; a0 < n; a0 += kR) {
    const int64_t rows = std::min(kR, n - a0);
    float m[kR], l[kR];
    bool nan[kR];
    for (int64_t r = 0; r < kR; ++r) {
      m[r] = kNegInf;
      l[r] = 0.f;
      nan[r] = false;
    }
    std::fill(O + a0 * dp, O + (a0 + rows) * dp, 0.f);
    const int64_t kend = causal ? a0 + rows : n;
    for (int64_t c0 = 0; c0 < kend; c0 += kKB) {
      const int64_t kb = std::min(kKB, kend - c0);
      // S = Q[a0:a0+R] . Kt[:, c0:c0+kb]
#if defined(__AVX512F__)
      for (int64_t jb = 0; jb < kb; jb += 16) {
        __m512 acc[kR];
        for (int64_t r = 0; r < kR; ++r) acc[r] = _mm512_setzero_ps();
        const float* kt = Kt + c0 + jb;
        if (rows == kR) {
          for (int64_t i = 0; i < dp; ++i) {
            const __m512 kv = _mm512_loadu_ps(kt + i * np);
            const float* qi = Q + a0 * dp + i;
#pragma GCC unroll 8
            for (int64_t r = 0; r < kR; ++r)
              acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qi[r * dp]), kv, acc[r]);
          }
        } else {
          for (int64_t i = 0; i < dp; ++i) {
            const __m512 kv = _mm512_loadu_ps(kt + i * np);
            for (int64_t r = 0; r < rows; ++r)
              acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(Q[(a0 + r) * dp + i]), kv, acc[r]);
          }
        }
        for (int64_t r = 0; r < kR; ++r) _mm512_store_ps(&S[r][jb], acc[r]);
      }
#else
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < kb; ++j) {
          float s = 0.f;
          for (int64_t i = 0; i < dp; ++i) s += Q[(a0 + r) * dp + i] * Kt[i * np + c0 + j];
          S[r][j] = s;
        }
#endif
      for (int64_t r = 0; r < rows; ++r) {
        // valid keys of row r in this tile: j < jn
        const int64_t jn = causal ? std::min(kb, a0 + r + 1 - c0) : kb;
        if (jn <= 0) continue;
        float* sr = S[r];
        for (int64_t j = jn; j < kb; ++j) sr[j] = kNegInf;
        const float mt = max_of(sr, jn);
        if (std::isnan(mt)) {  // a NaN score: the row's output is NaN
          nan[r] = true;
          continue;
        }
        const float mnew = std::max(m[r], mt);
        if (mnew == kNegInf) continue;
        const float alpha = m[r] == kNegInf ? 0.f : std::exp(m[r] - mnew);
        const float ps = exp_sub_sum(sr, jn, mnew);
        l[r] = l[r] * alpha + ps;
        m[r] = mnew;
        float* orow = O + (a0 + r) * dp;
#if defined(__AVX512F__)
        const __m512 av = _mm512_set1_ps(alpha);
        for (int64_t i = 0; i < dp; i += 16) {
          __m512 o = _mm512_mul_ps(_mm512_loadu_ps(orow + i), av);
          const float* vp = V + c0 * dp + i;
          for (int64_t j = 0; j < jn; ++j)
            o = _mm512_fmadd_ps(_mm512_set1_ps(sr[j]), _mm512_loadu_ps(vp + j * dp), o);
          _mm512_storeu_ps(orow + i, o);
        }
#else
        for (int64_t i = 0; i < dp; ++i) orow[i] *= alpha;
        for (int64_t j = 0; j < jn; ++j) axpy(sr[j], V + (c0 + j) * dp, orow, dp);
#endif
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float inv = nan[r] ? std::numeric_limits<float>::quiet_NaN() : l[r] > 0.f ? 1.f / l[r] : 0.f;
      float* orow = O + (a0 + r) * dp;
      for (int64_t i = 0; i < dp; ++i) orow[i] *= inv;
    }
  }
}

struct PrefillArgs {
  int64_t B, Hq, Hkv, G, L, d, dp, min_tokens, window;
  float coverage, scale;
  bool causal;
};

template <typename T>
void prefill_impl(const PrefillArgs& A, const T* q, Strides4 qs, const T* k, Strides4 ks,
                  const T* v, Strides4 vs, T* out, bool* kept) {
  const int64_t L = A.L, d = A.d, dp = A.dp, G = A.G;
  const int64_t w = std::min(A.window, L);
  torch::stable::parallel_for(0, A.B * A.Hq, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> score(L), qw(kR * dp), srow(kR * L), tmp(kR);
    std::vector<int64_t> order;
    std::vector<float> Qg, Ktg, Vg, Og;
    for (int64_t item = w0; item < w1; ++item) {
      const int64_t b = item / A.Hq, h = item % A.Hq, g = h / G;
      const T* kb = k + b * ks.b + g * ks.h;
      const T* vb = v + b * vs.b + g * vs.h;
      const T* qb = q + b * qs.b + h * qs.h;
      bool* kp = kept + (b * A.Hq + h) * L;
      T* ob = out + (b * A.Hq + h) * L * d;
      // 1. Scores: sum over the last w queries of their softmax over the keys
      //    they see, in blocks of kR query rows ([kR, L] at a time).
      std::fill(score.begin(), score.end(), 0.f);
      const bool drop = A.coverage > 0.f && attn::max_drop(L, w, A.min_tokens) > 0;
      if (drop) {
        for (int64_t i0 = L - w; i0 < L; i0 += kR) {
          const int64_t rows = std::min(kR, L - i0);
          for (int64_t r = 0; r < rows; ++r) {
            convert_row(qb + (i0 + r) * qs.n, d, dp, qw.data() + r * dp);
            for (int64_t i = 0; i < d; ++i) qw[r * dp + i] *= A.scale;
          }
          const int64_t jend = A.causal ? i0 + rows : L;
          for (int64_t j = 0; j < jend; ++j) {
            dots(qw.data(), dp, rows, kb + j * ks.n, d, tmp.data());
            for (int64_t r = 0; r < rows; ++r) srow[r * L + j] = tmp[r];
          }
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t jn = A.causal ? i0 + r + 1 : L;
            float* sr = srow.data() + r * L;
            for (int64_t j = 0; j < jn; ++j) sr[j] = sanitize(sr[j]);
            const float m = max_of(sr, jn);
            if (m == kNegInf) continue;
            const float inv = 1.f / exp_sub_sum(sr, jn, m);
            for (int64_t j = 0; j < jn; ++j) score[j] += sr[j] * inv;
          }
        }
      }
      // 2. Drop rule: ascending (score, index) over the non-window tokens.
      for (int64_t t = 0; t < L; ++t) kp[t] = true;
      if (drop) {
        const int64_t dmax = attn::max_drop(L, w, A.min_tokens);
        const int64_t nc = L - w;
        order.resize(nc);
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
          return score[x] < score[y] || (score[x] == score[y] && x < y);
        });
        double total = 0.0;
        for (int64_t t = 0; t < L; ++t) total += score[t];
        const double limit = static_cast<double>(A.coverage) * total;
        double cum = 0.0;
        for (int64_t i = 0; i < std::min(nc, dmax); ++i) {
          cum += score[order[i]];
          if (cum > limit) break;
          kp[order[i]] = false;
        }
      }
      // 3. Gather the kept set (fp32; Q pre-scaled; K transposed).
      int64_t n = 0;
      for (int64_t t = 0; t < L; ++t) n += kp[t];
      const int64_t np = round_up(std::max<int64_t>(n, 1), kKB);
      Qg.assign(round_up(n, kR) * dp, 0.f);
      Ktg.assign(dp * np, 0.f);
      Vg.assign(n * dp, 0.f);
      Og.assign(round_up(n, kR) * dp, 0.f);
      std::vector<float> krow(dp);
      for (int64_t t = 0, a = 0; t < L; ++t) {
        if (!kp[t]) continue;
        convert_row(qb + t * qs.n, d, dp, Qg.data() + a * dp);
        for (int64_t i = 0; i < d; ++i) Qg[a * dp + i] *= A.scale;
        convert_row(kb + t * ks.n, d, dp, krow.data());
        for (int64_t i = 0; i < dp; ++i) Ktg[i * np + a] = krow[i];
        convert_row(vb + t * vs.n, d, dp, Vg.data() + a * dp);
        ++a;
      }
      // 4. Dense (causal) attention on the kept set, 5. scatter back.
      flash_gathered(Qg.data(), Ktg.data(), np, Vg.data(), n, dp, A.causal, Og.data());
      for (int64_t t = 0, a = 0; t < L; ++t) {
        T* o = ob + t * d;
        if (!kp[t]) {
          for (int64_t i = 0; i < d; ++i) o[i] = T(0.f);
          continue;
        }
        for (int64_t i = 0; i < d; ++i) o[i] = T(Og[a * dp + i]);
        ++a;
      }
    }
  });
}

std::tuple<Tensor, Tensor> token_sparse_prefill_cpu(Tensor q, Tensor k, Tensor v, double coverage,
                                                    int64_t min_tokens, int64_t window,
                                                    bool causal, double scale) {
  check_prefill_args(q, k, v, coverage, min_tokens, window, scale);
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), d = q.size(3), Hkv = k.size(1);
  Tensor out = new_empty(q, {B, Hq, L, d}, q.scalar_type());
  Tensor kept = new_empty(q, {B, Hq, L}, ScalarType::Bool);
  if (B * Hq * L == 0) return {out, kept};
  PrefillArgs A;
  A.B = B; A.Hq = Hq; A.Hkv = Hkv; A.G = Hq / Hkv; A.L = L; A.d = d;
  A.dp = round_up(std::max<int64_t>(d, 1), 16);
  A.min_tokens = min_tokens; A.window = window;
  A.coverage = static_cast<float>(coverage); A.scale = static_cast<float>(scale);
  A.causal = causal;
  SOFTDEC_DISPATCH_FLOAT(q.scalar_type(), "q", scalar_t, [&] {
    prefill_impl<scalar_t>(A, q.const_data_ptr<scalar_t>(), strides4(q), k.const_data_ptr<scalar_t>(),
                           strides4(k), v.const_data_ptr<scalar_t>(), strides4(v),
                           out.mutable_data_ptr<scalar_t>(), kept.mutable_data_ptr<bool>());
  });
  return {out, kept};
}

}  // namespace
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec

// This level's kernels; csrc/cpu_dispatch.cpp registers the chosen level's with torch.
SOFTDEC_CPU_KERNELS(sparse_attention,
    {"sparse_page_summary", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::page_summary_cpu)},
    {"sparse_page_summary_update", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::page_summary_update_cpu)},
    {"sparse_decode_attention", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::sparse_decode_attention_cpu)},
    {"token_sparse_prefill", TORCH_BOX(&softdec::SOFTDEC_CPU_NS::token_sparse_prefill_cpu)})
