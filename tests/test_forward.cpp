// The fast paths against the reference: the fast forward (decode past the window, prefill,
// eval_all, lockstep batches with threads, the oneDNN provider; every dtype and layout) against
// the reference forward (runtime/reference_forward.h), on the widest kernel path and, through
// tests/meson.build, on ITERA_KERNELS=scalar (bit for bit in fp32 / fp16) and avx2. Besides: SIMD
// dense kernels against the scalar ones, prefill and eval_all against token-by-token decode bit for
// bit, batches against one context per sequence bit for bit.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>

#include "common/error.h"
#include "converter/quantize_spec.h"
#include "format/half.h"
#include "format/quant_blocks.h"
#include "kernels_cpu/dense_ops.h"
#include "kernels_cpu/ref_ops.h"
#include "runtime/batch.h"
#include "runtime/context.h"
#include "runtime/reference_forward.h"
#include "tests/model_fixtures.h"
#include "tests/reference_context.h"

using namespace itera;
using namespace itera::test;

namespace {

std::vector<KernelPath> simd_paths() {
    std::vector<KernelPath> paths;
    for (KernelPath p : {KernelPath::avx2, KernelPath::avx512})
        if (kernel_path_supported(p)) paths.push_back(p);
    return paths;
}

std::vector<float> logits_of(const float* p, const Model& m) { return {p, p + m.config.vocab_size}; }

// The configurations the fast forward is held to the reference forward on.
struct RefCase {
    const char* name;
    ModelConfig config;
};

std::vector<RefCase> reference_cases() {
    // Odd sizes everywhere (partial q8/q4/nf4 blocks), a trimmed vocabulary whose ids have gaps, a
    // `none` layer with a conv of one tap, a top-1 MoE of unequal experts, an untied head.
    ModelConfig odd;
    odd.vocab_size = 9;
    odd.vocab_ids = {0, 2, 3, 5, 8, 9, 13, 14, 20};
    odd.hidden = 40;
    odd.max_seq_length = 5;
    odd.tied_head = false;
    odd.layers = {{33, 5, 1, ChannelKind::none, 0, {}},
                  {20, 2, 2, ChannelKind::moe, 1, {9, 70}},
                  {24, 3, 4, ChannelKind::ffn, 0, {50}}};
    return {{"small (untied, ffn + 3 experts top-2)", small_config()},
            {"shipped widths (tied, ffn + 4 experts top-2)", shipped_widths(48, 8)},
            {"odd (trimmed ids with gaps, none with K 1, top-1 of unequal experts)", odd}};
}

// n valid token ids of the model (through vocab_ids when the vocabulary is trimmed).
std::vector<int32_t> some_ids(const Model& m, size_t n, uint32_t seed) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < n; i++)
        ids.push_back(m.id_of(static_cast<int32_t>((seed + 7 * i + i * i) % m.vocab_rows())));
    return ids;
}

// The reference-forward tests also run under ITERA_KERNELS=scalar and avx2 (tests/meson.build);
// on a CPU without the named path they say so and check nothing.
bool kernel_path_usable() {
    try {
        kernel_path();
        return true;
    } catch (const Error& e) {
        MESSAGE("skipped: " << e.what());
        return false;
    }
}

// How far the fast forward's logits may lie from the reference forward's: max |fast - reference|
// over a row, divided by 1 + max |reference| (the logits' own size).
//   fp32, fp16 on the scalar path (ITERA_KERNELS=scalar) with the native products: 0, bit for bit,
//     since that path is ref:: itself (kernels_cpu/dense_ops.cpp).
//   fp32, fp16 otherwise: 1e-5. Both read the same weight values; the SIMD kernels and oneDNN sum
//     in another order and use xsimd's exp / log1p / erf (a few ulp). Measured: at most 1.1e-6.
//   block formats: 0.1. The integer kernels multiply each product's input rounded to q8 blocks
//     (quant_ops.h), the reference the FP32 input; that rounding (up to 1/254 of a block's largest
//     value) compounds over the layers of these random models (weights N(0, 0.5)). Measured: at
//     most 0.045 (nf4, whose levels enter as int8 too), 0.037 for q8. The kernels' own arithmetic
//     is held tighter in test_quant_kernels.cpp; this bound catches what they cannot see (a wrong
//     row, layer, buffer, state or expert moves the logits by their own size, 0.3 and more).
float reference_tolerance(DType dtype, bool native_products = true) {
    if (is_quantized(dtype)) return 0.1f;
    return native_products && kernel_path() == KernelPath::scalar ? 0.0f : 1e-5f;
}

// max |got - want| / (1 + max |want|) over a logits row: the distance in units of the logits' size.
float relative_diff(const float* got, const float* want, size_t n) {
    float scale = 0.0f, d = 0.0f;
    for (size_t i = 0; i < n; i++) {
        scale = std::max(scale, std::fabs(want[i]));
        d = worse(d, std::fabs(got[i] - want[i]));
    }
    return d / (1.0f + scale);
}

}  // namespace

TEST_CASE("dense SIMD kernels match the scalar reference") {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    int checked = 0, rows16_checked = 0;
    float worst = 0.0f;
    for (KernelPath path : simd_paths()) {
        for (int32_t rows : {1, 3, 8, 16, 17, 40}) {
            for (int32_t cols : {1, 7, 8, 16, 33, 64, 96, 130}) {
                std::vector<float> w(static_cast<size_t>(rows * cols)), x(static_cast<size_t>(cols));
                for (float& v : w) v = normal(rng);
                for (float& v : x) v = normal(rng);
                std::vector<uint16_t> h(w.size());
                for (size_t i = 0; i < w.size(); i++) h[i] = fp32_to_fp16(w[i]);
                // the same matrices in layout rows16 (used where rows >= 16)
                const std::vector<float> w16 = rows >= kRows16 ? rows16_copy(DType::f32, w, rows, cols) : w;
                const std::vector<uint16_t> h16 = rows >= kRows16 ? rows16_copy(DType::f16, h, rows, cols) : h;
                const Weight weights[] = {{DType::f32, rows, cols, w.data()},
                                          {DType::f16, rows, cols, h.data()},
                                          {DType::f32, rows, cols, w16.data(), Layout::rows16},
                                          {DType::f16, rows, cols, h16.data(), Layout::rows16}};
                for (const Weight& W : weights) {
                    if (W.layout == Layout::rows16 && rows < kRows16) continue;
                    std::vector<float> want(static_cast<size_t>(rows)), got(static_cast<size_t>(rows));
                    ref::matvec(W, x.data(), want.data());
                    dense_path::matvec(path, W, x.data(), got.data());
                    if (W.layout == Layout::rows16) {  // the reference reads rows16 as the row_major twin, bit for bit
                        std::vector<float> twin(static_cast<size_t>(rows)), scalar(static_cast<size_t>(rows));
                        ref::matvec(weights[W.dtype == DType::f32 ? 0 : 1], x.data(), twin.data());
                        dense_path::matvec(KernelPath::scalar, W, x.data(), scalar.data());
                        CHECK(want == twin);
                        CHECK(scalar == twin);
                        rows16_checked++;
                    }
                    for (int32_t r = 0; r < rows; r++) {
                        float scale = 0.0f;  // sum |w x|: the FP32 rounding bound scales with it
                        for (int32_t c = 0; c < cols; c++)
                            scale += std::fabs(ref::element(W, int64_t{r} * cols + c) * x[c]);
                        const float err = std::fabs(got[r] - want[r]) / (scale + 1e-30f);
                        worst = std::max(worst, err);
                        CHECK(err < 1e-5f);
                    }
                    checked++;
                }
            }
        }
        std::vector<float> v(101);
        for (size_t i = 0; i < v.size(); i++) v[i] = -30.0f + 0.6f * static_cast<float>(i);  // both softplus branches
        std::vector<float> b = v, e = v;
        for (float& x : e) x *= 0.1f;  // exp's argument range: decays are exp(dt * -exp(A_log))
        std::vector<float> e_in = e;
        dense_path::gelu_inplace(path, b.data(), 101);
        dense_path::exp_inplace(path, e.data(), 101);
        for (size_t i = 0; i < v.size(); i++) {
            CHECK(std::fabs(b[i] - ref::gelu(v[i])) <= 1e-6f * (1.0f + std::fabs(v[i])));
            CHECK(std::fabs(e[i] - std::exp(e_in[i])) <= 1e-6f * std::exp(e_in[i]));
        }
        // step sizes of 3 rows of 101 (both softplus branches, a bias, the SIMD body and tail)
        std::vector<float> delta(3 * 101), bias(101), dt(3), dt_want(3);
        for (size_t i = 0; i < delta.size(); i++) delta[i] = v[i % 101] * (1.0f + 0.5f * static_cast<float>(i / 101));
        for (float& x : bias) x = 0.3f * normal(rng);
        dense_path::step_sizes(path, delta.data(), bias.data(), 3, 101, dt.data());
        for (int32_t r = 0; r < 3; r++) {
            float sp = 0.0f;
            for (int32_t i = 0; i < 101; i++)
                sp += ref::softplus(delta[static_cast<size_t>(r * 101 + i)] + bias[static_cast<size_t>(i)]);
            CHECK(std::fabs(dt[static_cast<size_t>(r)] - sp / 101) < 1e-5f * sp / 101);
        }
        for (int32_t channels : {5, 16, 37, 128}) {
            for (int32_t K : {1, 3, 4}) {
                std::vector<float> wt(static_cast<size_t>(K * channels)), bias(static_cast<size_t>(channels)),
                    u(static_cast<size_t>(channels)), hist(static_cast<size_t>((K - 1) * channels));
                for (std::vector<float>* t : {&wt, &bias, &u, &hist})
                    for (float& e : *t) e = normal(rng);
                std::vector<float> hist2 = hist, want(static_cast<size_t>(channels)), got(want.size());
                dense_path::conv_silu_step(KernelPath::scalar, wt.data(), bias.data(), channels, K, u.data(),
                                           hist.data(), want.data());
                dense_path::conv_silu_step(path, wt.data(), bias.data(), channels, K, u.data(), hist2.data(),
                                           got.data());
                CHECK(max_abs_diff(got, want) < 1e-5f);
                CHECK(max_abs_diff(hist2, hist) == 0.0f);  // the shifted history
                // the scalar conv on the time-major layout is ref::conv_step's math, then ref::silu
                std::vector<float> w_ref(static_cast<size_t>(K * channels)),
                    h_ref(static_cast<size_t>((K - 1) * channels)), ref_out(static_cast<size_t>(channels));
                std::vector<float> h0 = hist2;  // any history: rebuild it channel-major
                for (int32_t i = 0; i < channels; i++) {
                    for (int32_t k = 0; k < K; k++)
                        w_ref[static_cast<size_t>(i * K + k)] = wt[static_cast<size_t>(k * channels + i)];
                    for (int32_t j = 0; j < K - 1; j++)
                        h_ref[static_cast<size_t>(i * (K - 1) + j)] = h0[static_cast<size_t>(j * channels + i)];
                }
                dense_path::conv_silu_step(path, wt.data(), bias.data(), channels, K, u.data(), h0.data(), got.data());
                ref::conv_step({DType::f32, channels, K, w_ref.data()}, {DType::f32, 1, channels, bias.data()},
                               channels, K, u.data(), h_ref.data(), ref_out.data());
                for (float& o : ref_out) o = ref::silu(o);
                CHECK(max_abs_diff(got, ref_out) < 1e-5f);
            }
            for (int32_t N : {1, 8, 16}) {
                const int32_t rows = 3, z_stride = 2 * channels;  // z inside [u | z] rows, as the forward keeps it
                std::vector<float> c_t(static_cast<size_t>(N * channels)), s(static_cast<size_t>(rows * N)),
                    d(static_cast<size_t>(channels)), vv(static_cast<size_t>(rows * channels)),
                    zz(static_cast<size_t>(rows * z_stride));
                for (std::vector<float>* t : {&c_t, &s, &d, &vv, &zz})
                    for (float& e : *t) e = normal(rng);
                std::vector<float> want(static_cast<size_t>(rows * channels)), got(want.size());
                dense_path::ssm_output(KernelPath::scalar, c_t.data(), s.data(), N, d.data(), vv.data(), zz.data(),
                                       z_stride, channels, rows, want.data());
                dense_path::ssm_output(path, c_t.data(), s.data(), N, d.data(), vv.data(), zz.data(), z_stride,
                                       channels, rows, got.data());
                CHECK(max_abs_diff(got, want) < 1e-5f);
                for (int32_t r = 0; r < rows; r++)  // row r is the formula on row r's s, v and z
                    for (int32_t i = 0; i < channels; i++) {
                        double acc = double{d[static_cast<size_t>(i)]} * vv[static_cast<size_t>(r * channels + i)];
                        for (int32_t n = 0; n < N; n++)
                            acc +=
                                double{c_t[static_cast<size_t>(n * channels + i)]} * s[static_cast<size_t>(r * N + n)];
                        const float z = zz[static_cast<size_t>(r * z_stride + i)];
                        CHECK(std::fabs(want[static_cast<size_t>(r * channels + i)] - acc * ref::silu(z)) <
                              1e-5 * (1.0 + std::fabs(acc)));
                    }
            }
        }
        // argmax: ties (first index wins), NaNs (passed over; x[0] NaN gives 0), infinities, every
        // tail length, and the vocabulary sizes.
        int32_t argmax_cases = 0;
        for (int32_t n : {0, 1, 2, 15, 16, 17, 63, 64, 65, 100, 184, 2000, 3000}) {
            for (int variant = 0; variant < 6; variant++) {
                std::vector<float> x(static_cast<size_t>(n) + 1);
                for (float& e : x) e = variant == 1 ? std::round(normal(rng)) : normal(rng);  // 1: many ties
                if (n > 0 && variant == 2) x[static_cast<size_t>(rng() % n)] = std::nanf("");
                if (n > 0 && variant == 3) x[0] = std::nanf("");
                if (n > 0 && variant == 4) x[static_cast<size_t>(rng() % n)] = INFINITY;
                if (variant == 5) std::fill(x.begin(), x.end(), -INFINITY);
                x[static_cast<size_t>(n)] = 1e30f;  // past the end: must not be read
                CHECK_MESSAGE(dense_path::argmax(path, x.data(), n) == ref::argmax(x.data(), n),
                              "argmax n " << n << " variant " << variant);
                argmax_cases++;
            }
        }
        MESSAGE(argmax_cases << " argmax cases against ref::argmax");
        for (int32_t n : {1, 7, 64, 96, 101}) {
            const int32_t rows = 2;  // the second row a scaled copy of the first
            std::vector<float> gamma(v.rbegin(), v.rend()), x(static_cast<size_t>(rows * n)), want(x.size()),
                got(x.size());
            for (int32_t i = 0; i < n; i++) {
                x[static_cast<size_t>(i)] = v[static_cast<size_t>(i)];
                x[static_cast<size_t>(n + i)] = 3.0f * v[static_cast<size_t>(i)] + 1.0f;
            }
            const Weight gw{DType::f32, 1, n, gamma.data()}, bw{DType::f32, 1, n, v.data()};
            for (int32_t r = 0; r < rows; r++) ref::layer_norm(x.data() + r * n, gw, bw, 1e-5f, n, want.data() + r * n);
            dense_path::layer_norm(path, x.data(), gw, bw, 1e-5f, rows, n, got.data());
            CHECK(max_abs_diff(got, want) < 1e-5f * 30);  // values up to |gamma| ~ 30
        }
    }
    MESSAGE(
        checked << " matvecs (f32, f16, both also rows16 (" << rows16_checked
                << " of them, the scalar path bit for bit "
                << "the row_major twin's); rows 1..40 x cols 1..130) on " << simd_paths().size()
                << " SIMD paths: max |simd - scalar| / sum|wx| = " << worst
                << " (limit 1e-5); exp, gelu, step sizes (3 rows, bias), layer norm (2 rows), conv + SiLU (and "
                   "ref::conv_step's math), SSM output (3 rows, against the formula) within a few ulp; argmax exact");
}

TEST_CASE("matmul_dense == matvec_dense row by row, bit for bit: fp32 and fp16, row_major and rows16, n 1..9") {
    std::vector<KernelPath> paths = simd_paths();
    paths.push_back(KernelPath::scalar);
    int cases = 0;
    for (KernelPath path : paths)
        for (const auto& shape : {std::pair{16, 64}, std::pair{45, 70}, std::pair{128, 3}}) {
            // not a structured binding: clang 14 cannot capture one in CHECK_MESSAGE's lambda
            const int32_t rows = shape.first, cols = shape.second;
            const std::vector<float> w = gaussian(static_cast<size_t>(rows * cols), 61);
            std::vector<uint16_t> h(w.size());
            for (size_t i = 0; i < w.size(); i++) h[i] = fp32_to_fp16(w[i]);
            const std::vector<float> w16 = rows16_copy(DType::f32, w, rows, cols);
            const std::vector<uint16_t> h16 = rows16_copy(DType::f16, h, rows, cols);
            for (const Weight& W :
                 {Weight{DType::f32, rows, cols, w.data()}, Weight{DType::f32, rows, cols, w16.data(), Layout::rows16},
                  Weight{DType::f16, rows, cols, h.data()}, Weight{DType::f16, rows, cols, h16.data(), Layout::rows16}})
                for (int32_t n = 1; n <= 9; n++) {
                    const std::vector<float> x = gaussian(static_cast<size_t>(n * cols), 100 + n);
                    std::vector<float> got(static_cast<size_t>(n * rows)), want(got.size());
                    dense_path::matmul(path, W, x.data(), n, got.data());
                    for (int32_t i = 0; i < n; i++)
                        dense_path::matvec(path, W, x.data() + i * cols, want.data() + i * rows);
                    CHECK_MESSAGE(got == want, kernel_path_name(path)
                                                   << " " << dtype_name(W.dtype) << " " << layout_name(W.layout) << " "
                                                   << rows << "x" << cols << " n " << n);
                    cases++;
                }
        }
    // A hand-made rows16 weight the layout does not fit is refused, not read past its end.
    const std::vector<float> small(8 * 64, 1.0f), in(64, 1.0f);
    std::vector<float> out(8);
    CHECK_THROWS_WITH_AS(matvec_dense({DType::f32, 8, 64, small.data(), Layout::rows16}, in.data(), out.data()),
                         "matvec_dense: layout rows16 needs a matrix of at least 16 rows", Error);
    CHECK_THROWS_WITH_AS(matvec_dense({DType::q4_0, 32, 64, small.data(), Layout::rows16}, in.data(), out.data()),
                         "matvec_dense: weight dtype q4 is not fp32 or fp16", Error);
    MESSAGE("matmul_dense == matvec_dense row by row, bit for bit: "
            << cases << " cases (fp32 and fp16, row_major and rows16; 16x64, 45x70, 128x3; n 1..9; every path)");
}

TEST_CASE("prefill (a prompt as one block of rows) equals token-by-token decode") {
    for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0}) {
        const auto model = model_from(random_spec(small_config(), dtype, 11));
        const std::vector<int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6, 5};  // longer than max_seq_length 6
        Context one(*model), block(*model);
        std::vector<float> want;
        for (int32_t t : prompt) want = logits_of(one.eval(t), *model);
        const std::vector<float> got =
            logits_of(block.eval_tokens(prompt.data(), static_cast<int32_t>(prompt.size())), *model);
        // The native kernels compute each row exactly as decode does.
        CHECK(max_abs_diff(got, want) == 0.0f);
        CHECK(block.position() == one.position());
        // and the states agree: the next token gives the same logits
        CHECK(max_abs_diff(logits_of(block.eval(7), *model), logits_of(one.eval(7), *model)) == 0.0f);
        // prefill without logits, then one token
        Context part(*model);
        CHECK(part.eval_tokens(prompt.data(), 4, false) == nullptr);
        Context ref(*model);
        for (int i = 0; i < 4; i++) ref.eval(prompt[static_cast<size_t>(i)], false);
        CHECK(max_abs_diff(logits_of(part.eval(8), *model), logits_of(ref.eval(8), *model)) == 0.0f);
    }
    MESSAGE("f32, f16, q8_0, q4_0: a 9-token prompt (window 6) in one call gives bit-identical logits and state");
}

TEST_CASE("eval_all (every position's logits from one prefill) equals token-by-token decode") {
    for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0}) {
        const auto model = model_from(random_spec(small_config(), dtype, 12));
        const size_t V = static_cast<size_t>(model->vocab_rows());
        const std::vector<int32_t> ids = {3, 1, 4, 1, 5};  // window 6: one token left after them
        Context one(*model), all(*model);
        one.eval(2);
        all.eval(2);  // eval_all continues a window that is not empty
        const float* rows = all.eval_all(ids.data(), static_cast<int32_t>(ids.size()));
        for (size_t i = 0; i < ids.size(); i++) {
            const std::vector<float> want = logits_of(one.eval(ids[i]), *model);
            CHECK(max_abs_diff(std::vector<float>(rows + i * V, rows + (i + 1) * V), want) == 0.0f);
        }
        CHECK(all.position() == one.position());
        CHECK(max_abs_diff(logits_of(all.logits(), *model), logits_of(one.logits(), *model)) == 0.0f);
        // Past the window it refuses instead of sliding (each row would need its own window).
        const int32_t two[] = {7, 8};
        CHECK_THROWS_WITH_AS(all.eval_all(two, 2), doctest::Contains("exceed max_seq_length"), Error);
        CHECK_THROWS_AS(all.eval_all(two, 0), Error);
        const int32_t bad[] = {model->config.vocab_size};
        CHECK_THROWS_WITH_AS(all.eval_all(bad, 1), doctest::Contains("not in the model's vocabulary"), Error);
        CHECK(all.position() == one.position());  // refused calls change nothing
    }
    MESSAGE(
        "f32, f16, q8_0, q4_0: eval_all of 5 tokens after 1 gives each position's decode logits bit for bit; "
        "refuses past the window, empty input and unknown ids");
}

TEST_CASE("fp32, fp16, q4 and q8 models in layout rows16 run as their row_major twins: decode, prefill, batch") {
    // The kernels differ only in FP32 summation order (~1e-7 relative). A logit vector may still
    // move further when an activation lies within that distance of a q8 rounding boundary and the
    // next product quantizes it to the other side (seen: 9e-3 on one position of 11); a wrong
    // nibble, scale or row moves logits by their own size. So: every position within 2e-2 x (1 +
    // max |logit|), and nearly all within 1e-5 x (1 + max |logit|); fp32 and fp16 all of them.
    for (DType dtype : {DType::f32, DType::f16, DType::q4_0, DType::q8_0}) {
        const ModelSpec spec = random_spec(shipped_widths(48, 8), dtype, 21);  // tied head, 48 rows
        ModelSpec spec16 = spec;
        choose_layouts(spec16, Layout::rows16);
        int interleaved = 0;
        for (const SpecTensor& t : spec16.tensors) interleaved += t.layout == Layout::rows16;
        CHECK(interleaved >= 10);  // the projections, experts and the tied embedding
        const auto plain = model_from(spec), inter = model_from(spec16);
        CHECK(inter->embedding.layout == Layout::rows16);
        const size_t V = static_cast<size_t>(plain->vocab_rows());
        int compared = 0, tight = 0;
        auto compare = [&](const float* a, const float* b) {
            float scale = 0.0f;
            for (size_t i = 0; i < V; i++) scale = std::max(scale, std::fabs(a[i]));
            const float d = max_abs_diff(std::vector<float>(a, a + V), std::vector<float>(b, b + V));
            CHECK(d <= 2e-2f * (1.0f + scale));
            compared++;
            tight += d <= 1e-5f * (1.0f + scale);
        };
        const std::vector<int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5};  // past max_seq_length 8
        Context a(*plain), b(*inter);
        for (int32_t t : prompt) compare(a.eval(t), b.eval(t));
        Context pa(*plain), pb(*inter);
        compare(pa.eval_tokens(prompt.data(), 8), pb.eval_tokens(prompt.data(), 8));
        Batch ba(*plain, 3, 1), bb(*inter, 3, 1);
        const int32_t tokens[3] = {7, 8, 9};
        ba.eval(tokens);
        bb.eval(tokens);
        for (int32_t i = 0; i < 3; i++) compare(ba.logits(i), bb.logits(i));
        CHECK(tight >= compared - (is_quantized(dtype) ? 2 : 0));
        MESSAGE(dtype_name(dtype) << ": " << interleaved
                                  << " rows16 tensors; token by token past the window, a prefill "
                                  << "and a batch of 3: " << tight << " of " << compared
                                  << " logit vectors within 1e-5 x (1 + max |logit|) of row_major, all within 2e-2");
    }
}

TEST_CASE(
    "batch decode equals one context per sequence and the reference forward, with threads and past max_seq_length") {
    if (!kernel_path_usable()) return;
    for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0}) {
        const auto model = model_from(random_spec(small_config(), dtype, 5));
        const size_t V = static_cast<size_t>(model->vocab_rows());
        for (int32_t threads : {1, 3}) {
            const int32_t n = 5;
            Batch batch(*model, n, threads);
            std::vector<Context> contexts;
            std::vector<ReferenceContext> refs;
            for (int32_t i = 0; i < n; i++) {
                contexts.emplace_back(*model);
                refs.emplace_back(*model);
            }
            float worst = 0.0f, worst_ref = 0.0f;
            for (int32_t step = 0; step < 9; step++) {  // max_seq_length is 6: windows slide
                if (step == 4) {                        // sequence 2 starts over: sequences sit at different positions
                    batch.reset(2);
                    contexts[2].reset();
                    refs[2].reset();
                }
                std::vector<int32_t> tokens(n);
                for (int32_t i = 0; i < n; i++) tokens[static_cast<size_t>(i)] = (step * 7 + i * 3) % 23;
                batch.eval(tokens.data());
                for (int32_t i = 0; i < n; i++) {
                    const size_t s = static_cast<size_t>(i);
                    const auto want = logits_of(contexts[s].eval(tokens[s]), *model);
                    worst = worse(worst, max_abs_diff(logits_of(batch.logits(i), *model), want));
                    worst_ref = worse(worst_ref, relative_diff(batch.logits(i), refs[s].eval(tokens[s]).data(), V));
                    CHECK(batch.position(i) == contexts[s].position());
                }
            }
            CHECK(worst == 0.0f);
            CHECK(worst_ref <= reference_tolerance(dtype));
            CHECK(batch.state_bytes() == contexts[0].state_bytes());
            MESSAGE(dtype_name(dtype) << ", " << threads
                                      << " threads: max |batch - reference| / (1 + max |reference|) = " << worst_ref
                                      << " (limit " << reference_tolerance(dtype) << ")");
        }
        Batch batch(*model, 2, 1);
        const int32_t bad[2] = {1, 99};
        CHECK_THROWS_AS(batch.eval(bad), Error);
    }
    MESSAGE(
        "f32, f16, q8_0 and q4_0, 5 sequences x 9 steps (window 6, one reset), 1 and 3 threads: logits "
        "bit-identical to one context per sequence and within reference_tolerance of the reference forward; "
        "an unknown id is refused");
}

TEST_CASE("prefill and eval_all with --kernels onednn and auto against the reference forward") {
    if (!kernel_path_usable()) return;
    for (GemmProvider provider : {GemmProvider::onednn, GemmProvider::automatic})
        for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0}) {
            const auto model = model_from(random_spec(shipped_widths(48, 8), dtype, 41));
            model->gemm = std::make_shared<GemmDispatch>(provider);
            const size_t V = static_cast<size_t>(model->vocab_rows());
            const int32_t P = model->config.max_seq_length;
            const std::vector<int32_t> ids = some_ids(*model, static_cast<size_t>(P), 3);
            const std::vector<float> want = reference_logits(*model, ids.data(), P);
            Context prefill(*model), all(*model);
            float worst = relative_diff(prefill.eval_tokens(ids.data(), P), want.data() + (P - 1) * V, V);
            const float* got = all.eval_all(ids.data(), P);
            for (int32_t i = 0; i < P; i++) worst = worse(worst, relative_diff(got + i * V, want.data() + i * V, V));
            // oneDNN's q8_0 path rounds each input row to u8 on one grid (onednn_gemm.cpp), the native
            // kernels per block of 32; either stays within the block formats' bound.
            CHECK(worst <= reference_tolerance(dtype, false));
            MESSAGE(std::string(gemm_provider_name(provider))
                    << " " << dtype_name(dtype) << ": a window of 8 (prefill, eval_all) against the reference: "
                    << worst << " (limit " << reference_tolerance(dtype, false) << ")");
        }
}

TEST_CASE("the fast forward against the reference forward: decode past the window, prefill, eval_all") {
    if (!kernel_path_usable()) return;
    const DType dtypes[] = {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0};
    int models = 0, rows = 0;
    for (const RefCase& c : reference_cases())
        for (DType dtype : dtypes)
            for (Layout layout : {Layout::row_major, Layout::rows16}) {
                ModelSpec spec = random_spec(c.config, dtype, 31);
                choose_layouts(spec, layout);
                int interleaved = 0;
                for (const SpecTensor& t : spec.tensors) interleaved += t.layout == Layout::rows16;
                if (layout == Layout::rows16 && interleaved == 0) continue;  // no rows16 kernel for this dtype
                const auto model = model_from(spec);
                const size_t V = static_cast<size_t>(model->vocab_rows());
                const int32_t P = model->config.max_seq_length;
                const std::vector<int32_t> ids = some_ids(*model, static_cast<size_t>(P) + 3, 5);
                float worst = 0.0f;
                auto compare = [&](const float* fast, const float* ref) {
                    worst = worse(worst, relative_diff(fast, ref, V));
                    rows++;
                };
                // Token by token, past max_seq_length (the window slides).
                Context decode(*model);
                ReferenceContext ref(*model);
                for (int32_t t : ids) compare(decode.eval(t), ref.eval(t).data());
                // One window as a block of rows: its last logits (prefill), every position's (eval_all).
                const std::vector<float> want = reference_logits(*model, ids.data(), P);
                Context prefill(*model), all(*model);
                compare(prefill.eval_tokens(ids.data(), P), want.data() + (P - 1) * V);
                const float* got = all.eval_all(ids.data(), P);
                for (int32_t i = 0; i < P; i++) compare(got + i * V, want.data() + i * V);
                CHECK_MESSAGE(worst <= reference_tolerance(dtype), std::string(c.name)
                                                                       << " " << dtype_name(dtype) << " "
                                                                       << layout_name(layout) << ": " << worst);
                MESSAGE(std::string(c.name) << ", " << dtype_name(dtype) << " " << layout_name(layout)
                                            << ": max |fast - reference| / (1 + max |reference|) = " << worst
                                            << " (limit " << reference_tolerance(dtype) << ")");
                models++;
            }
    MESSAGE(models << " models (3 configs x fp32, fp16, q8, q4, nf4, q3, q2, row_major and rows16 where it applies) on "
                   << "kernel path " << std::string(kernel_path_name()) << ": " << rows
                   << " logit rows of decode past the window, prefill and eval_all against the reference forward");
}

TEST_CASE("the reference forward refuses unknown ids, positions past the window and too many ids") {
    ModelConfig c = small_config();
    c.vocab_ids = {0, 2, 3, 5, 8, 9, 13, 14, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34};
    const auto model = model_from(random_spec(c, DType::f32, 2));
    ReferenceState state(model->config);
    std::vector<float> logits(static_cast<size_t>(model->vocab_rows()));
    CHECK_THROWS_WITH_AS(reference_step(*model, 1, 0, state, logits.data()),
                         "token id 1 is not in the model's vocabulary", Error);  // trimmed away
    CHECK_THROWS_WITH_AS(reference_step(*model, 35, 0, state, logits.data()),
                         "token id 35 is not in the model's vocabulary", Error);
    CHECK_THROWS_WITH_AS(reference_step(*model, -1, 0, state, logits.data()),
                         "token id -1 is not in the model's vocabulary", Error);
    CHECK_THROWS_WITH_AS(reference_step(*model, 2, 6, state, logits.data()), "position 6 is outside max_seq_length 6",
                         Error);
    CHECK_THROWS_WITH_AS(reference_step(*model, 2, -1, state, logits.data()), "position -1 is outside max_seq_length 6",
                         Error);
    const std::vector<int32_t> ids(7, 2);
    CHECK_THROWS_WITH_AS(reference_logits(*model, ids.data(), 7), "7 ids exceed max_seq_length 6", Error);
    CHECK(reference_logits(*model, ids.data(), 0).empty());
    MESSAGE(
        "reference_step refuses a trimmed id, ids past the vocabulary and positions outside the window; "
        "reference_logits refuses more ids than max_seq_length");
}
