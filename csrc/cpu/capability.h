// Per-CPU-capability compilation of the CPU kernels (runtime ISA dispatch).
//
// CMake compiles every csrc/cpu/*.cpp once per level of SOFTDEC_CPU_LEVELS
// (x86-64: avx2 = -march=x86-64-v3, avx512 = -march=x86-64-v4; elsewhere one
// generic level), each copy with -DSOFTDEC_CPU_CAPABILITY=<level>. Everything
// the kernels define lives in namespace softdec::cpu_<level> (SOFTDEC_CPU_NS),
// so the copies never share a symbol, and each copy exports its boxed kernels
// as constant data (SOFTDEC_CPU_KERNELS): no code of a level runs before
// csrc/cpu_dispatch.cpp (compiled for the baseline) has chosen that level from
// cpuid/XGETBV and SOFTDEC_CPU_CAPABILITY. tools/check_isa.py checks the built
// library: AVX-512 instructions only inside softdec::cpu_avx512.
//
// A new CPU family file: wrap its code in `namespace softdec { namespace
// SOFTDEC_CPU_NS { ... } }`, end it with SOFTDEC_CPU_KERNELS(family, ...) and
// add the family to SOFTDEC_CPU_FAMILIES below.
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef SOFTDEC_CPU_CAPABILITY
#define SOFTDEC_CPU_CAPABILITY native
#endif

#define SOFTDEC_CPU_CAT_(a, b) a##b
#define SOFTDEC_CPU_CAT(a, b) SOFTDEC_CPU_CAT_(a, b)
// The namespace of this copy: cpu_avx2, cpu_avx512, cpu_generic, cpu_native ...
#define SOFTDEC_CPU_NS SOFTDEC_CPU_CAT(cpu_, SOFTDEC_CPU_CAPABILITY)

// The instruction-set extensions this copy is compiled for (build_info()'s cpu_isa).
#if defined(__AVX512F__)
#define SOFTDEC_CPU_ISA_AVX512F "avx512f "
#else
#define SOFTDEC_CPU_ISA_AVX512F ""
#endif
#if defined(__AVX512BW__)
#define SOFTDEC_CPU_ISA_AVX512BW "avx512bw "
#else
#define SOFTDEC_CPU_ISA_AVX512BW ""
#endif
#if defined(__AVX512VL__)
#define SOFTDEC_CPU_ISA_AVX512VL "avx512vl "
#else
#define SOFTDEC_CPU_ISA_AVX512VL ""
#endif
#if defined(__AVX512BF16__)
#define SOFTDEC_CPU_ISA_AVX512BF16 "avx512bf16 "
#else
#define SOFTDEC_CPU_ISA_AVX512BF16 ""
#endif
#if defined(__AVX2__)
#define SOFTDEC_CPU_ISA_AVX2 "avx2 "
#else
#define SOFTDEC_CPU_ISA_AVX2 ""
#endif
#if defined(__FMA__)
#define SOFTDEC_CPU_ISA_FMA "fma "
#else
#define SOFTDEC_CPU_ISA_FMA ""
#endif
#if defined(__F16C__)
#define SOFTDEC_CPU_ISA_F16C "f16c "
#else
#define SOFTDEC_CPU_ISA_F16C ""
#endif
#if defined(__ARM_NEON)
#define SOFTDEC_CPU_ISA_NEON "neon "
#else
#define SOFTDEC_CPU_ISA_NEON ""
#endif
#define SOFTDEC_CPU_ISA                                                                     \
  SOFTDEC_CPU_ISA_AVX512F SOFTDEC_CPU_ISA_AVX512BW SOFTDEC_CPU_ISA_AVX512VL                  \
  SOFTDEC_CPU_ISA_AVX512BF16 SOFTDEC_CPU_ISA_AVX2 SOFTDEC_CPU_ISA_FMA SOFTDEC_CPU_ISA_F16C    \
  SOFTDEC_CPU_ISA_NEON

// Every file of csrc/cpu that registers kernels (one table per family and level).
#define SOFTDEC_CPU_FAMILIES(X) \
  X(philox) X(sampling) X(soft_mixture) X(verify) X(sparse_attention) X(log_density) X(verify_tree) X(philox_normal) \
  X(distributed)

// Boxed kernels take torch StableIValue (uint64_t) stacks (static_assert in csrc/cpu_dispatch.cpp).
namespace softdec {
namespace cpu_dispatch {

using BoxedKernel = void (*)(uint64_t* stack, uint64_t num_args, uint64_t num_outputs);
struct KernelEntry {
  const char* op;
  BoxedKernel fn;
};
struct KernelTable {
  const KernelEntry* entries;
  size_t size;
  const char* isa;  // the extensions this copy was compiled for (SOFTDEC_CPU_ISA)
};

}  // namespace cpu_dispatch
}  // namespace softdec

// Ends a family file: its boxed kernels for this level, as constant data, e.g.
//   SOFTDEC_CPU_KERNELS(philox, {"philox_uniform", TORCH_BOX(&philox_uniform_cpu)})
#define SOFTDEC_CPU_KERNELS(family, ...)                                                        \
  namespace softdec {                                                                           \
  namespace SOFTDEC_CPU_NS {                                                                    \
  extern const ::softdec::cpu_dispatch::KernelTable family##_kernels;                           \
  static constexpr ::softdec::cpu_dispatch::KernelEntry family##_entries[] = {__VA_ARGS__};     \
  const ::softdec::cpu_dispatch::KernelTable family##_kernels = {                               \
      family##_entries, sizeof(family##_entries) / sizeof(family##_entries[0]), SOFTDEC_CPU_ISA}; \
  }                                                                                             \
  }
