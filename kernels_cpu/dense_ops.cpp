#include "kernels_cpu/dense_ops.h"

#include <cmath>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels_cpu/dense_kernels.h"
#include "kernels_cpu/ref_ops.h"

namespace itera {

namespace {

// rows16 on the scalar path: ref::matvec, which reads either layout, row by row.
template <DType D, class T>
void scalar_rows16(const T* w, int32_t rows, int32_t cols, const float* x, int32_t n, float* y) {
    for (int64_t i = 0; i < n; i++) ref::matvec({D, rows, cols, w, Layout::rows16}, x + i * cols, y + i * rows);
}

// The scalar path is the reference code itself (ref::matvec, gelu, step_size, layer_norm, silu,
// argmax), except for two loops: the conv and the SSM output read the fast forward's layouts (a
// time-major history, C transposed) that ref::conv_step and ref::scan_step do not, so they are
// ref's sums, in ref's order, written over those layouts. On this path the fast forward gives the
// reference forward's logits bit for bit (tests/test_forward.cpp).
const DenseKernels kDenseScalar = {
    [](const float* w, int32_t rows, int32_t cols, const float* x, float* y) {
        ref::matvec({DType::f32, rows, cols, w}, x, y);
    },
    [](const uint16_t* w, int32_t rows, int32_t cols, const float* x, float* y) {
        ref::matvec({DType::f16, rows, cols, w}, x, y);
    },
    scalar_rows16<DType::f32, float>,
    scalar_rows16<DType::f16, uint16_t>,
    [](float* x, int32_t n) {
        for (int32_t i = 0; i < n; i++) x[i] = std::exp(x[i]);
    },
    [](float* x, int32_t n) {
        for (int32_t i = 0; i < n; i++) x[i] = ref::gelu(x[i]);
    },
    [](const float* delta, const float* bias, int32_t rows, int32_t n, float* dt) {
        thread_local std::vector<float> biased;  // one row of delta + bias (no allocation once grown)
        biased.resize(static_cast<size_t>(n));
        for (int64_t r = 0; r < rows; r++) {
            for (int32_t i = 0; i < n; i++) biased[static_cast<size_t>(i)] = delta[r * n + i] + bias[i];
            dt[r] = ref::step_size(biased.data(), n);
        }
    },
    [](const float* x, const float* gamma, const float* beta, float eps, int32_t rows, int32_t n, float* out) {
        for (int64_t r = 0; r < rows; r++)
            ref::layer_norm(x + r * n, {DType::f32, 1, n, gamma}, {DType::f32, 1, n, beta}, eps, n, out + r * n);
    },
    [](const float* wt, const float* bias, int32_t channels, int32_t kernel, const float* u, float* history,
       float* out) {
        const int32_t h = kernel - 1;
        for (int32_t i = 0; i < channels; i++) {
            float acc = bias[i];
            for (int32_t j = 0; j < h; j++) {
                float* hj = history + static_cast<int64_t>(j) * channels + i;
                acc += wt[static_cast<int64_t>(j) * channels + i] * *hj;
                *hj = j + 1 < h ? hj[channels] : u[i];
            }
            acc += wt[static_cast<int64_t>(h) * channels + i] * u[i];
            out[i] = ref::silu(acc);
        }
    },
    [](const float* c_t, const float* s, int32_t state, const float* d, const float* v, const float* z,
       int32_t z_stride, int32_t inner, int32_t rows, float* y) {
        for (int64_t r = 0; r < rows; r++)
            for (int32_t i = 0; i < inner; i++) {
                float acc = 0.0f;
                for (int32_t n = 0; n < state; n++) acc += c_t[static_cast<int64_t>(n) * inner + i] * s[r * state + n];
                y[r * inner + i] = (acc + d[i] * v[r * inner + i]) * ref::silu(z[r * z_stride + i]);
            }
    },
    ref::argmax,
};

const DenseKernels& dense(KernelPath path) {
    if (!kernel_path_supported(path))
        throw Error(std::string("kernel path ") + kernel_path_name(path) + " is not supported by this CPU");
    switch (path) {
        case KernelPath::avx512:
            return kDenseAvx512;
        case KernelPath::avx2:
            return kDenseAvx2;
        case KernelPath::scalar:
            break;
    }
    return kDenseScalar;
}

const DenseKernels& active() {
    static const DenseKernels& k = dense(kernel_path());
    return k;
}

// y[b, :] = W x[b, :] for b < n: rows16 in one call (its kernel shares weight loads across rows),
// row_major row by row (the weight stays in L1/L2 across rows for these model sizes; a
// register-tiled GEMM lives in the oneDNN provider, gemm_provider.h).
void run_matmul(const DenseKernels& k, const Weight& w, const float* x, int32_t n, float* y) {
    if (w.dtype != DType::f32 && w.dtype != DType::f16)
        throw Error("matvec_dense: weight dtype " + std::string(dtype_name(w.dtype)) + " is not fp32 or fp16");
    if (w.layout != Layout::row_major) {  // files are checked when read; this catches a hand-made Weight
        const int64_t shape[] = {w.rows, w.cols};
        if (!layout_allows(w.layout, w.dtype, shape))
            throw Error("matvec_dense: " + layout_refusal(w.layout, w.dtype, shape));
    }
    const bool f32 = w.dtype == DType::f32;
    const auto* f32_data = static_cast<const float*>(w.data);
    const auto* f16_data = static_cast<const uint16_t*>(w.data);
    if (w.layout == Layout::rows16)
        return f32 ? k.matmul_f32_rows16(f32_data, w.rows, w.cols, x, n, y)
                   : k.matmul_f16_rows16(f16_data, w.rows, w.cols, x, n, y);
    for (int64_t b = 0; b < n; b++) {
        if (f32)
            k.matvec_f32(f32_data, w.rows, w.cols, x + b * w.cols, y + b * w.rows);
        else
            k.matvec_f16(f16_data, w.rows, w.cols, x + b * w.cols, y + b * w.rows);
    }
}

void run_layer_norm(const DenseKernels& k, const float* x, const Weight& gamma, const Weight& beta, float eps,
                    int32_t rows, int32_t n, float* out) {
    if (gamma.dtype == DType::f32 && beta.dtype == DType::f32)
        return k.layer_norm(x, static_cast<const float*>(gamma.data), static_cast<const float*>(beta.data), eps, rows,
                            n, out);
    for (int64_t r = 0; r < rows; r++) ref::layer_norm(x + r * n, gamma, beta, eps, n, out + r * n);
}

}  // namespace

void matvec_dense(const Weight& w, const float* x, float* y) { run_matmul(active(), w, x, 1, y); }
void matmul_dense(const Weight& w, const float* x, int32_t batch, float* y) { run_matmul(active(), w, x, batch, y); }

void conv_silu_step(const float* weight_t, const float* bias, int32_t channels, int32_t kernel, const float* u,
                    float* history, float* out) {
    active().conv_silu_step(weight_t, bias, channels, kernel, u, history, out);
}
void ssm_output(const float* c_t, const float* s, int32_t state, const float* d, const float* v, const float* z,
                int32_t z_stride, int32_t inner, int32_t rows, float* y) {
    active().ssm_output(c_t, s, state, d, v, z, z_stride, inner, rows, y);
}
void exp_inplace(float* x, int32_t n) { active().exp(x, n); }
void gelu_inplace(float* x, int32_t n) { active().gelu(x, n); }
void step_sizes(const float* delta, const float* bias, int32_t rows, int32_t n, float* dt) {
    active().step_sizes(delta, bias, rows, n, dt);
}
void layer_norm(const float* x, const Weight& gamma, const Weight& beta, float eps, int32_t rows, int32_t n,
                float* out) {
    run_layer_norm(active(), x, gamma, beta, eps, rows, n, out);
}
int32_t argmax(const float* x, int32_t n) { return active().argmax(x, n); }

namespace dense_path {
void conv_silu_step(KernelPath path, const float* weight_t, const float* bias, int32_t channels, int32_t kernel,
                    const float* u, float* history, float* out) {
    dense(path).conv_silu_step(weight_t, bias, channels, kernel, u, history, out);
}
void ssm_output(KernelPath path, const float* c_t, const float* s, int32_t state, const float* d, const float* v,
                const float* z, int32_t z_stride, int32_t inner, int32_t rows, float* y) {
    dense(path).ssm_output(c_t, s, state, d, v, z, z_stride, inner, rows, y);
}
void matvec(KernelPath path, const Weight& w, const float* x, float* y) { run_matmul(dense(path), w, x, 1, y); }
void matmul(KernelPath path, const Weight& w, const float* x, int32_t n, float* y) {
    run_matmul(dense(path), w, x, n, y);
}
void exp_inplace(KernelPath path, float* x, int32_t n) { dense(path).exp(x, n); }
void gelu_inplace(KernelPath path, float* x, int32_t n) { dense(path).gelu(x, n); }
void step_sizes(KernelPath path, const float* delta, const float* bias, int32_t rows, int32_t n, float* dt) {
    dense(path).step_sizes(delta, bias, rows, n, dt);
}
void layer_norm(KernelPath path, const float* x, const Weight& gamma, const Weight& beta, float eps, int32_t rows,
                int32_t n, float* out) {
    run_layer_norm(dense(path), x, gamma, beta, eps, rows, n, out);
}
int32_t argmax(KernelPath path, const float* x, int32_t n) { return dense(path).argmax(x, n); }
}  // namespace dense_path

}  // namespace itera
