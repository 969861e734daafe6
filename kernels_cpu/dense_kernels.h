// The per-instruction-set tables behind dense_ops.h (see quant_dot.h for why the SIMD translation
// units export nothing but these tables).
#pragma once

#include <cstdint>

namespace itera {

struct DenseKernels {
    void (*matvec_f32)(const float* w, int32_t rows, int32_t cols, const float* x, float* y);
    void (*matvec_f16)(const uint16_t* w, int32_t rows, int32_t cols, const float* x, float* y);
    void (*matmul_f32_rows16)(const float* w, int32_t rows, int32_t cols, const float* x, int32_t n, float* y);
    void (*matmul_f16_rows16)(const uint16_t* w, int32_t rows, int32_t cols, const float* x, int32_t n, float* y);
    void (*exp)(float* x, int32_t n);
    void (*gelu)(float* x, int32_t n);
    void (*step_sizes)(const float* delta, const float* bias, int32_t rows, int32_t n, float* dt);
    void (*layer_norm)(const float* x, const float* gamma, const float* beta, float eps, int32_t rows, int32_t n,
                       float* out);
    void (*conv_silu_step)(const float* weight_t, const float* bias, int32_t channels, int32_t kernel, const float* u,
                           float* history, float* out);
    void (*ssm_output)(const float* c_t, const float* s, int32_t state, const float* d, const float* v, const float* z,
                       int32_t z_stride, int32_t inner, int32_t rows, float* y);
    int32_t (*argmax)(const float* x, int32_t n);
};

extern const DenseKernels kDenseAvx2;
extern const DenseKernels kDenseAvx512;

}  // namespace itera
