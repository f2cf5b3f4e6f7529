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

// ---------------------------------------------------------------- Hopper wgmma kernel (prefill_wgmma_kernel)
// The SM90 GMMA fragments the kernel relies on, from CuTe's layout algebra of the TiledMmas it uses, against
// the PTX ISA wgmma fragment rules (warpgroup of 4 warps, warp w owns rows 16w .. 16w + 15 of the 64-row tile).
template <class Tr>
void check_wg(const char* name) {
  constexpr int D = Tr::D, kBM = Tr::kBM, kBN = Tr::kBN;
  typename Tr::MmaS mma_s;
  typename Tr::MmaO mma_o;
  static int owner[64 * 128];
  for (int x = 0; x < kBM * kBN; ++x) owner[x] = -1;
  for (int tid = 0; tid < Tr::kThreads; ++tid) {
    const int warp = tid / 32, lane = tid % 32;
    auto ts = mma_s.get_thread_slice(tid);
    auto to = mma_o.get_thread_slice(tid);
    // (a) S accumulator (PTX "wgmma .f32 accumulator D" 64 x N): value ((v0, v1, v2)) -> row 16 warp + lane/4
    //     + 8 v1, col 8 v2 + 2 (lane % 4) + v0.
    auto tScS = ts.partition_C(make_identity_tensor(Shape<Int<kBM>, Int<kBN>>{}));
    EXPECT(size(tScS) == kBM * kBN / 128, "%s S values per thread", name);
    for (int i = 0; i < size(tScS); ++i) {
      const int v0 = i % 2, v1 = (i / 2) % 2, v2 = i / 4;
      const int r = 16 * warp + lane / 4 + 8 * v1, c = 8 * v2 + 2 * (lane % 4) + v0;
      EXPECT(get<0>(tScS(i)) == r && get<1>(tScS(i)) == c, "%s tid %d S value %d: (%d,%d) want (%d,%d)", name, tid,
             i, int(get<0>(tScS(i))), int(get<1>(tScS(i))), r, c);
    }
    // (b) rowcol_gmma: (mi, ni) -> this thread's 2 rows x kBN/4 cols; the softmax loops rely on the row being
    //     fixed along ni and on every (row, col) having one owner inside the row's quad (lanes 4g .. 4g + 3 of
    //     the row's warp), so the xor-1 / xor-2 shuffles reduce over exactly the row.
    auto cRC = make_tensor(tScS.data(), rowcol_gmma(tScS.layout()));
    EXPECT(size<0>(cRC) == 2 && size<1>(cRC) == kBN / 4, "%s rowcol_gmma shape", name);
    for (int mi = 0; mi < 2; ++mi)
      for (int ni = 0; ni < size<1>(cRC); ++ni) {
        const int r = get<0>(cRC(mi, ni)), c = get<1>(cRC(mi, ni));
        EXPECT(r == 16 * warp + lane / 4 + 8 * mi, "%s tid %d rowcol_gmma row (%d,%d)", name, tid, mi, ni);
        EXPECT(c == 8 * (ni / 2) + 2 * (lane % 4) + ni % 2, "%s tid %d rowcol_gmma col (%d,%d)", name, tid, mi, ni);
        if (r >= 0 && r < kBM && c >= 0 && c < kBN) {
          EXPECT(owner[r * kBN + c] == -1, "%s (%d,%d) owned twice", name, r, c);
          owner[r * kBN + c] = tid;
        }
      }
    // (c) P as the A operand of the RS GMMA: the S registers regrouped by acc_as_A_gmma are, value by value, the
    //     A fragment CuTe's RS TiledMma expects for the (kBM x kBN) P tile, which is the PTX 16-bit A register
    //     fragment: a0,a1 = (g, 2t + {0,1}), a2,a3 = (g + 8, ..), a4..a7 = the same at k + 8 (g = lane / 4 in
    //     the warp's 16-row slab, t = lane % 4), per k-slice of 16.
    auto pA = make_tensor(tScS.data(), acc_as_A_gmma(tScS.layout()));
    auto wantA = to.partition_A(make_identity_tensor(Shape<Int<kBM>, Int<kBN>>{}));
    EXPECT(size<0>(wantA) == 8 && size<1>(wantA) == 1 && size<2>(wantA) == kBN / 16, "%s RS A shape", name);
    EXPECT(size<0>(pA) == 8 && size<1>(pA) == 1 && size<2>(pA) == kBN / 16, "%s P-as-A shape", name);
    for (int kk = 0; kk < kBN / 16; ++kk)
      for (int v = 0; v < 8; ++v) {
        const int r = 16 * warp + lane / 4 + 8 * ((v / 2) % 2), c = 16 * kk + 2 * (lane % 4) + v % 2 + 8 * (v / 4);
        EXPECT(get<0>(wantA(v, 0, kk)) == r && get<1>(wantA(v, 0, kk)) == c, "%s tid %d RS A v%d kk%d vs PTX", name,
               tid, v, kk);
        EXPECT(pA(v, 0, kk) == wantA(v, 0, kk), "%s tid %d P as A: k-slice %d value %d", name, tid, kk, v);
      }
    // (d) O accumulator (64 x D): the same rows as S per mi (the alpha / 1 / l rescales hit the right rows),
    //     and its own (row, col) map for the epilogue (taken from partition_C of an identity tensor).
    auto tOcO = to.partition_C(make_identity_tensor(Shape<Int<kBM>, Int<D>>{}));
    auto oRC = make_tensor(tOcO.data(), rowcol_gmma(tOcO.layout()));
    EXPECT(size<0>(oRC) == 2 && size<1>(oRC) == D / 4, "%s O rowcol shape", name);
    for (int mi = 0; mi < 2; ++mi)
      for (int ni = 0; ni < size<1>(oRC); ++ni)
        EXPECT(get<0>(oRC(mi, ni)) == get<0>(cRC(mi, 0)) && get<1>(oRC(mi, ni)) == 8 * (ni / 2) + 2 * (lane % 4) + ni % 2,
               "%s tid %d O rowcol (%d,%d)", name, tid, mi, ni);
  }
  for (int x = 0; x < kBM * kBN; ++x) {
    const int r = x / kBN;
    EXPECT(owner[x] >= 0 && owner[x] / 32 == r / 16 && (owner[x] % 32) / 4 == r % 8, "%s S (%d,%d) owner", name, r,
           x % kBN);
  }
  // (e) smem: the GMMA layouts (what the descriptors encode) against the element-offset Plain* layouts the
  //     gathers and the epilogue write through, offset by offset; SW128 within each 1024-byte atom (byte
  //     offset = swz(row_in_atom * 128 + byte_in_row), swz(x) = x ^ ((x >> 7) & 7) << 4); 16-byte chunks
  //     contiguous (the 16-byte cp.async / stores); bijective tiles.
  using E = typename Tr::Elem;
  alignas(1024) static E buf[128 * 128];
  auto swz = [](int x) { return x ^ (((x >> 7) & 7) << 4); };
  auto check_tile = [&](auto gmma, auto plain, int rows, int cols, bool k_major, const char* what) {
    auto t = make_tensor(make_smem_ptr(buf), gmma);
    static bool seen[128 * 128];
    for (int x = 0; x < rows * cols; ++x) seen[x] = false;
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const int off = int(&t(r, c) - buf);
        EXPECT(off == int(plain(r, c)), "%s %s gmma vs plain at (%d,%d): %d vs %d", name, what, r, c, off,
               int(plain(r, c)));
        EXPECT(off >= 0 && off < rows * cols && !seen[off], "%s %s bijective (%d,%d)", name, what, r, c);
        if (off >= 0 && off < rows * cols) seen[off] = true;
        // row of the 128-byte block = the K-major row or the MN-major k index; byte = the contiguous index
        const int blk_row = k_major ? r % 8 : c % 8, in_row = k_major ? c % 64 : r % 64;
        EXPECT((2 * off) % 1024 == swz(blk_row * 128 + 2 * in_row), "%s %s SW128 at (%d,%d)", name, what, r, c);
        const int r0 = k_major ? r : r - r % 8, c0 = k_major ? c - c % 8 : c;
        EXPECT(int(plain(r, c)) == int(plain(r0, c0)) + (k_major ? c % 8 : r % 8), "%s %s chunk (%d,%d)", name, what,
               r, c);
      }
  };
  check_tile(typename Tr::SmemQ{}, typename Tr::PlainQ{}, kBM, D, true, "Q");
  check_tile(typename Tr::SmemK{}, typename Tr::PlainK{}, kBN, D, true, "K");
  check_tile(typename Tr::SmemVt{}, typename Tr::PlainVt{}, D, kBN, false, "V^T");
  EXPECT(Tr::kSmemBytes == Tr::kQBytes + 2 * Tr::kStages * Tr::kTileBytes + 1024, "%s wgmma smem", name);
  std::printf("%s wgmma BN %d: checked %d threads\n", name, kBN, int(Tr::kThreads));
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
  // the Hopper kernel's configurations (kWgmmaAttnBN in sparse_attention_prefill.cu)
  check_wg<WgTraits<cutlass::bfloat16_t, 64>>("bf16 d64");
  check_wg<WgTraits<cutlass::bfloat16_t, 128>>("bf16 d128");
  check_wg<WgTraits<cutlass::half_t, 64>>("fp16 d64");
  check_wg<WgTraits<cutlass::half_t, 128>>("fp16 d128");
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("all prefill MMA layouts OK\n");
  return 0;
}
