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

void add_row(const Weight& w, int32_t row, float* x) {
    thread_local std::vector<float> values;  // no allocation once grown
    values.resize(static_cast<size_t>(w.cols));
    load_row(w, row, values.data());
    add(x, values.data(), w.cols);
}

void add(float* x, const float* y, int32_t n) {
    for (int32_t i = 0; i < n; i++) x[i] += y[i];
}

void add_scaled(float* x, float s, const float* y, int32_t n) {
    for (int32_t i = 0; i < n; i++) x[i] += s * y[i];
}

void matvec(const Weight& w, const float* x, float* y) {
    thread_local std::vector<float> row;  // W[r, :] in FP32 (no allocation once grown)
    row.resize(static_cast<size_t>(w.cols));
    for (int32_t r = 0; r < w.rows; r++) {
        load_row(w, r, row.data());
        float sum = 0.0f;
        for (int32_t c = 0; c < w.cols; c++) sum += row[static_cast<size_t>(c)] * x[c];
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

float step_size(const float* delta, int32_t n) {
    float sum = 0.0f;
    for (int32_t i = 0; i < n; i++) sum += softplus(delta[i]);
    return sum / static_cast<float>(n);
}

void scan_step(const Weight& a_log, const Weight& c, const Weight& d, int32_t inner, int32_t state, const float* v,
               const float* delta, const float* bv, float* s, float* y) {
    const float dt = step_size(delta, inner);
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

}  // namespace itera::ref
