// The oneDNN gemm provider (kernels_cpu/onednn_gemm.h) and the provider switch
// (kernels_cpu/gemm_provider.h): oneDNN and gemm_native against a plain double-precision loop for
// f32, f16 and the block formats on odd shapes and batches 1..130; auto's choice; fallbacks; threads.
//
// Tolerances are worst-case bounds, not fitted constants:
//   FP32 sums (f32 / f16 weights, both providers): |dy| <= cols * FLT_EPSILON * sum_c |w x|, twice
//     the classic bound gamma_n = n * 2^-24 for a length-n FP32 dot product against an exact sum.
//   block formats, native: each activation is rounded to its 32-block's grid d = amax / 127, so
//     |dy| <= sum_c |w_c| * d(c) / 2, plus the FP32 bound.
//   block formats, oneDNN (s8 rows): the stored weight row is rounded to the grid sw = amax_row / 127 and the
//   activation row
//     to the grid sx = (max(x, 0) - min(x, 0)) / L (L = 255, or 127 without VNNI: activation_levels),
//     each error at most half a step, so
//     |dy| <= sw / 2 * sum_c |x_c| + sx / 2 * sum_c (|w_c| + sw / 2), plus the FP32 bound.
//   Each quantized bound gets 1 % slack for the FP32 arithmetic of the scales.
#include <dirent.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "format/dtype.h"
#include "format/quant_blocks.h"
#include "kernels_cpu/gemm.h"
#include "kernels_cpu/gemm_provider.h"
#include "kernels_cpu/onednn_gemm.h"
#include "tests/model_fixtures.h"

extern "C" int omp_get_max_threads(void);  // libgomp, linked for onednn_gemm.cpp
extern "C" void omp_set_num_threads(int);

using namespace itera;

namespace {

using test::gaussian;
using test::rows16_copy;

// A weight in `dtype` made from Gaussian values, and its exact FP32 values (what it decodes to).
struct Matrix {
    std::vector<uint8_t> bytes;
    std::vector<float> values;  // [rows, cols], dequantized
    Weight weight;
};

Matrix make_matrix(DType dtype, int32_t rows, int32_t cols, uint32_t seed) {
    Matrix m;
    const std::vector<float> w = gaussian(static_cast<size_t>(rows) * cols, seed);
    m.values.resize(w.size());
    const size_t row_bytes = dtype_row_bytes(dtype, cols);
    m.bytes.resize(row_bytes * rows + 1);  // + 1: never empty
    for (int32_t r = 0; r < rows; r++) {
        const float* src = w.data() + static_cast<size_t>(r) * cols;
        float* dst = m.values.data() + static_cast<size_t>(r) * cols;
        uint8_t* out = m.bytes.data() + r * row_bytes;
        quantize_row(dtype, src, cols, out);
        dequantize_row(dtype, out, cols, dst);
    }
    m.weight = {dtype, rows, cols, m.bytes.data()};
    return m;
}

enum class Bound { fp32, q8_native, q8_onednn };

// Checks y against the exact product within the bound of the path that made it; returns the
// largest |dy| / bound seen (<= 1 passes).
double check_product(const Matrix& m, const std::vector<float>& x, int32_t batch, const std::vector<float>& y,
                     Bound bound, const std::string& what) {
    const int32_t rows = m.weight.rows, cols = m.weight.cols;
    double worst = 0.0;
    int failures = 0;
    for (int32_t b = 0; b < batch; b++) {
        const float* xb = x.data() + static_cast<size_t>(b) * cols;
        float lo = 0.0f, hi = 0.0f;
        double sum_abs_x = 0.0;
        for (int32_t c = 0; c < cols; c++) {
            lo = std::min(lo, xb[c]);
            hi = std::max(hi, xb[c]);
            sum_abs_x += std::fabs(xb[c]);
        }
        for (int32_t r = 0; r < rows; r++) {
            const float* w = m.values.data() + static_cast<size_t>(r) * cols;
            double exact = 0.0, sum_abs = 0.0, amax_w = 0.0, sum_abs_w = 0.0, native_q = 0.0;
            for (int32_t c = 0; c < cols; c++) {
                exact += static_cast<double>(w[c]) * xb[c];
                sum_abs += std::fabs(static_cast<double>(w[c]) * xb[c]);
                amax_w = std::max(amax_w, static_cast<double>(std::fabs(w[c])));
                sum_abs_w += std::fabs(w[c]);
            }
            for (int32_t c0 = 0; c0 < cols; c0 += 32) {
                double amax_x = 0.0, block_w = 0.0;
                for (int32_t c = c0; c < std::min(cols, c0 + 32); c++) {
                    amax_x = std::max(amax_x, static_cast<double>(std::fabs(xb[c])));
                    block_w += std::fabs(w[c]);
                }
                native_q += block_w * amax_x / 127.0 / 2.0;
            }
            double tol = cols * static_cast<double>(FLT_EPSILON) * sum_abs;
            if (bound == Bound::q8_native) tol += 1.01 * native_q;
            if (bound == Bound::q8_onednn) {
                const double sw = amax_w / 127.0, sx = (static_cast<double>(hi) - lo) / OnednnGemm::activation_levels();
                tol += 1.01 * (sw / 2.0 * sum_abs_x + sx / 2.0 * (sum_abs_w + cols * sw / 2.0));
            }
            tol += 1e-30;
            const double got = y[static_cast<size_t>(b) * rows + r];
            const double err = std::fabs(got - exact);
            worst = std::max(worst, err / tol);
            if (!(err <= tol) && failures++ < 3)
                FAIL_CHECK(what << ": y[" << b << ", " << r << "] = " << got << ", exact " << exact << ", |dy| " << err
                                << " > bound " << tol);
        }
    }
    return worst;
}

std::string name_of(const Weight& w, int32_t batch) {
    return std::string(dtype_name(w.dtype)) + " " + std::to_string(w.rows) + "x" + std::to_string(w.cols) + " batch " +
           std::to_string(batch);
}

int thread_count() {  // tasks of this process
    int n = 0;
    if (DIR* d = opendir("/proc/self/task")) {
        while (const dirent* e = readdir(d))
            if (e->d_name[0] != '.') n++;
        closedir(d);
    }
    return n;
}

}  // namespace

TEST_CASE("onednn gemm and gemm_native match the exact product: f32, f16, q8_0, q4_0, nf4, q3_0, q2_0, odd shapes") {
    MESSAGE(onednn_info());
    OnednnGemm onednn;
    const int32_t shapes[][2] = {{1, 1}, {3, 5}, {17, 33}, {64, 31}, {100, 37}, {33, 130}, {256, 64}, {7, 200}};
    const int32_t batches[] = {1, 2, 3, 7, 8, 9, 16, 31, 64, 100, 128, 129, 130};
    uint32_t seed = 1;
    for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0}) {
        // oneDNN: every block format as s8 rows, f16 as an FP32 copy of its values. Native: every
        // block format meets its input quantized to q8 blocks.
        const bool block = is_quantized(dtype);
        double worst_onednn = 0.0, worst_native = 0.0;
        int products = 0;
        for (const auto& shape : shapes) {
            const Matrix m = make_matrix(dtype, shape[0], shape[1], seed++);
            for (int32_t batch : batches) {
                const std::vector<float> x = gaussian(static_cast<size_t>(batch) * shape[1], seed++);
                std::vector<float> y_onednn(static_cast<size_t>(batch) * shape[0], -1.0f), y_native = y_onednn;
                onednn.run(m.weight, x.data(), batch, y_onednn.data());
                gemm_native(m.weight, x.data(), batch, y_native.data());
                const std::string what = name_of(m.weight, batch);
                worst_onednn = std::max(
                    worst_onednn,
                    check_product(m, x, batch, y_onednn, block ? Bound::q8_onednn : Bound::fp32, "onednn " + what));
                // nf4's native dot uses int8 levels round(127 * level) (kNf4I8), an error this bound
                // leaves out; tests/test_quant_kernels.cpp measures that path.
                if (dtype != DType::nf4)
                    worst_native = std::max(
                        worst_native,
                        check_product(m, x, batch, y_native, block ? Bound::q8_native : Bound::fp32, "native " + what));
                products++;
            }
        }
        MESSAGE(std::string(dtype_name(dtype))
                << ": " << products << " products, largest |dy| / bound: onednn " << worst_onednn << ", native "
                << (dtype == DType::nf4 ? std::string("(not bounded here)") : std::to_string(worst_native)));
    }
    // f32 is read in place; the others are copied once.
    MESSAGE("weight copies held: " << onednn.cached_bytes() << " bytes");
    CHECK(onednn.cached_bytes() > 0);
}

TEST_CASE("onednn gemm: every batch 1..130 on one odd shape, primitives made once per shape") {
    OnednnGemm onednn;
    for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0}) {
        const Matrix m = make_matrix(dtype, 45, 70, 7);
        const size_t copies_before = onednn.cached_bytes();
        double worst = 0.0;
        for (int32_t batch = 1; batch <= 130; batch++) {
            const std::vector<float> x = gaussian(static_cast<size_t>(batch) * 70, 1000 + batch);
            std::vector<float> y(static_cast<size_t>(batch) * 45, -1.0f);
            onednn.run(m.weight, x.data(), batch, y.data());
            worst = std::max(worst, check_product(m, x, batch, y, is_quantized(dtype) ? Bound::q8_onednn : Bound::fp32,
                                                  "onednn " + name_of(m.weight, batch)));
            // The same call again reuses the primitive and gives the same bits.
            std::vector<float> again(y.size(), -1.0f);
            onednn.run(m.weight, x.data(), batch, again.data());
            CHECK_MESSAGE(again == y, "second run of " << name_of(m.weight, batch) << " differs");
        }
        const size_t copy = onednn.cached_bytes() - copies_before;
        MESSAGE(std::string(dtype_name(dtype))
                << " 45x70, batches 1..130: largest |dy| / bound " << worst << ", implementation "
                << onednn.implementation(m.weight, 64) << ", weight copy " << copy << " bytes");
        // One copy per weight, whatever the batch: f32 none, f16 4 bytes / weight, q8_0 and q4_0 1 byte
        // + 8 / row.
        if (dtype == DType::f32) CHECK(copy == 0);
        if (dtype == DType::f16) CHECK(copy >= 45u * 70u * 4u);
        if (is_quantized(dtype)) CHECK((copy >= 45u * 70u + 45u * 8u && copy < 45u * 70u * 2u + 4096u));
        CHECK(copy < 2u * 45u * 70u * 4u + 4096u);
    }
    // fp32 in layout rows16 (two groups of 16 rows and a row_major tail of 13) goes in as an FP32 copy
    // of its rows; the native path reads it in place. Both give the exact product's bound.
    Matrix m = make_matrix(DType::f32, 45, 70, 8);
    m.bytes = rows16_copy(DType::f32, m.bytes, 45, 70);
    m.weight.data = m.bytes.data();
    m.weight.layout = Layout::rows16;
    const size_t copies_before = onednn.cached_bytes();
    double worst = 0.0;
    for (int32_t batch : {1, 2, 7, 64, 130}) {
        const std::vector<float> x = gaussian(static_cast<size_t>(batch) * 70, 2000 + batch);
        std::vector<float> y(static_cast<size_t>(batch) * 45, -1.0f), y_native = y;
        onednn.run(m.weight, x.data(), batch, y.data());
        gemm_native(m.weight, x.data(), batch, y_native.data());
        worst =
            std::max(worst, check_product(m, x, batch, y, Bound::fp32, "onednn rows16 " + name_of(m.weight, batch)));
        worst = std::max(
            worst, check_product(m, x, batch, y_native, Bound::fp32, "native rows16 " + name_of(m.weight, batch)));
    }
    CHECK(onednn.cached_bytes() - copies_before >= 45u * 70u * 4u);
    MESSAGE("fp32 rows16 45x70, batches 1, 2, 7, 64, 130: onednn (an FP32 copy of "
            << onednn.cached_bytes() - copies_before << " bytes) and native, largest |dy| / bound " << worst);
}

TEST_CASE("onednn gemm: edge cases") {
    OnednnGemm onednn;
    const Matrix m = make_matrix(DType::q8_0, 8, 40, 3);
    // A NaN activation shows in its row's output, as it would on the native path.
    std::vector<float> x = gaussian(2 * 40, 4);
    x[40 + 5] = NAN;
    std::vector<float> y(2 * 8, 0.0f);
    onednn.run(m.weight, x.data(), 2, y.data());
    CHECK(std::isfinite(y[0]));
    CHECK(std::isnan(y[8]));
    // An all-zero row gives zeros.
    std::vector<float> zeros(40, 0.0f), y1(8, -1.0f);
    onednn.run(m.weight, zeros.data(), 1, y1.data());
    for (float v : y1) CHECK(v == 0.0f);
    // batch 0 touches nothing.
    onednn.run(m.weight, x.data(), 0, y1.data());
    // Shapes without a path are refused, not guessed: q8_0 past 65536 columns would overflow the
    // u8 * s8 sums.
    const Weight wide{DType::q8_0, 1, 65568, m.bytes.data()}, wide_q4{DType::q4_0, 1, 65568, m.bytes.data()};
    CHECK_FALSE(OnednnGemm::handles(wide));
    CHECK_FALSE(OnednnGemm::handles(wide_q4));
    CHECK_THROWS_AS(onednn.run(wide, x.data(), 1, y1.data()), Error);
    CHECK(OnednnGemm::handles(m.weight));
}

TEST_CASE("onednn gemm runs on the calling thread only and leaves its OpenMP setting alone") {
    OnednnGemm onednn;
    const Matrix m = make_matrix(DType::f32, 2000, 64, 9);
    const Matrix q = make_matrix(DType::q8_0, 2000, 64, 10);
    const std::vector<float> x = gaussian(128 * 64, 11);
    std::vector<float> y(128 * 2000);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(3);
    const int before = thread_count();
    for (int i = 0; i < 3; i++) {
        onednn.run(m.weight, x.data(), 128, y.data());
        onednn.run(q.weight, x.data(), 128, y.data());
    }
    const int after = thread_count();
    MESSAGE("threads before " << before << ", after " << after << " (OpenMP asked for 3 in this thread)");
    CHECK(after == before);
    CHECK(omp_get_max_threads() == 3);
    omp_set_num_threads(saved);
}

TEST_CASE("gemm provider names") {
    CHECK(parse_gemm_provider("native") == GemmProvider::native);
    CHECK(parse_gemm_provider("onednn") == GemmProvider::onednn);
    CHECK(parse_gemm_provider("auto") == GemmProvider::automatic);
    for (GemmProvider p : {GemmProvider::native, GemmProvider::onednn, GemmProvider::automatic})
        CHECK(parse_gemm_provider(gemm_provider_name(p)) == p);
    for (const char* bad : {"", "Auto", "mkl", "onednn ", "native,onednn"}) {
        CAPTURE(bad);
        CHECK_THROWS_WITH_AS(parse_gemm_provider(bad), doctest::Contains("unknown kernels"), Error);
    }
}

TEST_CASE("gemm dispatch: onednn falls back to native where it has no path; auto picks one and stays within bounds") {
    const Matrix f32 = make_matrix(DType::f32, 256, 64, 21);
    const Matrix q8 = make_matrix(DType::q8_0, 184, 64, 22);
    const Matrix q4 = make_matrix(DType::q4_0, 64, 96, 23);
    const Matrix wide = make_matrix(DType::q8_0, 2, 65568, 25);  // past the u8 * s8 sums' range
    const std::vector<float> x = gaussian(65 * 65568, 24);

    GemmDispatch onednn(GemmProvider::onednn);
    std::vector<float> y(100 * 256), ref(100 * 256);
    onednn.run(wide.weight, x.data(), 65, y.data(), "w_wide");
    gemm_native(wide.weight, x.data(), 65, ref.data());
    CHECK(std::equal(ref.begin(), ref.begin() + 65 * 2, y.begin()));
    onednn.run(f32.weight, x.data(), 100, y.data(), "in_proj");
    check_product(f32, x, 100, y, Bound::fp32, "dispatch onednn f32");
    onednn.run(q4.weight, x.data(), 100, y.data(), "w_q4");
    check_product(q4, x, 100, y, Bound::q8_onednn, "dispatch onednn q4 (s8 rows)");
    const std::string text = onednn.describe();
    MESSAGE(text);
    CHECK(text.find("w_wide q8 2x65568 batch 65..128: native (no oneDNN path for q8)") != std::string::npos);
    CHECK(text.find("in_proj fp32 256x64 batch 65..128: onednn (") != std::string::npos);
    CHECK(text.find("w_q4 q4 64x96 batch 65..128: onednn (") != std::string::npos);

    GemmDispatch automatic(GemmProvider::automatic);
    for (const Matrix* m : {&f32, &q8, &q4}) {
        for (int32_t batch : {1, 8, 100}) {
            std::vector<float> first(static_cast<size_t>(batch) * m->weight.rows);
            automatic.run(m->weight, x.data(), batch, first.data(), "w");
            const GemmChoice c = [&] {
                for (const GemmChoice& ch : automatic.choices())
                    if (ch.rows == m->weight.rows && ch.dtype == m->weight.dtype && ch.batch_lo <= batch &&
                        batch <= ch.batch_hi)
                        return ch;
                FAIL("no choice recorded for " << name_of(m->weight, batch));
                return GemmChoice{};
            }();
            REQUIRE((c.used == GemmProvider::native || c.used == GemmProvider::onednn));
            CHECK(c.native_us > 0.0);
            CHECK(c.onednn_us > 0.0);
            const DType t = m->weight.dtype;
            const Bound bound = t == DType::f32                  ? Bound::fp32
                                : c.used == GemmProvider::native ? Bound::q8_native
                                                                 : Bound::q8_onednn;
            check_product(*m, x, batch, first, bound, "auto first call " + name_of(m->weight, batch));
            // Later calls go to the chosen provider: the same bits as calling it directly.
            std::vector<float> later(first.size()), direct(first.size());
            automatic.run(m->weight, x.data(), batch, later.data());
            if (c.used == GemmProvider::onednn) {
                OnednnGemm separate;
                separate.run(m->weight, x.data(), batch, direct.data());
            } else {
                gemm_native(m->weight, x.data(), batch, direct.data());
            }
            CHECK_MESSAGE(later == direct, "auto's later call of " << name_of(m->weight, batch)
                                                                   << " is not the chosen provider's output");
            CHECK_MESSAGE(first == direct, "auto's first call of " << name_of(m->weight, batch)
                                                                   << " is not the chosen provider's output");
        }
    }
    MESSAGE(automatic.describe());
    CHECK(automatic.choices().size() == 9);
}

TEST_CASE("gemm dispatch: one instance shared by threads gives each the single-thread result") {
    GemmDispatch dispatch(GemmProvider::onednn);
    std::vector<Matrix> weights;
    for (DType dtype : {DType::f32, DType::f16, DType::q8_0}) weights.push_back(make_matrix(dtype, 96, 48, 31));
    const std::vector<float> x = gaussian(40 * 48, 32);
    std::vector<std::vector<float>> expected;
    {
        OnednnGemm single;
        for (const Matrix& m : weights) {
            expected.emplace_back(40 * 96);
            single.run(m.weight, x.data(), 40, expected.back().data());
        }
    }
    std::vector<int> mismatches(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++)
        threads.emplace_back([&, t] {
            std::vector<float> y(40 * 96);
            for (int i = 0; i < 20; i++) {
                const size_t k = static_cast<size_t>(i + t) % weights.size();
                dispatch.run(weights[k].weight, x.data(), 40, y.data());
                if (y != expected[k]) mismatches[t]++;
            }
        });
    for (std::thread& t : threads) t.join();
    for (int t = 0; t < 4; t++)
        CHECK_MESSAGE(mismatches[t] == 0, "thread " << t << ": " << mismatches[t] << " of 20 differ");
}
