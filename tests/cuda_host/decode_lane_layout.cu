// Host-side check of the sparse decode lane layout (csrc/cuda/decode_lanes.cuh): every row element is
// owned by exactly one (lane, chunk, position), the shared-memory query slots are a bijection onto
// [0, dp), the two 16-byte query loads of a lane hold exactly its 8 elements, every lane works for
// d in {64, 128, 256}, and the query loads are free of bank conflicts. No GPU:
//   nvcc -std=c++17 -I csrc/cuda tests/cuda_host/decode_lane_layout.cu -o /tmp/dl && /tmp/dl
#include <cstdio>
#include <vector>

#include "decode_lanes.cuh"

using namespace softdec::decode_lanes;

#include "expect.h"

static void check(int d) {
  const LaneMap m = lane_map(d);
  const int d8 = (d + 7) / 8;
  EXPECT(m.lpk >= 1 && m.lpk <= 32 && (m.lpk & (m.lpk - 1)) == 0, "d=%d lpk=%d", d, m.lpk);
  EXPECT(m.kpw * m.lpk == 32, "d=%d", d);
  EXPECT(m.chunks * m.lpk >= d8 && (m.chunks - 1) * m.lpk < d8, "d=%d: chunks %d cover the groups", d, m.chunks);
  EXPECT(m.dp == m.chunks * m.lpk * 8 && m.dp >= d, "d=%d dp=%d", d, m.dp);
  // a smaller lpk would leave a lane more than one group per chunk: lpk is the smallest power of two >= d8 (<= 32)
  EXPECT(m.lpk == 32 || m.lpk >= d8, "d=%d", d);
  EXPECT(m.lpk == 1 || m.lpk / 2 < d8, "d=%d", d);
  // every element owned once: lane sub, chunk c, position j -> element group_start(c, sub) + j
  std::vector<int> owner(m.dp, 0), slot_used(m.dp, 0);
  for (int c = 0; c < m.chunks; ++c)
    for (int sub = 0; sub < m.lpk; ++sub)
      for (int j = 0; j < 8; ++j) {
        const int e = group_start(c, sub, m.lpk) + j;
        EXPECT(e >= 0 && e < m.dp, "d=%d element %d", d, e);
        if (e < 0 || e >= m.dp) continue;
        ++owner[e];
        // the lane's query loads: floats q_vec(c, half, sub) .. + 3 hold elements j = 4 half .. 4 half + 3
        const int s = q_vec(c, j / 4, sub, m.lpk) + j % 4;
        EXPECT(s == q_slot(e, m.lpk), "d=%d e=%d", d, e);
        EXPECT(q_vec(c, 1, sub, m.lpk) - q_vec(c, 0, sub, m.lpk) == 4 * m.lpk, "d=%d half offset", d);
        EXPECT(q_vec(c, j / 4, sub, m.lpk) % 4 == 0, "16-byte aligned slot");
      }
  for (int e = 0; e < m.dp; ++e) {
    EXPECT(owner[e] == 1, "d=%d element %d owned %d times", d, e, owner[e]);
    const int s = q_slot(e, m.lpk);
    EXPECT(s >= 0 && s < m.dp, "d=%d slot %d", d, s);
    if (s >= 0 && s < m.dp) ++slot_used[s];
  }
  for (int s = 0; s < m.dp; ++s) EXPECT(slot_used[s] == 1, "d=%d slot %d used %d times", d, s, slot_used[s]);
  // bank conflicts of one 16-byte query load (chunk c, half): a warp's request is served in 4 phases of
  // 8 lanes; within a phase the distinct 16-byte words must fall in distinct bank quads (word % 8).
  for (int c = 0; c < m.chunks; ++c)
    for (int half = 0; half < 2; ++half)
      for (int phase = 0; phase < 4; ++phase) {
        int quad_word[8];
        for (int q = 0; q < 8; ++q) quad_word[q] = -1;
        for (int l = 8 * phase; l < 8 * phase + 8; ++l) {
          const int word = q_vec(c, half, l % m.lpk, m.lpk) / 4, quad = word % 8;
          EXPECT(quad_word[quad] == -1 || quad_word[quad] == word, "d=%d c=%d half=%d lane %d: bank conflict", d,
                 c, half, l);
          quad_word[quad] = word;
        }
      }
}

int main() {
  // every lane busy (one 8-element group per lane per row) where the issue asks for it
  EXPECT(lane_map(64).lpk == 8 && lane_map(64).kpw == 4 && lane_map(64).chunks == 1, "d=64");
  EXPECT(lane_map(128).lpk == 16 && lane_map(128).kpw == 2 && lane_map(128).chunks == 1, "d=128");
  EXPECT(lane_map(256).lpk == 32 && lane_map(256).kpw == 1 && lane_map(256).chunks == 1, "d=256");
  for (int d = 1; d <= 4096; ++d) check(d);
  if (failures) {
    std::printf("decode_lane_layout: %d failures\n", failures);
    return 1;
  }
  std::printf("decode_lane_layout: OK\n");
  return 0;
}
