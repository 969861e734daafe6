// Scalar reference kernels: the plain math of every op, kept forever as the truth that SIMD and
// CUDA kernels are tested against. All activations are FP32; weights may be stored FP16.
#pragma once

#include <cstdint>

#include "kernels_cpu/weight.h"

namespace itera::ref {

// y[r] = sum_c W[r, c] * x[c]   (PyTorch Linear: weight [out, in])
void matvec(const Weight& w, const float* x, float* y);
// out[c] = W[row, c], for any dtype (block formats dequantize the row)
void load_row(const Weight& w, int32_t row, float* out);
// Element i (row * cols + col) of a weight stored in fp32 or fp16, in either layout.
float element(const Weight& w, int64_t i);

// LayerNorm over n values: (x - mean) / sqrt(var_biased + eps) * gamma + beta.
void layer_norm(const float* x, const Weight& gamma, const Weight& beta, float eps, int32_t n, float* out);

float silu(float v);
float gelu(float v);      // exact erf form, as torch.nn.functional.gelu
float softplus(float v);  // log(1 + e^v), returns v above 20 like PyTorch

// Causal depthwise conv for one new token: history holds the previous K-1 inputs per channel
// ([channels, K-1], oldest first) and is shifted to include u. weight [channels, 1, K], bias [channels].
void conv_step(const Weight& weight, const Weight& bias, int32_t channels, int32_t kernel, const float* u,
               float* history, float* out);

// Diagonal SSM step with one scalar step size per token:
//   dt = mean_d softplus(delta[d]);  s = exp(dt * -exp(A_log)) * s + dt * bv;  y = C s + D * v
// `delta` is delta_proj(v) (bias included) and `bv` is B v ([state]; B [state, inner] is a matrix
// product the caller runs); C [inner, state].
void scan_step(const Weight& a_log, const Weight& c, const Weight& d, int32_t inner, int32_t state, const float* v,
               const float* delta, const float* bv, float* s, float* y);

// The first index of the largest value; NaNs lose every comparison, so they are passed over (and
// x[0] NaN gives 0). 0 when n <= 0.
int32_t argmax(const float* x, int32_t n);
// Indices of the k largest router logits, largest first (ties: lower index first, as torch.topk
// on CPU), and the softmax over those k logits.
void top_k_softmax(const float* logits, int32_t n, int32_t k, int32_t* index, float* weight);

}  // namespace itera::ref
