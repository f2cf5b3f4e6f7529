// Pure pieces of csrc/cuda/distributed.cu (host and device; tests/cuda_host/distributed_walk.cu
// runs them on the host against the CPU ops' loops of csrc/cpu/distributed.cpp):
//  - DrawWalk: block_draw_target's walk over a row's block sums fed in block order:
//    pick_in (the first block with mass whose running double sum exceeds the target, else the
//    last block with mass) and draw_from_blocks' `before` (the sum, in order, of every block
//    ahead of the chosen one, zero blocks included): the same double additions in the same
//    order as the CPU's two loops, fused into one pass that can be fed chunk by chunk;
//  - merge_position: where candidate j of rank w lands in the union of the ranks' id-sorted
//    candidate lists ordered by (id, rank): binary searches, no sort;
//  - nth_in_group: shard_nth_tie's test of one thread's 4-token group (tests/cuda_host/
//    distributed_cut.cu replays the kernel's chunk / scan numbering against the CPU's loop).
#pragma once

#include <cstdint>

#include "softdec/macros.h"

namespace softdec {
namespace dist_walk {

constexpr double kNoId = 4611686018427387904.0;  // 2^62: id of an empty candidate slot

struct DrawWalk {
  double run = 0.0;       // running sum of the blocks with mass (pick_in's `run`)
  double all = 0.0;       // running sum of every block so far (the CPU's `before` loop)
  double all_last = 0.0;  // `all` when the last block with mass was fed
  double before = 0.0;    // `all` at the chosen block
  int64_t last = -1, chosen = -1;

  // Block j's sum v (blocks fed in order 0, 1, ...); true once a block is chosen (stop feeding).
  SOFTDEC_HD bool feed(double v, int64_t j, double target) {
    if (v > 0.0) {
      run = run + v;
      last = j;
      all_last = all;
      if (run > target) {
        chosen = j;
        before = all;
        return true;
      }
    }
    all = all + v;
    return false;
  }

  // After the row: the chosen block (-1 if no block has mass) and what is left of the target.
  SOFTDEC_HD void finish(double target, int64_t* block, double* left) const {
    const int64_t b = chosen >= 0 ? chosen : last;
    const double bef = chosen >= 0 ? before : all_last;
    *block = b;
    *left = b < 0 ? 0.0 : target - bef;
  }
};

// Entries of the ascending list a[0..n) that are < x (upper: <= x).
SOFTDEC_HD int64_t count_below(const double* a, int64_t n, double x, bool upper) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    const double v = a[mid];
    if (v < x || (upper && v == x)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// The place of id (candidate of rank w) in the union of the W lists ids(w2)[0..c) (each
// ascending, kNoId padding at its end) ordered by (id, rank): for rank w itself the count
// below id is its own position, ranks before w count their equal ids too.
template <class ListOf>
SOFTDEC_HD int64_t merge_position(const ListOf& ids, int64_t W, int64_t c, int64_t w, double id) {
  int64_t pos = 0;
  for (int64_t w2 = 0; w2 < W; ++w2) pos += count_below(ids(w2), c, id, w2 < w);
  return pos;
}

// Real candidates (ids < kNoId) in all W lists.
template <class ListOf>
SOFTDEC_HD int64_t real_candidates(const ListOf& ids, int64_t W, int64_t c) {
  int64_t n = 0;
  for (int64_t w = 0; w < W; ++w) n += count_below(ids(w), c, kNoId, false);
  return n;
}

// shard_nth_tie: the lane (0..3) of a thread's 4-token group (tokens in id order) holding the
// want-th tie (1-based, id order) of the row, given `seen` = the ties at lower ids (earlier
// chunks and the block's earlier threads, an exclusive scan) and the group's tie flags; -1 if
// the want-th tie is not in this group.
SOFTDEC_HD int nth_in_group(int64_t seen, int64_t want, const bool eq[4]) {
  int64_t c = seen;
  for (int l = 0; l < 4; ++l)
    if (eq[l] && ++c == want) return l;
  return -1;
}

}  // namespace dist_walk
}  // namespace softdec
