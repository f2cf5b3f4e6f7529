// Every softdec schema, in one STABLE_TORCH_LIBRARY block. Implementations
// register per backend in csrc/cpu/*.cpp (_cpu) and csrc/cuda/*.cu (_cuda).
// Conventions: per-row parameters are 1-D tensors of length B on the device of
// the main input (the Python wrappers expand scalars); seed/offset are int64.
#include "common.h"

STABLE_TORCH_LIBRARY(softdec, m) {
  // ---- RNG (csrc/cpu/philox.cpp, csrc/cuda/philox.cu) ----
  // The Philox4x32-10 stream: out[r, i] = uniform(seed[r], offset[r], i), float32 in (0, 1).
  m.def("philox_uniform(Tensor seed, Tensor offset, int n) -> Tensor");


  // ---- soft mixture (csrc/cpu/soft_mixture.cpp, csrc/cuda/soft_mixture.cu) ----


  // ---- sampling (csrc/cpu/sampling.cpp, csrc/cuda/sampling.cu) ----


  // ---- speculative verification (csrc/cpu/verify.cpp, csrc/cuda/verify.cu) ----


  // ---- token-sparse attention (csrc/cpu/sparse_attention.cpp, csrc/cuda/sparse_attention.cu) ----
  // Per-page, per-channel key min and max over the valid tokens (< seq_lens[b]):
  // (kmin, kmax), each (B, Hkv, ceil(N / page_size), d) in k_cache's dtype; empty pages are 0.
  m.def("sparse_page_summary(Tensor k_cache, int page_size, Tensor seq_lens) -> (Tensor, Tensor)");
  // In place: recompute the pages touched by tokens [start[b], end[b]) (appended tokens).
  m.def("sparse_page_summary_update(Tensor(a!) kmin, Tensor(b!) kmax, Tensor k_cache, Tensor start, Tensor end) -> ()");
  // Decode attention over sink + window + budget selected tokens; select 0 = page, 1 = token.
  // Returns (out (B, Hq, d), indices (B or 0, Hkv, M) int64 ascending, padded with -1).
  m.def("sparse_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor seq_lens, int budget, int select, int page_size, int sink, int window, float scale, Tensor? kmin, Tensor? kmax, bool return_indices) -> (Tensor, Tensor)");
  // Token-sparse prefill: (out (B, Hq, L, d), kept (B, Hq, L) bool).
  m.def("token_sparse_prefill(Tensor q, Tensor k, Tensor v, float coverage, int min_tokens, int window, bool causal, float scale) -> (Tensor, Tensor)");


}
