#include "kernels_cpu/quant_ops.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/error.h"
#include "format/quant_blocks.h"
#include "kernels_cpu/cpu_features.h"
#include "kernels_cpu/quant_dot.h"

namespace itera {

namespace {

struct Kernels {
    void (*quantize)(const float* x, int32_t n, ActQ8* out);
    void (*q8_0)(const QuantRows& w, const ActQ8* x, float* y);
    void (*q4_0)(const QuantRows& w, const ActQ8* x, float* y);
    void (*nf4)(const QuantRows& w, const ActQ8* x, float* y);
    void (*q3_0)(const QuantRows& w, const ActQ8* x, float* y);
    void (*q2_0)(const QuantRows& w, const ActQ8* x, float* y);
    void (*q4_0_rows16)(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y);
    void (*q8_0_rows16)(const uint8_t* data, int32_t rows, int32_t nx, const ActQ8* x, int32_t n, float* y);
};

constexpr Kernels kScalar = {quant_scalar::quantize_activation, quant_scalar::matvec_q8_0,
                             quant_scalar::matvec_q4_0,         quant_scalar::matvec_nf4,
                             quant_scalar::matvec_q3_0,         quant_scalar::matvec_q2_0,
                             quant_scalar::matmul_q4_0_rows16,  quant_scalar::matmul_q8_0_rows16};
constexpr Kernels kAvx2 = {quant_avx2::quantize_activation, quant_avx2::matvec_q8_0,       quant_avx2::matvec_q4_0,
                           quant_avx2::matvec_nf4,          quant_avx2::matvec_q3_0,       quant_avx2::matvec_q2_0,
                           quant_avx2::matmul_q4_0_rows16,  quant_avx2::matmul_q8_0_rows16};
constexpr Kernels kAvx512 = {quant_avx512::quantize_activation, quant_avx512::matvec_q8_0,
                             quant_avx512::matvec_q4_0,         quant_avx512::matvec_nf4,
                             quant_avx512::matvec_q3_0,         quant_avx512::matvec_q2_0,
                             quant_avx512::matmul_q4_0_rows16,  quant_avx512::matmul_q8_0_rows16};

constexpr KernelPath kWidestFirst[] = {KernelPath::avx512, KernelPath::avx2, KernelPath::scalar};

// Only a supported path's table is ever handed out.
const Kernels& kernels(KernelPath path) {
    if (!kernel_path_supported(path))
        throw Error(std::string("kernel path ") + kernel_path_name(path) + " is not supported by this CPU");
    switch (path) {
        case KernelPath::avx512:
            return kAvx512;
        case KernelPath::avx2:
            return kAvx2;
        case KernelPath::scalar:
            break;
    }
    return kScalar;
}

// The table of kernel_path(), looked up once.
const Kernels& active() {
    static const Kernels& k = kernels(kernel_path());
    return k;
}

void check_weight(const Weight& w) {
    if (!is_quantized(w.dtype))
        throw Error("matvec_quant: weight dtype " + std::string(dtype_name(w.dtype)) + " is not a block format");
    if (w.rows < 0 || w.cols < 0 || (w.data == nullptr && w.rows > 0 && w.cols > 0))
        throw Error("matvec_quant: bad weight shape or data");
    // Files are checked when read; this catches a hand-made Weight, without allocating per call.
    if (w.layout != Layout::row_major) {
        const int64_t shape[] = {w.rows, w.cols};
        if (!layout_allows(w.layout, w.dtype, shape))
            throw Error("matvec_quant: " + layout_refusal(w.layout, w.dtype, shape));
    }
}

}  // namespace

bool kernel_path_supported(KernelPath path) {
    const CpuFeatures& f = cpu_features();
    switch (path) {
        case KernelPath::scalar:
            return true;
        case KernelPath::avx2:
            return f.avx2 && f.fma && f.f16c;
        case KernelPath::avx512:
            return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
    }
    return false;
}

const char* kernel_path_name(KernelPath path) {
    switch (path) {
        case KernelPath::scalar:
            return "scalar";
        case KernelPath::avx2:
            return "avx2";
        case KernelPath::avx512:
            return "avx512";
    }
    return "unknown";
}

KernelPath select_kernel_path(const char* name) {
    if (name == nullptr || name[0] == '\0') {
        for (KernelPath path : kWidestFirst)
            if (kernel_path_supported(path)) return path;
        return KernelPath::scalar;
    }
    for (KernelPath path : kWidestFirst) {
        if (std::strcmp(name, kernel_path_name(path)) != 0) continue;
        if (!kernel_path_supported(path))
            throw Error(std::string("ITERA_KERNELS=") + name + ": this CPU lacks the instructions of that path");
        return path;
    }
    throw Error(std::string("ITERA_KERNELS=") + name + ": unknown kernel path (expected scalar, avx2 or avx512)");
}

KernelPath kernel_path() {
    static const KernelPath path = select_kernel_path(std::getenv("ITERA_KERNELS"));
    return path;
}

const char* kernel_path_name() { return kernel_path_name(kernel_path()); }

void quantize_activation(KernelPath path, const float* x, int32_t n, ActQ8* out) { kernels(path).quantize(x, n, out); }

void quantize_activation(const float* x, int32_t n, ActQ8* out) { active().quantize(x, n, out); }

namespace {

// y[i] = W x[i] for n activation rows (x: n rows of act_blocks(w.cols) blocks): the weight is
// checked once, rows16 goes to its n-row kernel, the other layouts row by row.
void run_matmul(const Kernels& k, const Weight& w, const ActQ8* x, int32_t n, float* y) {
    check_weight(w);
    const int32_t nx = act_blocks(w.cols);
    if (w.layout == Layout::rows16)
        return (w.dtype == DType::q8_0 ? k.q8_0_rows16 : k.q4_0_rows16)(static_cast<const uint8_t*>(w.data), w.rows, nx,
                                                                        x, n, y);
    const QuantRows rows = {static_cast<const uint8_t*>(w.data), dtype_row_bytes(w.dtype, w.cols), w.rows, nx};
    void (*row_kernel)(const QuantRows&, const ActQ8*, float*) = w.dtype == DType::q8_0   ? k.q8_0
                                                                 : w.dtype == DType::q4_0 ? k.q4_0
                                                                 : w.dtype == DType::nf4  ? k.nf4
                                                                 : w.dtype == DType::q3_0 ? k.q3_0
                                                                                          : k.q2_0;
    for (int32_t i = 0; i < n; i++)
        row_kernel(rows, x + static_cast<size_t>(i) * nx, y + static_cast<size_t>(i) * w.rows);
}

}  // namespace

void matvec_quant(KernelPath path, const Weight& w, const ActQ8* x, float* y) { run_matmul(kernels(path), w, x, 1, y); }

void matvec_quant(const Weight& w, const ActQ8* x, float* y) { run_matmul(active(), w, x, 1, y); }

void matmul_quant(KernelPath path, const Weight& w, const ActQ8* x, int32_t n, float* y) {
    run_matmul(kernels(path), w, x, n, y);
}

void matmul_quant(const Weight& w, const ActQ8* x, int32_t n, float* y) { run_matmul(active(), w, x, n, y); }

void matvec_quant_ref(const Weight& w, const ActQ8* x, float* y) {
    check_weight(w);
    std::vector<float> row(static_cast<size_t>(w.cols));
    std::vector<uint8_t> scratch(dtype_row_bytes(w.dtype, w.cols));
    for (int32_t r = 0; r < w.rows; r++) {
        dequantize_row(w.dtype, weight_row(w, r, scratch.data()), w.cols, row.data());
        float sum = 0.0f;
        for (int32_t c = 0; c < w.cols; c++) {
            const ActQ8& b = x[c / kActBlock];
            sum += row[static_cast<size_t>(c)] * (b.d * static_cast<float>(b.q[c % kActBlock]));
        }
        y[r] = sum;
    }
}

}  // namespace itera
