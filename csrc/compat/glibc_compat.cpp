// manylinux_2_28 release builds (SOFTDEC_MANYLINUX=ON, tools/build_wheels.sh) on a newer glibc.
// Compiled without LTO (CMakeLists.txt): .symver directives do not survive LTO.
//
// 1. exp, log, pow: glibc 2.29 added new symbol versions (faster, results within 1 ulp of the old
//    ones); objects linked against glibc >= 2.29 reference exp@GLIBC_2.29, which glibc 2.28 lacks.
//    The link wraps them (-Wl,--wrap=exp,...): every call in the extension goes to __wrap_exp,
//    which calls the original exp@GLIBC_2.2.5.
// 2. __libc_single_threaded (glibc 2.32) is read by gcc >= 11's libstdc++ headers (ext/atomicity.h)
//    to skip atomic reference counting. This hidden definition satisfies those reads inside the
//    extension without the GLIBC_2.32 symbol: always 0 ("not single-threaded"), so reference counts
//    always use atomic operations, which is correct in every process.
// tests/test_wheel.py checks the built .so's glibc symbol versions.
#if defined(__linux__)
#include <features.h>  // __GLIBC__
#endif
#if defined(__linux__) && defined(__x86_64__) && defined(__GLIBC__)
__asm__(".symver softdec_exp_glibc225, exp@GLIBC_2.2.5");
__asm__(".symver softdec_log_glibc225, log@GLIBC_2.2.5");
__asm__(".symver softdec_pow_glibc225, pow@GLIBC_2.2.5");
extern "C" {
double softdec_exp_glibc225(double);
double softdec_log_glibc225(double);
double softdec_pow_glibc225(double, double);
__attribute__((visibility("hidden"))) double __wrap_exp(double x) { return softdec_exp_glibc225(x); }
__attribute__((visibility("hidden"))) double __wrap_log(double x) { return softdec_log_glibc225(x); }
__attribute__((visibility("hidden"))) double __wrap_pow(double x, double y) { return softdec_pow_glibc225(x, y); }
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
}
#endif
