// Quantizing a Linear weight W [rows = out, cols = in] (y = W x) into a block format (q8_0, q4_0,
// nf4, q3_0, q2_0; format/quant_blocks.h), either round-to-nearest or calibrated with GPTQ (Frantar et al.
// 2022): columns are quantized one at a time and each column's error is spread over the columns
// not yet quantized through the inverse Hessian H^-1, H = sum over calibration tokens of x x^T,
// which minimises the output error ||W X - Q X||^2 rather than ||W - Q||^2.
#pragma once

#include <cstdint>
#include <vector>

#include "format/dtype.h"

namespace itera {

struct QuantResult {
    std::vector<uint8_t> packed;     // rows * dtype_row_bytes(dtype, cols) bytes, the format's layout
    std::vector<float> dequantized;  // rows * cols: exactly the values `packed` decodes to
};

struct GptqOptions {
    double damping = 0.01;     // added to diag(H): this fraction of its mean (the paper's 1%)
    bool scale_search = true;  // each block scale: the multiple (0.70 .. 1.10) of the format's rule
                               // with the least H-weighted block error, instead of the rule itself
};

// Both quantizers throw itera::Error for a dtype that is not a block format, a non-finite weight,
// or one too large for any fp16 block scale (|w| > 65504 times the largest |level|: 127, 8, 1, 4, 1.5).

// Round-to-nearest with format/quant_blocks.cpp's quantize_row_*.
QuantResult quantize_rtn(const float* w, int64_t rows, int64_t cols, DType dtype);

// GPTQ with hessian = sum over `tokens` calibration tokens of x x^T ([cols, cols], row-major),
// columns in storage order. Each block's scale is chosen when the block is reached, from its
// current (error-updated) weights. Weights of inputs never seen (H[i][i] == 0) are rounded to nearest
// under their block's scale; tokens <= 0 means no calibration (H = I). Also throws for a
// non-finite H entry.
QuantResult quantize_gptq(const float* w, int64_t rows, int64_t cols, DType dtype, const double* hessian,
                          int64_t tokens, const GptqOptions& opt = {});

// trace((W - Q) H (W - Q)^T): the squared output error summed over the tokens H was built from.
double weighted_error(const float* w, const float* q, int64_t rows, int64_t cols, const double* hessian);
// ||W - Q|| / ||W|| over `count` values (0 when W is all zero and Q equals it).
double relative_rms_error(const float* w, const float* q, int64_t count);

}  // namespace itera
