#include "format/quant_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "common/error.h"
#include "format/half.h"

namespace itera {

namespace {

// Copies block b of a row into a full block, zero-padding past the row's end.
void block_values(const float* x, int64_t cols, int64_t b, int block, float* out) {
    for (int i = 0; i < block; i++) {
        const int64_t c = b * block + i;
        out[i] = c < cols ? x[c] : 0.0f;
    }
}

int64_t blocks(int64_t cols, int block) { return (cols + block - 1) / block; }

// Elements of block b of a row of `cols` (the last block may be short).
int block_len(int64_t cols, int64_t b, int block) {
    return static_cast<int>(std::min<int64_t>(block, cols - b * block));
}

float q3_0_value(float d, int n) { return d * static_cast<float>(n - 4); }
float q2_0_value(float d, int n) { return d * (static_cast<float>(n) - 1.5f); }

// The fp16 scale among base * (lo + 2k) / 100, k = 0 .. steps - 1, of least squared error over
// v[0, n) (the first on ties); 0 for an all-zero block.
uint16_t search_scale(const float* v, int n, float base, int lo, int steps, int (*code)(float, float),
                      float (*value)(float, int)) {
    uint16_t best = 0;
    float best_err = INFINITY;
    for (int k = 0; k < steps; k++) {
        const float m = static_cast<float>(lo + 2 * k) / 100.0f;
        const uint16_t h = fp32_to_fp16(std::clamp(base * m, -65504.0f, 65504.0f));
        const float d = fp16_to_fp32(h);
        if (d == 0.0f) continue;
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            const float e = v[i] - value(d, code(v[i], d));
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best = h;
        }
    }
    return best;
}

}  // namespace

// fmin / fmax: a NaN quotient gives a code, not an undefined conversion
int q3_0_code(float v, float d) {
    return static_cast<int>(std::fmax(0.0f, std::fmin(7.0f, std::nearbyint(v / d) + 4.0f)));
}

int q2_0_code(float v, float d) { return static_cast<int>(std::fmax(0.0f, std::fmin(3.0f, std::floor(v / d) + 2.0f))); }

uint16_t q3_0_scale(const float* v, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < n; i++)
        if (std::fabs(v[i]) > amax) {
            amax = std::fabs(v[i]);
            max = v[i];
        }
    return search_scale(v, n, max / -4.0f, 70, 36, q3_0_code, q3_0_value);
}

uint16_t q2_0_scale(const float* v, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = std::max(amax, std::fabs(v[i]));
    return search_scale(v, n, amax / 1.5f, 40, 31, q2_0_code, q2_0_value);
}

int nf4_index(float v) {
    int best = 0;
    for (int i = 1; i < 16; i++)
        if (std::fabs(v - kNf4[i]) < std::fabs(v - kNf4[best])) best = i;
    return best;
}

void quantize_row_q8_0(const float* x, int64_t cols, BlockQ8* out) {
    float v[kQ8Block];
    for (int64_t b = 0; b < blocks(cols, kQ8Block); b++) {
        block_values(x, cols, b, kQ8Block, v);
        float amax = 0.0f;
        for (float f : v) amax = std::max(amax, std::fabs(f));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = fp32_to_fp16(d);
        for (int i = 0; i < kQ8Block; i++) out[b].q[i] = static_cast<int8_t>(std::lround(v[i] * id));
    }
}

void quantize_row_q4_0(const float* x, int64_t cols, BlockQ4* out) {
    float v[kQ4Block];
    for (int64_t b = 0; b < blocks(cols, kQ4Block); b++) {
        block_values(x, cols, b, kQ4Block, v);
        float amax = 0.0f, max = 0.0f;  // the value of largest magnitude, with its sign
        for (float f : v)
            if (std::fabs(f) > amax) {
                amax = std::fabs(f);
                max = f;
            }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = fp32_to_fp16(d);
        for (int j = 0; j < kQ4Block / 2; j++) {
            const int lo = std::min(15, static_cast<int>(v[j] * id + 8.5f));
            const int hi = std::min(15, static_cast<int>(v[j + kQ4Block / 2] * id + 8.5f));
            out[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
        }
    }
}

void quantize_row_nf4(const float* x, int64_t cols, BlockNf4* out) {
    float v[kNf4Block];
    for (int64_t b = 0; b < blocks(cols, kNf4Block); b++) {
        block_values(x, cols, b, kNf4Block, v);
        float amax = 0.0f;
        for (float f : v) amax = std::max(amax, std::fabs(f));
        out[b].d = fp32_to_fp16(amax);
        const float id = amax != 0.0f ? 1.0f / amax : 0.0f;
        for (int j = 0; j < kNf4Block / 2; j++)
            out[b].qs[j] = static_cast<uint8_t>(nf4_index(v[j] * id) | (nf4_index(v[j + kNf4Block / 2] * id) << 4));
    }
}

void quantize_row_q3_0(const float* x, int64_t cols, BlockQ3* out) {
    float v[kQ3Block];
    for (int64_t b = 0; b < blocks(cols, kQ3Block); b++) {
        block_values(x, cols, b, kQ3Block, v);
        BlockQ3 blk = {};
        blk.d = q3_0_scale(v, static_cast<int>(std::min<int64_t>(kQ3Block, cols - b * kQ3Block)));
        const float d = fp16_to_fp32(blk.d);
        for (int i = 0; i < kQ3Block; i++) {
            const int n = d != 0.0f ? q3_0_code(v[i], d) : 4;
            blk.qs[i % 8] |= static_cast<uint8_t>((n & 3) << (2 * (i / 8)));
            blk.qh[i / 8] |= static_cast<uint8_t>((n >> 2) << (i % 8));
        }
        out[b] = blk;
    }
}

void quantize_row_q2_0(const float* x, int64_t cols, BlockQ2* out) {
    float v[kQ2Block];
    for (int64_t b = 0; b < blocks(cols, kQ2Block); b++) {
        block_values(x, cols, b, kQ2Block, v);
        BlockQ2 blk = {};
        blk.d = q2_0_scale(v, static_cast<int>(std::min<int64_t>(kQ2Block, cols - b * kQ2Block)));
        const float d = fp16_to_fp32(blk.d);
        for (int i = 0; i < kQ2Block; i++) {
            const int n = d != 0.0f ? q2_0_code(v[i], d) : 2;
            blk.qs[i % 16] |= static_cast<uint8_t>(n << (2 * (i / 16)));
        }
        out[b] = blk;
    }
}

// The dequantizers convert each block's fp16 scale once, then walk its codes.
void dequantize_row_q8_0(const BlockQ8* in, int64_t cols, float* out) {
    for (int64_t b = 0; b < blocks(cols, kQ8Block); b++) {
        const float d = fp16_to_fp32(in[b].d);
        for (int i = 0; i < block_len(cols, b, kQ8Block); i++)
            out[b * kQ8Block + i] = d * static_cast<float>(in[b].q[i]);
    }
}

void dequantize_row_q4_0(const BlockQ4* in, int64_t cols, float* out) {
    constexpr int half = kQ4Block / 2;
    for (int64_t b = 0; b < blocks(cols, kQ4Block); b++) {
        const BlockQ4& blk = in[b];
        const float d = fp16_to_fp32(blk.d);
        for (int i = 0; i < block_len(cols, b, kQ4Block); i++) {
            const int n = i < half ? blk.qs[i] & 0x0f : blk.qs[i - half] >> 4;
            out[b * kQ4Block + i] = d * static_cast<float>(n - 8);
        }
    }
}

void dequantize_row_nf4(const BlockNf4* in, int64_t cols, float* out) {
    constexpr int half = kNf4Block / 2;
    for (int64_t b = 0; b < blocks(cols, kNf4Block); b++) {
        const BlockNf4& blk = in[b];
        const float d = fp16_to_fp32(blk.d);
        for (int i = 0; i < block_len(cols, b, kNf4Block); i++) {
            const int n = i < half ? blk.qs[i] & 0x0f : blk.qs[i - half] >> 4;
            out[b * kNf4Block + i] = d * kNf4[n];
        }
    }
}

void dequantize_row_q3_0(const BlockQ3* in, int64_t cols, float* out) {
    for (int64_t b = 0; b < blocks(cols, kQ3Block); b++) {
        const BlockQ3& blk = in[b];
        const float d = fp16_to_fp32(blk.d);
        for (int i = 0; i < block_len(cols, b, kQ3Block); i++) {
            const int n = ((blk.qs[i % 8] >> (2 * (i / 8))) & 3) | (((blk.qh[i / 8] >> (i % 8)) & 1) << 2);
            out[b * kQ3Block + i] = q3_0_value(d, n);
        }
    }
}

void dequantize_row_q2_0(const BlockQ2* in, int64_t cols, float* out) {
    for (int64_t b = 0; b < blocks(cols, kQ2Block); b++) {
        const BlockQ2& blk = in[b];
        const float d = fp16_to_fp32(blk.d);
        for (int i = 0; i < block_len(cols, b, kQ2Block); i++)
            out[b * kQ2Block + i] = q2_0_value(d, (blk.qs[i % 16] >> (2 * (i / 16))) & 3);
    }
}

void quantize_row(DType dtype, const float* x, int64_t cols, void* out) {
    switch (dtype) {
        case DType::f32:
            std::memcpy(out, x, 4 * static_cast<size_t>(cols));
            return;
        case DType::f16:
            for (int64_t c = 0; c < cols; c++) {
                const uint16_t h = fp32_to_fp16(x[c]);
                std::memcpy(static_cast<uint8_t*>(out) + 2 * c, &h, 2);
            }
            return;
        case DType::q8_0:
            return quantize_row_q8_0(x, cols, static_cast<BlockQ8*>(out));
        case DType::q4_0:
            return quantize_row_q4_0(x, cols, static_cast<BlockQ4*>(out));
        case DType::nf4:
            return quantize_row_nf4(x, cols, static_cast<BlockNf4*>(out));
        case DType::q3_0:
            return quantize_row_q3_0(x, cols, static_cast<BlockQ3*>(out));
        case DType::q2_0:
            return quantize_row_q2_0(x, cols, static_cast<BlockQ2*>(out));
        default:
            throw Error("quantize_row: unknown dtype " + std::to_string(static_cast<int32_t>(dtype)));
    }
}

namespace {

// Where a rows16 group block keeps element e (0..31) of lane r (0..15), after the 16 scales: q4_0,
// the nibble of byte 32 * (e / 4) + 4 * (r % 8) + e % 4 (low for r < 8); q8_0, byte
// 64 * (e / 4) + 4 * r + e % 4.
size_t q4_byte(int r, int e) { return 2 * kRows16 + 32 * static_cast<size_t>(e / 4) + 4 * (r % 8) + e % 4; }
size_t q8_byte(int r, int e) { return 2 * kRows16 + 64 * static_cast<size_t>(e / 4) + 4 * r + e % 4; }
uint8_t q4_nibble(const BlockQ4& b, int e) { return e < 16 ? b.qs[e] & 0x0f : b.qs[e - 16] >> 4; }

// out[c] = the Bytes-byte element at group + c * stride, c < n. A constant size: a copy of a
// run-time size is a library call per element (an fp32 embedding row of 128 rows' prefill spent
// about 13 us there).
template <size_t Bytes>
void gather_elements(const uint8_t* group, size_t stride, int64_t n, uint8_t* out) {
    for (int64_t c = 0; c < n; c++) std::memcpy(out + Bytes * c, group + static_cast<size_t>(c) * stride, Bytes);
}

}  // namespace

size_t rows16_group_block_bytes(DType dtype) { return kRows16 * dtype_block_bytes(dtype); }

void to_rows16(DType dtype, const uint8_t* row_major, int64_t rows, int64_t cols, uint8_t* out) {
    const size_t block = dtype_block_bytes(dtype), group_block = rows16_group_block_bytes(dtype);
    const int64_t nb = (cols + dtype_block(dtype) - 1) / dtype_block(dtype), grouped = rows / kRows16 * kRows16;
    const size_t group_bytes = static_cast<size_t>(grouped * nb) * block;
    std::memset(out, 0, group_bytes);
    std::memcpy(out + group_bytes, row_major + group_bytes, static_cast<size_t>((rows - grouped) * nb) * block);
    for (int64_t r = 0; r < grouped; r++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t* blk = row_major + static_cast<size_t>(r * nb + b) * block;
            uint8_t* group = out + static_cast<size_t>((r / kRows16) * nb + b) * group_block;
            const int lane = static_cast<int>(r % kRows16);
            if (!is_quantized(dtype)) {  // fp32 / fp16: a "block" is one element, lane r at r * its bytes
                std::memcpy(group + block * lane, blk, block);
                continue;
            }
            std::memcpy(group + 2 * lane, blk, 2);  // the fp16 scale
            for (int e = 0; e < kRows16Block; e++) {
                if (dtype == DType::q8_0)
                    group[q8_byte(lane, e)] = blk[2 + e];
                else
                    group[q4_byte(lane, e)] |= static_cast<uint8_t>(q4_nibble(*reinterpret_cast<const BlockQ4*>(blk), e)
                                                                    << (lane < 8 ? 0 : 4));
            }
        }
}

void row_from_rows16(DType dtype, const uint8_t* rows16, int64_t rows, int64_t cols, int64_t row, uint8_t* out) {
    const size_t block = dtype_block_bytes(dtype), group_block = rows16_group_block_bytes(dtype);
    const int64_t nb = (cols + dtype_block(dtype) - 1) / dtype_block(dtype);
    if (row >= rows / kRows16 * kRows16) {  // the row_major tail
        std::memcpy(out, rows16 + static_cast<size_t>(row * nb) * block, static_cast<size_t>(nb) * block);
        return;
    }
    // A row's four elements of column group g are one 32-bit word of the group block: copied
    // (q8_0) or masked to their nibbles (q4_0), whose words k and k + 4 then make qs word k.
    const int lane = static_cast<int>(row % kRows16);
    if (!is_quantized(dtype)) {  // element c of the row: element c * 16 + lane of its group
        const uint8_t* group = rows16 + static_cast<size_t>((row / kRows16) * nb) * group_block + block * lane;
        if (dtype == DType::f32) {
            gather_elements<4>(group, group_block, nb, out);
        } else {
            gather_elements<2>(group, group_block, nb, out);
        }
        return;
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* group = rows16 + static_cast<size_t>((row / kRows16) * nb + b) * group_block;
        uint8_t* blk = out + static_cast<size_t>(b) * block;
        std::memcpy(blk, group + 2 * lane, 2);
        if (dtype == DType::q8_0) {
            for (int g = 0; g < kRows16Block / 4; g++) std::memcpy(blk + 2 + 4 * g, group + q8_byte(lane, 4 * g), 4);
            continue;
        }
        uint32_t codes[kRows16Block / 4];
        for (int g = 0; g < kRows16Block / 4; g++) {
            uint32_t word;
            std::memcpy(&word, group + q4_byte(lane, 4 * g), 4);
            codes[g] = (lane < 8 ? word : word >> 4) & 0x0f0f0f0fu;
        }
        for (int k = 0; k < kRows16Block / 8; k++) {
            const uint32_t qs = codes[k] | codes[k + 4] << 4;
            std::memcpy(blk + 2 + 4 * k, &qs, 4);
        }
    }
}

void dequantize_row(DType dtype, const void* in, int64_t cols, float* out) {
    switch (dtype) {
        case DType::f32:
            std::memcpy(out, in, 4 * static_cast<size_t>(cols));
            return;
        case DType::f16:
            for (int64_t c = 0; c < cols; c++) {
                uint16_t h;
                std::memcpy(&h, static_cast<const uint8_t*>(in) + 2 * c, 2);
                out[c] = fp16_to_fp32(h);
            }
            return;
        case DType::q8_0:
            return dequantize_row_q8_0(static_cast<const BlockQ8*>(in), cols, out);
        case DType::q4_0:
            return dequantize_row_q4_0(static_cast<const BlockQ4*>(in), cols, out);
        case DType::nf4:
            return dequantize_row_nf4(static_cast<const BlockNf4*>(in), cols, out);
        case DType::q3_0:
            return dequantize_row_q3_0(static_cast<const BlockQ3*>(in), cols, out);
        case DType::q2_0:
            return dequantize_row_q2_0(static_cast<const BlockQ2*>(in), cols, out);
        default:
            throw Error("dequantize_row: unknown dtype " + std::to_string(static_cast<int32_t>(dtype)));
    }
}

}  // namespace itera
