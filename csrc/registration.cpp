// Every softdec schema, in one STABLE_TORCH_LIBRARY block. Implementations
// register per backend in csrc/cpu/*.cpp (_cpu) and csrc/cuda/*.cu (_cuda).
// Conventions: per-row parameters are 1-D tensors of length B on the device of
// the main input (the Python wrappers expand scalars); seed/offset are int64.
#include "common.h"

STABLE_TORCH_LIBRARY(softdec, m) {
  // ---- RNG (csrc/cpu/philox.cpp, csrc/cuda/philox.cu) ----
  // The Philox4x32-10 stream: out[r, i] = uniform(seed[r], offset[r], i), float32 in (0, 1).
  m.def("philox_uniform(Tensor seed, Tensor offset, int n) -> Tensor");
  // Standard normals of the (seed[r], offset[r]) streams, Philox blocks 2^63 + i (soft::embed_normal;
  // csrc/cpu/philox_normal.cpp, csrc/cuda/philox_normal.cu) -> float32 (rows, n).
  m.def("philox_normal(Tensor seed, Tensor offset, int n) -> Tensor");

  // ---- softdec.distributed helpers (csrc/cpu/distributed.cpp; CPU only) ----
  // softdec.sample's inverse-CDF draw on a vocabulary shard [offset, offset + n) of a
  // vocab_size row: the kept-mass sums of the 1024-token blocks inside the shard (float64),
  // the walk over a full row's block sums (-> chosen block, target left), the token in a block.
  m.def("shard_block_masses(Tensor logits, int offset, int vocab_size, Tensor max_logit, "
        "Tensor temperature, Tensor min_p) -> Tensor");
  m.def("shard_block_pick(Tensor logits, int offset, int vocab_size, Tensor max_logit, "
        "Tensor temperature, Tensor min_p, Tensor block, Tensor target) -> Tensor");
  m.def("block_draw_target(Tensor blk, Tensor seed, Tensor offset) -> (Tensor, Tensor)");
  // A shard's row partials (flags, max, its global id, the first c tokens in id order) and the
  // merge of the ranks' gathered partials into (valid, max, argmax, compact row, its global ids).
  m.def("shard_partials(Tensor logits, int offset, int c) -> Tensor");
  m.def("merge_partials(Tensor g, int c) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The top-p / large-k cut on shards: the fixed-point mass (0..255) and count (256..511)
  // histograms of one radix round over the shard's tokens inside a prefix cut (int64
  // (rows, 512)); the global id of the n-th tie at a value (-1: not in this shard); the draw
  // helpers above with a per-row cut (cut_value float32, cut_index int64 global).
  m.def("shard_radix_hist(Tensor logits, int offset, int vocab_size, Tensor max_logit, Tensor temperature, "
        "Tensor cut_value, Tensor cut_index, Tensor prefix, int shift) -> Tensor");
  m.def("shard_nth_tie(Tensor logits, int offset, Tensor value, Tensor cut_value, Tensor cut_index, "
        "Tensor n) -> Tensor");
  m.def("shard_cut_block_masses(Tensor logits, int offset, int vocab_size, Tensor max_logit, "
        "Tensor temperature, Tensor min_p, Tensor cut_value, Tensor cut_index) -> Tensor");
  m.def("shard_cut_block_pick(Tensor logits, int offset, int vocab_size, Tensor max_logit, "
        "Tensor temperature, Tensor min_p, Tensor cut_value, Tensor cut_index, Tensor block, "
        "Tensor target) -> Tensor");
  // verify(method="exact") on shards: the shard's kept masses as the exact rule's integer digit
  // sums (include/softdec/filter.h MassSum: int64 [R, 3], summed over the ranks by an all_reduce)
  // with token want's mass (-1: not in the shard), and the
  // shard's exponential-race winner (key, global
  // id) skipping one token, with that token's p (-1: not in the shard).
  m.def("shard_kept_mass(Tensor logits, int offset, Tensor max_logit, Tensor temperature, Tensor min_p, "
        "Tensor cut_value, Tensor cut_index, Tensor want) -> (Tensor, Tensor)");
  m.def("shard_verify_race(Tensor logits, int offset, Tensor max_logit, Tensor temperature, Tensor min_p, "
        "Tensor cut_value, Tensor cut_index, Tensor inv_z, Tensor seed, Tensor stream, Tensor skip) "
        "-> (Tensor, Tensor, Tensor)");


  // ---- soft mixture (csrc/cpu/soft_mixture.cpp, csrc/cuda/soft_mixture.cu) ----
  // Concept tokens: fused softmax/entropy/top-k/top-p/min-p/noise/gather. Per-row tensors:
  // temperature/top_p/min_p float64, top_k/seed/offset int64. noise: 0 none, 1 gumbel, 2 dirichlet.
  // Returns (embeds, ids, weights, entropy, max_prob, valid, noisy_logits, lse, nkept); the last
  // two are saved for the backward. filter_top_k: int64 per row (0: the whole vocabulary, else
  // in [top_k, kc]); kc: the candidate width, max(k, max filter_top_k) (<= kMaxTopK).
  // gumbel_lo/hi: clamp of G (+-inf: none); gumbel_eps: y = log(w + eps) + noise_scale G.
  // embed_noise_std: embeds += std * philox_normal(seed, offset) (valid rows; see soft::embed_normal).
  m.def("soft_mixture(Tensor logits, Tensor embedding, Tensor temperature, Tensor top_k, "
        "Tensor top_p, Tensor min_p, Tensor seed, Tensor offset, int k, int noise, float tau, "
        "float noise_scale, float dirichlet_alpha, float embed_scale, Tensor filter_top_k, int kc, "
        "float gumbel_lo, float gumbel_hi, float gumbel_eps, float embed_noise_std) "
        "-> (Tensor, Tensor, Tensor, "
        "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradient of soft_mixture w.r.t. logits (dense (B, V), logits dtype).
  m.def("soft_mixture_backward(Tensor grad_embeds, Tensor grad_weights, Tensor grad_entropy, "
        "Tensor grad_max_prob, Tensor grad_noisy, Tensor logits, Tensor embedding, "
        "Tensor temperature, Tensor ids, Tensor weights, Tensor lse, Tensor entropy, "
        "Tensor max_prob, Tensor valid, Tensor nkept, int noise, float tau, float embed_scale, "
        "float gumbel_eps) "
        "-> Tensor");
  // Gradient of soft_mixture w.r.t. the embedding: the scatter into the kept rows, dense (V, D).
  m.def("soft_mixture_embedding_backward(Tensor grad_embeds, Tensor embedding, Tensor ids, "
        "Tensor weights, Tensor nkept, float embed_scale) -> Tensor");


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
  // filter_top_k (soft only): int64 [B], the soft_mixture filter width (0: whole vocabulary, else
  // in [k, 256]); None: the former chain (top_k cut first).
  m.def("verify(Tensor target_logits, Tensor draft_ids, Tensor num_draft, Tensor? draft_probs, "
        "Tensor? sparse_ids, Tensor? sparse_weights, Tensor? neighbours, int method, "
        "Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, float posterior_threshold, "
        "float posterior_alpha, float delta, Tensor seed, Tensor offset, Tensor? filter_top_k=None) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // Token-tree verification (softdec.verify_tree; csrc/cpu/verify_tree.cpp). method: 0 exact,
  // 1 greedy, 2 typical, 4 soft. tree_parents[b, 0] = -1 (root), -1 elsewhere pads. Returns
  // (nodes [B,N], tokens [B,N] int64 -1 padded, num_accepted [B], soft_ids [B,k'], soft_weights [B,k']).
  m.def("verify_tree(Tensor target_logits, Tensor tree_tokens, Tensor tree_parents, Tensor? draft_probs, "
        "Tensor? sparse_ids, Tensor? sparse_weights, int method, Tensor temperature, Tensor top_k, "
        "Tensor top_p, Tensor min_p, float posterior_threshold, float posterior_alpha, float delta, "
        "Tensor seed, Tensor offset) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");


  // ---- soft-token log-densities (csrc/cpu/log_density.cpp, csrc/cuda/log_density.cu) ----
  // Per row b, over the first nkept[b] entries of ids: pi = softmax(logits / T)[ids] renormalised
  // over them. Gumbel: z = clamp((y - log(pi + eps)) / noise_scale, lo, hi), value
  // -log(noise_scale) - z - exp(-z); entries with log(pi + eps) <= min_log_weight excluded;
  // reduction 0 none ([B,k]), 1 sum, 2 mean ([B]). Dirichlet: log Dir(weights; alpha * pi) [B].
  // Gaussian: log N(x; mean, std^2 I) [B]. Backwards: the dense (B, V) logits gradient in
  // logits' dtype and the gradient of y / weights; Gaussian: (grad_x, grad_mean).
  m.def("gumbel_log_density(Tensor logits, Tensor ids, Tensor y, Tensor nkept, Tensor temperature, "
        "float noise_scale, float clamp_lo, float clamp_hi, float eps, float min_log_weight, "
        "int reduction) -> Tensor");
  m.def("gumbel_log_density_backward(Tensor grad, Tensor logits, Tensor ids, Tensor y, Tensor nkept, "
        "Tensor temperature, float noise_scale, float clamp_lo, float clamp_hi, float eps, "
        "float min_log_weight, int reduction) -> (Tensor, Tensor)");
  m.def("dirichlet_log_density(Tensor logits, Tensor ids, Tensor weights, Tensor nkept, "
        "Tensor temperature, float alpha) -> Tensor");
  m.def("dirichlet_log_density_backward(Tensor grad, Tensor logits, Tensor ids, Tensor weights, "
        "Tensor nkept, Tensor temperature, float alpha) -> (Tensor, Tensor)");
  m.def("gaussian_log_density(Tensor x, Tensor mean, float std) -> Tensor");
  m.def("gaussian_log_density_backward(Tensor grad, Tensor x, Tensor mean, float std) -> (Tensor, Tensor)");


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
