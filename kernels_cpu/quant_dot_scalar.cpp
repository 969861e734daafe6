// Scalar integer kernels: the same integer block dots and FP32 scale products as the SIMD
// paths, in plain loops. Used when the CPU has no AVX2, and as the path the SIMD kernels must
// match up to summation order.
#include <cmath>
#include <cstring>
#include <limits>

#include "format/half.h"
#include "format/quant_blocks.h"
#include "kernels_cpu/quant_dot.h"

namespace itera::quant_scalar {

namespace {

float scale_of(const uint8_t* block) {
    uint16_t h;
    std::memcpy(&h, block, sizeof(h));
    return fp16_to_fp32(h);
}

}  // namespace

void quantize_activation(const float* x, int32_t n, ActQ8* out) {
    for (int32_t b = 0; b < act_blocks(n); b++) {
        float v[kActBlock];
        float amax = 0.0f;
        bool finite = true;
        for (int32_t i = 0; i < kActBlock; i++) {
            const int32_t c = b * kActBlock + i;
            v[i] = c < n ? x[c] : 0.0f;
            finite = finite && std::isfinite(v[i]);
            amax = std::fmax(amax, std::fabs(v[i]));
        }
        if (!finite) {  // inf or NaN: q = 0, d = NaN, so its dots are NaN as the FP32 ones would be
            out[b] = ActQ8{std::numeric_limits<float>::quiet_NaN(), 0, {}};
            continue;
        }
        const float d = amax / 127.0f;
        // A block this small (amax < 127 * FLT_MIN) quantizes to q = 0: 1/d could overflow to inf.
        const float id = d >= std::numeric_limits<float>::min() ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int32_t i = 0; i < kActBlock; i++) {
            // nearbyint rounds half to even, as the SIMD paths' round instructions do
            out[b].q[i] = static_cast<int8_t>(std::nearbyint(v[i] * id));
            sum += out[b].q[i];
        }
        out[b].d = d;
        out[b].sum = sum;
    }
}

void matvec_q8_0(const QuantRows& w, const ActQ8* x, float* y) {
    for (int32_t r = 0; r < w.rows; r++) {
        const uint8_t* row = w.data + static_cast<size_t>(r) * w.row_bytes;
        float acc = 0.0f;
        for (int32_t b = 0; b < w.nx; b++) {
            const uint8_t* blk = row + static_cast<size_t>(b) * sizeof(BlockQ8);
            const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
            int32_t s = 0;
            for (int i = 0; i < kQ8Block; i++) s += q[i] * x[b].q[i];
            acc += scale_of(blk) * x[b].d * static_cast<float>(s);
        }
        y[r] = acc;
    }
}

void matvec_q4_0(const QuantRows& w, const ActQ8* x, float* y) {
    constexpr int half = kQ4Block / 2;
    for (int32_t r = 0; r < w.rows; r++) {
        const uint8_t* row = w.data + static_cast<size_t>(r) * w.row_bytes;
        float acc = 0.0f;
        for (int32_t b = 0; b < w.nx; b++) {
            const uint8_t* blk = row + static_cast<size_t>(b) * sizeof(BlockQ4);
            const uint8_t* qs = blk + 2;
            int32_t s = 0;  // sum (n - 8) q = sum n q - 8 sum q
            for (int i = 0; i < half; i++) s += (qs[i] & 0x0f) * x[b].q[i] + (qs[i] >> 4) * x[b].q[i + half];
            s -= 8 * x[b].sum;
            acc += scale_of(blk) * x[b].d * static_cast<float>(s);
        }
        y[r] = acc;
    }
}

namespace {

// rows16 (format/quant_blocks.h), one activation row: each group of 16 rows block by block, the
// same integer dots and the same FP32 sums as the row_major kernels above, so the results are
// theirs bit for bit; the last rows % 16 rows are row_major. Not inlined: inlined into the loop
// over activation rows (or into one template over a dots lambda), g++ 12 vectorizes the q4 body
// 2.5x worse (bench_quant_kernels, scalar q4x16 128x64: 2,460 vs 6,218 ns).
__attribute__((noinline)) void q4_0_rows16_one(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x,
                                               float* y) {
    const uint8_t* group = data;
    int32_t r = 0;
    for (; r + kRows16 <= rows; r += kRows16) {
        float acc[kRows16] = {};
        for (int32_t b = 0; b < nx; b++, group += kRows16 * sizeof(BlockQ4)) {
            int32_t s[kRows16] = {};
            for (int g = 0; g < kQ4Block / 4; g++) {
                const uint8_t* w = group + 2 * kRows16 + 32 * g;
                const int8_t* q = x[b].q + 4 * g;
                for (int lane = 0; lane < 8; lane++)
                    for (int k = 0; k < 4; k++) {
                        s[lane] += (w[4 * lane + k] & 0x0f) * q[k];
                        s[8 + lane] += (w[4 * lane + k] >> 4) * q[k];
                    }
            }
            for (int lane = 0; lane < kRows16; lane++)
                acc[lane] += scale_of(group + 2 * lane) * x[b].d * static_cast<float>(s[lane] - 8 * x[b].sum);
        }
        for (int lane = 0; lane < kRows16; lane++) y[r + lane] = acc[lane];
    }
    matvec_q4_0({group, static_cast<size_t>(nx) * sizeof(BlockQ4), rows - r, nx}, x, y + r);
}

__attribute__((noinline)) void q8_0_rows16_one(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x,
                                               float* y) {
    const uint8_t* group = data;
    int32_t r = 0;
    for (; r + kRows16 <= rows; r += kRows16) {
        float acc[kRows16] = {};
        for (int32_t b = 0; b < nx; b++, group += kRows16 * sizeof(BlockQ8)) {
            int32_t s[kRows16] = {};
            for (int g = 0; g < kQ8Block / 4; g++) {
                const int8_t* w = reinterpret_cast<const int8_t*>(group + 2 * kRows16 + 64 * g);
                const int8_t* q = x[b].q + 4 * g;
                for (int lane = 0; lane < kRows16; lane++)
                    for (int k = 0; k < 4; k++) s[lane] += w[4 * lane + k] * q[k];
            }
            for (int lane = 0; lane < kRows16; lane++)
                acc[lane] += scale_of(group + 2 * lane) * x[b].d * static_cast<float>(s[lane]);
        }
        for (int lane = 0; lane < kRows16; lane++) y[r + lane] = acc[lane];
    }
    matvec_q8_0({group, static_cast<size_t>(nx) * sizeof(BlockQ8), rows - r, nx}, x, y + r);
}

}  // namespace

void matmul_q4_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y) {
    for (int32_t i = 0; i < n; i++)
        q4_0_rows16_one(data, rows, nx, x + static_cast<size_t>(i) * nx, y + static_cast<size_t>(i) * rows);
}

void matmul_q8_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y) {
    for (int32_t i = 0; i < n; i++)
        q8_0_rows16_one(data, rows, nx, x + static_cast<size_t>(i) * nx, y + static_cast<size_t>(i) * rows);
}

void matvec_nf4(const QuantRows& w, const ActQ8* x, float* y) {
    // Activation block u meets nf4 block u / 2: its low nibbles (elements 0..31) when u is even,
    // its high nibbles (32..63) when odd. An odd nx ends with half a block.
    for (int32_t r = 0; r < w.rows; r++) {
        const uint8_t* row = w.data + static_cast<size_t>(r) * w.row_bytes;
        float acc = 0.0f;
        for (int32_t u = 0; u < w.nx; u++) {
            const uint8_t* blk = row + static_cast<size_t>(u / 2) * sizeof(BlockNf4);
            const uint8_t* qs = blk + 2;
            const int shift = (u % 2) * 4;
            int32_t s = 0;
            for (int i = 0; i < kActBlock; i++) s += kNf4I8[(qs[i] >> shift) & 0x0f] * x[u].q[i];
            acc += scale_of(blk) * (x[u].d * (1.0f / 127.0f)) * static_cast<float>(s);
        }
        y[r] = acc;
    }
}

void matvec_q3_0(const QuantRows& w, const ActQ8* x, float* y) {
    for (int32_t r = 0; r < w.rows; r++) {
        const uint8_t* row = w.data + static_cast<size_t>(r) * w.row_bytes;
        float acc = 0.0f;
        for (int32_t b = 0; b < w.nx; b++) {
            const uint8_t* blk = row + static_cast<size_t>(b) * sizeof(BlockQ3);
            const uint8_t* qs = blk + 2;
            const uint8_t* qh = blk + 2 + kQ3Block / 4;
            // sum (n - 4) q = sum n q - 4 sum q; element j + 8k: field k of qs[j], bit j of qh[k]
            int32_t s = 0;
            for (int k = 0; k < 4; k++)
                for (int j = 0; j < 8; j++)
                    s += (((qs[j] >> (2 * k)) & 3) | (((qh[k] >> j) & 1) << 2)) * x[b].q[j + 8 * k];
            s -= 4 * x[b].sum;
            acc += scale_of(blk) * x[b].d * static_cast<float>(s);
        }
        y[r] = acc;
    }
}

void matvec_q2_0(const QuantRows& w, const ActQ8* x, float* y) {
    // Activation block u meets elements 32 (u % 2) .. + 31 of q2_0 block u / 2: the 2-bit fields
    // k = 2 (u % 2) and 2 (u % 2) + 1 of its 16 bytes. An odd nx ends with half a block.
    for (int32_t r = 0; r < w.rows; r++) {
        const uint8_t* row = w.data + static_cast<size_t>(r) * w.row_bytes;
        float acc = 0.0f;
        for (int32_t u = 0; u < w.nx; u++) {
            const uint8_t* blk = row + static_cast<size_t>(u / 2) * sizeof(BlockQ2);
            const uint8_t* qs = blk + 2;
            // sum (2n - 3) q = 2 sum n q - 3 sum q; element j + 16h of this half: field 2 (u % 2) + h
            // of qs[j]
            int32_t s = 0;
            for (int h = 0; h < 2; h++) {
                const int shift = 2 * (2 * (u % 2) + h);
                for (int j = 0; j < 16; j++) s += ((qs[j] >> shift) & 3) * x[u].q[j + 16 * h];
            }
            s = 2 * s - 3 * x[u].sum;
            acc += scale_of(blk) * (x[u].d * 0.5f) * static_cast<float>(s);
        }
        y[r] = acc;
    }
}

}  // namespace itera::quant_scalar
