// GPTQ against round-to-nearest on synthetic activations with a few loud channels and correlated
// channels: lower output error on held-out activations, packed bytes that decode to exactly the
// returned values, and the awkward inputs (isotropic, dead channels, tails, singular H).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "converter/quant/gptq.h"
#include "format/half.h"
#include "format/quant_blocks.h"

using namespace itera;

namespace {

constexpr DType kFormats[] = {DType::q4_0, DType::nf4, DType::q8_0, DType::q3_0, DType::q2_0};

// Activations x = s * (F g + 0.5 n): k shared factors g give correlated channels, per-channel
// scales s are log-normal, and two channels are 10x louder. Calls share F and s (one distribution).
struct Activations {
    int64_t cols, k;
    std::vector<double> f, s;
    std::mt19937 rng;

    Activations(int64_t cols_, uint32_t seed) : cols(cols_), k(std::max<int64_t>(4, cols_ / 8)), rng(seed) {
        std::normal_distribution<double> n01;
        f.resize(static_cast<size_t>(cols * k));
        s.resize(static_cast<size_t>(cols));
        for (double& v : f) v = n01(rng) / std::sqrt(static_cast<double>(k));
        for (double& v : s) v = std::exp(0.7 * n01(rng));
        s[5 % cols] *= 10.0;
        s[(cols * 2) / 3] *= 10.0;
    }

    std::vector<double> sample(int64_t tokens) {
        std::normal_distribution<double> n01;
        std::vector<double> x(static_cast<size_t>(tokens * cols)), g(static_cast<size_t>(k));
        for (int64_t t = 0; t < tokens; t++) {
            for (double& v : g) v = n01(rng);
            for (int64_t c = 0; c < cols; c++) {
                double a = 0.5 * n01(rng);
                for (int64_t j = 0; j < k; j++) a += f[c * k + j] * g[j];
                x[t * cols + c] = s[c] * a;
            }
        }
        return x;
    }
};

// H = sum over tokens of x x^T.
std::vector<double> gram(const std::vector<double>& x, int64_t cols) {
    const int64_t tokens = static_cast<int64_t>(x.size()) / cols;
    std::vector<double> h(static_cast<size_t>(cols * cols), 0.0);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t i = 0; i < cols; i++)
            for (int64_t j = 0; j < cols; j++) h[i * cols + j] += x[t * cols + i] * x[t * cols + j];
    return h;
}

std::vector<float> weights(int64_t rows, int64_t cols, uint32_t seed) {
    std::mt19937 rng(seed);
    std::student_t_distribution<float> t(5.0f);  // a few large weights, as trained layers have
    std::vector<float> w(static_cast<size_t>(rows * cols));
    for (float& v : w) v = 0.05f * t(rng);
    return w;
}

// Decodes packed rows with format/quant_blocks.cpp, `cols` values per row (a multiple of the block
// reads the padding too).
std::vector<float> decode(const std::vector<uint8_t>& packed, DType dtype, int64_t rows, int64_t cols,
                          int64_t stored_cols) {
    const size_t row_bytes = dtype_row_bytes(dtype, stored_cols);
    std::vector<float> out(static_cast<size_t>(rows * cols));
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t* in = packed.data() + r * row_bytes;
        float* o = out.data() + r * cols;
        if (dtype == DType::q8_0) dequantize_row_q8_0(reinterpret_cast<const BlockQ8*>(in), cols, o);
        if (dtype == DType::q4_0) dequantize_row_q4_0(reinterpret_cast<const BlockQ4*>(in), cols, o);
        if (dtype == DType::nf4) dequantize_row_nf4(reinterpret_cast<const BlockNf4*>(in), cols, o);
        if (dtype == DType::q3_0) dequantize_row_q3_0(reinterpret_cast<const BlockQ3*>(in), cols, o);
        if (dtype == DType::q2_0) dequantize_row_q2_0(reinterpret_cast<const BlockQ2*>(in), cols, o);
    }
    return out;
}

// The result's size, and its bytes decode bit for bit to `dequantized` (all finite).
void check_encoding(const QuantResult& q, DType dtype, int64_t rows, int64_t cols) {
    REQUIRE(q.packed.size() == static_cast<size_t>(rows) * dtype_row_bytes(dtype, cols));
    REQUIRE(q.dequantized.size() == static_cast<size_t>(rows * cols));
    const std::vector<float> d = decode(q.packed, dtype, rows, cols, cols);
    int64_t mismatches = 0, non_finite = 0;
    for (size_t i = 0; i < d.size(); i++) {
        mismatches += d[i] != q.dequantized[i];
        non_finite += !std::isfinite(d[i]);
    }
    CHECK(mismatches == 0);
    CHECK(non_finite == 0);
}

std::string name(DType dtype) { return std::string(dtype_name(dtype)); }

}  // namespace

TEST_CASE("gptq: lower output error than round-to-nearest on held-out activations") {
    GptqOptions plain;
    plain.scale_search = false;
    const GptqOptions variants[] = {plain, GptqOptions{}};
    double worst[2] = {0, 0};
    for (int64_t cols : {64, 96, 200}) {
        Activations act(cols, static_cast<uint32_t>(cols));
        const int64_t tokens = 2048;
        const std::vector<double> h_cal = gram(act.sample(tokens), cols);
        const std::vector<double> h_test = gram(act.sample(tokens), cols);
        for (int64_t rows : {1, 17, 128}) {
            const std::vector<float> w = weights(rows, cols, static_cast<uint32_t>(rows * 1000 + cols));
            for (DType dtype : kFormats) {
                const QuantResult rtn = quantize_rtn(w.data(), rows, cols, dtype);
                check_encoding(rtn, dtype, rows, cols);
                const double e_rtn = weighted_error(w.data(), rtn.dequantized.data(), rows, cols, h_test.data());
                const double e_rtn_cal = weighted_error(w.data(), rtn.dequantized.data(), rows, cols, h_cal.data());
                std::string line = name(dtype) + " rows " + std::to_string(rows) + " cols " + std::to_string(cols) +
                                   ": held-out (calibration) error GPTQ / RTN";
                for (int v = 0; v < 2; v++) {
                    const QuantResult g = quantize_gptq(w.data(), rows, cols, dtype, h_cal.data(), tokens, variants[v]);
                    check_encoding(g, dtype, rows, cols);
                    const double ratio =
                        weighted_error(w.data(), g.dequantized.data(), rows, cols, h_test.data()) / e_rtn;
                    const double ratio_cal =
                        weighted_error(w.data(), g.dequantized.data(), rows, cols, h_cal.data()) / e_rtn_cal;
                    char buf[96];
                    std::snprintf(buf, sizeof buf, "  %s %.3f (%.3f)", v == 0 ? "rule scales" : "searched scales",
                                  ratio, ratio_cal);
                    line += buf;
                    CHECK(ratio < 0.75);
                    worst[v] = std::max(worst[v], ratio);
                }
                MESSAGE(line);
            }
        }
    }
    MESSAGE("worst held-out ratio: rule scales " << worst[0] << ", searched scales " << worst[1]);
}

TEST_CASE("gptq: isotropic activations give no more error than round-to-nearest") {
    const int64_t rows = 17, cols = 96;
    const std::vector<float> w = weights(rows, cols, 7);
    std::vector<double> identity(static_cast<size_t>(cols * cols), 0.0);
    for (int64_t i = 0; i < cols; i++) identity[i * cols + i] = 1.0;
    for (DType dtype : kFormats) {
        const QuantResult rtn = quantize_rtn(w.data(), rows, cols, dtype);
        const double e_rtn = weighted_error(w.data(), rtn.dequantized.data(), rows, cols, identity.data());
        const QuantResult g = quantize_gptq(w.data(), rows, cols, dtype, identity.data(), 1);
        check_encoding(g, dtype, rows, cols);
        const double ratio = weighted_error(w.data(), g.dequantized.data(), rows, cols, identity.data()) / e_rtn;
        // No calibration at all (tokens = 0) means H = I: the same result.
        const QuantResult none = quantize_gptq(w.data(), rows, cols, dtype, identity.data(), 0);
        CHECK(none.packed == g.packed);
        MESSAGE(name(dtype) << ": H = I error GPTQ / RTN " << ratio << ", relative RMS error GPTQ "
                            << relative_rms_error(w.data(), g.dequantized.data(), rows * cols) << " RTN "
                            << relative_rms_error(w.data(), rtn.dequantized.data(), rows * cols));
        CHECK(ratio <= 1.01);
    }
}

TEST_CASE("gptq: dead input channels are rounded to nearest and do not disturb the rest") {
    const int64_t rows = 17, cols = 96, tokens = 1024;
    const int64_t dead[] = {0, 3, 40, 41, 95};
    Activations act(cols, 11);
    std::vector<double> x_cal = act.sample(tokens), x_test = act.sample(tokens);
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t c : dead) x_cal[t * cols + c] = x_test[t * cols + c] = 0.0;
    const std::vector<double> h_cal = gram(x_cal, cols), h_test = gram(x_test, cols);
    const std::vector<float> w = weights(rows, cols, 12);
    for (DType dtype : kFormats) {
        const QuantResult g = quantize_gptq(w.data(), rows, cols, dtype, h_cal.data(), tokens);
        check_encoding(g, dtype, rows, cols);
        // A dead column gets no error from the others, so its code is the nearest one under its
        // block's scale; live columns are moved off the nearest code by the error they absorb.
        const int block = dtype_block(dtype);
        const size_t block_bytes = dtype_block_bytes(dtype);
        int64_t dead_not_nearest = 0, live_not_nearest = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                const uint8_t* blk = g.packed.data() + r * dtype_row_bytes(dtype, cols) + (c / block) * block_bytes;
                const float d = fp16_to_fp32(static_cast<uint16_t>(blk[0] | blk[1] << 8));
                const float v = w[r * cols + c], q = g.dequantized[r * cols + c];
                bool nearest = true;  // no level of this block is closer to v than q
                const int levels = dtype == DType::q8_0   ? 255
                                   : dtype == DType::q3_0 ? 8
                                   : dtype == DType::q2_0 ? 4
                                                          : 16;
                for (int n = 0; n < levels; n++) {
                    const float level = dtype == DType::q8_0   ? d * static_cast<float>(n - 127)
                                        : dtype == DType::q4_0 ? d * static_cast<float>(n - 8)
                                        : dtype == DType::q3_0 ? d * static_cast<float>(n - 4)
                                        : dtype == DType::q2_0 ? d * (static_cast<float>(n) - 1.5f)
                                                               : d * kNf4[n];
                    if (std::fabs(level - v) < std::fabs(q - v) * (1 - 1e-6f) - 1e-12f) nearest = false;
                }
                const bool is_dead = std::find(std::begin(dead), std::end(dead), c) != std::end(dead);
                (is_dead ? dead_not_nearest : live_not_nearest) += !nearest;
            }
        CHECK(dead_not_nearest == 0);
        CHECK(live_not_nearest > 0);
        const QuantResult rtn = quantize_rtn(w.data(), rows, cols, dtype);
        const double ratio = weighted_error(w.data(), g.dequantized.data(), rows, cols, h_test.data()) /
                             weighted_error(w.data(), rtn.dequantized.data(), rows, cols, h_test.data());
        MESSAGE(name(dtype) << " with 5 dead channels: held-out error GPTQ / RTN " << ratio
                            << ", live columns off their nearest code " << live_not_nearest);
        CHECK(ratio < 0.75);
    }
}

TEST_CASE("gptq: a row shorter than a block multiple (cols = 40) pads with zeros") {
    const int64_t rows = 17, cols = 40, tokens = 512;
    Activations act(cols, 21);
    const std::vector<double> h_cal = gram(act.sample(tokens), cols), h_test = gram(act.sample(tokens), cols);
    const std::vector<float> w = weights(rows, cols, 22);
    for (DType dtype : kFormats) {
        const QuantResult g = quantize_gptq(w.data(), rows, cols, dtype, h_cal.data(), tokens);
        check_encoding(g, dtype, rows, cols);
        // Reading the whole last block decodes the padding to zero; q2_0 has no zero level, so
        // its padding is +-d / 2 (the kernels meet it with zero activations only).
        const int64_t padded = (cols + dtype_block(dtype) - 1) / dtype_block(dtype) * dtype_block(dtype);
        const std::vector<float> full = decode(g.packed, dtype, rows, padded, cols);
        int64_t nonzero_pad = 0;
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t* last = g.packed.data() + (r + 1) * dtype_row_bytes(dtype, cols) - dtype_block_bytes(dtype);
            const float half_d = 0.5f * fp16_to_fp32(static_cast<uint16_t>(last[0] | last[1] << 8));
            for (int64_t c = cols; c < padded; c++) {
                const float v = full[r * padded + c];
                nonzero_pad += dtype == DType::q2_0 ? std::fabs(v) != half_d : v != 0.0f;
            }
        }
        CHECK(nonzero_pad == 0);
        const QuantResult rtn = quantize_rtn(w.data(), rows, cols, dtype);
        const double ratio = weighted_error(w.data(), g.dequantized.data(), rows, cols, h_test.data()) /
                             weighted_error(w.data(), rtn.dequantized.data(), rows, cols, h_test.data());
        MESSAGE(name(dtype) << " cols 40 (" << padded - cols << " padding): held-out error GPTQ / RTN " << ratio);
        CHECK(ratio < 0.8);
    }
}

TEST_CASE("gptq: singular and indefinite H still quantize") {
    const int64_t rows = 17, cols = 64;
    const std::vector<float> w = weights(rows, cols, 31);
    // Fewer tokens than inputs: H has rank 16.
    Activations act(cols, 32);
    const std::vector<double> h_low = gram(act.sample(16), cols);
    // Every channel the same signal: rank 1.
    std::vector<double> h_ones(static_cast<size_t>(cols * cols), 1.0);
    // Not positive semi-definite (eigenvalue -1 on a 2x2 block): the retries with more damping and,
    // past them, H = I keep it safe.
    std::vector<double> h_bad(static_cast<size_t>(cols * cols), 0.0);
    for (int64_t i = 0; i < cols; i++) h_bad[i * cols + i] = 1.0;
    h_bad[0 * cols + 1] = h_bad[1 * cols + 0] = 2.0;
    for (DType dtype : kFormats) {
        const QuantResult rtn = quantize_rtn(w.data(), rows, cols, dtype);
        GptqOptions undamped;
        undamped.damping = 0.0;
        const QuantResult low = quantize_gptq(w.data(), rows, cols, dtype, h_low.data(), 16, undamped);
        check_encoding(low, dtype, rows, cols);
        const double ratio = weighted_error(w.data(), low.dequantized.data(), rows, cols, h_low.data()) /
                             weighted_error(w.data(), rtn.dequantized.data(), rows, cols, h_low.data());
        MESSAGE(name(dtype) << " rank-16 H, no damping: calibration error GPTQ / RTN " << ratio);
        CHECK(ratio < 0.5);
        const QuantResult ones = quantize_gptq(w.data(), rows, cols, dtype, h_ones.data(), 1, undamped);
        check_encoding(ones, dtype, rows, cols);
        const double ratio_ones = weighted_error(w.data(), ones.dequantized.data(), rows, cols, h_ones.data()) /
                                  weighted_error(w.data(), rtn.dequantized.data(), rows, cols, h_ones.data());
        MESSAGE(name(dtype) << " rank-1 H: error GPTQ / RTN " << ratio_ones);
        CHECK(ratio_ones < 0.5);
        for (GptqOptions opt : {GptqOptions{}, undamped}) {
            const QuantResult bad = quantize_gptq(w.data(), rows, cols, dtype, h_bad.data(), 1, opt);
            check_encoding(bad, dtype, rows, cols);
        }
    }
}

TEST_CASE("gptq: errors and the error measures") {
    const int64_t rows = 3, cols = 32, tokens = 200;
    const std::vector<float> w = weights(rows, cols, 41);
    Activations act(cols, 42);
    const std::vector<double> x = act.sample(tokens);
    const std::vector<double> h = gram(x, cols);

    // weighted_error is the summed squared output error over the tokens H came from.
    const QuantResult q = quantize_rtn(w.data(), rows, cols, DType::q4_0);
    double direct = 0.0;
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t r = 0; r < rows; r++) {
            double y = 0.0;
            for (int64_t c = 0; c < cols; c++)
                y += (static_cast<double>(w[r * cols + c]) - q.dequantized[r * cols + c]) * x[t * cols + c];
            direct += y * y;
        }
    const double weighted = weighted_error(w.data(), q.dequantized.data(), rows, cols, h.data());
    CHECK(weighted == doctest::Approx(direct).epsilon(1e-9));
    const float a[] = {3.0f, 4.0f}, b[] = {3.0f, 3.0f};
    CHECK(relative_rms_error(a, b, 2) == doctest::Approx(0.2));
    CHECK(relative_rms_error(a, a, 2) == 0.0);
    MESSAGE("weighted_error " << weighted << " equals the direct sum over tokens " << direct);

    CHECK_THROWS_WITH_AS(quantize_gptq(w.data(), rows, cols, DType::f16, h.data(), tokens),
                         "cannot quantize to fp16: not a block format", Error);
    CHECK_THROWS_AS(quantize_rtn(w.data(), rows, cols, DType::f32), Error);
    std::vector<float> w_nan = w;
    w_nan[5] = NAN;
    CHECK_THROWS_WITH_AS(quantize_gptq(w_nan.data(), rows, cols, DType::q4_0, h.data(), tokens),
                         "cannot quantize: weight 5 is not finite", Error);
    CHECK_THROWS_AS(quantize_rtn(w_nan.data(), rows, cols, DType::q8_0), Error);
    std::vector<float> w_big = w;
    w_big[7] = 70000.0f;  // nf4's scale is the block's absmax: past fp16's 65504
    CHECK_THROWS_WITH_AS(quantize_gptq(w_big.data(), rows, cols, DType::nf4, h.data(), tokens),
                         "cannot quantize to nf4: weight 7 is beyond the range of an fp16 block scale", Error);
    const QuantResult big_q4 = quantize_gptq(w_big.data(), rows, cols, DType::q4_0, h.data(), tokens);
    check_encoding(big_q4, DType::q4_0, rows, cols);  // q4_0 reaches 8 * 65504
    check_encoding(quantize_gptq(w_big.data(), rows, cols, DType::q2_0, h.data(), tokens), DType::q2_0, rows, cols);
    check_encoding(quantize_rtn(w_big.data(), rows, cols, DType::q2_0), DType::q2_0, rows, cols);
    w_big[7] = 1e5f;  // q2_0 reaches 1.5 * 65504, q3_0 4 * 65504
    CHECK_THROWS_WITH_AS(quantize_rtn(w_big.data(), rows, cols, DType::q2_0),
                         "cannot quantize to q2: weight 7 is beyond the range of an fp16 block scale", Error);
    check_encoding(quantize_gptq(w_big.data(), rows, cols, DType::q3_0, h.data(), tokens), DType::q3_0, rows, cols);
    check_encoding(quantize_rtn(w_big.data(), rows, cols, DType::q3_0), DType::q3_0, rows, cols);
    std::vector<double> h_inf = h;
    h_inf[cols + 2] = INFINITY;
    CHECK_THROWS_WITH_AS(quantize_gptq(w.data(), rows, cols, DType::q4_0, h_inf.data(), tokens),
                         "cannot quantize: Hessian entry 34 is not finite", Error);
    // Empty matrices are fine.
    const QuantResult empty = quantize_gptq(w.data(), 0, cols, DType::nf4, h.data(), tokens);
    CHECK(empty.packed.empty());
}
