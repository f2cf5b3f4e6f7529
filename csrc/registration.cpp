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
  // Exact draw from the filtered softmax(logits / T) (include/softdec/filter.h), Gumbel-max with
  // the noise of token i = element i of the (seed[r], offset[r]) stream -> (ids[B] int64, valid[B] bool).
  m.def("sample(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
        "Tensor seed, Tensor offset) -> (Tensor, Tensor)");
  // Dense Gumbel-softmax: softmax((logits + G) / tau) in logits' dtype, and argmax(logits + G) int64.
  m.def("gumbel_softmax(Tensor logits, Tensor tau, Tensor seed, Tensor offset) -> (Tensor, Tensor)");
  // Sparse Gumbel-softmax: softmax of (logits + G) / tau over the k largest logits + G
  // -> (weights[B,k] float32, ids[B,k] int64) (the float output first, as autograd tools expect).
  m.def("gumbel_softmax_topk(Tensor logits, Tensor tau, int k, Tensor seed, Tensor offset) -> (Tensor, Tensor)");
  // logits with every token outside the row's top-k (ties: lower index first) set to -inf.
  m.def("top_k_mask_logits(Tensor logits, Tensor top_k) -> Tensor");
  // probs restricted to the smallest prefix (descending) whose mass reaches top_p, renormalised.
  m.def("top_p_renorm_probs(Tensor probs, Tensor top_p) -> Tensor");
  // probs restricted to p >= min_p * max p, renormalised.
  m.def("min_p_renorm_probs(Tensor probs, Tensor min_p) -> Tensor");


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
