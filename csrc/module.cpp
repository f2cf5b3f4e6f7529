// softdec._C: the thin pybind11 module. Importing it loads the op library (the
// STABLE_TORCH_LIBRARY blocks in this shared object register with the
// dispatcher); ops are called through torch.ops.softdec, never through pybind11.
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

namespace {

py::list cpu_isa() {
  py::list isa;
#if defined(__AVX512F__)
  isa.append("avx512f");
#endif
#if defined(__AVX512BW__)
  isa.append("avx512bw");
#endif
#if defined(__AVX512BF16__)
  isa.append("avx512bf16");
#endif
#if defined(__AVX2__)
  isa.append("avx2");
#endif
#if defined(__FMA__)
  isa.append("fma");
#endif
#if defined(__F16C__)
  isa.append("f16c");
#endif
#if defined(__ARM_NEON)
  isa.append("neon");
#endif
  return isa;
}

py::dict build_info() {
  py::dict d;
  d["version"] = SOFTDEC_VERSION;
  d["build_type"] = SOFTDEC_BUILD_TYPE;
  d["cpu_arch"] = SOFTDEC_CPU_ARCH;
  d["cpu_isa"] = cpu_isa();
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
  m.doc() = "softdec native module (build info; importing it registers the ops)";
  m.def("build_info", &build_info, "Compile-time facts about this build of softdec.");
}
