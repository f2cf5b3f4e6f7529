// Tile configuration and fragment-layout helpers of the tensor-core prefill attention
// (sparse_attention_prefill.cu). Host-usable: tests/cuda_host/prefill_mma_layouts.cu checks the layouts
// below against the PTX ISA fragment rules on the host (no GPU needed).
#pragma once

// clang-format off
#include <cute/tensor.hpp>  // first: the atom headers below rely on it
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/arch/mma_sm90.hpp>                // GMMA::ss_op_selector / rs_op_selector
#include <cute/atom/mma_traits_sm90_gmma.hpp>    // SM90 GMMA atoms, GMMA::Layout_*_SW128_Atom (sm_90a only at run time)
// clang-format on
#include <cutlass/numeric_types.h>

namespace softdec_prefill_mma {
using namespace cute;

template <typename E>
struct MmaAtomFor;
template <>
struct MmaAtomFor<cutlass::bfloat16_t> {
  using type = SM80_16x8x16_F32BF16BF16F32_TN;
};
template <>
struct MmaAtomFor<cutlass::half_t> {
  using type = SM80_16x8x16_F32F16F16F32_TN;
};

// BN: rows of a streamed tile (keys of the attention and the row statistics, window queries of the key scores).
template <typename E, int HeadDim, int BN = 64>
struct Traits {
  using Elem = E;
  static constexpr int D = HeadDim;
  static constexpr int kBM = 64, kBN = BN, kWarps = 4, kThreads = 32 * kWarps;
  static_assert(D == 64 || D == 128, "MMA path: head_dim 64 or 128");
  static_assert(BN == 32 || BN == 64, "streamed tile: 32 or 64 rows");
  // Warps tile M; the 16-wide N permutation lets one ldmatrix.x4 feed two n8 atoms of B.
  using TiledMma = TiledMMA<MMA_Atom<typename MmaAtomFor<E>::type>, Layout<Shape<Int<kWarps>, _1, _1>>,
                            Tile<Int<16 * kWarps>, _16, _16>>;
  // 8 x 64 smem atom, row-major, Swizzle<3,3,3>: the 16-byte chunk index (bits 3..5 of the element offset)
  // is xor-ed with the row (bits 6..8), so ldmatrix of 8 rows hits 8 distinct bank groups; a 16-byte chunk
  // (8 elements) stays contiguous, which the 16-byte gather stores rely on.
  using SmemAtom = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
  using SmemQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBM>, Int<D>>{}));
  using SmemKV = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kBN>, Int<D>>{}));
  // V^T view (d, key) of the V tile: the B operand of O += P V.
  using SmemVt = decltype(composition(SmemKV{}, make_layout(Shape<Int<D>, Int<kBN>>{}, GenRowMajor{})));
  using LdsmN = Copy_Atom<SM75_U32x4_LDSM_N, E>;
  using LdsmT = Copy_Atom<SM75_U16x8_LDSM_T, E>;
  // cp.async pipeline depth of the K / V (attention) and K or Q (scoring) tiles: tile j + 1 loads into one
  // stage while tile j is computed from the other.
  static constexpr int kStages = 2;
  static constexpr int kTileBytes = kBN * D * static_cast<int>(sizeof(E));  // one K, V or Q tile of kBN rows
  // Attention: Q tile (reused for the output) + kStages x (K, V).
  static constexpr int kSmemBytes = kBM * D * static_cast<int>(sizeof(E)) + 2 * kStages * kTileBytes;
  // Row statistics: window-Q tile + kStages K tiles.
  static constexpr int kStatsSmemBytes = kBM * D * static_cast<int>(sizeof(E)) + kStages * kTileBytes;
  // Key scores: K tile (the A operand) + kStages window-Q tiles + kStages x kBN (row max, 1 / row sum).
  static constexpr int kScoreSmemBytes = kStatsSmemBytes + kStages * kBN * 8;

  static_assert(size(TiledMma{}) == kThreads, "one thread per MMA lane");
  static_assert(kBM == 16 * kWarps, "each warp owns exactly 16 query rows (2 per thread)");
  static_assert(kBN % 16 == 0 && D % 16 == 0, "k-slices of 16");
  static_assert(cosize(SmemQ{}) == kBM * D && cosize(SmemKV{}) == kBN * D, "dense smem tiles");
  static_assert(size(SmemVt{}) == kBN * D, "V^T view covers the V tile");
  static_assert(kThreads % (D / 8) == 0 && kBN % (kThreads / (D / 8)) == 0, "gather: whole rows per pass");
  static_assert(kSmemBytes <= 227 * 1024 && kScoreSmemBytes <= 227 * 1024, "fits sm_80 / sm_90 shared memory");
  static_assert(kTileBytes % 128 == 0 && (kBM * D * sizeof(E)) % 128 == 0, "stage buffers stay 128-byte aligned");
};

// ((2, 2), M, N) accumulator -> ((2, M), (2, N)): rows owned by this thread x columns owned by it.
template <class L>
CUTE_HOST_DEVICE auto rowcol(L l) {
  static_assert(decltype(size<0>(l))::value == 4 && decltype(rank(l))::value == 3, "m16n8 C fragment");
  auto s = logical_divide(l, Shape<_2>{});
  return make_layout(make_layout(get<0, 1>(s), get<1>(s)), make_layout(get<0, 0>(s), get<2>(s)));
}

// S accumulator ((2, 2), M, N) -> A operand ((2, 2, 2), M, N / 2) of m16n8k16: the C fragments of the n8 tiles
// 2j and 2j+1 are exactly a0..a3 and a4..a7 of the A fragment of k-slice j (PTX ISA m16n8k16 A/C layouts).
template <class L>
CUTE_HOST_DEVICE auto acc_as_A(L l) {
  static_assert(decltype(size<0>(l))::value == 4 && decltype(size<2>(l))::value % 2 == 0, "pairs of n8 tiles");
  auto s = logical_divide(l, Shape<X, X, _2>{});
  return make_layout(make_layout(get<0>(s), get<2, 0>(s)), get<1>(s), get<2, 1>(s));
}

// ---------------------------------------------------------------- Hopper warpgroup MMA (wgmma, sm_90a)
// Tile configuration of prefill_wgmma_kernel: one warpgroup (128 threads) owns kBM = 64 compressed query rows;
// key tiles of kBN rows stream through kStages cp.async stages.
//   S = Q K^T: SS GMMA 64 x kBN x 16 (A = Q, B = K from smem, both K-major, 128-byte swizzle).
//   O += P V:  RS GMMA 64 x D x 16 (A = P from registers, B = V^T (d, key) from smem, MN-major: the V tile is
//              stored [key][d] with d contiguous, exactly what the cp.async row gather writes).
// Swizzle: GMMA's SW128 atoms are Swizzle<3,4,3> on byte addresses (16-byte chunk bits 4..6 xor 128-byte row
// bits 7..9) of an 8 x 128-byte block, i.e. Swizzle<3,3,3> on 16-bit element offsets; the Plain* layouts below
// spell the same maps in element offsets for the gathers (tests/cuda_host/prefill_mma_layouts.cu checks that
// they agree with the GMMA layouts offset by offset). The swizzle acts on absolute shared addresses, so every
// tile starts 1024-byte aligned (the kernel aligns its dynamic smem base, kSmemBytes includes the slack).
template <typename E, int HeadDim, int BN = 64>
struct WgTraits {
  using Elem = E;
  static constexpr int D = HeadDim;
  static constexpr int kBM = 64, kBN = BN, kThreads = 128, kStages = 2;
  static_assert(D == 64 || D == 128, "wgmma path: head_dim 64 or 128");
  static_assert(BN == 32 || BN == 64 || BN == 128, "key tile: 32, 64 or 128 rows");
  using MmaS = decltype(make_tiled_mma(
      SM90::GMMA::ss_op_selector<E, E, float, Shape<_64, Int<kBN>, Int<D>>, GMMA::Major::K, GMMA::Major::K>()));
  using MmaO = decltype(make_tiled_mma(
      SM90::GMMA::rs_op_selector<E, E, float, Shape<_64, Int<D>, Int<kBN>>, GMMA::Major::K, GMMA::Major::MN>()));
  using SmemQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E>{}, Shape<Int<kBM>, Int<D>>{}));
  using SmemK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E>{}, Shape<Int<kBN>, Int<D>>{}));
  using SmemVt = decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<E>{}, Shape<Int<D>, Int<kBN>>{}));  // (d, key)
  using PlainAtomK = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
  using PlainAtomMN = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_64, _8>, Stride<_1, _64>>{}));
  using PlainQ = decltype(tile_to_shape(PlainAtomK{}, Shape<Int<kBM>, Int<D>>{}));
  using PlainK = decltype(tile_to_shape(PlainAtomK{}, Shape<Int<kBN>, Int<D>>{}));
  using PlainVt = decltype(tile_to_shape(PlainAtomMN{}, Shape<Int<D>, Int<kBN>>{}));
  static constexpr int kQBytes = kBM * D * static_cast<int>(sizeof(E));
  static constexpr int kTileBytes = kBN * D * static_cast<int>(sizeof(E));
  static constexpr int kAlign = 1024;  // SW128 atom: 8 rows x 128 bytes
  // Q tile (reused for the output) + kStages x (K, V) + alignment slack of the dynamic smem base.
  static constexpr int kSmemBytes = kQBytes + 2 * kStages * kTileBytes + kAlign;
  static_assert(kQBytes % kAlign == 0 && kTileBytes % kAlign == 0, "every tile 1024-byte aligned");
  static_assert(kSmemBytes <= 227 * 1024, "fits sm_90 shared memory");
  static_assert(size(MmaS{}) == kThreads && size(MmaO{}) == kThreads, "one warpgroup");
  static_assert(cosize(PlainQ{}) == kBM * D && cosize(PlainK{}) == kBN * D && cosize(PlainVt{}) == kBN * D,
                "dense tiles");
};

// S accumulator of the SM90 64 x N F32 GMMA, ((2, 2, N/8), 1, 1) (value (v0, v1, v2) -> row 8 v1 of the warp's
// 16-row slab + lane / 4, col 8 v2 + 2 (lane % 4) + v0), as this thread's (rows, cols) = ((2, 1), (2, N/8, 1)).
template <class L>
CUTE_HOST_DEVICE auto rowcol_gmma(L l) {
  static_assert(decltype(rank(l))::value == 3 && decltype(rank<0>(l))::value == 3, "GMMA C fragment");
  static_assert(decltype(size<0, 0>(l))::value == 2 && decltype(size<0, 1>(l))::value == 2, "(2, 2, N/8)");
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

// S accumulator ((2, 2, N/8), 1, 1) -> A operand ((2, 2, 2), 1, N/16) of the RS 64 x D x 16 GMMA: the 16-bit A
// fragment of k-slice j is (k pair, row + 8, k + 8), i.e. the C values of n8 tiles 2j, 2j + 1 in order (the
// same correspondence as acc_as_A for m16n8k16; checked on the host against the TiledMma's A partition).
template <class L>
CUTE_HOST_DEVICE auto acc_as_A_gmma(L l) {
  static_assert(decltype(size<0, 2>(l))::value % 2 == 0, "pairs of n8 tiles");
  auto s = logical_divide(get<0, 2>(l), Shape<_2>{});  // ((2, N/16))
  return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<0, 0>(s)), get<1>(l),
                     coalesce(make_layout(get<0, 1>(s), get<2>(l))));
}

}  // namespace softdec_prefill_mma
