// Lane layout of the sparse decode kernels (sparse_attention.cu): pure index arithmetic, host and
// device, checked on the host by tests/cuda_host/decode_lane_layout.cu (make cuda-check).
//
// A key (or page-summary) row of d elements is cut into groups of 8 contiguous elements (one
// 16-byte load for bf16/fp16, two for fp32). `lpk` lanes score one row together, lane `sub`
// (0 <= sub < lpk) owning the groups sub, sub + lpk, sub + 2 lpk, ... ("chunks" c = 0, 1, ...):
//   lpk    = the smallest power of two >= ceil(d / 8), at most 32
//   kpw    = 32 / lpk rows scored at once by one warp (d = 64: 4, d = 128: 2, d = 256: 1)
//   chunks = ceil(ceil(d / 8) / lpk)
//   dp     = chunks * lpk * 8 (the row padded; the padding holds zero queries and is never loaded)
// So every lane of a warp is busy for d in {64, 128, 256}, and a row is read by whole 16-byte
// loads that are contiguous across the lpk lanes (coalesced).
//
// The scaled fp32 queries live in shared memory, one row of dp floats per query head, element i
// at slot q_slot(i): the first 4 and the last 4 elements of each lane's group sit in two separate
// "halves" in which consecutive lanes hold consecutive 16-byte words. A lane reads its 8 query
// values as two 16-byte loads (slot q_vec(c, half, sub) .. + 3); for one load instruction the 8
// lanes of each quarter-warp phase read 8 consecutive 16-byte words (128 B, all 32 banks once):
// no bank conflict (lanes of different rows with the same sub read the same word: a broadcast).
#pragma once

#ifdef __CUDACC__
#define SOFTDEC_LANES_HD __host__ __device__ __forceinline__
#else
#define SOFTDEC_LANES_HD inline
#endif

namespace softdec {
namespace decode_lanes {

struct LaneMap {
  int lpk;     // lanes per row (power of two, 1 .. 32)
  int kpw;     // rows per warp = 32 / lpk
  int chunks;  // 8-element groups per lane
  int dp;      // padded row length = chunks * lpk * 8
};

SOFTDEC_LANES_HD LaneMap lane_map(int d) {
  const int d8 = (d + 7) / 8;
  int lpk = 1;
  while (lpk < d8 && lpk < 32) lpk <<= 1;
  LaneMap m;
  m.lpk = lpk;
  m.kpw = 32 / lpk;
  m.chunks = (d8 + lpk - 1) / lpk;
  if (m.chunks < 1) m.chunks = 1;
  m.dp = m.chunks * lpk * 8;
  return m;
}

// First element of lane `sub`'s group in chunk c.
SOFTDEC_LANES_HD int group_start(int c, int sub, int lpk) { return (c * lpk + sub) * 8; }

// Slot of the first of the 4 floats that lane `sub` reads for half `half` (0: elements 0-3 of its
// group, 1: elements 4-7) of chunk c.
SOFTDEC_LANES_HD int q_vec(int c, int half, int sub, int lpk) { return ((c * 2 + half) * lpk + sub) * 4; }

// Shared-memory slot of row element i (0 <= i < dp).
SOFTDEC_LANES_HD int q_slot(int i, int lpk) {
  const int c = i / (lpk * 8), r = i % (lpk * 8), sub = r / 8, j = r % 8;
  return q_vec(c, j / 4, sub, lpk) + j % 4;
}

}  // namespace decode_lanes
}  // namespace softdec
