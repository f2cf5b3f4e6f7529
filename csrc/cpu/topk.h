// The first k (value, index) pairs of a scan in the order "larger value first,
// lower index among equal values" (filter::before / soft::ranks_before), with
// amortised O(1) work per candidate: candidates above a threshold are appended
// to a buffer; when it fills, nth_element keeps the first k and the threshold
// rises to the k-th value. Tokens are pushed in increasing index order, so a
// later token equal to the threshold ranks after the k kept ones and `> thr`
// is the whole admission test. (A sorted insertion costs O(k) per candidate:
// with k = 30-64 that was most of a B = 1 soft_mixture call.)
//
// Used by sample's top-k pass and soft_mixture's scan.
#pragma once

#include "capability.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace softdec {
namespace SOFTDEC_CPU_NS {
namespace cpu {

template <class T>
struct TopKCollector {
  struct Item {
    T v;
    int64_t i;
  };
  static bool first(const Item& a, const Item& b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

  int64_t k;
  int64_t cap;  // compact() once the buffer holds cap - slack items
  int64_t slack;
  T thr = -std::numeric_limits<T>::infinity();
  std::vector<Item> store;  // cap items; the first n are the candidates
  int64_t n = 0;

  // slack: the most items a caller pushes between two calls to maybe_compact();
  // room: the buffer compacts when it holds max(2k, room) items (a larger room:
  // fewer compactions; a smaller one: the threshold rises sooner)
  explicit TopKCollector(int64_t k_, int64_t slack_ = 64, int64_t room = 256)
      : k(k_), cap(std::max<int64_t>(2 * k_, room) + slack_), slack(slack_),
        store(static_cast<size_t>(cap)) {}

  // (a plain store: no capacity check, no call in the caller's hot loop)
  void push(T v, int64_t i) { store[static_cast<size_t>(n++)] = Item{v, i}; }

  void maybe_compact() {
    if (n >= cap - slack) compact();
  }

  const Item* begin() const { return store.data(); }
  const Item* end() const { return store.data() + n; }

  // Keep the first k; the threshold becomes the k-th value.
  void compact() {
    if (n > k) {
      std::nth_element(store.begin(), store.begin() + (k - 1), store.begin() + n, first);
      thr = store[static_cast<size_t>(k - 1)].v;
      n = k;
    }
  }

  // The first min(k, pushed) items, sorted in the order.
  std::vector<Item> finish() {
    compact();
    std::sort(store.begin(), store.begin() + n, first);
    store.resize(static_cast<size_t>(n));
    return std::move(store);
  }
};

}  // namespace cpu
}  // namespace SOFTDEC_CPU_NS
}  // namespace softdec
