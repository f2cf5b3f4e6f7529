// CPU backend of token-sparse attention: page summaries (build, incremental
// update), sparse decode attention (page bounds or exact token votes, then a
// split-KV attention over the selected tokens with a log-sum-exp merge) and
// token-sparse prefill (window scoring, coverage drop, gathered causal
// flash attention, scatter back).
//
// Hot loops: AVX-512 (bf16/fp16 -> fp32 conversion in registers, FMA dot
// products, a polynomial exp) with a scalar fallback. Threads: parallel_for
// over (row, KV head, page/token chunk) for scoring, (row, KV head) for the
// top-k, (row, KV head, chunk) for split-KV attention, (row, head) for prefill.
#include "../dispatch.h"
#include "softdec/attn_sparse.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace softdec {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

template <typename T>
inline float tof(T x) {
  return static_cast<float>(x);
}

// ------------------------------------------------------------------ vector helpers
#if defined(__AVX512F__)
template <typename T>
inline __m512 load16(const T* p);
template <>
inline __m512 load16<float>(const float* p) {
  return _mm512_loadu_ps(p);
}
template <>
inline __m512 load16<bf16>(const bf16* p) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}
template <>
inline __m512 load16<fp16>(const fp16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// First n (< 16) elements, zero-filled.
template <typename T>
inline __m512 load16_tail(const T* p, int64_t n) {
  alignas(64) T tmp[16];
  std::memset(static_cast<void*>(tmp), 0, sizeof(tmp));
  std::memcpy(static_cast<void*>(tmp), p, n * sizeof(T));
  return load16<T>(tmp);
}

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

inline float max_of(const float* x, int64_t n) {
  float m = kNegInf;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 mv = _mm512_set1_ps(kNegInf);
  for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
  m = _mm512_reduce_max_ps(mv);
#endif
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
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
      const __m512 kv = load16_tail(k + i, d - i);
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
    if (i < d) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + i), load16_tail(k + i, d - i), a0);
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
      const __m512 a = tail ? load16_tail(mn + i, d - i) : load16(mn + i);
      const __m512 b = tail ? load16_tail(mx + i, d - i) : load16(mx + i);
      for (int64_t h = 0; h < g; ++h) {
        const __m512 qv = _mm512_loadu_ps(q + (h0 + h) * qs + i);
        acc[h] = _mm512_add_ps(acc[h], _mm512_max_ps(_mm512_mul_ps(qv, a), _mm512_mul_ps(qv, b)));
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

inline float sanitize(float s) { return std::isnan(s) ? kNegInf : s; }

// ------------------------------------------------------------------ page summaries
struct Strides4 {
  int64_t b, h, n;
};

inline Strides4 strides4(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

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
        lo[i] = std::min(lo[i], v);
        hi[i] = std::max(hi[i], v);
      }
    }
    // min/max of T values are T values: the conversion back is exact.
    for (int64_t i = 0; i < d; ++i) {
      omn[i] = T(lo[i]);
      omx[i] = T(hi[i]);
    }
  }
}

void check_cache(const Tensor& k_cache, const char* name) {
  check_dim(k_cache, name, 4, "(batch, kv_heads, tokens, head_dim)");
  check_float(k_cache, name);
  check_last_contiguous(k_cache, name);
}

void check_lens(const Tensor& lens, const char* name, int64_t B, int64_t N, const Tensor& ref) {
  check_per_row(lens, name, B, ScalarType::Long, ref, "k_cache");
  SOFTDEC_CHECK(lens.is_cpu(), name, " must be on the CPU like k_cache");
  const int64_t* l = lens.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    SOFTDEC_CHECK(l[b] >= 0 && l[b] <= N, name, " must be in [0, ", N,
                  "] (the cache length), got ", l[b], " at row ", b);
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

void check_summary(const Tensor& s, const char* name, const Tensor& k_cache, int64_t page_size_or0) {
  check_dim(s, name, 4, "(batch, kv_heads, pages, head_dim)");
  SOFTDEC_CHECK(s.scalar_type() == k_cache.scalar_type(), name, " must have the dtype of k_cache (",
                dtype_name(k_cache.scalar_type()), "), got ", dtype_name(s.scalar_type()));
  check_same_device(k_cache, "k_cache", s, name);
  check_last_contiguous(s, name);
  SOFTDEC_CHECK(s.size(0) == k_cache.size(0) && s.size(1) == k_cache.size(1) &&
                    s.size(3) == k_cache.size(3),
                name, " must have shape (", k_cache.size(0), ", ", k_cache.size(1), ", pages, ",
                k_cache.size(3), ") to match k_cache, got ", shape_str(s));
  if (page_size_or0 > 0) {
    const int64_t P = attn::ceil_div(k_cache.size(2), page_size_or0);
    SOFTDEC_CHECK(s.size(2) == P, name, " must have ", P, " pages (ceil(", k_cache.size(2), " / ",
                  page_size_or0, ")), got ", s.size(2));
  }
}

void page_summary_update_cpu(Tensor kmin, Tensor kmax, Tensor k_cache, Tensor start, Tensor end) {
  check_cache(k_cache, "k_cache");
  check_summary(kmin, "kmin", k_cache, 0);
  check_summary(kmax, "kmax", k_cache, 0);
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

// Top-`need` candidates of `cand` (indices into scores) by (score desc, index asc),
// returned sorted by index ascending.
inline void top_candidates(std::vector<int64_t>& cand, const float* score, int64_t base,
                           int64_t need) {
  if (need >= static_cast<int64_t>(cand.size())) return;
  auto cmp = [&](int64_t a, int64_t b) {
    return attn::ranks_before(score[a - base], a, score[b - base], b);
  };
  std::nth_element(cand.begin(), cand.begin() + need, cand.end(), cmp);
  cand.resize(need);
  std::sort(cand.begin(), cand.end());
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
  std::vector<float> scores;
  const int64_t P = attn::ceil_div(N, A.page_size);

  if (A.page_mode) {
    // Bounds of the candidate pages, max over the query group: [B, Hkv, P].
    std::vector<float> bound(B * Hkv * P, kNegInf);
    constexpr int64_t kPages = 128;
    const int64_t chunks = attn::ceil_div(P, kPages);
    torch::stable::parallel_for(0, B * Hkv * chunks, 1, [&](int64_t w0, int64_t w1) {
      std::vector<float> tmp(G);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / (Hkv * chunks), g = (w / chunks) % Hkv, ch = w % chunks;
        const attn::Region r = attn::decode_region(lens[b], A.sink, A.window);
        int64_t first, last;
        attn::candidate_pages(r, A.page_size, &first, &last);
        const int64_t p0 = std::max(first, ch * kPages), p1 = std::min(last, (ch + 1) * kPages);
        const float* qg = qs.data() + (b * Hq + g * G) * dp;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t o = b * ss.b + g * ss.h + p * ss.n;
          page_bounds(qg, dp, G, kmin + o, kmax + o, d, tmp.data());
          float m = kNegInf;
          for (int64_t h = 0; h < G; ++h) m = std::max(m, sanitize(tmp[h]));
          bound[(b * Hkv + g) * P + p] = m;
        }
      }
    });
    torch::stable::parallel_for(0, B * Hkv, 1, [&](int64_t w0, int64_t w1) {
      std::vector<int64_t> cand;
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / Hkv;
        const attn::Region r = attn::decode_region(lens[b], A.sink, A.window);
        int64_t first, last;
        attn::candidate_pages(r, A.page_size, &first, &last);
        cand.resize(last - first);
        std::iota(cand.begin(), cand.end(), first);
        top_candidates(cand, bound.data() + w * P, 0, attn::pages_for_budget(A.budget, A.page_size));
        int32_t* s = sel.data() + w * M;
        int64_t c = 0;
        for (int64_t t = 0; t < r.sink_end; ++t) s[c++] = static_cast<int32_t>(t);
        for (int64_t p : cand) {
          int64_t lo, hi;
          attn::page_middle(r, A.page_size, p, &lo, &hi);
          for (int64_t t = lo; t < hi; ++t) s[c++] = static_cast<int32_t>(t);
        }
        for (int64_t t = r.win_start; t < r.len; ++t) s[c++] = static_cast<int32_t>(t);
        SOFTDEC_ASSERT(c <= M);
        cnt[w] = c;
      }
    });
  } else {
    scores.assign(B * Hq * N, 0.f);
    constexpr int64_t kTok = 512;
    const int64_t chunks = attn::ceil_div(N, kTok);
    torch::stable::parallel_for(0, B * Hkv * chunks, 1, [&](int64_t w0, int64_t w1) {
      std::vector<float> tmp(G);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / (Hkv * chunks), g = (w / chunks) % Hkv, ch = w % chunks;
        const int64_t t0 = ch * kTok, t1 = std::min(lens[b], t0 + kTok);
        const float* qg = qs.data() + (b * Hq + g * G) * dp;
        float* sg = scores.data() + (b * Hq + g * G) * N;
        for (int64_t t = t0; t < t1; ++t) {
          dots(qg, dp, G, k + b * ks.b + g * ks.h + t * ks.n, d, tmp.data());
          for (int64_t h = 0; h < G; ++h) sg[h * N + t] = tmp[h];
        }
      }
    });
    torch::stable::parallel_for(0, B * Hkv, 1, [&](int64_t w0, int64_t w1) {
      std::vector<float> vote, p;
      std::vector<int64_t> cand;
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t b = w / Hkv, g = w % Hkv;
        const attn::Region r = attn::decode_region(lens[b], A.sink, A.window);
        const int64_t L = r.len, mid = r.win_start - r.sink_end;
        if (mid > A.budget) {
          // Soft votes: per query head a softmax over all L valid tokens, summed
          // over the heads of the group (TokenSelect).
          vote.assign(mid, 0.f);
          p.resize(L);
          for (int64_t h = 0; h < G; ++h) {
            const float* sh = scores.data() + (b * Hq + g * G + h) * N;
            std::copy(sh, sh + L, p.begin());
            for (int64_t t = 0; t < L; ++t) p[t] = sanitize(p[t]);
            const float m = max_of(p.data(), L);
            if (m == kNegInf) continue;
            const float inv = 1.f / exp_sub_sum(p.data(), L, m);
            for (int64_t t = 0; t < mid; ++t) vote[t] += p[r.sink_end + t] * inv;
          }
          cand.resize(mid);
          std::iota(cand.begin(), cand.end(), r.sink_end);
          top_candidates(cand, vote.data(), r.sink_end, A.budget);
        } else {
          cand.resize(mid);
          std::iota(cand.begin(), cand.end(), r.sink_end);
        }
        int32_t* s = sel.data() + w * M;
        int64_t c = 0;
        for (int64_t t = 0; t < r.sink_end; ++t) s[c++] = static_cast<int32_t>(t);
        for (int64_t t : cand) s[c++] = static_cast<int32_t>(t);
        for (int64_t t = r.win_start; t < L; ++t) s[c++] = static_cast<int32_t>(t);
        SOFTDEC_ASSERT(c <= M);
        cnt[w] = c;
      }
    });
  }

  if (idx_out) {
    for (int64_t w = 0; w < B * Hkv; ++w)
      for (int64_t j = 0; j < M; ++j) idx_out[w * M + j] = j < cnt[w] ? sel[w * M + j] : -1;
  }

  // Split-KV attention over the selected tokens: work item (b, g, chunk).
  constexpr int64_t kChunk = 256;
  const int64_t chunks = std::max<int64_t>(1, attn::ceil_div(M, kChunk));
  const int64_t stride_part = G * (dp + 2);
  std::vector<float> part(B * Hkv * chunks * stride_part);
  const bool token_scores = !A.page_mode;
  torch::stable::parallel_for(0, B * Hkv * chunks, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> s(G * kChunk), vrow(dp), tmp(G);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t bg = w / chunks, ch = w % chunks;
      const int64_t b = bg / Hkv, g = bg % Hkv;
      const int64_t j0 = ch * kChunk, j1 = std::min(cnt[bg], j0 + kChunk), n = j1 - j0;
      float* pt = part.data() + w * stride_part;
      for (int64_t h = 0; h < G; ++h) {
        float* st = pt + h * (dp + 2);
        st[0] = kNegInf;
        st[1] = 0.f;
        std::fill(st + 2, st + 2 + dp, 0.f);
      }
      if (n <= 0) continue;
      const int32_t* idx = sel.data() + bg * M + j0;
      const float* qg = qs.data() + (b * Hq + g * G) * dp;
      if (token_scores) {
        for (int64_t h = 0; h < G; ++h) {
          const float* sh = scores.data() + (b * Hq + g * G + h) * N;
          for (int64_t j = 0; j < n; ++j) s[h * kChunk + j] = sh[idx[j]];
        }
      } else {
        for (int64_t j = 0; j < n; ++j) {
          dots(qg, dp, G, k + b * ks.b + g * ks.h + idx[j] * ks.n, d, tmp.data());
          for (int64_t h = 0; h < G; ++h) s[h * kChunk + j] = tmp[h];
        }
      }
      for (int64_t h = 0; h < G; ++h) {
        float* sh = s.data() + h * kChunk;
        const float m = max_of(sh, n);
        float* st = pt + h * (dp + 2);
        st[0] = m;
        if (m == kNegInf || std::isnan(m)) {
          // every score -inf (or NaN): a NaN row propagates NaN
          if (std::isnan(m)) st[1] = std::numeric_limits<float>::quiet_NaN();
          for (int64_t j = 0; j < n; ++j) sh[j] = 0.f;
          continue;
        }
        st[1] = exp_sub_sum(sh, n, m);
      }
      for (int64_t j = 0; j < n; ++j) {
        convert_row(v + b * vs.b + g * vs.h + idx[j] * vs.n, d, dp, vrow.data());
        for (int64_t h = 0; h < G; ++h) axpy(s[h * kChunk + j], vrow.data(), pt + h * (dp + 2) + 2, dp);
      }
    }
  });
  // Log-sum-exp merge of the chunks: out[b, h].
  torch::stable::parallel_for(0, B * Hq, 16, [&](int64_t w0, int64_t w1) {
    std::vector<float> acc(dp);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / Hq, h = w % Hq, g = h / G, hh = h % G;
      const float* base = part.data() + (b * Hkv + g) * chunks * stride_part + hh * (dp + 2);
      float m = kNegInf;
      bool nan = false;
      for (int64_t c = 0; c < chunks; ++c) {
        const float* st = base + c * stride_part;
        m = std::max(m, st[0]);
        nan |= std::isnan(st[1]) || std::isnan(st[0]);
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      float l = 0.f;
      if (m != kNegInf) {
        for (int64_t c = 0; c < chunks; ++c) {
          const float* st = base + c * stride_part;
          if (st[0] == kNegInf) continue;
          const float a = std::exp(st[0] - m);
          l += a * st[1];
          axpy(a, st + 2, acc.data(), dp);
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
  check_dim(q, "q", 3, "(batch, q_heads, head_dim)");
  check_float(q, "q");
  check_last_contiguous(q, "q");
  check_cache(k_cache, "k_cache");
  check_cache(v_cache, "v_cache");
  const int64_t B = q.size(0), Hq = q.size(1), d = q.size(2);
  const int64_t Hkv = k_cache.size(1), N = k_cache.size(2);
  SOFTDEC_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
                "k_cache and v_cache must have the dtype of q (", dtype_name(q.scalar_type()),
                "), got ", dtype_name(k_cache.scalar_type()), " and ",
                dtype_name(v_cache.scalar_type()));
  check_same_device(q, "q", k_cache, "k_cache");
  check_same_device(q, "q", v_cache, "v_cache");
  SOFTDEC_CHECK(k_cache.size(0) == B, "k_cache must have batch ", B, " like q, got ", k_cache.size(0));
  SOFTDEC_CHECK(k_cache.size(3) == d, "k_cache must have head_dim ", d, " like q, got ",
                k_cache.size(3));
  SOFTDEC_CHECK(Hkv > 0 && Hq % Hkv == 0, "q heads (", Hq,
                ") must be a multiple of the k_cache kv heads (", Hkv, ")");
  SOFTDEC_CHECK(v_cache.size(0) == B && v_cache.size(1) == Hkv && v_cache.size(2) == N &&
                    v_cache.size(3) == d,
                "v_cache must have the shape of k_cache ", shape_str(k_cache), ", got ",
                shape_str(v_cache));
  SOFTDEC_CHECK(budget > 0, "budget must be positive, got ", budget);
  SOFTDEC_CHECK(select == 0 || select == 1, "select must be 0 (page) or 1 (token), got ", select);
  SOFTDEC_CHECK(page_size > 0 && (page_size & (page_size - 1)) == 0,
                "page_size must be a power of two, got ", page_size);
  SOFTDEC_CHECK(sink >= 0, "sink must be non-negative, got ", sink);
  SOFTDEC_CHECK(window >= 0, "window must be non-negative, got ", window);
  SOFTDEC_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
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
    for (int64_t r = 0; r < kR; ++r) {
      m[r] = kNegInf;
      l[r] = 0.f;
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
      const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
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
  check_dim(q, "q", 4, "(batch, q_heads, tokens, head_dim)");
  check_dim(k, "k", 4, "(batch, kv_heads, tokens, head_dim)");
  check_dim(v, "v", 4, "(batch, kv_heads, tokens, head_dim)");
  check_float(q, "q");
  SOFTDEC_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                "k and v must have the dtype of q (", dtype_name(q.scalar_type()), "), got ",
                dtype_name(k.scalar_type()), " and ", dtype_name(v.scalar_type()));
  check_same_device(q, "q", k, "k");
  check_same_device(q, "q", v, "v");
  check_last_contiguous(q, "q");
  check_last_contiguous(k, "k");
  check_last_contiguous(v, "v");
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), d = q.size(3), Hkv = k.size(1);
  SOFTDEC_CHECK(k.size(0) == B && k.size(2) == L && k.size(3) == d, "k must have shape (", B,
                ", kv_heads, ", L, ", ", d, ") to match q, got ", shape_str(k));
  SOFTDEC_CHECK(v.size(0) == B && v.size(1) == Hkv && v.size(2) == L && v.size(3) == d,
                "v must have the shape of k ", shape_str(k), ", got ", shape_str(v));
  SOFTDEC_CHECK(Hkv > 0 && Hq % Hkv == 0, "q heads (", Hq, ") must be a multiple of the k heads (",
                Hkv, ")");
  SOFTDEC_CHECK(coverage >= 0.0 && coverage < 1.0, "coverage must be in [0, 1), got ", coverage);
  SOFTDEC_CHECK(min_tokens >= 0, "min_tokens must be non-negative, got ", min_tokens);
  SOFTDEC_CHECK(window > 0, "window must be positive, got ", window);
  SOFTDEC_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
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
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CPU, m) {
  m.impl("sparse_page_summary", TORCH_BOX(&softdec::page_summary_cpu));
  m.impl("sparse_page_summary_update", TORCH_BOX(&softdec::page_summary_update_cpu));
  m.impl("sparse_decode_attention", TORCH_BOX(&softdec::sparse_decode_attention_cpu));
  m.impl("token_sparse_prefill", TORCH_BOX(&softdec::token_sparse_prefill_cpu));
}
