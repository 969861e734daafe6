#include "kernels_cpu/ref_ops.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "format/half.h"
#include "format/quant_blocks.h"

namespace itera::ref {

float element(const Weight& w, int64_t i) {
    if (w.layout == Layout::rows16 && i / w.cols < w.rows / kRows16 * kRows16) {  // column c of r's group, lane r % 16
        const int64_t r = i / w.cols, c = i % w.cols;
        i = (r - r % kRows16) * w.cols + c * kRows16 + r % kRows16;
    }
    if (w.dtype == DType::f16) return fp16_to_fp32(static_cast<const uint16_t*>(w.data)[i]);
    return static_cast<const float*>(w.data)[i];
}

void load_row(const Weight& w, int32_t row, float* out) {
    thread_local std::vector<uint8_t> scratch;  // a rows16 row is gathered here (no allocation once grown)
    if (w.layout != Layout::row_major) scratch.resize(dtype_row_bytes(w.dtype, w.cols));
    dequantize_row(w.dtype, weight_row(w, row, scratch.data()), w.cols, out);
}

void matvec(const Weight& w, const float* x, float* y) {
    for (int32_t r = 0; r < w.rows; r++) {
        const int64_t base = static_cast<int64_t>(r) * w.cols;
        float sum = 0.0f;
        for (int32_t c = 0; c < w.cols; c++) sum += element(w, base + c) * x[c];
        y[r] = sum;
    }
}

void layer_norm(const float* x, const Weight& gamma, const Weight& beta, float eps, int32_t n, float* out) {
    float mean = 0.0f;
    for (int32_t i = 0; i < n; i++) mean += x[i];
    mean /= static_cast<float>(n);
    float var = 0.0f;
    for (int32_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= static_cast<float>(n);
    const float inv = 1.0f / std::sqrt(var + eps);
    for (int32_t i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * element(gamma, i) + element(beta, i);
}

float silu(float v) { return v / (1.0f + std::exp(-v)); }

float gelu(float v) { return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f)); }

float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }

void conv_step(const Weight& weight, const Weight& bias, int32_t channels, int32_t kernel, const float* u,
               float* history, float* out) {
    const int32_t h = kernel - 1;
    for (int32_t d = 0; d < channels; d++) {
        float* past = history + static_cast<int64_t>(d) * h;
        const int64_t w0 = static_cast<int64_t>(d) * kernel;
        float sum = element(bias, d);
        for (int32_t j = 0; j < h; j++) sum += element(weight, w0 + j) * past[j];
        sum += element(weight, w0 + h) * u[d];
        if (h > 0) {
            std::memmove(past, past + 1, sizeof(float) * static_cast<size_t>(h - 1));
            past[h - 1] = u[d];
        }
        out[d] = sum;
    }
}

void scan_step(const Weight& a_log, const Weight& c, const Weight& d, int32_t inner, int32_t state, const float* v,
               const float* delta, const float* bv, float* s, float* y) {
    float dt = 0.0f;
    for (int32_t i = 0; i < inner; i++) dt += softplus(delta[i]);
    dt /= static_cast<float>(inner);
    for (int32_t n = 0; n < state; n++) {
        const float a = -std::exp(element(a_log, n));
        s[n] = std::exp(dt * a) * s[n] + dt * bv[n];
    }
    for (int32_t i = 0; i < inner; i++) {
        float sum = 0.0f;
        const int64_t row = static_cast<int64_t>(i) * state;
        for (int32_t n = 0; n < state; n++) sum += element(c, row + n) * s[n];
        y[i] = sum + element(d, i) * v[i];
    }
}

int32_t argmax(const float* x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

void top_k_softmax(const float* logits, int32_t n, int32_t k, int32_t* index, float* weight) {
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < n; e++) {
            bool taken = false;
            for (int32_t q = 0; q < j; q++) taken = taken || index[q] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        index[j] = best;
    }
    const float top = logits[index[0]];
    float total = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        weight[j] = std::exp(logits[index[j]] - top);
        total += weight[j];
    }
    for (int32_t j = 0; j < k; j++) weight[j] /= total;
}

}  // namespace itera::ref
