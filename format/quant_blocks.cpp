#include "format/quant_blocks.h"

#include <algorithm>
#include <cmath>

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

}  // namespace

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

void dequantize_row_q8_0(const BlockQ8* in, int64_t cols, float* out) {
    for (int64_t c = 0; c < cols; c++)
        out[c] = fp16_to_fp32(in[c / kQ8Block].d) * static_cast<float>(in[c / kQ8Block].q[c % kQ8Block]);
}

void dequantize_row_q4_0(const BlockQ4* in, int64_t cols, float* out) {
    constexpr int half = kQ4Block / 2;
    for (int64_t c = 0; c < cols; c++) {
        const BlockQ4& blk = in[c / kQ4Block];
        const int i = static_cast<int>(c % kQ4Block);
        const int n = i < half ? blk.qs[i] & 0x0f : blk.qs[i - half] >> 4;
        out[c] = fp16_to_fp32(blk.d) * static_cast<float>(n - 8);
    }
}

void dequantize_row_nf4(const BlockNf4* in, int64_t cols, float* out) {
    constexpr int half = kNf4Block / 2;
    for (int64_t c = 0; c < cols; c++) {
        const BlockNf4& blk = in[c / kNf4Block];
        const int i = static_cast<int>(c % kNf4Block);
        const int n = i < half ? blk.qs[i] & 0x0f : blk.qs[i - half] >> 4;
        out[c] = fp16_to_fp32(blk.d) * kNf4[n];
    }
}

}  // namespace itera
