#include "bench/fma_peak.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>

namespace {

constexpr long kIterations = 4'000'000;
volatile float seed = 1.0f;  // read at run time, so the compiler cannot merge or fold the chains

// Twelve independent chains cover two FMA pipes times their latency (4 cycles on recent cores).
#define ITERA_CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

__attribute__((target("avx512f"))) float chains_512(long n) {
    const float s = seed;
#define INIT(i) __m512 a##i = _mm512_set1_ps(s + static_cast<float>(i) * 0.25f);
    ITERA_CHAINS(INIT)
#undef INIT
    const __m512 m = _mm512_set1_ps(0.5f * s), c = _mm512_set1_ps(0.25f * s);
    for (long k = 0; k < n; k++) {
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, m, c);
        ITERA_CHAINS(STEP)
#undef STEP
    }
    alignas(64) float lanes[16] = {};  // (_mm512_reduce_add_ps trips g++ 12's GCC bug 105593)
#define SUM(i) _mm512_store_ps(lanes, _mm512_add_ps(a##i, _mm512_load_ps(lanes)));
    ITERA_CHAINS(SUM)
#undef SUM
    float sum = 0.0f;
    for (float v : lanes) sum += v;
    return sum;
}

__attribute__((target("avx2,fma"))) float chains_256(long n) {
    const float s = seed;
#define INIT(i) __m256 a##i = _mm256_set1_ps(s + static_cast<float>(i) * 0.25f);
    ITERA_CHAINS(INIT)
#undef INIT
    const __m256 m = _mm256_set1_ps(0.5f * s), c = _mm256_set1_ps(0.25f * s);
    for (long k = 0; k < n; k++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
        ITERA_CHAINS(STEP)
#undef STEP
    }
    alignas(32) float lanes[8] = {};
#define SUM(i) _mm256_store_ps(lanes, _mm256_add_ps(a##i, _mm256_load_ps(lanes)));
    ITERA_CHAINS(SUM)
#undef SUM
    float sum = 0.0f;
    for (float v : lanes) sum += v;
    return sum;
}

}  // namespace

double measured_fma_peak_gflops(bool wide) {
    double best = 0.0;
    for (int run = 0; run < 5; run++) {
        const auto t0 = std::chrono::steady_clock::now();
        const float sink = wide ? chains_512(kIterations) : chains_256(kIterations);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (sink == -1.0f) return 0.0;  // never: keeps the result live
        best = std::max(best, 12.0 * kIterations * (wide ? 32 : 16) / s * 1e-9);
    }
    return best;
}
