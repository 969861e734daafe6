// GEMV timings of the quantized kernels: every format on every kernel path this CPU has, for the
// shapes of the Itera-Lite projections (q8 and q4 also in layout rows16, "q8x16", "q4x16"), plus the activation
// quantizer and, for scale, the FP32 and FP16 kernels (dense_ops; "f32x16" and "f16x16" are rows16). Single thread;
// each figure is the median over repeats of a timed batch of calls. Usage: bench_quant_kernels [repeats]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bench/median_ns.h"
#include "common/error.h"
#include "format/half.h"
#include "format/quant_blocks.h"
#include "kernels_cpu/dense_ops.h"
#include "kernels_cpu/quant_ops.h"

using namespace itera;

namespace {

volatile float g_sink;

using bench::median_ns;

std::vector<uint8_t> quantize_matrix(DType dtype, const std::vector<float>& w, int32_t rows, int32_t cols) {
    const size_t row_bytes = dtype_row_bytes(dtype, cols);
    std::vector<uint8_t> bytes(row_bytes * static_cast<size_t>(rows) + 2);
    std::vector<uint8_t> row(row_bytes + 2);
    for (int32_t r = 0; r < rows; r++) {
        const float* src = w.data() + static_cast<size_t>(r) * cols;
        quantize_row(dtype, src, cols, row.data());
        std::copy(row.begin(), row.begin() + static_cast<ptrdiff_t>(row_bytes), bytes.begin() + 2 + r * row_bytes);
    }
    return bytes;  // data at offset 2, as in a .itl file: 2-byte aligned blocks
}

int run(int argc, char** argv) {
    const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 51;
    std::vector<KernelPath> paths;
    for (KernelPath p : {KernelPath::scalar, KernelPath::avx2, KernelPath::avx512})
        if (kernel_path_supported(p)) paths.push_back(p);
    std::printf("bench_quant_kernels: single thread, median of %d repeats; default path %s\n", repeats,
                kernel_path_name());

    struct Shape {
        int32_t rows, cols;
    };
    const Shape shapes[] = {{128, 64}, {256, 256}, {64, 128}, {2000, 64}};
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 1.0f);

    std::printf("\nquantize_activation (ns per vector)\n%-8s", "n");
    for (KernelPath p : paths) std::printf(" %10s", kernel_path_name(p));
    std::printf("\n");
    for (int32_t n : {64, 128, 256}) {
        std::vector<float> x(static_cast<size_t>(n));
        for (float& f : x) f = dist(rng);
        std::vector<ActQ8> q(static_cast<size_t>(act_blocks(n)));
        std::printf("%-8d", n);
        for (KernelPath p : paths)
            std::printf(" %10.1f", median_ns(
                                       [&] {
                                           quantize_activation(p, x.data(), n, q.data());
                                           g_sink = q[0].d;
                                       },
                                       repeats));
        std::printf("\n");
    }

    std::printf("\nmatvec (rows x cols): ns per call, GB/s of weight bytes\n");
    std::printf("%-12s %-6s %9s", "shape", "format", "bytes");
    for (KernelPath p : paths) std::printf(" %10s %6s", kernel_path_name(p), "GB/s");
    std::printf("\n");
    for (const Shape& s : shapes) {
        std::vector<float> w(static_cast<size_t>(s.rows) * s.cols), x(static_cast<size_t>(s.cols));
        for (float& f : w) f = dist(rng);
        for (float& f : x) f = dist(rng);
        std::vector<ActQ8> xq(static_cast<size_t>(act_blocks(s.cols)));
        quantize_activation(x.data(), s.cols, xq.data());
        std::vector<float> y(static_cast<size_t>(s.rows));
        char shape[32];
        std::snprintf(shape, sizeof(shape), "%dx%d", s.rows, s.cols);
        for (DType dtype : {DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0}) {
            const std::vector<uint8_t> bytes = quantize_matrix(dtype, w, s.rows, s.cols);
            const Weight wq = {dtype, s.rows, s.cols, bytes.data() + 2};
            const double size = static_cast<double>(bytes.size() - 2);
            std::printf("%-12s %-6s %9.0f", shape, std::string(dtype_name(dtype)).c_str(), size);
            for (KernelPath p : paths) {
                const double ns = median_ns(
                    [&] {
                        matvec_quant(p, wq, xq.data(), y.data());
                        g_sink = y[0];
                    },
                    repeats);
                std::printf(" %10.1f %6.2f", ns, size / ns);
            }
            std::printf("\n");
        }
        for (DType dtype : {DType::q8_0, DType::q4_0}) {  // layout rows16 (the converter's default)
            const std::vector<uint8_t> bytes = quantize_matrix(dtype, w, s.rows, s.cols);
            std::vector<uint8_t> inter(bytes.size() - 2);
            to_rows16(dtype, bytes.data() + 2, s.rows, s.cols, inter.data());
            Weight wq = {dtype, s.rows, s.cols, inter.data()};
            wq.layout = Layout::rows16;
            const double size = static_cast<double>(inter.size());
            std::printf("%-12s %-6s %9.0f", shape, dtype == DType::q8_0 ? "q8x16" : "q4x16", size);
            for (KernelPath p : paths) {
                const double ns = median_ns(
                    [&] {
                        matvec_quant(p, wq, xq.data(), y.data());
                        g_sink = y[0];
                    },
                    repeats);
                std::printf(" %10.1f %6.2f", ns, size / ns);
            }
            std::printf("\n");
        }
        // FP32 and FP16 on the same paths (dense_ops), row_major and rows16, for scale
        std::vector<float> w16(w.size());
        std::vector<uint16_t> h(w.size()), h16(w.size());
        for (size_t i = 0; i < w.size(); i++) h[i] = fp32_to_fp16(w[i]);
        to_rows16(DType::f32, reinterpret_cast<const uint8_t*>(w.data()), s.rows, s.cols,
                  reinterpret_cast<uint8_t*>(w16.data()));
        to_rows16(DType::f16, reinterpret_cast<const uint8_t*>(h.data()), s.rows, s.cols,
                  reinterpret_cast<uint8_t*>(h16.data()));
        for (const Weight& wf : {Weight{DType::f32, s.rows, s.cols, w.data()},
                                 Weight{DType::f32, s.rows, s.cols, w16.data(), Layout::rows16},
                                 Weight{DType::f16, s.rows, s.cols, h.data()},
                                 Weight{DType::f16, s.rows, s.cols, h16.data(), Layout::rows16}}) {
            const double size = static_cast<double>(w.size() * (wf.dtype == DType::f32 ? 4 : 2));
            const char* name = wf.dtype == DType::f32 ? (wf.layout == Layout::rows16 ? "f32x16" : "fp32")
                                                      : (wf.layout == Layout::rows16 ? "f16x16" : "fp16");
            std::printf("%-12s %-6s %9.0f", shape, name, size);
            for (KernelPath p : paths) {
                const double ns = median_ns(
                    [&] {
                        dense_path::matvec(p, wf, x.data(), y.data());
                        g_sink = y[0];
                    },
                    repeats);
                std::printf(" %10.1f %6.2f", ns, size / ns);
            }
            std::printf("\n");
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const Error& e) {  // e.g. ITERA_KERNELS names a path this CPU lacks
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
