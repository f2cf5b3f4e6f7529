// Runtime CPU capability dispatch: picks one compiled level of the CPU kernels
// (csrc/cpu/capability.h) from the CPU's features and SOFTDEC_CPU_CAPABILITY,
// and registers, for every CPU op, a boxed forwarder to that level's kernel.
//
// Compiled for the baseline (no -march), like registration.cpp and module.cpp:
// nothing here may need more than the x86-64 base ISA, because this is what
// runs before a level is known. No code of a level runs before it is chosen:
// the levels' tables are constant data.
//
// Levels (x86-64, lowest first): generic (the compiler's default ISA; not built
// by default), avx2 (x86-64-v3: AVX2 FMA F16C BMI1 BMI2 LZCNT MOVBE), avx512
// (x86-64-v4: + AVX-512 F BW VL DQ CD). Other architectures: generic (the place
// for neon / sve levels: a name, a feature test, a CMake flag set). "native"
// (the single-level -march=native build, SOFTDEC_CPU_ARCH=native) is trusted to
// match the machine that built it.
#include "cpu_dispatch.h"

#include "common.h"
#include "cpu/capability.h"

#include <array>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#define SOFTDEC_CPU_X86 1
#include <cpuid.h>
#endif

static_assert(std::is_same_v<StableIValue, uint64_t>,
              "cpu_dispatch::BoxedKernel assumes StableIValue is uint64_t");

// ------------------------------------------------------------------ the compiled levels' tables
#define SOFTDEC_DECLARE_TABLE(family) extern const ::softdec::cpu_dispatch::KernelTable family##_kernels;
#define SOFTDEC_DECLARE_LEVEL(level)                    \
  namespace softdec {                                   \
  namespace cpu_##level {                               \
  SOFTDEC_CPU_FAMILIES(SOFTDEC_DECLARE_TABLE)           \
  }                                                     \
  }
#define SOFTDEC_TABLE_REF(family) &family##_kernels,

#ifdef SOFTDEC_CPU_HAVE_generic
SOFTDEC_DECLARE_LEVEL(generic)
#endif
#ifdef SOFTDEC_CPU_HAVE_avx2
SOFTDEC_DECLARE_LEVEL(avx2)
#endif
#ifdef SOFTDEC_CPU_HAVE_avx512
SOFTDEC_DECLARE_LEVEL(avx512)
#endif
#ifdef SOFTDEC_CPU_HAVE_native
SOFTDEC_DECLARE_LEVEL(native)
#endif

namespace softdec {
namespace cpu_dispatch {
namespace {

#define SOFTDEC_COUNT_FAMILY(family) +1
constexpr size_t kFamilies = 0 SOFTDEC_CPU_FAMILIES(SOFTDEC_COUNT_FAMILY);

// ------------------------------------------------------------------ CPU features
struct Features {
  std::vector<std::string> present;  // feature names this CPU + OS support
  bool has(const char* f) const {
    for (const auto& p : present)
      if (p == f) return true;
    return false;
  }
};

#if defined(SOFTDEC_CPU_X86)
uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

Features detect() {
  Features f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const unsigned c1 = c;
  const bool osxsave = c1 & (1u << 27);
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  // The OS saves and restores the state: XMM|YMM (bits 1-2) for AVX; opmask,
  // ZMM0-15 upper halves and ZMM16-31 (bits 5-7) as well for AVX-512.
  const bool os_ymm = (xcr0 & 0x6) == 0x6;
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;
  unsigned b7 = 0, c7 = 0, d7 = 0, a7 = 0;
  if (!__get_cpuid_count(7, 0, &a7, &b7, &c7, &d7)) b7 = 0;
  unsigned ce = 0;
  if (__get_cpuid(0x80000001u, &a, &b, &c, &d)) ce = c;
  auto add = [&](bool on, const char* name) {
    if (on) f.present.emplace_back(name);
  };
  add((c1 & (1u << 19)) && (c1 & (1u << 20)), "sse4.2");  // SSE4.1 and SSE4.2
  add(c1 & (1u << 23), "popcnt");
  add(c1 & (1u << 22), "movbe");
  add(ce & (1u << 5), "lzcnt");
  add(b7 & (1u << 3), "bmi1");
  add(b7 & (1u << 8), "bmi2");
  add(os_ymm && (c1 & (1u << 28)), "avx");
  add(os_ymm && (b7 & (1u << 5)), "avx2");
  add(os_ymm && (c1 & (1u << 12)), "fma");
  add(os_ymm && (c1 & (1u << 29)), "f16c");
  add(os_zmm && (b7 & (1u << 16)), "avx512f");
  add(os_zmm && (b7 & (1u << 17)), "avx512dq");
  add(os_zmm && (b7 & (1u << 28)), "avx512cd");
  add(os_zmm && (b7 & (1u << 30)), "avx512bw");
  add(os_zmm && (b7 & (1u << 31)), "avx512vl");
  return f;
}
#else
Features detect() { return {}; }
#endif

// detect(), less the features named in SOFTDEC_CPU_HIDE_FEATURES (comma-separated; a testing
// hook that plays an older CPU: e.g. "avx512f" makes avx512 unsupported here).
Features detect_visible() {
  Features f = detect();
  const char* hide = std::getenv("SOFTDEC_CPU_HIDE_FEATURES");
  if (!hide || !*hide) return f;
  std::vector<std::string> keep;
  for (const auto& p : f.present) {
    const std::string list = std::string(",") + hide + ",";
    if (list.find("," + p + ",") == std::string::npos) keep.push_back(p);
  }
  f.present = keep;
  return f;
}

// ------------------------------------------------------------------ levels
struct Level {
  const char* name;
  const char* const* needs;  // CPU features the level's -march enables (nullptr-terminated)
  std::array<const KernelTable*, kFamilies> tables;
};

[[maybe_unused]] constexpr const char* kNoNeeds[] = {nullptr};
[[maybe_unused]] constexpr const char* kAvx2Needs[] = {"avx",  "avx2", "fma",   "f16c",   "bmi1",
                                                       "bmi2", "lzcnt", "movbe", "popcnt", "sse4.2",
                                                       nullptr};
[[maybe_unused]] constexpr const char* kAvx512Needs[] = {
    "avx",      "avx2",     "fma",      "f16c",     "bmi1",    "bmi2",     "lzcnt", "movbe",
    "popcnt",   "sse4.2",   "avx512f",  "avx512dq", "avx512cd", "avx512bw", "avx512vl", nullptr};

// Every level this architecture knows, lowest first (the names SOFTDEC_CPU_CAPABILITY accepts).
#if defined(SOFTDEC_CPU_X86)
constexpr const char* kKnownLevels[] = {"generic", "avx2", "avx512", "native"};
#else
constexpr const char* kKnownLevels[] = {"generic", "native"};
#endif

std::vector<Level> compiled_levels() {
  std::vector<Level> v;
#ifdef SOFTDEC_CPU_HAVE_generic
  {
    using namespace ::softdec::cpu_generic;
    v.push_back({"generic", kNoNeeds, {SOFTDEC_CPU_FAMILIES(SOFTDEC_TABLE_REF)}});
  }
#endif
#ifdef SOFTDEC_CPU_HAVE_avx2
  {
    using namespace ::softdec::cpu_avx2;
    v.push_back({"avx2", kAvx2Needs, {SOFTDEC_CPU_FAMILIES(SOFTDEC_TABLE_REF)}});
  }
#endif
#ifdef SOFTDEC_CPU_HAVE_avx512
  {
    using namespace ::softdec::cpu_avx512;
    v.push_back({"avx512", kAvx512Needs, {SOFTDEC_CPU_FAMILIES(SOFTDEC_TABLE_REF)}});
  }
#endif
#ifdef SOFTDEC_CPU_HAVE_native
  {
    using namespace ::softdec::cpu_native;
    v.push_back({"native", kNoNeeds, {SOFTDEC_CPU_FAMILIES(SOFTDEC_TABLE_REF)}});
  }
#endif
  return v;
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

std::vector<std::string> missing(const Level& l, const Features& f) {
  std::vector<std::string> m;
  for (const char* const* n = l.needs; *n; ++n)
    if (!f.has(*n)) m.emplace_back(*n);
  return m;
}

// ------------------------------------------------------------------ the chosen kernels
constexpr size_t kMaxOps = 64;
std::array<BoxedKernel, kMaxOps> g_kernel{};   // op index -> the chosen level's kernel
std::array<const char*, kMaxOps> g_op_name{};  // op index -> op name (the lowest level's order)
size_t g_ops = 0;

struct Chosen {
  Status status;
  const Level* level = nullptr;
  std::vector<Level> levels;
};

Chosen choose() {
  Chosen c;
  c.levels = compiled_levels();
  Status& s = c.status;
  const Features feats = detect_visible();
  for (const auto& l : c.levels) {
    s.compiled.emplace_back(l.name);
    if (missing(l, feats).empty()) s.supported.emplace_back(l.name);
  }
  const char* env = std::getenv("SOFTDEC_CPU_CAPABILITY");
  s.requested = env ? env : "";
  std::string want;
  for (char ch : s.requested) want += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const std::string compiled = join(s.compiled);
  if (want.empty() || want == "auto") {
    for (const auto& l : c.levels)
      if (missing(l, feats).empty()) c.level = &l;  // the highest this CPU runs
    if (!c.level) {
      s.error = "softdec: this CPU (or its OS) cannot run any CPU level compiled into softdec (" +
                compiled + "); the lowest, " + c.levels.front().name + ", needs " +
                join(missing(c.levels.front(), feats)) +
                ". Build softdec from source on this machine (pip install --no-build-isolation "
                "--no-binary softdec softdec, or SOFTDEC_CPU_ARCH=native).";
    }
  } else {
    bool known = false;
    for (const char* k : kKnownLevels) known = known || want == k;
    for (const auto& l : c.levels)
      if (want == l.name) c.level = &l;
    if (!known) {
      std::string valid = "auto";
      for (const char* k : kKnownLevels) valid += std::string(", ") + k;
      s.error = "SOFTDEC_CPU_CAPABILITY='" + s.requested + "' is not a CPU capability level; " +
                "valid values: " + valid + " (compiled in this build: " + compiled + ")";
    } else if (!c.level) {
      s.error = "SOFTDEC_CPU_CAPABILITY=" + want + " was not compiled into this build of softdec " +
                "(compiled: " + compiled + "; supported by this CPU: " + join(s.supported) + ")";
    } else if (!missing(*c.level, feats).empty()) {
      s.error = "SOFTDEC_CPU_CAPABILITY=" + want + " needs CPU features this CPU (or its OS) lacks: " +
                join(missing(*c.level, feats)) + " (supported here: " +
                (s.supported.empty() ? std::string("none") : join(s.supported)) + ")";
      c.level = nullptr;
    }
  }
  if (c.level) {
    s.active = c.level->name;
    s.active_isa = c.level->tables[0]->isa;
  }
  return c;
}

const Chosen& chosen() {
  static const Chosen c = choose();
  return c;
}

[[noreturn]] void no_kernel(size_t i) {
  const Status& s = chosen().status;
  throw std::runtime_error(s.error.empty()
                               ? std::string("softdec: no CPU kernel for ") + g_op_name[i] +
                                     " at level " + s.active
                               : s.error);
}

template <size_t I>
void forward(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
  const BoxedKernel k = g_kernel[I];
  if (!k) no_kernel(I);
  k(stack, num_args, num_outputs);
}

template <size_t... I>
constexpr std::array<BoxedKernel, kMaxOps> make_forwarders(std::index_sequence<I...>) {
  return {{&forward<I>...}};
}
constexpr std::array<BoxedKernel, kMaxOps> kForwarders =
    make_forwarders(std::make_index_sequence<kMaxOps>{});

BoxedKernel find(const Level& l, const char* op) {
  for (const KernelTable* t : l.tables)
    for (size_t j = 0; j < t->size; ++j)
      if (std::strcmp(t->entries[j].op, op) == 0) return t->entries[j].fn;
  return nullptr;
}

}  // namespace

const Status& status() { return chosen().status; }

}  // namespace cpu_dispatch
}  // namespace softdec

// One forwarder per op, bound to the chosen level's kernel (the op list is the
// lowest compiled level's; every level compiles the same sources).
STABLE_TORCH_LIBRARY_IMPL(softdec, CPU, m) {
  using namespace softdec::cpu_dispatch;
  const Chosen& c = chosen();
  if (c.levels.empty()) return;
  for (const KernelTable* t : c.levels.front().tables) {
    for (size_t j = 0; j < t->size; ++j) {
      SOFTDEC_CHECK(g_ops < kMaxOps, "softdec: more than ", kMaxOps,
                    " CPU ops; raise kMaxOps in csrc/cpu_dispatch.cpp");
      const size_t i = g_ops++;
      g_op_name[i] = t->entries[j].op;
      g_kernel[i] = c.level ? find(*c.level, t->entries[j].op) : nullptr;
      m.impl(t->entries[j].op, kForwarders[i]);
    }
  }
}
