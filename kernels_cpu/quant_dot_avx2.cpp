// AVX2 kernels (compiled with -mavx2 -mfma -mf16c; called only when the CPU has them).
//
// Per 32-element block: the 32 weight codes and the 32 int8 activations meet in
// _mm256_maddubs_epi16 (unsigned x signed bytes -> 16 int16 pair sums) and _mm256_madd_epi16
// with ones (-> 8 int32); the 8 lanes are converted to float and FMA'd into an accumulator with
// the block's scale d_w * d_x. maddubs saturates an int16 pair sum above 32767, so its unsigned
// operand stays small: q4_0 feeds its raw nibbles (0..15, the -8 is subtracted as 8 * sum x), q3_0
// its codes 0..7 (- 4 * sum x), q2_0 its doubled codes 0..6 (- 3 * sum x); q8_0 and nf4 feed |w|
// with w's sign moved onto the activation (ggml's trick; 2 * 128 * 127 fits).
// Four rows go through at once so each activation load and horizontal sum serves four rows.
#include <immintrin.h>

#include <limits>

#include "format/quant_blocks.h"
#include "kernels_cpu/quant_dot.h"

namespace itera::quant_avx2 {

namespace {

// The block's fp16 scale in all 8 lanes (a broadcast load and one conversion).
inline __m256 scale_of(const uint8_t* block) {
    uint16_t h;
    __builtin_memcpy(&h, block, sizeof(h));
    return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 8 int32 lanes whose sum is sum_i u[i] * s[i] (u unsigned, s signed bytes).
inline __m256i dot_u8_s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// The integer lanes of an int32 vector holding v in lane 0 and zeros elsewhere.
inline __m256i lane0(int32_t v) { return _mm256_zextsi128_si256(_mm_cvtsi32_si128(v)); }

inline float hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// y[i] = horizontal sum of acc[i], i < R (R = 1 or 4).
template <int R>
inline void store_sums(const __m256* acc, float* y) {
    if constexpr (R == 4) {
        const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
        _mm_storeu_ps(y, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
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
    __m256 acc[R];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int32_t b = 0; b < nx; b++) {
        const __m256i qx = load32(x[b].q);
        const __m256 dx = _mm256_set1_ps(x[b].d);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(b) * sizeof(BlockQ8);
            const __m256i qw = load32(blk + 2);
            const __m256i p = dot_u8_s8(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
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
        const __m256i offset = lane0(8 * x[b].sum);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(b) * sizeof(BlockQ4);
            // the 16 bytes in both halves, the upper shifted by 4: elements 0..15 are the low
            // nibbles, 16..31 the high ones
            const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
            const __m256i n = _mm256_and_si256(_mm256_srlv_epi64(raw, upper4), m4);
            const __m256i p = _mm256_sub_epi32(dot_u8_s8(n, qx), offset);
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(scale_of(blk), dx), _mm256_cvtepi32_ps(p), acc[i]);
        }
    }
    store_sums<R>(acc, y);
}

template <int R>
void rows_nf4(const uint8_t* row, size_t stride, int32_t nx, const ActQ8* x, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i levels = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4I8)));
    const __m256i magnitudes = _mm256_abs_epi8(levels);
    __m256 acc[R];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    // Activation blocks 2k and 2k + 1 meet the low and high nibbles of nf4 block k.
    for (int32_t u = 0; u < nx; u += 2) {
        const bool both = u + 1 < nx;  // false: the row ends in the first half of this block
        const __m256i q0 = load32(x[u].q);
        const __m256i q1 = both ? load32(x[u + 1].q) : _mm256_setzero_si256();
        const __m256 dx0 = _mm256_set1_ps(x[u].d * (1.0f / 127.0f));  // the levels' 127 folded in
        const __m256 dx1 = _mm256_set1_ps(both ? x[u + 1].d * (1.0f / 127.0f) : 0.0f);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(u / 2) * sizeof(BlockNf4);
            const __m256i raw = load32(blk + 2);
            const __m256i lo = _mm256_and_si256(raw, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            const __m256i p0 =
                dot_u8_s8(_mm256_shuffle_epi8(magnitudes, lo), _mm256_sign_epi8(q0, _mm256_shuffle_epi8(levels, lo)));
            const __m256 dw = scale_of(blk);
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx0), _mm256_cvtepi32_ps(p0), acc[i]);
            if (both) {
                const __m256i p1 = dot_u8_s8(_mm256_shuffle_epi8(magnitudes, hi),
                                             _mm256_sign_epi8(q1, _mm256_shuffle_epi8(levels, hi)));
                acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx1), _mm256_cvtepi32_ps(p1), acc[i]);
            }
        }
    }
    store_sums<R>(acc, y);
}

// q3_0's 32 codes as bytes: the 2-bit fields (8 bytes; lane k of 64 bits holds elements 8k..8k+7
// once shifted right by 2k) or'd with 4 where the element's bit of qh is set.
inline __m256i q3_0_codes(const uint8_t* blk) {
    uint64_t lo;
    uint32_t hi;
    __builtin_memcpy(&lo, blk + 2, sizeof(lo));
    __builtin_memcpy(&hi, blk + 2 + kQ3Block / 4, sizeof(hi));
    const __m256i low = _mm256_and_si256(
        _mm256_srlv_epi64(_mm256_set1_epi64x(static_cast<long long>(lo)), _mm256_setr_epi64x(0, 2, 4, 6)),
        _mm256_set1_epi8(3));
    // byte i = byte i / 8 of hi, then every bit but i % 8 set: all ones exactly when bit i is set
    const __m256i spread =
        _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(hi)),
                            _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    const __m256i set =
        _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi64x(-1));
    return _mm256_or_si256(low, _mm256_and_si256(set, _mm256_set1_epi8(4)));
}

template <int R>
void rows_q3_0(const uint8_t* row, size_t stride, int32_t nx, const ActQ8* x, float* y) {
    __m256 acc[R];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int32_t b = 0; b < nx; b++) {
        const __m256i qx = load32(x[b].q);
        const __m256 dx = _mm256_set1_ps(x[b].d);
        const __m256i offset = lane0(4 * x[b].sum);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(b) * sizeof(BlockQ3);
            const __m256i p = _mm256_sub_epi32(dot_u8_s8(q3_0_codes(blk), qx), offset);
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
        const __m256i offset0 = lane0(3 * x[u].sum);
        const __m256i offset1 = lane0(both ? 3 * x[u + 1].sum : 0);
        const __m256 dx0 = _mm256_set1_ps(x[u].d * 0.5f);
        const __m256 dx1 = _mm256_set1_ps(both ? x[u + 1].d * 0.5f : 0.0f);
        for (int i = 0; i < R; i++) {
            const uint8_t* blk = row + i * stride + static_cast<size_t>(u / 2) * sizeof(BlockQ2);
            const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
            const __m256i n0 = _mm256_and_si256(_mm256_srlv_epi64(raw, shift0), m2);
            const __m256i p0 = _mm256_sub_epi32(dot_u8_s8(_mm256_add_epi8(n0, n0), q0), offset0);
            const __m256 dw = scale_of(blk);
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx0), _mm256_cvtepi32_ps(p0), acc[i]);
            if (both) {
                const __m256i n1 = _mm256_and_si256(_mm256_srlv_epi64(raw, shift1), m2);
                const __m256i p1 = _mm256_sub_epi32(dot_u8_s8(_mm256_add_epi8(n1, n1), q1), offset1);
                acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx1), _mm256_cvtepi32_ps(p1), acc[i]);
            }
        }
    }
    store_sums<R>(acc, y);
}

}  // namespace

void quantize_activation(const float* x, int32_t n, ActQ8* out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int32_t b = 0; b < act_blocks(n); b++) {
        const float* p = x + static_cast<size_t>(b) * kActBlock;
        float tail[kActBlock];
        if ((b + 1) * kActBlock > n) {  // the last, partial block: zero-padded copy
            for (int32_t i = 0; i < kActBlock; i++) tail[i] = b * kActBlock + i < n ? p[i] : 0.0f;
            p = tail;
        }
        __m256 v[4];
        __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(p + 8 * k);
            const __m256 a = _mm256_andnot_ps(sign, v[k]);
            m = _mm256_max_ps(m, a);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));  // inf or NaN
        }
        if (_mm256_movemask_ps(bad)) {  // as the scalar path: q = 0, d = NaN
            out[b] = ActQ8{std::numeric_limits<float>::quiet_NaN(), 0, {}};
            continue;
        }
        __m128 m128 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m128 = _mm_max_ps(m128, _mm_movehl_ps(m128, m128));
        m128 = _mm_max_ss(m128, _mm_movehdup_ps(m128));
        const float d = _mm_cvtss_f32(m128) / 127.0f;
        const __m256 id = _mm256_set1_ps(d >= std::numeric_limits<float>::min() ? 1.0f / d : 0.0f);
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvtps_epi32(
                _mm256_round_ps(_mm256_mul_ps(v[k], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s128 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s128 = _mm_add_epi32(s128, _mm_shuffle_epi32(s128, _MM_SHUFFLE(1, 0, 3, 2)));
        s128 = _mm_add_epi32(s128, _mm_shuffle_epi32(s128, _MM_SHUFFLE(2, 3, 0, 1)));
        // packs work within 128-bit lanes; the permute restores element order
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].q), _mm256_permutevar8x32_epi32(bytes, order));
        out[b].d = d;
        out[b].sum = _mm_cvtsi128_si32(s128);
    }
}

void matvec_q8_0(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_q8_0<4>, rows_q8_0<1>); }
void matvec_q4_0(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_q4_0<4>, rows_q4_0<1>); }

namespace {

// The rows16 loop (format/quant_blocks.h) for n activation rows, one after another: per group of 16
// rows and block column, `dots(group, xb, lo, hi)` sums the block's integer products of rows 0..7
// into lo and 8..15 into hi (lane r: row r), which are scaled by d_w * d_x into two accumulators;
// the last rows % 16 rows are row_major (`four`, `one`). Sixteen `Block`s make a group block.
template <class Block, class Dots>
void rows16_matmul(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y, Dots dots,
                   RowsFn four, RowsFn one) {
    for (int32_t i = 0; i < n; i++, x += nx, y += rows) {
        const uint8_t* group = data;
        int32_t r = 0;
        for (; r + kRows16 <= rows; r += kRows16) {
            __m256 acc_lo = _mm256_setzero_ps(), acc_hi = _mm256_setzero_ps();
            for (int32_t b = 0; b < nx; b++, group += kRows16 * sizeof(Block)) {
                __m256i lo, hi;
                dots(group, x[b], &lo, &hi);
                const __m256 dx = _mm256_set1_ps(x[b].d);
                const __m256 dw_lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group)));
                const __m256 dw_hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group + 16)));
                acc_lo = _mm256_fmadd_ps(_mm256_mul_ps(dw_lo, dx), _mm256_cvtepi32_ps(lo), acc_lo);
                acc_hi = _mm256_fmadd_ps(_mm256_mul_ps(dw_hi, dx), _mm256_cvtepi32_ps(hi), acc_hi);
            }
            _mm256_storeu_ps(y + r, acc_lo);
            _mm256_storeu_ps(y + r + 8, acc_hi);
        }
        each_rows({group, static_cast<size_t>(nx) * sizeof(Block), rows - r, nx}, x, y + r, four, one);
    }
}

}  // namespace

// q4_0 rows16: the low nibbles of a column group's 32 bytes are rows 0..7, the high ones rows
// 8..15; four products per lane and group via dot_u8_s8 (15 * 127 * 2 fits an int16 pair sum).
void matmul_q4_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    rows16_matmul<BlockQ4>(
        data, rows, nx, x, n, y,
        [&](const uint8_t* group, const ActQ8& xb, __m256i* lo, __m256i* hi) {
            *lo = *hi = _mm256_set1_epi32(-8 * xb.sum);
            for (int g = 0; g < kQ4Block / 4; g++) {
                int32_t xg;
                __builtin_memcpy(&xg, xb.q + 4 * g, sizeof(xg));
                const __m256i xv = _mm256_set1_epi32(xg);
                const __m256i raw = load32(group + 2 * kRows16 + 32 * g);
                *lo = _mm256_add_epi32(*lo, dot_u8_s8(_mm256_and_si256(raw, m4), xv));
                *hi = _mm256_add_epi32(*hi, dot_u8_s8(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), xv));
            }
        },
        rows_q4_0<4>, rows_q4_0<1>);
}

// q8_0 rows16: rows 0..7 in the first 32 bytes of each column group, rows 8..15 in the next 32;
// |w| against x with w's sign, as rows_q8_0.
void matmul_q8_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y) {
    rows16_matmul<BlockQ8>(
        data, rows, nx, x, n, y,
        [](const uint8_t* group, const ActQ8& xb, __m256i* lo, __m256i* hi) {
            *lo = *hi = _mm256_setzero_si256();
            for (int g = 0; g < kQ8Block / 4; g++) {
                int32_t xg;
                __builtin_memcpy(&xg, xb.q + 4 * g, sizeof(xg));
                const __m256i xv = _mm256_set1_epi32(xg);
                const __m256i w0 = load32(group + 2 * kRows16 + 64 * g), w1 = load32(group + 2 * kRows16 + 64 * g + 32);
                *lo = _mm256_add_epi32(*lo, dot_u8_s8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(xv, w0)));
                *hi = _mm256_add_epi32(*hi, dot_u8_s8(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(xv, w1)));
            }
        },
        rows_q8_0<4>, rows_q8_0<1>);
}

void matvec_nf4(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_nf4<4>, rows_nf4<1>); }
void matvec_q3_0(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_q3_0<4>, rows_q3_0<1>); }
void matvec_q2_0(const QuantRows& w, const ActQ8* x, float* y) { each_rows(w, x, y, rows_q2_0<4>, rows_q2_0<1>); }

}  // namespace itera::quant_avx2
