// AVX-512 VNNI kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; called only
// when the CPU has them).
//
// vpdpbusd multiplies unsigned by signed bytes and adds each group of four products into an int32
// lane without saturation, so every weight becomes an unsigned code plus a constant the kernel
// takes back through the activation block's sum: q8_0 w + 128 (xor 0x80), q4_0 its nibble (w + 8),
// nf4 its int8 level + 128, q3_0 its code (w + 4), q2_0 its doubled code (2w + 3, w = n - 1.5).
// The correction -offset * sum x enters as the accumulator's start value, so each block's integer
// dot is exact before its FP32 scale. The dots run on 256-bit
// vectors (one 32-element block each, AVX-512 VL) and four rows share each activation load.

// g++ 12 warns inside its own AVX-512 intrinsics (their _mm512_undefined_* operands, GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <limits>

#include "format/quant_blocks.h"
#include "kernels_cpu/quant_dot.h"

namespace itera::quant_avx512 {

namespace {

// The block's fp16 scale in all 8 lanes (a broadcast load and one conversion).
inline __m256 scale_of(const uint8_t* block) {
    uint16_t h;
    __builtin_memcpy(&h, block, sizeof(h));
    return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

inline __m256i lane0(int32_t v) { return _mm256_zextsi128_si256(_mm_cvtsi32_si128(v)); }

inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

template <int R>
inline void store_sums(const __m256* acc, float* y) {
    if constexpr (R % 4 == 0) {
        for (int g = 0; g < R; g += 4) {
            const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(acc[g], acc[g + 1]), _mm256_hadd_ps(acc[g + 2], acc[g + 3]));
            _mm_storeu_ps(y + g, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
        }
    } else {
        for (int i = 0; i < R; i++) y[i] = hsum(acc[i]);
    }
}

using RowsFn = void (*)(const uint8_t* row, size_t stride, int32_t nx, const ActQ8* x, float* y);

inline void each_rows(const QuantRows& w, const ActQ8* x, float* y, RowsFn four, RowsFn one) {
    int32_t r = 0;
    for (; r + 4 <= w.rows; r += 4) four(w.data + static_cast<size_t>(r) * w.row_bytes, w.row_bytes, w.nx, x, y + r);
    for (; r < w.rows; r++) one(w.data + static_cast<size_t>(r) * w.row_bytes, w.row_bytes, w.nx, x, y + r);
}

template <int R>
void rows_q8_0(const uint8_t* row, size_t stride, int32_t nx, const ActQ8* x, float* y) {
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
    __m256 acc[R];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int32_t b = 0; b < nx; b++) {
        const __m256i qx = load32(x[b].q);
        const __m256 dx = _mm256_set1_ps(x[b].d);
        const __m256i start = lane0(-128 * x[b].sum);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(b) * sizeof(BlockQ8);
            const __m256i p = _mm256_dpbusd_epi32(start, _mm256_xor_si256(load32(blk + 2), flip), qx);
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(scale_of(blk), dx), _mm256_cvtepi32_ps(p), acc[i]);
        }
    }
    store_sums<R>(acc, y);
}

template <int R>
void rows_q4_0(const uint8_t* row, size_t stride, int32_t nx, const ActQ8* x, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i upper4 = _mm256_setr_epi64x(0, 0, 4, 4);
    __m256 acc[R];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int32_t b = 0; b < nx; b++) {
        const __m256i qx = load32(x[b].q);
        const __m256 dx = _mm256_set1_ps(x[b].d);
        const __m256i start = lane0(-8 * x[b].sum);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(b) * sizeof(BlockQ4);
            // the 16 bytes in both halves, the upper shifted by 4: elements 0..15 are the low
            // nibbles, 16..31 the high ones
            const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
            const __m256i n = _mm256_and_si256(_mm256_srlv_epi64(raw, upper4), m4);
            const __m256i p = _mm256_dpbusd_epi32(start, n, qx);
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(scale_of(blk), dx), _mm256_cvtepi32_ps(p), acc[i]);
        }
    }
    store_sums<R>(acc, y);
}

template <int R>
void rows_nf4(const uint8_t* row, size_t stride, int32_t nx, const ActQ8* x, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i levels = _mm256_xor_si256(  // kNf4I8 + 128 as unsigned bytes
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4I8))),
        _mm256_set1_epi8(static_cast<char>(0x80)));
    __m256 acc[R];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    // Activation blocks 2k and 2k + 1 meet the low and high nibbles of nf4 block k.
    for (int32_t u = 0; u < nx; u += 2) {
        const bool both = u + 1 < nx;  // false: the row ends in the first half of this block
        const __m256i q0 = load32(x[u].q);
        const __m256i start0 = lane0(-128 * x[u].sum);
        const __m256i q1 = both ? load32(x[u + 1].q) : _mm256_setzero_si256();
        const __m256i start1 = lane0(both ? -128 * x[u + 1].sum : 0);
        const __m256 dx0 = _mm256_set1_ps(x[u].d * (1.0f / 127.0f));  // the levels' 127 folded in
        const __m256 dx1 = _mm256_set1_ps(both ? x[u + 1].d * (1.0f / 127.0f) : 0.0f);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(u / 2) * sizeof(BlockNf4);
            const __m256i raw = load32(blk + 2);
            const __m256i lo = _mm256_and_si256(raw, m4);
            const __m256i p0 = _mm256_dpbusd_epi32(start0, _mm256_shuffle_epi8(levels, lo), q0);
            const __m256 dw = scale_of(blk);
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx0), _mm256_cvtepi32_ps(p0), acc[i]);
            if (both) {
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
                const __m256i p1 = _mm256_dpbusd_epi32(start1, _mm256_shuffle_epi8(levels, hi), q1);
                acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx1), _mm256_cvtepi32_ps(p1), acc[i]);
            }
        }
    }
    store_sums<R>(acc, y);
}

// q3_0's 32 codes as bytes: the 2-bit fields (8 bytes; lane k of 64 bits holds elements 8k..8k+7
// once shifted right by 2k) plus 4 where the element's bit of qh (a 32-bit mask) is set.
inline __m256i q3_0_codes(const uint8_t* blk) {
    uint64_t lo;
    uint32_t hi;
    __builtin_memcpy(&lo, blk + 2, sizeof(lo));
    __builtin_memcpy(&hi, blk + 2 + kQ3Block / 4, sizeof(hi));
    const __m256i low = _mm256_and_si256(
        _mm256_srlv_epi64(_mm256_set1_epi64x(static_cast<long long>(lo)), _mm256_setr_epi64x(0, 2, 4, 6)),
        _mm256_set1_epi8(3));
    return _mm256_mask_add_epi8(low, static_cast<__mmask32>(hi), low, _mm256_set1_epi8(4));
}

template <int R>
void rows_q3_0(const uint8_t* row, size_t stride, int32_t nx, const ActQ8* x, float* y) {
    __m256 acc[R];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int32_t b = 0; b < nx; b++) {
        const __m256i qx = load32(x[b].q);
        const __m256 dx = _mm256_set1_ps(x[b].d);
        const __m256i start = lane0(-4 * x[b].sum);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(b) * sizeof(BlockQ3);
            const __m256i p = _mm256_dpbusd_epi32(start, q3_0_codes(blk), qx);
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(scale_of(blk), dx), _mm256_cvtepi32_ps(p), acc[i]);
        }
    }
    store_sums<R>(acc, y);
}

template <int R>
void rows_q2_0(const uint8_t* row, size_t stride, int32_t nx, const ActQ8* x, float* y) {
    const __m256i m2 = _mm256_set1_epi8(3);
    const __m256i shift0 = _mm256_setr_epi64x(0, 0, 2, 2), shift1 = _mm256_setr_epi64x(4, 4, 6, 6);
    __m256 acc[R];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    // Activation blocks 2k and 2k + 1 meet the 2-bit fields 0, 1 and 2, 3 of q2_0 block k; the
    // codes enter doubled (2n - 3 = value / (d / 2)).
    for (int32_t u = 0; u < nx; u += 2) {
        const bool both = u + 1 < nx;  // false: the row ends in the first half of this block
        const __m256i q0 = load32(x[u].q);
        const __m256i q1 = both ? load32(x[u + 1].q) : _mm256_setzero_si256();
        const __m256i start0 = lane0(-3 * x[u].sum);
        const __m256i start1 = lane0(both ? -3 * x[u + 1].sum : 0);
        const __m256 dx0 = _mm256_set1_ps(x[u].d * 0.5f);
        const __m256 dx1 = _mm256_set1_ps(both ? x[u + 1].d * 0.5f : 0.0f);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(u / 2) * sizeof(BlockQ2);
            const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
            const __m256i n0 = _mm256_and_si256(_mm256_srlv_epi64(raw, shift0), m2);
            const __m256i p0 = _mm256_dpbusd_epi32(start0, _mm256_add_epi8(n0, n0), q0);
            const __m256 dw = scale_of(blk);
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx0), _mm256_cvtepi32_ps(p0), acc[i]);
            if (both) {
                const __m256i n1 = _mm256_and_si256(_mm256_srlv_epi64(raw, shift1), m2);
                const __m256i p1 = _mm256_dpbusd_epi32(start1, _mm256_add_epi8(n1, n1), q1);
                acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx1), _mm256_cvtepi32_ps(p1), acc[i]);
            }
        }
    }
    store_sums<R>(acc, y);
}

// Lanes [0, count) of 16 set, count clamped to [0, 16].
inline __mmask16 first_lanes(int32_t count) {
    return count >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>(count > 0 ? (1u << count) - 1u : 0u);
}

}  // namespace

void quantize_activation(const float* x, int32_t n, ActQ8* out) {
    const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    for (int32_t b = 0; b < act_blocks(n); b++) {
        const float* p = x + static_cast<size_t>(b) * kActBlock;
        const int32_t left = n - b * kActBlock;  // masked loads zero the tail and never touch it
        const __m512 v0 = _mm512_maskz_loadu_ps(first_lanes(left), p);
        const __m512 v1 = _mm512_maskz_loadu_ps(first_lanes(left - 16), p + 16);
        const __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
        if (_mm512_cmp_ps_mask(a0, inf, _CMP_NLT_UQ) | _mm512_cmp_ps_mask(a1, inf, _CMP_NLT_UQ)) {  // inf or NaN
            out[b] = ActQ8{std::numeric_limits<float>::quiet_NaN(), 0, {}};  // as the scalar path
            continue;
        }
        const float d = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1)) / 127.0f;
        const __m512 id = _mm512_set1_ps(d >= std::numeric_limits<float>::min() ? 1.0f / d : 0.0f);
        const __m512i q0 =
            _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512i q1 =
            _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].q), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].q + 16), _mm512_cvtepi32_epi8(q1));
        out[b].d = d;
        out[b].sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

void matvec_q8_0(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_q8_0<4>, rows_q8_0<1>); }
// q4_0 takes eight rows per activation load: measured 4-10% more decode tokens/s than four on the
// micro and shipped models (sixteen spills registers: 25% fewer).
void matvec_q4_0(const QuantRows& w, const ActQ8* x, float* y) {
    int32_t r = 0;
    for (; r + 8 <= w.rows; r += 8)
        rows_q4_0<8>(w.data + static_cast<size_t>(r) * w.row_bytes, w.row_bytes, w.nx, x, y + r);
    const QuantRows rest = {w.data + static_cast<size_t>(r) * w.row_bytes, w.row_bytes, w.rows - r, w.nx};
    each_rows(rest, x, y + r, rows_q4_0<4>, rows_q4_0<1>);
}
namespace {

// The rows16 loop (format/quant_blocks.h) for R activation rows: lane r of a 512-bit register is
// row r of a group of 16, so each vpdpbusd adds four products to sixteen rows and the rows' sums
// need no horizontal reduction. Per group, block column and column group g, `unpack(group, g)`
// gives the 16 rows' four weights per lane as unsigned bytes (the format's offset `bias` taken
// back through each activation block's sum); the R activation rows share that unpacking. Each
// activation row gets the same operations in the same order whatever R is, so a prefill gives
// decode's bits. x: R rows of nx blocks; y: R rows of `rows` outputs. Returns the start of the
// row_major tail. About 3x the row_major kernels on the Itera-Lite shapes (docs/bench.md).
template <class Block, int R, class Unpack>
const uint8_t* rows16_groups(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, float* y, int32_t bias,
                             Unpack unpack) {
    const uint8_t* group = data;
    for (int32_t r = 0; r + kRows16 <= rows; r += kRows16) {
        __m512 acc[R];
        for (int i = 0; i < R; i++) acc[i] = _mm512_setzero_ps();
        for (int32_t b = 0; b < nx; b++, group += kRows16 * sizeof(Block)) {
            __m512i p[R];
            for (int i = 0; i < R; i++) p[i] = _mm512_set1_epi32(bias * x[i * nx + b].sum);
            for (int g = 0; g < 8; g++) {
                const __m512i w = unpack(group, g);
                for (int i = 0; i < R; i++) {
                    int32_t xg;
                    __builtin_memcpy(&xg, x[i * nx + b].q + 4 * g, sizeof(xg));
                    p[i] = _mm512_dpbusd_epi32(p[i], w, _mm512_set1_epi32(xg));
                }
            }
            const __m512 dw = _mm512_cvtph_ps(load32(group));
            for (int i = 0; i < R; i++)
                acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(x[i * nx + b].d)), _mm512_cvtepi32_ps(p[i]),
                                         acc[i]);
        }
        for (int i = 0; i < R; i++) _mm512_storeu_ps(y + static_cast<size_t>(i) * rows + r, acc[i]);
    }
    return group;
}

// q4_0: a column group's 32 bytes of nibbles in both 256-bit halves, the upper half shifted right
// by 4 (low nibbles: rows 0..7, high: rows 8..15); offset 8.
inline __m512i unpack_q4(const uint8_t* group, int g) {
    const __m512i raw = _mm512_broadcast_i64x4(load32(group + 2 * kRows16 + 32 * g));
    return _mm512_and_si512(_mm512_srlv_epi64(raw, _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4)), _mm512_set1_epi8(0x0f));
}
// q8_0: a column group's 64 bytes are sixteen rows' four int8 weights, flipped to unsigned (xor
// 0x80); offset 128.
inline __m512i unpack_q8(const uint8_t* group, int g) {
    return _mm512_xor_si512(_mm512_loadu_si512(group + 2 * kRows16 + 64 * g),
                            _mm512_set1_epi8(static_cast<char>(0x80)));
}

// n activation rows, four at a time, then the row_major tail row by row.
template <class Block, class Unpack>
void rows16_matmul(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y, int32_t bias,
                   Unpack unpack, RowsFn four, RowsFn one) {
    const uint8_t* tail = data;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4)
        tail = rows16_groups<Block, 4>(data, rows, nx, x + static_cast<size_t>(i) * nx,
                                       y + static_cast<size_t>(i) * rows, bias, unpack);
    for (; i < n; i++)
        tail = rows16_groups<Block, 1>(data, rows, nx, x + static_cast<size_t>(i) * nx,
                                       y + static_cast<size_t>(i) * rows, bias, unpack);
    const int32_t done = rows / kRows16 * kRows16;
    const QuantRows rest = {tail, static_cast<size_t>(nx) * sizeof(Block), rows - done, nx};
    for (int32_t k = 0; k < n; k++)
        each_rows(rest, x + static_cast<size_t>(k) * nx, y + static_cast<size_t>(k) * rows + done, four, one);
}

}  // namespace

void matmul_q4_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y) {
    rows16_matmul<BlockQ4>(data, rows, nx, x, n, y, -8, unpack_q4, rows_q4_0<4>, rows_q4_0<1>);
}
void matmul_q8_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y) {
    rows16_matmul<BlockQ8>(data, rows, nx, x, n, y, -128, unpack_q8, rows_q8_0<4>, rows_q8_0<1>);
}

void matvec_nf4(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_nf4<4>, rows_nf4<1>); }
void matvec_q3_0(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_q3_0<4>, rows_q3_0<1>); }
void matvec_q2_0(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_q2_0<4>, rows_q2_0<1>); }

}  // namespace itera::quant_avx512
