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
  // Speculative verification of K drafts per row (softdec.verify). method: 0 exact, 1 greedy,
  // 2 typical, 3 relaxed, 4 soft. Draft q: one-hot (no draft_probs), dense draft_probs [B,K,V],
  // or sparse (sparse_ids, sparse_weights) [B,K,k]. Returns (tokens [B,K+1] int64 padded with -1,
  // num_accepted [B] int64, soft_ids [B,k'] int64, soft_weights [B,k'] float32; k' = k for soft, else 0).
  m.def("verify(Tensor target_logits, Tensor draft_ids, Tensor num_draft, Tensor? draft_probs, "
        "Tensor? sparse_ids, Tensor? sparse_weights, Tensor? neighbours, int method, "
        "Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, float posterior_threshold, "
        "float posterior_alpha, float delta, Tensor seed, Tensor offset) "
        "-> (Tensor, Tensor, Tensor, Tensor)");


  // ---- token-sparse attention (csrc/cpu/sparse_attention.cpp, csrc/cuda/sparse_attention.cu) ----


}
