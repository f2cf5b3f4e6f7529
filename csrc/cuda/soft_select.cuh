// Pure helpers of soft_mixture's block-wide top-k select (csrc/cuda/soft_mixture.cu), host and
// device, tested on the host by tests/cuda_host/soft_select.cu (make cuda-check).
//
// The scan keeps, per vocabulary slice, the kc best (value, id) pairs under soft::ranks_before
// (larger value first, equal values: lower id first). Its compaction finds the kc-th best pair
// with a radix select on an order-preserving unsigned key of the value (8-bit digits, most
// significant first), then, only when several entries share that value, a second radix select
// on the ids of those ties (smallest ids kept). The kept set is then exactly the kc best pairs.
#pragma once

#include <cstdint>
#include <cstring>

#include "softdec/macros.h"

namespace softdec {
namespace soft_select {

constexpr int kRadixBits = 8;
constexpr int kBuckets = 1 << kRadixBits;

template <typename T>
struct KeyOf;
template <>
struct KeyOf<float> {
  using type = uint32_t;
};
template <>
struct KeyOf<double> {
  using type = uint64_t;
};

// Order-preserving key of a non-NaN value: a > b <=> order_key(a) > order_key(b), and
// a == b <=> equal keys (-0 and +0 both map to the key of +0, as ranks_before treats them
// as equal). Negative values: all bits flipped; non-negative ones: the sign bit set.
SOFTDEC_HD uint32_t order_key(float v) {
  if (v == 0.0f) v = 0.0f;  // -0 -> +0
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(v);
#else
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

SOFTDEC_HD uint64_t order_key(double v) {
  if (v == 0.0) v = 0.0;
  uint64_t u;
#if defined(__CUDA_ARCH__)
  u = static_cast<uint64_t>(__double_as_longlong(v));
#else
  std::memcpy(&u, &v, sizeof u);
#endif
  return (u >> 63) ? ~u : (u | (uint64_t(1) << 63));
}

// The value of a key (inverse of order_key; -0 comes back as +0).
SOFTDEC_HD float key_value(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float v;
#if defined(__CUDA_ARCH__)
  v = __uint_as_float(u);
#else
  std::memcpy(&v, &u, sizeof v);
#endif
  return v;
}

SOFTDEC_HD double key_value(uint64_t k) {
  const uint64_t u = (k >> 63) ? (k & ~(uint64_t(1) << 63)) : ~k;
  double v;
#if defined(__CUDA_ARCH__)
  v = __longlong_as_double(static_cast<long long>(u));
#else
  std::memcpy(&v, &u, sizeof v);
#endif
  return v;
}

// Key of an id for the tie select: the smallest id has the largest key (ids are >= 0).
SOFTDEC_HD uint32_t id_key(int32_t id) { return ~static_cast<uint32_t>(id); }
SOFTDEC_HD int32_t key_id(uint32_t k) { return static_cast<int32_t>(~k); }

// Entries whose key agrees with `prefix` above bit `shift + kRadixBits` (all of them on the
// first pass) take part in the pass at `shift`.
template <typename K>
SOFTDEC_HD bool in_prefix(K key, K prefix, int shift) {
  const int hi = shift + kRadixBits;
  if (hi >= static_cast<int>(8 * sizeof(K))) return true;
  return (key >> hi) == (prefix >> hi);
}

template <typename K>
SOFTDEC_HD int digit_of(K key, int shift) {
  return static_cast<int>((key >> shift) & static_cast<K>(kBuckets - 1));
}

// One pass's decision from the histogram of the participating entries' digits: the digit d
// holding the need-th largest participant (need in [1, participants]): the entries in
// digits above d number `above` < need <= above + hist[d]. The device computes the same
// (above, d) with a parallel suffix scan over the 256 buckets.
SOFTDEC_HD int pick_digit(const int* hist, int need, int* above) {
  int acc = 0;
  for (int d = kBuckets - 1; d >= 0; --d) {
    if (acc < need && need <= acc + hist[d]) {
      *above = acc;
      return d;
    }
    acc += hist[d];
  }
  *above = acc;
  return -1;  // need > participants: a broken invariant
}

// Sequential reference of the device select (the same passes): the need-th largest of n keys.
// Returns the key; *rest = how many entries equal to it are among the `need` largest (>= 1);
// *equal = how many entries equal it.
template <typename K>
K radix_select_seq(const K* keys, int n, int need, int* rest, int* equal) {
  K prefix = 0;
  int hist[kBuckets];
  int last_count = 0;
  for (int shift = static_cast<int>(8 * sizeof(K)) - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int d = 0; d < kBuckets; ++d) hist[d] = 0;
    for (int i = 0; i < n; ++i)
      if (in_prefix(keys[i], prefix, shift)) ++hist[digit_of(keys[i], shift)];
    int above = 0;
    const int d = pick_digit(hist, need, &above);
    if (d < 0) {
      *rest = *equal = 0;
      return 0;
    }
    prefix |= static_cast<K>(d) << shift;
    need -= above;
    last_count = hist[d];
  }
  *rest = need;
  *equal = last_count;
  return prefix;
}

// The keep rule after the select(s): value key above the kc-th's, or equal to it and (all the
// ties are kept, or the id is among the `rest` smallest of the ties: id <= id_max).
template <typename K>
SOFTDEC_HD bool keep_entry(K key, int32_t id, K kth, bool all_ties, int32_t id_max) {
  return key > kth || (key == kth && (all_ties || id <= id_max));
}

// finalize_kernel's flat view of a row's C slice lists (kc slots each; slice c holds its
// part_n[c] best entries, sorted, in slots [0, part_n[c])): slot i is live iff its position in
// its slice is below that slice's count.
SOFTDEC_HD bool slice_slot_live(int i, int kc, const int32_t* part_n) { return i % kc < part_n[i / kc]; }

// Rank of (vt, it) among the n entries (v, id) with distinct ids: how many rank before it
// (soft::ranks_before: larger value first, equal values lower id first; -0 == +0). Entry t's
// rank is its position in the sorted order (the rank sort of scan_kernel / finalize_kernel).
template <typename T>
SOFTDEC_HD int rank_among(const T* v, const int32_t* id, int n, T vt, int32_t it) {
  int r = 0;
  for (int j = 0; j < n; ++j) r += (v[j] > vt || (v[j] == vt && id[j] < it)) ? 1 : 0;
  return r;
}

}  // namespace soft_select
}  // namespace softdec
