// Reading .itl weights as they lie in the file (format/quant_blocks.h layouts), on the device and,
// for the tests, on the host. Products over a block format use the CPU's integer scheme
// (kernels_cpu/quant_ops.h): the input row is quantized to ActQ8 blocks of 32 and each weight block
// meets its activation block as an integer dot, so the device computes the CPU's integers; only the
// FP32 summation order of the scaled partial sums differs.
//
// A product over one input row (dot_outs) splits each weight row into units that the lanes of a
// warp take in turn (lane, lane + lanes, ...); a batch tile's product (dot_full) gives each thread
// whole weight rows instead. The units:
//   fp32 / fp16  1 element
//   q8_0         4 bytes of a block (4 elements), 8 units per block
//   q4_0         4 bytes of a block (elements j..j+3 and j+16..j+19), 4 units per block
//   nf4          4 bytes of a block (elements j..j+3 of activation blocks 2b and 2b+1), 8 per block
//   q3_0         elements 4j..4j+3 of a block (a 2-bit field of one qs word, 4 bits of qh), 8 per block
//   q2_0         elements 4j..4j+3 of an activation block (a 2-bit field of one qs word), 8 per
//                activation block: unit u is word u % 8 of activation block u / 8, like q8_0
// Each unit adds d_w * d_x * (its integer dot) to the row's FP32 sum. q3_0 and q2_0 codes are
// unpacked to int8 words of n - 4 and 2n - 3 (q3_word, q2_word), so a unit is one dp4a.
#pragma once

#include <cstdint>

#include "format/dtype.h"
#include "kernels_cpu/quant_ops.h"
#include "kernels_cpu/weight.h"
#include "kernels_cuda/hd.h"

namespace itera::cuda {

// The block formats the CUDA kernels read; other dtypes are refused when the model is loaded.
ITERA_HD inline bool is_block(DType t) {
    return t == DType::q8_0 || t == DType::q4_0 || t == DType::nf4 || t == DType::q3_0 || t == DType::q2_0;
}

// Bytes of one row of `cols` elements (format/dtype.h dtype_row_bytes for the dtypes above).
ITERA_HD inline int64_t row_bytes(DType t, int32_t cols) {
    switch (t) {
        case DType::f32:
            return 4 * static_cast<int64_t>(cols);
        case DType::f16:
            return 2 * static_cast<int64_t>(cols);
        case DType::q8_0:
            return 34 * static_cast<int64_t>((cols + 31) / 32);
        case DType::q4_0:
            return 18 * static_cast<int64_t>((cols + 31) / 32);
        case DType::nf4:
            return 34 * static_cast<int64_t>((cols + 63) / 64);
        case DType::q3_0:
            return 14 * static_cast<int64_t>((cols + 31) / 32);
        case DType::q2_0:
            return 18 * static_cast<int64_t>((cols + 63) / 64);
        default:
            return 0;
    }
}

// Element i of an fp32 or fp16 tensor (the per-channel vectors and small matrices).
ITERA_HD inline float element(const Weight& w, int64_t i) {
    if (w.dtype == DType::f16) return load_half(static_cast<const uint8_t*>(w.data) + 2 * i);
    return static_cast<const float*>(w.data)[i];
}

// W[row, col] for any supported dtype (ref::load_row's dequantization, element by element).
ITERA_HD inline float load_element(const Weight& w, int32_t row, int32_t col) {
    const uint8_t* r = static_cast<const uint8_t*>(w.data) + static_cast<int64_t>(row) * row_bytes(w.dtype, w.cols);
    switch (w.dtype) {
        case DType::q8_0: {
            const uint8_t* blk = r + 34 * (col / 32);
            return load_half(blk) * static_cast<float>(static_cast<int8_t>(blk[2 + col % 32]));
        }
        case DType::q4_0: {
            const uint8_t* blk = r + 18 * (col / 32);
            const int i = col % 32;
            const int n = i < 16 ? blk[2 + i] & 0x0f : blk[2 + i - 16] >> 4;
            return load_half(blk) * static_cast<float>(n - 8);
        }
        case DType::nf4: {
            const uint8_t* blk = r + 34 * (col / 64);
            const int i = col % 64;
            const int n = i < 32 ? blk[2 + i] & 0x0f : blk[2 + i - 32] >> 4;
            // kNf4 (format/quant_blocks.h), spelled out: a host constexpr array is not visible on the device
            const float levels[16] = {-1.0f,
                                      -0.6961928009986877f,
                                      -0.5250730514526367f,
                                      -0.39491748809814453f,
                                      -0.28444138169288635f,
                                      -0.18477343022823334f,
                                      -0.09105003625154495f,
                                      0.0f,
                                      0.07958029955625534f,
                                      0.16093020141124725f,
                                      0.24611230194568634f,
                                      0.33791524171829224f,
                                      0.44070982933044434f,
                                      0.5626170039176941f,
                                      0.7229568362236023f,
                                      1.0f};
            return load_half(blk) * levels[n];
        }
        case DType::q3_0: {
            const uint8_t* blk = r + 14 * (col / 32);
            const int i = col % 32;
            const int n = ((blk[2 + i % 8] >> (2 * (i / 8))) & 3) | (((blk[10 + i / 8] >> (i % 8)) & 1) << 2);
            return load_half(blk) * static_cast<float>(n - 4);
        }
        case DType::q2_0: {
            const uint8_t* blk = r + 18 * (col / 64);
            const int i = col % 64;
            const int n = (blk[2 + i % 16] >> (2 * (i / 16))) & 3;
            return load_half(blk) * (static_cast<float>(n) - 1.5f);
        }
        default:
            return element(w, static_cast<int64_t>(row) * w.cols + col);
    }
}

// The int8 NF4 levels kNf4I8 (kernels_cpu/quant_ops.h) of four codes, one in the low nibble of
// each byte of `codes`: two byte permutations over the 16-entry table, then a select on bit 3.
ITERA_HD inline int32_t nf4_levels(uint32_t codes) {
    constexpr uint32_t t0 = 0xcebda881u, t1 = 0x00f4e9dcu, t2 = 0x2b1f140au, t3 = 0x7f5c4738u;
    const uint32_t sel = (codes & 0x7u) | ((codes >> 4) & 0x70u) | ((codes >> 8) & 0x700u) | ((codes >> 12) & 0x7000u);
    const uint32_t lo = byte_perm(t0, t1, sel), hi = byte_perm(t2, t3, sel);
    const uint32_t high = ((codes >> 3) & 0x01010101u) * 0xffu;
    return static_cast<int32_t>((lo & ~high) | (hi & high));
}

// The int8 codes n - 4 of q3_0 elements 4j..4j+3 of the block at blk (j < 8): element 4j + i is
// field j / 2 of qs[4 (j % 2) + i] (bits 0-1) and bit 4j + i of qh (bit 2). n - 4 is the 2-bit
// field when bit 2 is set, else the field - 4 (0xfc | field as a byte).
ITERA_HD inline int32_t q3_word(const uint8_t* blk, int j) {
    const uint32_t lo = (static_cast<uint32_t>(load_i32_a2(blk + 2 + 4 * (j & 1))) >> (2 * (j >> 1))) & 0x03030303u;
    const uint32_t hi4 = (static_cast<uint32_t>(load_i32_a2(blk + 10)) >> (4 * j)) & 0xfu;
    const uint32_t hi = (hi4 * 0x00204081u) & 0x01010101u;  // bit i of hi4 to bit 0 of byte i
    return static_cast<int32_t>(lo | ((hi ^ 0x01010101u) * 0xfcu));
}

// The int8 codes 2n - 3 of q2_0 elements 4j..4j+3 of half h of the block at blk (j < 8, h < 2;
// the half meets activation block 2b + h): element 32h + 4j + i is field 2h + j / 4 of
// qs[4 (j % 4) + i]. With n = 2a + c, 2n - 3 = 2c + 1 when a = 1, else 2c + 1 - 4.
ITERA_HD inline int32_t q2_word(const uint8_t* blk, int h, int j) {
    const uint32_t n =
        (static_cast<uint32_t>(load_i32_a2(blk + 2 + 4 * (j & 3))) >> (2 * (2 * h + (j >> 2)))) & 0x03030303u;
    const uint32_t odd = ((n << 1) & 0x02020202u) | 0x01010101u, a = (n >> 1) & 0x01010101u;
    return static_cast<int32_t>(odd | ((a ^ 0x01010101u) * 0xfcu));
}

// Units of a row (see the top of this file).
ITERA_HD inline int32_t row_units(DType t, int32_t cols) {
    switch (t) {
        case DType::q8_0:
            return 8 * ((cols + 31) / 32);
        case DType::q4_0:
            return 4 * ((cols + 31) / 32);
        case DType::nf4:
            return 8 * ((cols + 63) / 64);
        case DType::q3_0:
            return 8 * ((cols + 31) / 32);
        case DType::q2_0:
            return 8 * ((cols + 31) / 32);  // activation blocks: an odd count ends with half a block
        default:
            return cols;
    }
}

// The single-row case, kOut weight rows at once: acc[o] += the units lane, lane + lanes, ... of
// (row0 + o * rb) . x for o < kOut. A decode step has one token per tile, so a team would wait on
// one weight row's loads at a time; kOut rows give it kOut independent loads in flight, and each
// activation unit is read once for all of them. Each lane adds its units lane, lane + lanes, ...
// in order. Callers pass kOut valid rows.
template <int kOut>
ITERA_HD inline void dot_outs(DType t, const uint8_t* row0, int64_t rb, int32_t cols, const float* x, const ActQ8* xq,
                              int lane, int lanes, float* acc) {
    switch (t) {
        case DType::f32:
            for (int32_t c = lane; c < cols; c += lanes) {
                const float xc = x[c];
                ITERA_UNROLL
                for (int o = 0; o < kOut; o++) acc[o] += reinterpret_cast<const float*>(row0 + o * rb)[c] * xc;
            }
            return;
        case DType::f16:
            for (int32_t c = lane; c < cols; c += lanes) {
                const float xc = x[c];
                ITERA_UNROLL
                for (int o = 0; o < kOut; o++) acc[o] += load_half(row0 + o * rb + 2 * c) * xc;
            }
            return;
        case DType::q8_0: {
            const int32_t units = row_units(t, cols);
            for (int32_t u = lane; u < units; u += lanes) {
                const int32_t b = u >> 3, j = u & 7;
                const ActQ8& a = xq[b];
                const int32_t xa = load_i32(a.q + 4 * j);
                ITERA_UNROLL
                for (int o = 0; o < kOut; o++) {
                    const uint8_t* blk = row0 + o * rb + 34 * b;
                    acc[o] += load_half(blk) * a.d * static_cast<float>(dp4a(load_i32_a2(blk + 2 + 4 * j), xa, 0));
                }
            }
            return;
        }
        case DType::q4_0: {
            const int32_t units = row_units(t, cols);
            for (int32_t u = lane; u < units; u += lanes) {
                const int32_t b = u >> 2, j = u & 3;
                const ActQ8& a = xq[b];
                const int32_t xl = load_i32(a.q + 4 * j), xh = load_i32(a.q + 16 + 4 * j);
                const int32_t xsum = dp4a(0x01010101, xl, dp4a(0x01010101, xh, 0));
                ITERA_UNROLL
                for (int o = 0; o < kOut; o++) {
                    const uint8_t* blk = row0 + o * rb + 18 * b;
                    const int32_t w = load_i32_a2(blk + 2 + 4 * j);
                    const int32_t s = dp4a(w & 0x0f0f0f0f, xl, dp4a((w >> 4) & 0x0f0f0f0f, xh, 0)) - 8 * xsum;
                    acc[o] += load_half(blk) * a.d * static_cast<float>(s);
                }
            }
            return;
        }
        case DType::nf4: {
            const int32_t units = row_units(t, cols);
            const int32_t nx = (cols + 31) / 32;
            for (int32_t u = lane; u < units; u += lanes) {
                const int32_t b = u >> 3, j = u & 7;
                const bool has_hi = 2 * b + 1 < nx;
                const ActQ8& a = xq[2 * b];
                const int32_t xl = load_i32(a.q + 4 * j);
                const int32_t xh = has_hi ? load_i32(xq[2 * b + 1].q + 4 * j) : 0;
                const float dl = a.d * (1.0f / 127.0f), dh = has_hi ? xq[2 * b + 1].d * (1.0f / 127.0f) : 0.0f;
                ITERA_UNROLL
                for (int o = 0; o < kOut; o++) {
                    const uint8_t* blk = row0 + o * rb + 34 * b;
                    const float d = load_half(blk);
                    const uint32_t w = static_cast<uint32_t>(load_i32_a2(blk + 2 + 4 * j));
                    acc[o] += d * dl * static_cast<float>(dp4a(nf4_levels(w & 0x0f0f0f0fu), xl, 0));
                    if (has_hi) acc[o] += d * dh * static_cast<float>(dp4a(nf4_levels((w >> 4) & 0x0f0f0f0fu), xh, 0));
                }
            }
            return;
        }
        case DType::q3_0: {
            const int32_t units = row_units(t, cols);
            for (int32_t u = lane; u < units; u += lanes) {
                const int32_t b = u >> 3, j = u & 7;
                const ActQ8& a = xq[b];
                const int32_t xa = load_i32(a.q + 4 * j);
                ITERA_UNROLL
                for (int o = 0; o < kOut; o++) {
                    const uint8_t* blk = row0 + o * rb + 14 * b;
                    acc[o] += load_half(blk) * a.d * static_cast<float>(dp4a(q3_word(blk, j), xa, 0));
                }
            }
            return;
        }
        case DType::q2_0: {
            const int32_t units = row_units(t, cols);
            for (int32_t u = lane; u < units; u += lanes) {
                const int32_t ab = u >> 3, j = u & 7;  // activation block, its word
                const ActQ8& a = xq[ab];
                const int32_t xa = load_i32(a.q + 4 * j);
                const float dx = a.d * 0.5f;
                ITERA_UNROLL
                for (int o = 0; o < kOut; o++) {
                    const uint8_t* blk = row0 + o * rb + 18 * (ab >> 1);
                    acc[o] += load_half(blk) * dx * static_cast<float>(dp4a(q2_word(blk, ab & 1, j), xa, 0));
                }
            }
            return;
        }
        default:
            return;
    }
}

// acc[r] += d * (a_r.d * xscale) * (w . a_r.q) for the tile rows r in mask, a_r their activation
// block ab: the 32 int8 weights of one activation block, as 8 words, against every row.
template <int kRows>
ITERA_HD inline void words_dot_rows(const int32_t (&w)[8], float d, float xscale, const ActQ8* xq, int32_t xqs,
                                    int32_t ab, uint32_t mask, float* acc) {
    ITERA_UNROLL
    for (int r = 0; r < kRows; r++) {
        if (!(mask >> r & 1u)) continue;
        const ActQ8& a = xq[r * xqs + ab];
        int32_t s = 0;
        for (int j = 0; j < 8; j++) s = dp4a(w[j], load_i32(a.q + 4 * j), s);
        acc[r] += d * (a.d * xscale) * static_cast<float>(s);
    }
}

// A batch tile's product: one thread takes weight row `row` whole against every tile row r in
// `mask` (x_r at x + r * xs, xq_r at xq + r * xqs), acc[r] += row . x_r. With a thread per output
// row no warp reduction is needed; a warp per output row, lanes splitting the row, needed one per
// output and tile row, and those shuffles bounded large batches. Each weight word is loaded once
// for all tile rows; fp32 / fp16 read 4 inputs at a time when rows and strides allow.
template <int kRows>
ITERA_HD inline void dot_full(DType t, const uint8_t* row, int32_t cols, const float* x, int32_t xs, const ActQ8* xq,
                              int32_t xqs, uint32_t mask, float* acc) {
    switch (t) {
        case DType::f32:
        case DType::f16: {
            const bool f16 = t == DType::f16;
            const uintptr_t align = f16 ? 8 : 16;
            const bool vec = cols % 4 == 0 && xs % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                             reinterpret_cast<uintptr_t>(row) % align == 0;
            int32_t c = 0;
            if (vec)
                for (; c < cols; c += 4) {
                    float w4[4];
                    if (f16)
                        for (int k = 0; k < 4; k++) w4[k] = load_half(row + 2 * (c + k));
                    else
                        load4(reinterpret_cast<const float*>(row) + c, w4);
                    ITERA_UNROLL
                    for (int r = 0; r < kRows; r++) {
                        if (!(mask >> r & 1u)) continue;
                        float x4[4];
                        load4(x + r * xs + c, x4);
                        acc[r] += w4[0] * x4[0];
                        acc[r] += w4[1] * x4[1];
                        acc[r] += w4[2] * x4[2];
                        acc[r] += w4[3] * x4[3];
                    }
                }
            for (; c < cols; c++) {
                const float wc = f16 ? load_half(row + 2 * c) : reinterpret_cast<const float*>(row)[c];
                ITERA_UNROLL
                for (int r = 0; r < kRows; r++)
                    if (mask >> r & 1u) acc[r] += wc * x[r * xs + c];
            }
            return;
        }
        case DType::q8_0: {
            for (int32_t b = 0; b < (cols + 31) / 32; b++) {
                const uint8_t* blk = row + 34 * b;
                const float d = load_half(blk);
                int32_t w[8];
                for (int j = 0; j < 8; j++) w[j] = load_i32_a2(blk + 2 + 4 * j);
                words_dot_rows<kRows>(w, d, 1.0f, xq, xqs, b, mask, acc);
            }
            return;
        }
        case DType::q4_0: {
            for (int32_t b = 0; b < (cols + 31) / 32; b++) {
                const uint8_t* blk = row + 18 * b;
                const float d = load_half(blk);
                int32_t lo[4], hi[4];  // nibbles of elements 4j..4j+3 and 16+4j..16+4j+3
                for (int j = 0; j < 4; j++) {
                    const int32_t w = load_i32_a2(blk + 2 + 4 * j);
                    lo[j] = w & 0x0f0f0f0f;
                    hi[j] = (w >> 4) & 0x0f0f0f0f;
                }
                ITERA_UNROLL
                for (int r = 0; r < kRows; r++) {
                    if (!(mask >> r & 1u)) continue;
                    const ActQ8& a = xq[r * xqs + b];
                    int32_t s = 0;
                    for (int j = 0; j < 4; j++)
                        s = dp4a(lo[j], load_i32(a.q + 4 * j), dp4a(hi[j], load_i32(a.q + 16 + 4 * j), s));
                    // sum (n - 8) q = sum n q - 8 sum q
                    acc[r] += d * a.d * static_cast<float>(s - 8 * a.sum);
                }
            }
            return;
        }
        case DType::nf4: {
            const int32_t nx = (cols + 31) / 32;  // activation blocks; odd: the last nf4 block is half used
            for (int32_t b = 0; b < (cols + 63) / 64; b++) {
                const uint8_t* blk = row + 34 * b;
                const float d = load_half(blk);
                const bool has_hi = 2 * b + 1 < nx;
                int32_t lo[8], hi[8];  // int8 levels of activation blocks 2b and 2b + 1
                for (int j = 0; j < 8; j++) {
                    const uint32_t w = static_cast<uint32_t>(load_i32_a2(blk + 2 + 4 * j));
                    lo[j] = nf4_levels(w & 0x0f0f0f0fu);
                    hi[j] = nf4_levels((w >> 4) & 0x0f0f0f0fu);
                }
                ITERA_UNROLL
                for (int r = 0; r < kRows; r++) {
                    if (!(mask >> r & 1u)) continue;
                    const ActQ8& a = xq[r * xqs + 2 * b];
                    int32_t s = 0;
                    for (int j = 0; j < 8; j++) s = dp4a(lo[j], load_i32(a.q + 4 * j), s);
                    acc[r] += d * (a.d * (1.0f / 127.0f)) * static_cast<float>(s);
                    if (has_hi) {
                        const ActQ8& h = xq[r * xqs + 2 * b + 1];
                        int32_t sh = 0;
                        for (int j = 0; j < 8; j++) sh = dp4a(hi[j], load_i32(h.q + 4 * j), sh);
                        acc[r] += d * (h.d * (1.0f / 127.0f)) * static_cast<float>(sh);
                    }
                }
            }
            return;
        }
        case DType::q3_0: {
            for (int32_t b = 0; b < (cols + 31) / 32; b++) {
                const uint8_t* blk = row + 14 * b;
                const float d = load_half(blk);
                int32_t w[8];  // n - 4 of elements 4j..4j+3
                for (int j = 0; j < 8; j++) w[j] = q3_word(blk, j);
                words_dot_rows<kRows>(w, d, 1.0f, xq, xqs, b, mask, acc);
            }
            return;
        }
        case DType::q2_0: {
            const int32_t nx = (cols + 31) / 32;  // activation blocks; odd: the last q2_0 block is half used
            for (int32_t ab = 0; ab < nx; ab++) {
                const uint8_t* blk = row + 18 * (ab >> 1);
                const float d = load_half(blk);
                int32_t w[8];  // 2n - 3 of the half's elements 4j..4j+3
                for (int j = 0; j < 8; j++) w[j] = q2_word(blk, ab & 1, j);
                words_dot_rows<kRows>(w, d, 0.5f, xq, xqs, ab, mask, acc);
            }
            return;
        }
        default:
            return;
    }
}

}  // namespace itera::cuda
