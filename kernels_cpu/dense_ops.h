// FP32 / FP16 dense products and the element-wise math of a decode step, in SIMD. Same run-time
// path as the quantized kernels (quant_ops.h: ITERA_KERNELS=scalar|avx2|avx512, widest by
// default); the scalar path calls ref_ops.h (but for the conv and SSM output loops, which read
// layouts ref:: does not: dense_ops.cpp), the truth the others are tested against.
//
// The avx2 and avx512 bodies are one xsimd template (kernels_cpu/dense_simd.h) instantiated per
// instruction set; they differ from the scalar path only by FP32 summation order and by xsimd's
// exp/log1p/erf (a few ulp).
#pragma once

#include <cstdint>

#include "kernels_cpu/quant_ops.h"
#include "kernels_cpu/weight.h"

namespace itera {

// y[r] = W[r, :] . x for an fp32 or fp16 weight, row_major or rows16 (throws itera::Error for
// another dtype or layout).
void matvec_dense(const Weight& w, const float* x, float* y);
// y[b, :] = W x[b, :] for b < batch (x [batch, w.cols], y [batch, w.rows]); each row bit for bit
// what matvec_dense gives it.
void matmul_dense(const Weight& w, const float* x, int32_t batch, float* y);

// x[i] = exp(x[i])  (the SSM's decays)
void exp_inplace(float* x, int32_t n);
// x[i] = gelu(x[i])  (erf form)
void gelu_inplace(float* x, int32_t n);
// dt[r] = mean_i softplus(delta[r, i] + bias[i]) for r < rows  (the SSM's step size per token;
// delta [rows, n])
void step_sizes(const float* delta, const float* bias, int32_t rows, int32_t n, float* dt);
// Causal depthwise conv for one token, then SiLU: out[i] = silu(conv), on a time-major history
// [K-1, channels] (oldest first), which it shifts to include u; weight_t is the conv weight
// transposed to [K, channels].
void conv_silu_step(const float* weight_t, const float* bias, int32_t channels, int32_t kernel, const float* u,
                    float* history, float* out);
// The SSM's output and gate for `rows` tokens: y[r, i] = (D[i] v[r, i] + sum_n C[i, n] s[r, n]) *
// silu(z[r, i]); c_t is C transposed to [state, inner]; s [rows, state], v and y [rows, inner], z's
// rows z_stride apart.
void ssm_output(const float* c_t, const float* s, int32_t state, const float* d, const float* v, const float* z,
                int32_t z_stride, int32_t inner, int32_t rows, float* y);
// LayerNorm (ref::layer_norm's math) of each of `rows` rows of n values (x and out [rows, n]);
// gamma and beta in any dtype ref::element reads.
void layer_norm(const float* x, const Weight& gamma, const Weight& beta, float eps, int32_t rows, int32_t n,
                float* out);
// The first index of the largest value (ref::argmax: NaNs are passed over; 0 when x[0] is NaN or
// n <= 0). Greedy decoding's pick: a scalar loop over a 2000-word vocabulary took longer than the
// micro model's layers.
int32_t argmax(const float* x, int32_t n);

// The same functions on an explicit path, for tests and benchmarks.
namespace dense_path {
void conv_silu_step(KernelPath path, const float* weight_t, const float* bias, int32_t channels, int32_t kernel,
                    const float* u, float* history, float* out);
void ssm_output(KernelPath path, const float* c_t, const float* s, int32_t state, const float* d, const float* v,
                const float* z, int32_t z_stride, int32_t inner, int32_t rows, float* y);
void matvec(KernelPath path, const Weight& w, const float* x, float* y);
void matmul(KernelPath path, const Weight& w, const float* x, int32_t n, float* y);
void exp_inplace(KernelPath path, float* x, int32_t n);
void gelu_inplace(KernelPath path, float* x, int32_t n);
void step_sizes(KernelPath path, const float* delta, const float* bias, int32_t rows, int32_t n, float* dt);
void layer_norm(KernelPath path, const float* x, const Weight& gamma, const Weight& beta, float eps, int32_t rows,
                int32_t n, float* out);
int32_t argmax(KernelPath path, const float* x, int32_t n);
}  // namespace dense_path

}  // namespace itera
