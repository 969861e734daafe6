// Runtime pieces on their own: reference kernels against their formulas, tokenizer, sampler, and
// the context's recurrent state (window semantics past max_seq_length, reset, fp16 storage).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "common/error.h"
#include "format/itl_file.h"
#include "format/quant_blocks.h"
#include "format/tensor_names.h"
#include "kernels_cpu/ref_ops.h"
#include "runtime/context.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer.h"
#include "tests/model_fixtures.h"

using namespace itera;
using namespace itera::test;

namespace {

Weight view(const std::vector<float>& v, int32_t rows, int32_t cols) { return {DType::f32, rows, cols, v.data()}; }

std::vector<float> run(Context& ctx, const std::vector<int32_t>& ids) {
    const float* logits = nullptr;
    for (int32_t id : ids) logits = ctx.eval(id);
    return {logits, logits + ctx.model().config.vocab_size};
}

}  // namespace

TEST_CASE("reference kernels follow their formulas") {
    const std::vector<float> x = {1.0f, 2.0f, 4.0f, -3.0f};
    const std::vector<float> gamma = {1.0f, 2.0f, 1.0f, 0.5f}, beta = {0.0f, 1.0f, -1.0f, 0.0f};
    std::vector<float> out(4);
    ref::layer_norm(x.data(), view(gamma, 1, 4), view(beta, 1, 4), 1e-5f, 4, out.data());
    const float mean = 1.0f, var = (0.0f + 1.0f + 9.0f + 16.0f) / 4.0f;
    for (int i = 0; i < 4; i++)
        CHECK(out[i] == doctest::Approx((x[i] - mean) / std::sqrt(var + 1e-5f) * gamma[i] + beta[i]));

    CHECK(ref::gelu(1.0f) == doctest::Approx(0.8413447f));  // 0.5 * (1 + erf(1/sqrt 2))
    CHECK(ref::silu(2.0f) == doctest::Approx(2.0f / (1.0f + std::exp(-2.0f))));
    CHECK(ref::softplus(30.0f) == 30.0f);
    CHECK(ref::softplus(0.0f) == doctest::Approx(std::log(2.0f)));

    // Causal depthwise conv, K = 3, fed a sequence token by token, equals the direct sum.
    const std::vector<float> w = {0.5f, -1.0f, 2.0f, 1.0f, 1.0f, 1.0f}, b = {0.25f, -0.5f};
    std::vector<float> history(4, 0.0f), y(2);
    const float seq[4][2] = {{1, 2}, {3, -1}, {-2, 5}, {4, 4}};
    for (int t = 0; t < 4; t++) {
        ref::conv_step(view(w, 2, 3), view(b, 1, 2), 2, 3, seq[t], history.data(), y.data());
        for (int d = 0; d < 2; d++) {
            float want = b[d];
            for (int j = 0; j < 3; j++) {
                const int src = t - 2 + j;
                if (src >= 0) want += w[d * 3 + j] * seq[src][d];
            }
            CHECK(y[d] == doctest::Approx(want));
        }
    }

    int32_t index[2];
    float weight[2];
    const float router[4] = {0.1f, 2.0f, -1.0f, 1.0f};
    ref::top_k_softmax(router, 4, 2, index, weight);
    CHECK(index[0] == 1);
    CHECK(index[1] == 3);
    CHECK(weight[0] == doctest::Approx(1.0f / (1.0f + std::exp(-1.0f))));
    MESSAGE("layer_norm, gelu, silu, softplus, conv_step over 4 steps and top-k softmax match their formulas");
}

TEST_CASE("reference row and sum ops, and matvec over every dtype, follow their formulas") {
    std::vector<float> x = {1.0f, -2.0f, 0.5f};
    const std::vector<float> y = {4.0f, 1.0f, -1.0f}, rows = {1, 2, 3, 10, 20, 30};
    ref::add(x.data(), y.data(), 3);
    CHECK(x == std::vector<float>{5.0f, -1.0f, -0.5f});
    ref::add_scaled(x.data(), 0.5f, y.data(), 3);
    CHECK(x == std::vector<float>{7.0f, -0.5f, -1.0f});
    ref::add_row(view(rows, 2, 3), 1, x.data());  // x += W[1]
    CHECK(x == std::vector<float>{17.0f, 19.5f, 29.0f});
    const float delta[] = {0.0f, 30.0f, -1.0f};  // softplus: log 2, 30 (past the threshold), log(1 + 1/e)
    CHECK(ref::step_size(delta, 3) == doctest::Approx((std::log(2.0f) + 30.0f + std::log1p(std::exp(-1.0f))) / 3));

    // matvec reads each row as load_row gives it: for a block format, the dequantized row (an FP32
    // dot of those values with x); fp32 and fp16 element by element as before.
    const int32_t R = 3, C = 70;  // 70: a partial block of 32 and of 64 (nf4)
    const std::vector<float> w = gaussian(static_cast<size_t>(R * C), 3), in = gaussian(static_cast<size_t>(C), 4);
    int dtypes = 0;
    for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0}) {
        const size_t row_bytes = dtype_row_bytes(dtype, C);
        std::vector<uint8_t> data(row_bytes * R);
        for (int32_t r = 0; r < R; r++) quantize_row(dtype, w.data() + r * C, C, data.data() + r * row_bytes);
        const Weight W{dtype, R, C, data.data()};
        std::vector<float> got(R), row(C);
        ref::matvec(W, in.data(), got.data());
        for (int32_t r = 0; r < R; r++) {
            dequantize_row(dtype, data.data() + r * row_bytes, C, row.data());
            float want = 0.0f;
            for (int32_t c = 0; c < C; c++) want += row[static_cast<size_t>(c)] * in[static_cast<size_t>(c)];
            CHECK(got[static_cast<size_t>(r)] == want);
        }
        dtypes++;
    }
    CHECK(dtypes == 7);
    MESSAGE(
        "add, add_scaled, add_row, step_size (both softplus branches) match their formulas; matvec over fp32, "
        "fp16, q8, q4, nf4, q3 and q2 (3x70) equals the FP32 dot of the dequantized rows bit for bit");
}

TEST_CASE("scan_step matches the diagonal SSM recurrence") {
    const int32_t inner = 3, state = 2;
    const std::vector<float> a_log = {0.0f, std::log(2.0f)}, B = {1, 0, 1, 0, 1, -1}, C = {1, 0, 0, 1, 1, 1},
                             D = {0.5f, 0.5f, 0.5f};
    const std::vector<float> v = {1.0f, 2.0f, 3.0f}, delta = {0.0f, 0.0f, 0.0f};
    std::vector<float> s = {1.0f, -1.0f}, y(3), bv(2);
    ref::matvec(view(B, 2, 3), v.data(), bv.data());
    ref::scan_step(view(a_log, 1, 2), view(C, 3, 2), view(D, 1, 3), inner, state, v.data(), delta.data(), bv.data(),
                   s.data(), y.data());
    const float dt = std::log(2.0f);  // mean softplus(0)
    const float s0 = std::exp(-dt) * 1.0f + dt * (1 + 3), s1 = std::exp(-2 * dt) * -1.0f + dt * (2 - 3);
    CHECK(s[0] == doctest::Approx(s0));
    CHECK(s[1] == doctest::Approx(s1));
    CHECK(y[2] == doctest::Approx(s0 + s1 + 1.5f));
    MESSAGE("one scan step: s = exp(dt*A)*s + dt*B v, y = C s + D v with dt = mean softplus");
}

TEST_CASE("word and char tokenizers") {
    TokenizerSpec word{TokenizerKind::word, {"<PAD>", "<UNK>", "<BOS>", "<EOS>", "the", "lord", "said,", "god"}};
    const Tokenizer w(word);
    std::vector<std::string> unknown;
    const std::vector<int32_t> ids = w.encode("  The LORD\tsaid, unto\n god ", &unknown);
    CHECK(ids == std::vector<int32_t>{4, 5, 6, 1, 7});
    REQUIRE(unknown.size() == 1);
    CHECK(unknown[0] == "unto");
    CHECK(w.decode({4, 5, 6}) == "the lord said,");
    CHECK(w.eos() == 3);
    CHECK(w.encode(" \n\t").empty());

    TokenizerSpec chars{TokenizerKind::chars, {"<PAD>", "<UNK>", "<BOS>", "<EOS>", "a", "B", " ", "\xc3\xa9"}};
    const Tokenizer c(chars);
    CHECK(c.encode("aB \xc3\xa9z") == std::vector<int32_t>{4, 5, 6, 7, 1});
    CHECK(c.decode({5, 4, 6, 7}) == "Ba \xc3\xa9");

    const Tokenizer no_unk(TokenizerSpec{TokenizerKind::word, {"a", "b"}});
    CHECK_THROWS_WITH_AS(no_unk.encode("a c"), doctest::Contains("no <UNK>"), Error);
    MESSAGE("word: lower-case, whitespace split, punctuation attached, <UNK>; char: UTF-8 code points, case kept");
}

TEST_CASE("sampler: greedy, seeds and filters") {
    const std::vector<float> logits = {0.1f, 3.0f, 2.9f, -1.0f, 0.5f};
    SamplerParams greedy;
    greedy.greedy = true;
    CHECK(Sampler(greedy).sample(logits.data(), 5) == 1);

    SamplerParams p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.seed = 42;
    Sampler a(p), b(p);
    std::vector<int32_t> sa, sb;
    for (int i = 0; i < 200; i++) {
        sa.push_back(a.sample(logits.data(), 5));
        sb.push_back(b.sample(logits.data(), 5));
    }
    CHECK(sa == sb);
    std::vector<int> counts(5, 0);
    for (int32_t id : sa) counts[static_cast<size_t>(id)]++;
    CHECK(counts[1] > 40);
    CHECK(counts[2] > 40);  // 3.0 vs 2.9: both common
    CHECK(counts[0] + counts[3] + counts[4] > 0);

    p.top_k = 2;
    Sampler k2(p);
    for (int i = 0; i < 200; i++) {
        const int32_t id = k2.sample(logits.data(), 5);
        CHECK((id == 1 || id == 2));
    }
    p.top_k = 0;
    p.top_p = 0.1f;
    Sampler nucleus(p);
    for (int i = 0; i < 50; i++) CHECK(nucleus.sample(logits.data(), 5) == 1);
    const std::vector<float> with_nan = {0.1f, std::nanf(""), 2.0f};
    CHECK_THROWS_WITH_AS(Sampler(p).sample(with_nan.data(), 3), doctest::Contains("NaN logits"), Error);
    CHECK_THROWS_WITH_AS(Sampler(greedy).sample(with_nan.data(), 3), doctest::Contains("NaN logits"), Error);
    MESSAGE(
        "greedy picks argmax; same seed gives the same 200 draws; top-k 2 and top-p 0.1 restrict the choice; "
        "NaN logits are an error");
}

namespace {

// The sampler as first written: every id sorted (partial_sort for top-k) by logit, then id. The
// fast top-k must draw exactly what this draws from the same seed.
struct PlainSampler {
    SamplerParams p;
    uint64_t state;
    explicit PlainSampler(const SamplerParams& params) : p(params), state(params.seed ^ 0x9e3779b97f4a7c15ull) {}
    double uniform() {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        return static_cast<double>(z >> 11) * 0x1.0p-53;
    }
    int32_t sample(const float* logits, int32_t n) {
        std::vector<int32_t> order(static_cast<size_t>(n));
        for (int32_t i = 0; i < n; i++) order[static_cast<size_t>(i)] = i;
        auto by_logit = [&](int32_t a, int32_t b) {
            return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
        };
        const int32_t keep = p.top_k > 0 && p.top_k < n ? p.top_k : n;
        std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
        std::vector<double> prob(static_cast<size_t>(keep));
        double total = 0.0;
        for (int32_t i = 0; i < keep; i++) {
            prob[static_cast<size_t>(i)] =
                std::exp((logits[order[static_cast<size_t>(i)]] - logits[order[0]]) / p.temperature);
            total += prob[static_cast<size_t>(i)];
        }
        int32_t kept = keep;
        if (p.top_p < 1.0f) {
            double cumulative = 0.0;
            for (int32_t i = 0; i < keep; i++) {
                cumulative += prob[static_cast<size_t>(i)] / total;
                if (cumulative >= p.top_p) {
                    kept = i + 1;
                    break;
                }
            }
            total = 0.0;
            for (int32_t i = 0; i < kept; i++) total += prob[static_cast<size_t>(i)];
        }
        double r = uniform() * total;
        for (int32_t i = 0; i < kept; i++) {
            r -= prob[static_cast<size_t>(i)];
            if (r < 0.0) return order[static_cast<size_t>(i)];
        }
        return order[static_cast<size_t>(kept - 1)];
    }
};

}  // namespace

TEST_CASE("sampler: top-k draws equal sorting every id") {
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    int draws = 0;
    for (int32_t n : {1, 5, 40, 41, 184, 2000, 3000}) {
        for (int variant = 0; variant < 5; variant++) {
            std::vector<float> x(static_cast<size_t>(n));
            for (float& e : x) e = variant == 1 ? std::round(normal(rng)) : normal(rng);  // 1: ties everywhere
            if (variant == 2) std::fill(x.begin(), x.end(), 0.5f);                        // 2: all equal
            if (variant == 3)                                                             // 3: masked ids
                for (size_t i = 0; i < x.size(); i += 3) x[i] = -INFINITY;
            if (variant == 4 && n > 2) x[static_cast<size_t>(n / 2)] = 1e30f;  // 4: one far above the rest
            for (int32_t k : {1, 2, 40, 100, n - 1, n, 0}) {
                for (float top_p : {1.0f, 0.95f}) {
                    SamplerParams p;
                    p.temperature = 0.8f;
                    p.top_k = k;
                    p.top_p = top_p;
                    p.seed = static_cast<uint64_t>(n * 131 + k * 7 + variant);
                    Sampler fast(p);
                    PlainSampler plain(p);
                    for (int i = 0; i < 20; i++, draws++)
                        REQUIRE_MESSAGE(fast.sample(x.data(), n) == plain.sample(x.data(), n),
                                        "n " << n << " variant " << variant << " top-k " << k << " top-p " << top_p);
                }
            }
        }
    }
    MESSAGE(
        draws << " draws (n 1..3000; ties, all equal, -inf ids, one huge logit; top-k 0..n; top-p 1 and 0.95) equal "
                 "the sort-every-id sampler's");
}

TEST_CASE("context: recurrent decoding, window past max_seq_length, reset, fp16 storage") {
    const ModelConfig cfg = small_config();
    const auto model = model_from(random_spec(cfg, DType::f32, 7));
    Context ctx(*model);
    const std::vector<int32_t> seq = {3, 17, 5, 22, 0, 9, 11, 4, 8};  // longer than max_seq_length 6
    std::vector<float> last;
    for (size_t i = 0; i < seq.size(); i++) last = run(ctx, {seq[i]});
    // Upstream: the logits after 9 tokens are those of the last 6 run from zero state.
    Context fresh(*model);
    const std::vector<float> window = run(fresh, {seq.begin() + 3, seq.end()});
    CHECK(max_abs_diff(last, window) == 0.0f);
    CHECK(ctx.position() == 6);

    ctx.reset();
    Context other(*model);
    CHECK(max_abs_diff(run(ctx, {1, 2, 3}), run(other, {1, 2, 3})) == 0.0f);
    CHECK(ctx.state_bytes() == (10 * 2 + 8 * 3 + 3 + 4) * sizeof(float));
    CHECK_THROWS_WITH_AS(ctx.eval(23), doctest::Contains("not in the model's vocabulary"), Error);

    const auto half = model_from(random_spec(cfg, DType::f16, 7));
    Context h(*half);
    Context f(*model);
    const float diff = max_abs_diff(run(h, {1, 2, 3, 4}), run(f, {1, 2, 3, 4}));
    CHECK(diff > 0.0f);
    CHECK(diff < 0.05f);
    MESSAGE("window re-run equals a fresh run of the last 6 tokens; reset is exact; fp16 storage max |d| " << diff);
}

TEST_CASE("loading refuses models whose tensors do not match the config") {
    const ModelConfig cfg = small_config();
    ModelSpec missing = random_spec(cfg, DType::f32, 1);
    missing.tensors.erase(missing.tensors.begin() + 5);
    CHECK_THROWS_WITH_AS(model_from(missing), doctest::Contains("missing tensor"), Error);

    ModelSpec extra = random_spec(cfg, DType::f32, 1);
    extra.tensors.push_back({"layers.9.ssm.norm.weight", {12}, DType::f32, std::vector<float>(12, 1.0f), {}});
    CHECK_THROWS_WITH_AS(model_from(extra), doctest::Contains("unexpected tensor"), Error);

    ModelSpec wrong = random_spec(cfg, DType::f32, 1);
    for (SpecTensor& t : wrong.tensors)
        if (t.name == "layers.1.moe.layer.experts.2.w1.weight") {
            t.shape = {5, 12};
            t.values.resize(60);
        }
    CHECK_THROWS_WITH_AS(model_from(wrong), doctest::Contains("config implies"), Error);
    MESSAGE("missing, extra and mis-shaped tensors are each refused with a named error");
}
