// Does an unstructured prune mask pay for a kernel of its own? GEMV timings of the shipped model's
// matrix shapes with a random fraction of the weights zeroed: the dense kernels the runtime uses
// (fp32 matvec_dense, q4_0 matvec_quant, zeros and all) against a CSR kernel that skips the zeros
// (fp32 values, uint16 column indices), and the bytes each stores. Single thread; median of
// repeats. Usage: bench_sparse [repeats]   (docs/compression.md, "Structured pruning")
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "bench/median_ns.h"
#include "common/error.h"
#include "format/dtype.h"
#include "format/quant_blocks.h"
#include "kernels_cpu/dense_ops.h"
#include "kernels_cpu/quant_ops.h"

using namespace itera;

namespace {

volatile float g_sink;

using bench::median_ns;

// Compressed sparse rows: the nonzeros of each row, with their columns.
struct Csr {
    std::vector<uint32_t> row_start;  // rows + 1
    std::vector<uint16_t> col;
    std::vector<float> value;
};

Csr to_csr(const std::vector<float>& w, int32_t rows, int32_t cols) {
    Csr m;
    m.row_start.push_back(0);
    for (int32_t r = 0; r < rows; r++) {
        for (int32_t c = 0; c < cols; c++)
            if (w[static_cast<size_t>(r) * cols + c] != 0.0f) {
                m.col.push_back(static_cast<uint16_t>(c));
                m.value.push_back(w[static_cast<size_t>(r) * cols + c]);
            }
        m.row_start.push_back(static_cast<uint32_t>(m.col.size()));
    }
    return m;
}

void matvec_csr(const Csr& m, int32_t rows, const float* x, float* y) {
    for (int32_t r = 0; r < rows; r++) {
        float sum = 0.0f;
        for (uint32_t k = m.row_start[static_cast<size_t>(r)]; k < m.row_start[static_cast<size_t>(r) + 1]; k++)
            sum += m.value[k] * x[m.col[k]];
        y[r] = sum;
    }
}

int run(int argc, char** argv) {
    const int repeats = argc > 1 ? std::max(1, std::atoi(argv[1])) : 51;
    std::printf("bench_sparse: single thread, median of %d repeats, kernels %s; ns per GEMV, bytes stored\n", repeats,
                kernel_path_name());
    std::printf("%-12s %8s %10s %10s %10s %10s %10s %10s\n", "shape", "zeros", "fp32 ns", "csr ns", "q4_0 ns", "fp32 B",
                "csr B", "q4_0 B");
    struct Shape {
        int32_t rows, cols;
    };
    const Shape shapes[] = {{128, 96}, {96, 128}, {384, 96}, {192, 192}};
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (const Shape s : shapes) {
        std::vector<float> x(static_cast<size_t>(s.cols)), y(static_cast<size_t>(s.rows));
        for (float& v : x) v = normal(rng);
        std::vector<ActQ8> xq(static_cast<size_t>(act_blocks(s.cols)));
        quantize_activation(x.data(), s.cols, xq.data());
        for (double zeros : {0.0, 0.3, 0.5, 0.7, 0.9}) {
            std::vector<float> w(static_cast<size_t>(s.rows) * static_cast<size_t>(s.cols));
            for (float& v : w) v = uniform(rng) < zeros ? 0.0f : normal(rng);
            const Csr csr = to_csr(w, s.rows, s.cols);
            const Weight dense{DType::f32, s.rows, s.cols, w.data()};
            const size_t row_bytes = dtype_row_bytes(DType::q4_0, s.cols);
            std::vector<uint8_t> q4(row_bytes * static_cast<size_t>(s.rows));
            for (int32_t r = 0; r < s.rows; r++)
                quantize_row_q4_0(w.data() + static_cast<size_t>(r) * s.cols, s.cols,
                                  reinterpret_cast<BlockQ4*>(q4.data() + r * row_bytes));
            const Weight quant{DType::q4_0, s.rows, s.cols, q4.data()};
            const double t_dense = median_ns(
                [&] {
                    matvec_dense(dense, x.data(), y.data());
                    g_sink = y[0];
                },
                repeats);
            const double t_csr = median_ns(
                [&] {
                    matvec_csr(csr, s.rows, x.data(), y.data());
                    g_sink = y[0];
                },
                repeats);
            const double t_q4 = median_ns(
                [&] {
                    matvec_quant(quant, xq.data(), y.data());
                    g_sink = y[0];
                },
                repeats);
            const size_t csr_bytes = csr.value.size() * 6 + csr.row_start.size() * 4;
            std::printf("%4dx%-7d %7.0f%% %10.0f %10.0f %10.0f %10zu %10zu %10zu\n", s.rows, s.cols, 100 * zeros,
                        t_dense, t_csr, t_q4, w.size() * 4, csr_bytes, q4.size());
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
