// softdec._C: the thin pybind11 module. Importing it loads the op library (the
// STABLE_TORCH_LIBRARY blocks in this shared object register with the
// dispatcher); ops are called through torch.ops.softdec, never through pybind11.
#include <pybind11/pybind11.h>

#include "cpu_dispatch.h"

#include <string>

namespace py = pybind11;

namespace {

// The extensions of the CPU level in use (csrc/cpu_dispatch.cpp), e.g. avx512f avx512bw ... fma.
py::list cpu_isa() {
  py::list isa;
  const std::string& s = softdec::cpu_dispatch::status().active_isa;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find(' ', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) isa.append(s.substr(start, end - start));
    start = end + 1;
  }
  return isa;
}

py::list str_list(const std::vector<std::string>& v) {
  py::list l;
  for (const auto& x : v) l.append(x);
  return l;
}

py::dict build_info() {
  py::dict d;
  d["version"] = SOFTDEC_VERSION;
  d["build_type"] = SOFTDEC_BUILD_TYPE;
  d["cpu_arch"] = SOFTDEC_CPU_ARCH;
  d["cpu_isa"] = cpu_isa();
  const auto& cpu = softdec::cpu_dispatch::status();
  d["cpu_capability"] = cpu.active;
  d["cpu_capabilities"] = str_list(cpu.compiled);
  d["cpu_capabilities_supported"] = str_list(cpu.supported);
#if defined(SOFTDEC_WITH_CUDA)
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  std::string archs = SOFTDEC_CUDA_ARCHS;
  py::list arch_list;
  size_t start = 0;
  while (start < archs.size()) {
    size_t end = archs.find(';', start);
    if (end == std::string::npos) end = archs.size();
    if (end > start) arch_list.append(archs.substr(start, end - start));
    start = end + 1;
  }
  d["cuda_archs"] = arch_list;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = "unknown";
#endif
#if defined(__SANITIZE_ADDRESS__)
  d["sanitizers"] = true;
#else
  d["sanitizers"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  // A CPU level that cannot run here (or a bad SOFTDEC_CPU_CAPABILITY) fails the import, clearly.
  const auto& cpu = softdec::cpu_dispatch::status();
  if (!cpu.error.empty()) throw py::import_error(cpu.error);
  m.doc() = "softdec native module (build info; importing it registers the ops)";
  m.def("build_info", &build_info, "Compile-time facts about this build of softdec.");
}
