// Every softdec schema, in one STABLE_TORCH_LIBRARY block. Implementations
// register per backend in csrc/cpu/*.cpp (_cpu) and csrc/cuda/*.cu (_cuda).
// Conventions: per-row parameters are 1-D tensors of length B on the device of
// the main input (the Python wrappers expand scalars); seed/offset are int64.
#include "common.h"

STABLE_TORCH_LIBRARY(softdec, m) {
  // ---- RNG (csrc/cpu/philox.cpp, csrc/cuda/philox.cu) ----
  // The Philox4x32-10 stream: out[r, i] = uniform(seed[r], offset[r], i), float32 in (0, 1).
  m.def("philox_uniform(Tensor seed, Tensor offset, int n) -> Tensor");


  // ---- soft mixture (csrc/cpu/soft_mixture.cpp, csrc/cuda/soft_mixture.cu) ----


  // ---- sampling (csrc/cpu/sampling.cpp, csrc/cuda/sampling.cu) ----


  // ---- speculative verification (csrc/cpu/verify.cpp, csrc/cuda/verify.cu) ----


  // ---- token-sparse attention (csrc/cpu/sparse_attention.cpp, csrc/cuda/sparse_attention.cu) ----


}
