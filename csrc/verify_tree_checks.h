// Input checks of the verify_tree op, shared by the CPU and CUDA entry points.
// Tensor-level checks (dims, dtypes, shapes, devices) here; the per-row values
// (tree structure, node tokens, sparse membership) are checked by
// check_tree_values on host memory (the CPU kernel; the Python wrapper runs the
// same checks, with the same messages, before either backend).
#pragma once

#include <optional>

#include "common.h"
#include "draft_checks.h"
#include "softdec/verify.h"

namespace softdec {
namespace verify_tree_checks {

struct TreeArgs {
  int64_t B = 0, N = 0, V = 0;
  int32_t method = 0, kind = 0;
  int64_t ks = 0;  // sparse draft width (kSparse), else 0
};

inline TreeArgs check_tree_args(const Tensor& target_logits, const Tensor& tree_tokens, const Tensor& tree_parents,
                                const std::optional<Tensor>& draft_probs, const std::optional<Tensor>& sparse_ids,
                                const std::optional<Tensor>& sparse_weights, int64_t method,
                                const Tensor& temperature, const Tensor& top_k, const Tensor& top_p,
                                const Tensor& min_p, const Tensor& seed, const Tensor& offset) {
  TreeArgs a;
  check_dim(target_logits, "target_logits", 3, "(batch, nodes, vocab)");
  check_float(target_logits, "target_logits");
  check_last_contiguous(target_logits, "target_logits");
  const int64_t B = target_logits.size(0), N = target_logits.size(1), V = target_logits.size(2);
  SOFTDEC_CHECK(N >= 1, "target_logits must have N >= 1 tree nodes, got shape ", shape_str(target_logits));
  SOFTDEC_CHECK(V >= 1 && V < (int64_t(1) << 31), "target_logits must have a vocabulary in [1, 2^31), got ", V);
  SOFTDEC_CHECK(method == verify::kExact || method == verify::kGreedy || method == verify::kTypical ||
                    method == verify::kSoft,
                "verify_tree method must be 0 (exact), 1 (greedy), 2 (typical) or 4 (soft), got ", method);
  check_dim(tree_tokens, "tree_tokens", 2, "(batch, nodes)");
  check_dtype(tree_tokens, "tree_tokens", ScalarType::Long);
  check_dim(tree_parents, "tree_parents", 2, "(batch, nodes)");
  check_dtype(tree_parents, "tree_parents", ScalarType::Long);
  SOFTDEC_CHECK(tree_tokens.size(0) == B && tree_tokens.size(1) == N, "tree_tokens must have shape (", B, ", ", N,
                ") to match target_logits ", shape_str(target_logits), ", got ", shape_str(tree_tokens));
  SOFTDEC_CHECK(tree_parents.size(0) == B && tree_parents.size(1) == N, "tree_parents must have shape (", B, ", ",
                N, ") to match target_logits ", shape_str(target_logits), ", got ", shape_str(tree_parents));
  check_contiguous(tree_tokens, "tree_tokens");
  check_contiguous(tree_parents, "tree_parents");
  check_same_device(target_logits, "target_logits", tree_tokens, "tree_tokens");
  check_same_device(target_logits, "target_logits", tree_parents, "tree_parents");
  check_per_row(temperature, "temperature", B, ScalarType::Float, target_logits, "target_logits");
  check_per_row(top_k, "top_k", B, ScalarType::Long, target_logits, "target_logits");
  check_per_row(top_p, "top_p", B, ScalarType::Float, target_logits, "target_logits");
  check_per_row(min_p, "min_p", B, ScalarType::Float, target_logits, "target_logits");
  check_per_row(seed, "seed", B, ScalarType::Long, target_logits, "target_logits");
  check_per_row(offset, "offset", B, ScalarType::Long, target_logits, "target_logits");
  a.B = B;
  a.N = N;
  a.V = V;
  a.method = static_cast<int32_t>(method);
  draft_checks::check_draft_probs(target_logits, draft_probs, sparse_ids, sparse_weights, B, N, V, "nodes",
                                  a.method, a.kind, a.ks);
  return a;
}

// Structure and token checks of one row (host pointers). Messages match the
// Python wrapper's (softdec/_verify_tree.py).
inline void check_tree_row(int64_t b, int64_t N, int64_t V, const int64_t* par, const int64_t* tok,
                           const int64_t* sid, int64_t ks, bool soft) {
  SOFTDEC_CHECK(par[0] == -1, "tree_parents[", b, ", 0] must be -1 (node 0 is the root), got ", par[0]);
  for (int64_t n = 1; n < N; ++n) {
    const int64_t p = par[n];
    if (p == -1) continue;  // padding
    SOFTDEC_CHECK(p >= 0 && p < N, "tree_parents[", b, ", ", n, "] = ", p, " is out of range: parents must be -1 ",
                  "(padding) or a node index in [0, ", N, ")");
    SOFTDEC_CHECK(p < n, "tree_parents[", b, ", ", n, "] = ", p,
                  " must be smaller than its node index (parents come before their children)");
    SOFTDEC_CHECK(p == 0 || par[p] != -1, "tree_parents[", b, ", ", n, "] = ", p,
                  " points at a padding node (ragged trees pad with -1 after their last node's children)");
    const int64_t x = tok[n];
    SOFTDEC_CHECK(x >= 0 && x < V, "tree_tokens must lie in [0, ", V, ") (the vocabulary of target_logits), got ",
                  x, " at (row ", b, ", node ", n, ")");
    if (sid) {
      bool member = false;
      for (int64_t c = 0; c < ks; ++c) {
        const int64_t s = sid[n * ks + c];
        SOFTDEC_CHECK(s >= 0 && s < V, "draft_probs ids must lie in [0, ", V, "), got ", s, " at (row ", b,
                      ", node ", n, ", entry ", c, ")");
        member |= s == x;
      }
      SOFTDEC_CHECK(member || soft, "tree_tokens[", b, ", ", n, "] = ", x,
                    " must be one of the sparse draft's ids at that node");
    }
  }
}

}  // namespace verify_tree_checks
}  // namespace softdec
