// Quantized block formats: the exact bytes a .itl file stores for a q8_0, q4_0, nf4, q3_0 or q2_0
// tensor, and the scalar reference quantize / dequantize of one row. The kernels read these
// layouts in place.
//
// A quantized matrix [rows, cols] is stored row by row; each row is ceil(cols / B) blocks of B
// consecutive elements along the input dimension (the last block zero-padded). Little-endian.
//
//   q8_0  B = 32, 34 bytes (8.5 bits/weight):  fp16 d | int8 q[32]         x[i] = d * q[i]
//   q4_0  B = 32, 18 bytes (4.5 bits/weight):  fp16 d | uint8 qs[16]       x[i] = d * (n[i] - 8)
//         byte j holds element j in its low nibble and element j + 16 in its high nibble (ggml Q4_0)
//   nf4   B = 64, 34 bytes (4.25 bits/weight): fp16 d | uint8 qs[32]       x[i] = d * kNf4[n[i]]
//         byte j holds element j in its low nibble and element j + 32 in its high nibble;
//         d is the block's absmax and kNf4 the 16 NormalFloat4 levels of QLoRA (in [-1, 1])
//   q3_0  B = 32, 14 bytes (3.5 bits/weight):  fp16 d | uint8 qs[8] | uint8 qh[4]   x[i] = d * (n[i] - 4)
//         n[i] = lo | hi << 2: lo, the 2-bit field at bits 2k..2k+1 of qs[j] for i = j + 8k (k = 0..3),
//         hi, bit i % 8 of qh[i / 8] (qh read as a little-endian uint32: bit i)
//   q2_0  B = 64, 18 bytes (2.25 bits/weight): fp16 d | uint8 qs[16]   x[i] = d * (n[i] - 1.5)
//         n[i], the 2-bit field at bits 2k..2k+1 of qs[j] for i = j + 16k (k = 0..3)
//
// Layout rows16 (fp32, fp16, q4_0 and q8_0 matrices of at least 16 rows): the same blocks, reordered
// so that a 512-bit register holds one column group of 16 rows, row r in 32-bit lane r. The first
// 16 * floor(rows / 16) rows go in groups of 16; for group G and block column b (nb = ceil(cols /
// block), an fp32 or fp16 "block" being one element), at byte (G * nb + b) * 16 * (block bytes):
//   fp32 / fp16: w[16]    column b of the 16 rows, row r at w[r] (16 x 4 = 64 or 16 x 2 = 32 bytes)
//   q4_0 and q8_0: fp16 d[16]  the 16 rows' scales of block b, then
//   q4_0: uint8 q[8][32]  column group g = 0..7 (elements 4g..4g+3 of the block): byte j holds row
//                    j / 4, element 4g + j % 4 in its low nibble and row 8 + j / 4, same element,
//                    in its high nibble (16 x 18 = 288 bytes)
//   q8_0: int8 q[8][64]   column group g: byte j holds row j / 4, element 4g + j % 4 (16 x 34 = 544)
// The last rows % 16 rows follow, row_major. A tensor takes the same bytes in either layout.
//
// q8_0 and q4_0 are ggml's Q8_0 and Q4_0 blocks bit for bit. q3_0 and q2_0 are this project's
// (docs/quantization.md measures why these grids and block sizes): q3_0's levels -4..3 put the
// value of largest magnitude on -4 like q4_0; q2_0's four levels +-0.5, +-1.5 have no zero, the
// uniform 4-level grid that fits Gaussian-like weights best, and its 64-element block spends
// 0.25 bits/weight on the scale. Their 2-bit fields sit 8 (q3_0) or 16 (q2_0) elements apart so
// that one shift per 64-bit lane unpacks consecutive elements.
#pragma once

#include <cstddef>
#include <cstdint>

#include "format/dtype.h"

namespace itera {

constexpr int kQ8Block = 32;
constexpr int kQ4Block = 32;
constexpr int kNf4Block = 64;
constexpr int kQ3Block = 32;
constexpr int kQ2Block = 64;

struct BlockQ8 {
    uint16_t d;  // fp16 scale
    int8_t q[kQ8Block];
};
static_assert(sizeof(BlockQ8) == 34, "q8_0 block is 34 bytes");

struct BlockQ4 {
    uint16_t d;  // fp16 scale
    uint8_t qs[kQ4Block / 2];
};
static_assert(sizeof(BlockQ4) == 18, "q4_0 block is 18 bytes");

struct BlockNf4 {
    uint16_t d;  // fp16 absmax
    uint8_t qs[kNf4Block / 2];
};
static_assert(sizeof(BlockNf4) == 34, "nf4 block is 34 bytes");

struct BlockQ3 {
    uint16_t d;                // fp16 scale
    uint8_t qs[kQ3Block / 4];  // low 2 bits of each code
    uint8_t qh[kQ3Block / 8];  // high bit of each code
};
static_assert(sizeof(BlockQ3) == 14, "q3_0 block is 14 bytes");

struct BlockQ2 {
    uint16_t d;  // fp16 scale
    uint8_t qs[kQ2Block / 4];
};
static_assert(sizeof(BlockQ2) == 18, "q2_0 block is 18 bytes");

// NormalFloat4 levels (QLoRA, Dettmers et al. 2023): quantiles of N(0, 1) scaled to [-1, 1],
// with an exact zero.
constexpr float kNf4[16] = {-1.0f,
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

// Round-to-nearest quantization of one row of `cols` values into ceil(cols / B) blocks, and back.
// q8_0 / q4_0 scales follow ggml (q4_0: d = max-magnitude value / -8, so that value is exact).
// q3_0 / q2_0 search their scale: see q3_0_scale / q2_0_scale.
void quantize_row_q8_0(const float* x, int64_t cols, BlockQ8* out);
void quantize_row_q4_0(const float* x, int64_t cols, BlockQ4* out);
void quantize_row_nf4(const float* x, int64_t cols, BlockNf4* out);
void quantize_row_q3_0(const float* x, int64_t cols, BlockQ3* out);
void quantize_row_q2_0(const float* x, int64_t cols, BlockQ2* out);
void dequantize_row_q8_0(const BlockQ8* in, int64_t cols, float* out);
void dequantize_row_q4_0(const BlockQ4* in, int64_t cols, float* out);
void dequantize_row_nf4(const BlockNf4* in, int64_t cols, float* out);
void dequantize_row_q3_0(const BlockQ3* in, int64_t cols, float* out);
void dequantize_row_q2_0(const BlockQ2* in, int64_t cols, float* out);
// One row of any stored dtype, `out` / `in` being dtype_row_bytes(dtype, cols) bytes: the block
// formats as above, fp16 rounded to nearest (fp32_to_fp16), fp32 copied. Throws itera::Error for
// an unknown dtype.
void quantize_row(DType dtype, const float* x, int64_t cols, void* out);
void dequantize_row(DType dtype, const void* in, int64_t cols, float* out);

// rows16 <-> row_major for an fp32, fp16, q4_0 or q8_0 matrix of `rows` x `cols`: whole tensors, and
// one row (its blocks as row_major stores them, into dtype_row_bytes(dtype, cols) bytes).
constexpr int kRows16Block = 32;               // q4_0's and q8_0's block
size_t rows16_group_block_bytes(DType dtype);  // 64 (fp32), 32 (fp16), 288 (q4_0), 544 (q8_0)
void to_rows16(DType dtype, const uint8_t* row_major, int64_t rows, int64_t cols, uint8_t* out);
void row_from_rows16(DType dtype, const uint8_t* rows16, int64_t rows, int64_t cols, int64_t row, uint8_t* out);

// The fp16 scale (bits) round-to-nearest gives n <= B values of a q3_0 / q2_0 block: the format's
// rule (q3_0: the max-magnitude value / -4, q2_0: absmax / 1.5) times the multiple of least
// squared error, in steps of 0.02 over 0.70 .. 1.40 (q3_0) or 0.40 .. 1.00 (q2_0), the ranges the
// best multiple of Itera-Lite's weight blocks falls in (docs/quantization.md). With 3 or 2 bits
// the rule alone clips too little: on N(0, 1) blocks it leaves 7% (q3_0) and 50% (q2_0) more rms
// error (tests/test_quant_kernels.cpp).
uint16_t q3_0_scale(const float* v, int n);
uint16_t q2_0_scale(const float* v, int n);
// Nearest code of v under scale d (d != 0): q3_0 0..7, q2_0 0..3.
int q3_0_code(float v, float d);
int q2_0_code(float v, float d);

// Nearest NF4 level index of v in [-1, 1].
int nf4_index(float v);

}  // namespace itera
