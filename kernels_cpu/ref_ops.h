// Scalar reference kernels: the plain math of every op, kept forever as the truth that SIMD and
// CUDA kernels are tested against, and what the reference forward (runtime/reference_forward.h)
// is made of. All activations are FP32; weights may be stored FP16 or in a block format (products
// and rows), which these kernels dequantize as they read.
#pragma once

#include <cstdint>

#include "kernels_cpu/ref_math.h"  // silu, gelu, softplus, top_k_softmax (shared with kernels_cuda/)
#include "kernels_cpu/weight.h"

namespace itera::ref {

// y[r] = sum_c W[r, c] * x[c]   (PyTorch Linear: weight [out, in]), for any dtype and layout: each
// row is read with load_row, so a block format is its dequantized values times FP32 x.
void matvec(const Weight& w, const float* x, float* y);
// out[c] = W[row, c], for any dtype (block formats dequantize the row)
void load_row(const Weight& w, int32_t row, float* out);
// x[c] += W[row, c], for any dtype (a position embedding row, a bias)
void add_row(const Weight& w, int32_t row, float* x);
// x[i] += y[i];  x[i] += s * y[i]
void add(float* x, const float* y, int32_t n);
void add_scaled(float* x, float s, const float* y, int32_t n);
// Element i (row * cols + col) of a weight stored in fp32 or fp16, in either layout.
float element(const Weight& w, int64_t i);

// LayerNorm over n values: (x - mean) / sqrt(var_biased + eps) * gamma + beta.
void layer_norm(const float* x, const Weight& gamma, const Weight& beta, float eps, int32_t n, float* out);

// Causal depthwise conv for one new token: history holds the previous K-1 inputs per channel
// ([channels, K-1], oldest first) and is shifted to include u. weight [channels, 1, K], bias [channels].
void conv_step(const Weight& weight, const Weight& bias, int32_t channels, int32_t kernel, const float* u,
               float* history, float* out);

// The SSM's step size for one token: mean_i softplus(delta[i]) over n channels.
float step_size(const float* delta, int32_t n);

// Diagonal SSM step with one scalar step size per token:
//   dt = mean_d softplus(delta[d]);  s = exp(dt * -exp(A_log)) * s + dt * bv;  y = C s + D * v
// `delta` is delta_proj(v) (bias included) and `bv` is B v ([state]; B [state, inner] is a matrix
// product the caller runs); C [inner, state].
void scan_step(const Weight& a_log, const Weight& c, const Weight& d, int32_t inner, int32_t state, const float* v,
               const float* delta, const float* bv, float* s, float* y);

// The first index of the largest value; NaNs lose every comparison, so they are passed over (and
// x[0] NaN gives 0). 0 when n <= 0.
int32_t argmax(const float* x, int32_t n);

}  // namespace itera::ref
