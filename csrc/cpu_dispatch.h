// Runtime CPU capability dispatch (csrc/cpu_dispatch.cpp): which compiled level
// of the CPU kernels (csrc/cpu/capability.h) this process uses. No torch here:
// module.cpp (pybind11 only) reads it for build_info() and the import check.
#pragma once

#include <string>
#include <vector>

namespace softdec {
namespace cpu_dispatch {

struct Status {
  std::string active;                  // the level in use; empty when none could be chosen
  std::string active_isa;              // its instruction-set extensions, space-separated
  std::vector<std::string> compiled;   // the levels in this build, lowest first
  std::vector<std::string> supported;  // those this CPU and OS can run
  std::string requested;               // SOFTDEC_CPU_CAPABILITY as given ("" = not set)
  std::string error;                   // why no level was chosen (then every CPU op raises it)
};

// Chosen once (cpuid + XGETBV, then SOFTDEC_CPU_CAPABILITY), on first use.
const Status& status();

}  // namespace cpu_dispatch
}  // namespace softdec
