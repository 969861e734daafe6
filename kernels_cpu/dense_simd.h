// The SIMD bodies of dense_ops.h, written once with xsimd and instantiated per instruction set
// by dense_avx2.cpp and dense_avx512.cpp (each compiled with its own -m flags). Everything here
// has internal linkage (an unnamed namespace): a function with external linkage compiled with
// -mavx512f could be the copy the linker keeps for code that runs on any CPU.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <xsimd/xsimd.hpp>

#include "kernels_cpu/dense_kernels.h"

namespace itera {
namespace {

template <class Arch>
struct Dense {
    using F = xsimd::batch<float, Arch>;
    static constexpr int32_t L = static_cast<int32_t>(F::size);

    static F load_f16(const uint16_t* p) {
        if constexpr (L == 16) {
            return F(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
        } else {
            return F(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
        }
    }
    static float f16_scalar(uint16_t h) { return _cvtsh_ss(h); }
    // L weights (fp32 or fp16) as FP32, and one of them
    static F load_w(const float* p) { return F::load_unaligned(p); }
    static F load_w(const uint16_t* p) { return load_f16(p); }
    static float scalar_w(float v) { return v; }
    static float scalar_w(uint16_t v) { return f16_scalar(v); }

    // Lane i = the sum of acc[i]'s lanes. xsimd 8.1's haddp is right for AVX2 and wrong for
    // AVX-512 (tests/test_dense_kernels.cpp caught it): halve each AVX-512 register to AVX2 first.
    static F reduce_rows(const F* acc) {
        if constexpr (L == 16) {
            using F8 = xsimd::batch<float, xsimd::fma3<xsimd::avx2>>;
            F8 half[2][8];
            for (int32_t i = 0; i < 16; i++) {
                const __m512 v = acc[i];
                half[i / 8][i % 8] = F8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
            }
            const __m256 lo = xsimd::haddp(half[0]), hi = xsimd::haddp(half[1]);
            return F(_mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1));
        } else {
            return xsimd::haddp(acc);
        }
    }

    // L rows at a time: one accumulator per row, reduced together by haddp (lane r = row r's sum).
    template <class T>
    static void matvec(const T* w, int32_t rows, int32_t cols, const float* x, float* y) {
        const int32_t body = cols - cols % L;
        int32_t r = 0;
        for (; r + L <= rows; r += L) {
            F acc[L];
            for (int32_t i = 0; i < L; i++) acc[i] = F(0.0f);
            for (int32_t c = 0; c < body; c += L) {
                const F xv = F::load_unaligned(x + c);
                for (int32_t i = 0; i < L; i++)
                    acc[i] = xsimd::fma(load_w(w + static_cast<int64_t>(r + i) * cols + c), xv, acc[i]);
            }
            F sums = reduce_rows(acc);
            if (body < cols) {
                alignas(64) float tail[L];
                for (int32_t i = 0; i < L; i++) {
                    float t = 0.0f;
                    const T* row = w + static_cast<int64_t>(r + i) * cols;
                    for (int32_t c = body; c < cols; c++) t += scalar_w(row[c]) * x[c];
                    tail[i] = t;
                }
                sums += F::load_aligned(tail);
            }
            sums.store_unaligned(y + r);
        }
        for (; r < rows; r++) {
            const T* row = w + static_cast<int64_t>(r) * cols;
            F acc(0.0f);
            for (int32_t c = 0; c < body; c += L) acc = xsimd::fma(load_w(row + c), F::load_unaligned(x + c), acc);
            float sum = xsimd::hadd(acc);
            for (int32_t c = body; c < cols; c++) sum += scalar_w(row[c]) * x[c];
            y[r] = sum;
        }
    }

    // Layout rows16 (format/quant_blocks.h): column c of a group is 16 consecutive weights, row r in
    // lane r, so 16 rows accumulate with one broadcast x[c] per column and no horizontal sum (the
    // row_major kernel above spends about as long reducing as multiplying at 64 columns). Four
    // columns in flight cover the FMA latency. R activation rows share each weight load (AVX-512:
    // four; AVX2 has too few registers for more than one), and every row gets the same operations
    // in the same order whatever R, so a prefill gives decode's bits. x [n, cols], y [n, rows]; the
    // rows % 16 tail rows are row_major.
    template <int32_t R, class T>
    static void rows16_groups(const T* w, int32_t rows, int32_t cols, const float* x, float* y) {
        constexpr int32_t V = 16 / L;  // registers per column of a group
        for (int32_t g = 0; g + 16 <= rows; g += 16) {
            const T* b = w + static_cast<int64_t>(g) * cols;
            F acc[R][4][V];
            for (auto& a : acc)
                for (auto& c : a)
                    for (F& v : c) v = F(0.0f);
            int32_t c = 0;
            for (; c + 4 <= cols; c += 4)
                for (int32_t j = 0; j < 4; j++)
                    for (int32_t v = 0; v < V; v++) {
                        const F wc = load_w(b + static_cast<int64_t>(c + j) * 16 + v * L);
                        for (int32_t r = 0; r < R; r++)
                            acc[r][j][v] = xsimd::fma(wc, F(x[static_cast<int64_t>(r) * cols + c + j]), acc[r][j][v]);
                    }
            for (; c < cols; c++)
                for (int32_t v = 0; v < V; v++) {
                    const F wc = load_w(b + static_cast<int64_t>(c) * 16 + v * L);
                    for (int32_t r = 0; r < R; r++)
                        acc[r][0][v] = xsimd::fma(wc, F(x[static_cast<int64_t>(r) * cols + c]), acc[r][0][v]);
                }
            for (int32_t r = 0; r < R; r++)
                for (int32_t v = 0; v < V; v++)
                    ((acc[r][0][v] + acc[r][1][v]) + (acc[r][2][v] + acc[r][3][v]))
                        .store_unaligned(y + static_cast<int64_t>(r) * rows + g + v * L);
        }
    }
    template <class T>
    static void matmul_rows16(const T* w, int32_t rows, int32_t cols, const float* x, int32_t n, float* y) {
        int32_t i = 0;
        if constexpr (L == 16)
            for (; i + 4 <= n; i += 4)
                rows16_groups<4>(w, rows, cols, x + static_cast<int64_t>(i) * cols, y + static_cast<int64_t>(i) * rows);
        for (; i < n; i++)
            rows16_groups<1>(w, rows, cols, x + static_cast<int64_t>(i) * cols, y + static_cast<int64_t>(i) * rows);
        const int32_t grouped = rows - rows % 16;
        if (grouped < rows)
            for (i = 0; i < n; i++)
                matvec(w + static_cast<int64_t>(grouped) * cols, rows - grouped, cols,
                       x + static_cast<int64_t>(i) * cols, y + static_cast<int64_t>(i) * rows + grouped);
    }

    static F silu(F v) { return v / (F(1.0f) + xsimd::exp(-v)); }
    static F gelu(F v) { return F(0.5f) * v * (F(1.0f) + xsimd::erf(v * F(0.70710678118654752f))); }

    template <class Op>
    static void map(float* x, int32_t n, Op op) {
        int32_t i = 0;
        for (; i + L <= n; i += L) op(F::load_unaligned(x + i)).store_unaligned(x + i);
        if (i < n) {
            alignas(64) float tail[L] = {};
            for (int32_t j = i; j < n; j++) tail[j - i] = x[j];
            const F t = op(F::load_aligned(tail));
            t.store_aligned(tail);
            for (int32_t j = i; j < n; j++) x[j] = tail[j - i];
        }
    }
};

template <class Arch>
constexpr DenseKernels dense_kernels() {
    using D = Dense<Arch>;
    DenseKernels k{};
    k.matvec_f32 = [](const float* w, int32_t rows, int32_t cols, const float* x, float* y) {
        D::matvec(w, rows, cols, x, y);
    };
    k.matvec_f16 = [](const uint16_t* w, int32_t rows, int32_t cols, const float* x, float* y) {
        D::matvec(w, rows, cols, x, y);
    };
    k.matmul_f32_rows16 = [](const float* w, int32_t rows, int32_t cols, const float* x, int32_t n, float* y) {
        D::matmul_rows16(w, rows, cols, x, n, y);
    };
    k.matmul_f16_rows16 = [](const uint16_t* w, int32_t rows, int32_t cols, const float* x, int32_t n, float* y) {
        D::matmul_rows16(w, rows, cols, x, n, y);
    };
    k.exp = [](float* x, int32_t n) { D::map(x, n, [](typename D::F v) { return xsimd::exp(v); }); };
    k.gelu = [](float* x, int32_t n) { D::map(x, n, [](typename D::F v) { return D::gelu(v); }); };
    // softplus(x) = max(x, 0) + log(1 + exp(-|x|)), and a sum of logs is the log of a product: per
    // lane, eight factors in (1, 2] are multiplied (at most 256) and take one log, instead of a
    // log1p each (2.4x fewer transcendental evaluations). A NaN reaches the product and the sum.
    // The rows are independent: one call over all of a prefill's rows lets them overlap.
    k.step_sizes = [](const float* delta, const float* bias, int32_t rows, int32_t n, float* dt) {
        using F = typename D::F;
        for (int32_t r = 0; r < rows; r++) {
            const float* x = delta + static_cast<int64_t>(r) * n;
            F linear(0.0f), logs(0.0f), product(1.0f);
            int32_t i = 0, factors = 0;
            for (; i + D::L <= n; i += D::L) {
                const F v = F::load_unaligned(x + i) + F::load_unaligned(bias + i);
                linear += xsimd::max(v, F(0.0f));
                product *= F(1.0f) + xsimd::exp(-xsimd::abs(v));
                if (++factors == 8) {  // log1p(p - 1), p - 1 exact: xsimd 8.1's AVX-512 log fails to compile at -O0
                    logs += xsimd::log1p(product - F(1.0f));
                    product = F(1.0f);
                    factors = 0;
                }
            }
            if (factors > 0) logs += xsimd::log1p(product - F(1.0f));
            float sum = xsimd::hadd(linear + logs);
            for (; i < n; i++) {
                const float v = x[i] + bias[i];
                sum += v > 20.0f ? v : __builtin_log1pf(__builtin_expf(v));
            }
            dt[r] = sum / static_cast<float>(n);
        }
    };
    // ref::argmax in two passes: the largest value (x[0] to start, so NaNs, which lose every `>`,
    // never enter; four accumulators hide the compare's latency), then the first index equal to it.
    // The scalar loop's chain through x[best] cost about 3.6 ns per logit.
    k.argmax = [](const float* x, int32_t n) -> int32_t {
        using F = typename D::F;
        if (n <= 0 || !(x[0] == x[0])) return 0;
        F m[4] = {F(x[0]), F(x[0]), F(x[0]), F(x[0])};
        int32_t i = 0;
        for (; i + 4 * D::L <= n; i += 4 * D::L)
            for (int32_t j = 0; j < 4; j++) {
                const F v = F::load_unaligned(x + i + j * D::L);
                m[j] = xsimd::select(v > m[j], v, m[j]);
            }
        for (; i + D::L <= n; i += D::L) {
            const F v = F::load_unaligned(x + i);
            m[0] = xsimd::select(v > m[0], v, m[0]);
        }
        for (int32_t j = 1; j < 4; j++) m[0] = xsimd::select(m[j] > m[0], m[j], m[0]);
        alignas(64) float lanes[D::L];
        m[0].store_aligned(lanes);
        float best = lanes[0];
        for (int32_t l = 1; l < D::L; l++) best = lanes[l] > best ? lanes[l] : best;
        for (; i < n; i++) best = x[i] > best ? x[i] : best;
        int32_t first = 0;
        for (; first + D::L <= n && !xsimd::any(F::load_unaligned(x + first) == F(best)); first += D::L) {
        }
        while (!(x[first] == best)) first++;  // best is one of x's values: this stops within n
        return first;
    };
    k.layer_norm = [](const float* x, const float* gamma, const float* beta, float eps, int32_t rows, int32_t n,
                      float* out) {
        using F = typename D::F;
        const int32_t body = n - n % D::L;
        for (int32_t r = 0; r < rows; r++, x += n, out += n) {
            F acc(0.0f);
            for (int32_t i = 0; i < body; i += D::L) acc += F::load_unaligned(x + i);
            float sum = xsimd::hadd(acc);
            for (int32_t i = body; i < n; i++) sum += x[i];
            const float mean = sum / static_cast<float>(n);
            F var_acc(0.0f);
            for (int32_t i = 0; i < body; i += D::L) {
                const F d = F::load_unaligned(x + i) - F(mean);
                var_acc = xsimd::fma(d, d, var_acc);
            }
            float var = xsimd::hadd(var_acc);
            for (int32_t i = body; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
            const float inv = 1.0f / __builtin_sqrtf(var / static_cast<float>(n) + eps);
            for (int32_t i = 0; i < body; i += D::L)
                xsimd::fma((F::load_unaligned(x + i) - F(mean)) * F(inv), F::load_unaligned(gamma + i),
                           F::load_unaligned(beta + i))
                    .store_unaligned(out + i);
            for (int32_t i = body; i < n; i++) out[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
        }
    };
    k.conv_silu_step = [](const float* wt, const float* bias, int32_t channels, int32_t K, const float* u, float* hist,
                          float* out) {
        using F = typename D::F;
        const int32_t h = K - 1, body = channels - channels % D::L;
        for (int32_t i = 0; i < body; i += D::L) {
            const F ui = F::load_unaligned(u + i);
            F acc = xsimd::fma(F::load_unaligned(wt + static_cast<int64_t>(h) * channels + i), ui,
                               F::load_unaligned(bias + i));
            for (int32_t j = 0; j < h; j++) {
                float* hj = hist + static_cast<int64_t>(j) * channels + i;
                const F past = F::load_unaligned(hj);
                acc = xsimd::fma(F::load_unaligned(wt + static_cast<int64_t>(j) * channels + i), past, acc);
                // shift the history down one step as it is read
                (j + 1 < h ? F::load_unaligned(hj + channels) : ui).store_unaligned(hj);
            }
            D::silu(acc).store_unaligned(out + i);
        }
        for (int32_t i = body; i < channels; i++) {
            float acc = bias[i] + wt[static_cast<int64_t>(h) * channels + i] * u[i];
            for (int32_t j = 0; j < h; j++) {
                float* hj = hist + static_cast<int64_t>(j) * channels + i;
                acc += wt[static_cast<int64_t>(j) * channels + i] * *hj;
                *hj = j + 1 < h ? hj[channels] : u[i];
            }
            out[i] = acc / (1.0f + __builtin_expf(-acc));
        }
    };
    k.ssm_output = [](const float* c_t, const float* s, int32_t N, const float* d, const float* v, const float* z,
                      int32_t z_stride, int32_t Di, int32_t rows, float* y) {
        using F = typename D::F;
        const int32_t body = Di - Di % D::L;
        for (int32_t r = 0; r < rows; r++, s += N, v += Di, z += z_stride, y += Di) {
            for (int32_t i = 0; i < body; i += D::L) {
                F acc = F::load_unaligned(d + i) * F::load_unaligned(v + i);
                for (int32_t n = 0; n < N; n++)
                    acc = xsimd::fma(F::load_unaligned(c_t + static_cast<int64_t>(n) * Di + i), F(s[n]), acc);
                (acc * D::silu(F::load_unaligned(z + i))).store_unaligned(y + i);
            }
            for (int32_t i = body; i < Di; i++) {
                float acc = d[i] * v[i];
                for (int32_t n = 0; n < N; n++) acc += c_t[static_cast<int64_t>(n) * Di + i] * s[n];
                y[i] = acc * (z[i] / (1.0f + __builtin_expf(-z[i])));
            }
        }
    };
    return k;
}

}  // namespace
}  // namespace itera
