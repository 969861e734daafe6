// The per-instruction-set kernels behind kernels_cpu/quant_ops.h, one namespace per translation
// unit (quant_dot_scalar.cpp, quant_dot_avx2.cpp, quant_dot_avx512.cpp). The SIMD files are
// compiled with wider -m flags and called only after a CPU check, so they define no inline or
// template function with external linkage: the linker could otherwise keep their copy of it for
// code that runs on any CPU.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels_cpu/quant_ops.h"

namespace itera {

// A quantized matrix as the kernels see it: rows of row_bytes bytes from data (2-byte aligned),
// each holding the blocks of act_blocks(cols) = nx activation blocks' worth of columns.
struct QuantRows {
    const uint8_t* data;
    size_t row_bytes;
    int32_t rows;
    int32_t nx;
};

namespace quant_scalar {
void quantize_activation(const float* x, int32_t n, ActQ8* out);
void matvec_q8_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q4_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_nf4(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q3_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q2_0(const QuantRows& w, const ActQ8* x, float* y);
// q4_0 / q8_0 in layout rows16 (format/quant_blocks.h), `rows` >= 16 from `data`, for n activation
// rows at once (x: n rows of nx blocks, y: n rows of `rows`); each row gets the operations a single
// row gets, so the results do not depend on n.
void matmul_q4_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y);
void matmul_q8_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y);
}  // namespace quant_scalar

namespace quant_avx2 {
void quantize_activation(const float* x, int32_t n, ActQ8* out);
void matvec_q8_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q4_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_nf4(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q3_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q2_0(const QuantRows& w, const ActQ8* x, float* y);
// q4_0 / q8_0 in layout rows16 (format/quant_blocks.h), `rows` >= 16 from `data`, for n activation
// rows at once (x: n rows of nx blocks, y: n rows of `rows`); each row gets the operations a single
// row gets, so the results do not depend on n.
void matmul_q4_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y);
void matmul_q8_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y);
}  // namespace quant_avx2

namespace quant_avx512 {
void quantize_activation(const float* x, int32_t n, ActQ8* out);
void matvec_q8_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q4_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_nf4(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q3_0(const QuantRows& w, const ActQ8* x, float* y);
void matvec_q2_0(const QuantRows& w, const ActQ8* x, float* y);
// q4_0 / q8_0 in layout rows16 (format/quant_blocks.h), `rows` >= 16 from `data`, for n activation
// rows at once (x: n rows of nx blocks, y: n rows of `rows`); each row gets the operations a single
// row gets, so the results do not depend on n.
void matmul_q4_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y);
void matmul_q8_0_rows16(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y);
}  // namespace quant_avx512

}  // namespace itera
