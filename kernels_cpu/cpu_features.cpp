#include "kernels_cpu/cpu_features.h"

#include <cpuid.h>

namespace itera {

namespace {

CpuFeatures detect() {
    // libgcc's (and compiler-rt's) checks include the OS-enabled register state (XCR0) for AVX and AVX-512.
    __builtin_cpu_init();
    CpuFeatures f;
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    // clang 14's __builtin_cpu_supports knows neither f16c nor avxvnni: read their CPUID bits,
    // which count only where the OS saves the AVX registers (implied by avx2 above).
    unsigned a = 0, b = 0, c = 0, d = 0;
    f.f16c = f.avx2 && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    f.avxvnni = f.avx2 && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & bit_AVXVNNI);
    return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures features = detect();
    return features;
}

}  // namespace itera
