// Host-side check of the tensor-core prefill attention layouts (csrc/cuda/prefill_mma_traits.cuh) against the
// PTX ISA fragment rules of mma.m16n8k16 and the kernel's own assumptions. Needs nvcc and the CUTLASS
// headers, no GPU:
//   nvcc -std=c++17 --expt-relaxed-constexpr -I csrc/cuda -isystem "$(python3 -c "import cutlass_library,os;
//     print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))")" \
//     tests/cuda_host/prefill_mma_layouts.cu -o /tmp/prefill_mma_layouts && /tmp/prefill_mma_layouts
#include <cstdio>
#include <cstdlib>

#include "prefill_mma_traits.cuh"

using namespace softdec_prefill_mma;

#include "expect.h"

template <class Tr>
void check(const char* name) {
  constexpr int D = Tr::D, kBM = Tr::kBM, kBN = Tr::kBN;
  typename Tr::TiledMma mma;
  for (int tid = 0; tid < Tr::kThreads; ++tid) {
    const int warp = tid / 32, lane = tid % 32;
    auto thr = mma.get_thread_slice(tid);
    // (0) A and B operands against the PTX m16n8k16 fragments (g = lane / 4, t = lane % 4):
    //     A (row, k): a0,a1 = (g, 2t + {0,1}), a2,a3 = (g + 8, ..), a4,a5 = (g, 2t + 8 + {0,1}), a6,a7 = (g + 8, ..)
    //     B (n, k):   b0,b1 = (n g, k 2t + {0,1}), b2,b3 = (n g, k 2t + 8 + {0,1})
    //     in the warp's 16-row slab (A) and every n8 tile (B), per k-slice of 16. The attention reads Q (A) and
    //     K (B) through these; the key-score kernel reads K as A (keys are its MMA rows) and the window queries as
    //     B: S^T(key, row) = sum_k A(key, k) B(row, k), the same dot products as S(row, key).
    {
      auto tA = thr.partition_A(make_identity_tensor(Shape<Int<kBM>, Int<D>>{}));  // (8, 1, D/16)
      EXPECT(size<0>(tA) == 8 && size<1>(tA) == 1 && size<2>(tA) == D / 16, "%s A fragment shape", name);
      for (int kk = 0; kk < size<2>(tA); ++kk)
        for (int v = 0; v < 8; ++v) {
          const int r = 16 * warp + lane / 4 + 8 * ((v / 2) % 2), c = 16 * kk + 2 * (lane % 4) + v % 2 + 8 * (v / 4);
          EXPECT(get<0>(tA(v, 0, kk)) == r && get<1>(tA(v, 0, kk)) == c, "%s tid %d A v%d kk%d: (%d,%d) want (%d,%d)",
                 name, tid, v, kk, int(get<0>(tA(v, 0, kk))), int(get<1>(tA(v, 0, kk))), r, c);
        }
      auto tB = thr.partition_B(make_identity_tensor(Shape<Int<kBN>, Int<D>>{}));  // (4, kBN/8, D/16)
      EXPECT(size<0>(tB) == 4 && size<1>(tB) == kBN / 8 && size<2>(tB) == D / 16, "%s B fragment shape", name);
      for (int kk = 0; kk < size<2>(tB); ++kk)
        for (int ni = 0; ni < size<1>(tB); ++ni)
          for (int v = 0; v < 4; ++v) {
            const int n = 8 * ni + lane / 4, c = 16 * kk + 2 * (lane % 4) + v % 2 + 8 * (v / 2);
            EXPECT(get<0>(tB(v, ni, kk)) == n && get<1>(tB(v, ni, kk)) == c, "%s tid %d B v%d ni%d kk%d", name, tid, v,
                   ni, kk);
          }
    }
    // (1) S accumulator: PTX m16n8k16 C fragment, c0..c3 = (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1),
    //     g = lane / 4, t = lane % 4, in the warp's 16-row slab and the n8 tile ni.
    auto tScS = thr.partition_C(make_identity_tensor(Shape<Int<kBM>, Int<kBN>>{}));
    static_assert(decltype(size(tScS))::value == 4 * (kBN / 8), "4 values per n8 tile");
    for (int i = 0; i < size(tScS); ++i) {
      const int v = i % 4, ni = i / 4;
      const int r = 16 * warp + lane / 4 + 8 * (v / 2), c = 8 * ni + 2 * (lane % 4) + v % 2;
      EXPECT(get<0>(tScS(i)) == r && get<1>(tScS(i)) == c, "%s tid %d i %d: (%d,%d) want (%d,%d)", name, tid, i,
             int(get<0>(tScS(i))), int(get<1>(tScS(i))), r, c);
    }
    // (2) rowcol view: (mi, ni) -> row 16 warp + lane/4 + 8 mi for every ni; columns are the thread's columns.
    auto cRC = make_tensor(tScS.data(), rowcol(tScS.layout()));
    EXPECT(size<0>(cRC) == 2 && size<1>(cRC) == kBN / 4, "%s rowcol shape", name);
    for (int mi = 0; mi < 2; ++mi)
      for (int ni = 0; ni < size<1>(cRC); ++ni) {
        EXPECT(get<0>(cRC(mi, ni)) == 16 * warp + lane / 4 + 8 * mi, "%s tid %d rowcol row (%d,%d)", name, tid, mi,
               ni);
        EXPECT(get<1>(cRC(mi, ni)) == 8 * (ni / 2) + 2 * (lane % 4) + ni % 2, "%s tid %d rowcol col (%d,%d)", name,
               tid, mi, ni);
        // the key-score kernel reads one (max, 1 / sum) per column for both of the thread's rows
        EXPECT(get<1>(cRC(mi, ni)) == get<1>(cRC(0, ni)) && get<1>(cRC(mi, ni)) < kBN, "%s column per ni", name);
      }
    // every (row, col) of the tile is owned by exactly one (thread, mi, ni), and the quad of the owner
    // (lanes 4g .. 4g + 3) owns the whole row: the row max / sum shuffles (xor 1, 2) cover the row
    {
      static int owner[64 * 64];
      if (tid == 0)
        for (int x = 0; x < kBM * kBN; ++x) owner[x] = -1;
      for (int mi = 0; mi < 2; ++mi)
        for (int ni = 0; ni < size<1>(cRC); ++ni) {
          const int x = get<0>(cRC(mi, ni)) * kBN + get<1>(cRC(mi, ni));
          EXPECT(owner[x] == -1, "%s (row, col) owned twice", name);
          owner[x] = tid;
        }
      if (tid == Tr::kThreads - 1)
        for (int x = 0; x < kBM * kBN; ++x) {
          const int r = x / kBN;
          EXPECT(owner[x] >= 0 && owner[x] / 32 == r / 16 && (owner[x] % 32) / 4 == r % 8,
                 "%s row %d owned outside its quad", name, r);
        }
    }
    // (3) P reuse: the S accumulator regrouped by acc_as_A holds, value by value, the A fragment that the
    //     P V MMA expects for the (kBM x kBN) P tile (A = P, K = the key column).
    auto pA = make_tensor(tScS.data(), acc_as_A(tScS.layout()));
    auto wantA = thr.partition_A(make_identity_tensor(Shape<Int<kBM>, Int<kBN>>{}));
    EXPECT(size(pA) == size(wantA) && size<2>(pA) == size<2>(wantA) && size<1>(pA) == size<1>(wantA),
           "%s P fragment shape", name);
    for (int kk = 0; kk < size<2>(wantA); ++kk)
      for (int v = 0; v < size<0>(wantA); ++v)
        EXPECT(pA(v, 0, kk) == wantA(v, 0, kk), "%s tid %d P as A: k-slice %d value %d", name, tid, kk, v);
    // (4) O accumulator: same rows as S (so the rowcol rescale by alpha / 1/l hits the right rows).
    auto tOcO = thr.partition_C(make_identity_tensor(Shape<Int<kBM>, Int<D>>{}));
    auto oRC = make_tensor(tOcO.data(), rowcol(tOcO.layout()));
    for (int mi = 0; mi < 2; ++mi)
      for (int ni = 0; ni < size<1>(oRC); ++ni)
        EXPECT(get<0>(oRC(mi, ni)) == get<0>(cRC(mi, 0)), "%s tid %d O row", name, tid);
  }
  // (5) smem tiles: 16-byte chunks contiguous and aligned (gather / epilogue stores), bijective tiles,
  //     and V^T(d, key) is V(key, d).
  const typename Tr::SmemKV skv{};
  const typename Tr::SmemQ sq{};
  const typename Tr::SmemVt svt{};
  static bool seen[256 * 128];
  for (int x = 0; x < kBN * D; ++x) seen[x] = false;
  for (int r = 0; r < kBN; ++r)
    for (int c = 0; c < D; ++c) {
      const int off = skv(r, c);
      EXPECT(off >= 0 && off < kBN * D && !seen[off], "%s KV tile bijective at (%d,%d)", name, r, c);
      if (off >= 0 && off < kBN * D) seen[off] = true;
      EXPECT(off == skv(r, c - c % 8) + c % 8, "%s KV chunk contiguous (%d,%d)", name, r, c);
      EXPECT(svt(c, r) == off, "%s V^T view (%d,%d)", name, c, r);
    }
  for (int r = 0; r < kBM; ++r)
    for (int c = 0; c < D; c += 8) {
      EXPECT(sq(r, c) % 8 == 0, "%s Q chunk aligned (%d,%d)", name, r, c);
      for (int e = 1; e < 8; ++e) EXPECT(sq(r, c + e) == sq(r, c) + e, "%s Q chunk contiguous", name);
    }
  // (6) shared-memory carve-up of the kernels: stage buffers 128-byte aligned, disjoint, inside the budget.
  const int q_bytes = kBM * D * int(sizeof(typename Tr::Elem));
  EXPECT(Tr::kSmemBytes == q_bytes + 2 * Tr::kStages * Tr::kTileBytes, "%s attention smem", name);
  EXPECT(Tr::kStatsSmemBytes == q_bytes + Tr::kStages * Tr::kTileBytes, "%s row-stats smem", name);
  EXPECT(Tr::kScoreSmemBytes == Tr::kStatsSmemBytes + Tr::kStages * kBN * 8, "%s key-score smem", name);
  EXPECT(q_bytes % 128 == 0 && Tr::kTileBytes % 128 == 0 && Tr::kStatsSmemBytes % 8 == 0, "%s stage alignment",
         name);
  EXPECT(Tr::kTileBytes == kBN * D * int(sizeof(typename Tr::Elem)), "%s tile bytes", name);
  std::printf("%s BN %d: checked %d threads\n", name, kBN, int(Tr::kThreads));
}

int main() {
  // BN 64: the scoring kernels; BN 32: the attention (kMmaAttnBN in sparse_attention_prefill.cu)
  check<Traits<cutlass::bfloat16_t, 64>>("bf16 d64");
  check<Traits<cutlass::bfloat16_t, 128>>("bf16 d128");
  check<Traits<cutlass::half_t, 64>>("fp16 d64");
  check<Traits<cutlass::half_t, 128>>("fp16 d128");
  check<Traits<cutlass::bfloat16_t, 64, 32>>("bf16 d64");
  check<Traits<cutlass::bfloat16_t, 128, 32>>("bf16 d128");
  check<Traits<cutlass::half_t, 64, 32>>("fp16 d64");
  check<Traits<cutlass::half_t, 128, 32>>("fp16 d128");
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("all prefill MMA layouts OK\n");
  return 0;
}
