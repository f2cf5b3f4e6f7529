// Input checks of the token-sparse attention ops, shared by the CPU and CUDA
// entry points (the only layer that touches torch tensors).
#pragma once

#include <cmath>

#include "common.h"
#include "softdec/attn_sparse.h"

namespace softdec {
namespace attn_checks {

struct Strides4 {
  int64_t b, h, n;
};

inline Strides4 strides4(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

inline void check_cache(const Tensor& k_cache, const char* name) {
  check_dim(k_cache, name, 4, "(batch, kv_heads, tokens, head_dim)");
  check_float(k_cache, name);
  check_last_contiguous(k_cache, name);
}

inline void check_lens(const Tensor& lens, const char* name, int64_t B, int64_t N, const Tensor& ref) {
  check_per_row(lens, name, B, ScalarType::Long, ref, "k_cache");
  if (!lens.is_cpu()) return;  // device values are checked by the Python wrapper
  const int64_t* l = lens.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    SOFTDEC_CHECK(l[b] >= 0 && l[b] <= N, name, " must be in [0, ", N,
                  "] (the cache length), got ", l[b], " at row ", b);
}

inline void check_summary(const Tensor& s, const char* name, const Tensor& k_cache, int64_t page_size_or0) {
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

// (q, k_cache, v_cache) of sparse_decode_attention and its scalar arguments.
inline void check_decode_args(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t budget,
                              int64_t select, int64_t page_size, int64_t sink, int64_t window,
                              double scale) {
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
}

// (q, k, v) of token_sparse_prefill and its scalar arguments.
inline void check_prefill_args(const Tensor& q, const Tensor& k, const Tensor& v, double coverage,
                               int64_t min_tokens, int64_t window, double scale) {
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
}

}  // namespace attn_checks
}  // namespace softdec
