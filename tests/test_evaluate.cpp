// runtime/evaluate: the windows a text is read in, KL divergence and top-1 agreement against a
// reference, a kept reference, and perplexity, each against the plain computation written out
// here (token by token from zero state, log-softmax in double).
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "common/error.h"
#include "runtime/context.h"
#include "runtime/evaluate.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "tests/model_fixtures.h"

using namespace itera;

namespace {

// 23 ids; max_seq_length 6.
const std::vector<int32_t> kIds = {3, 7, 7, 12, 0, 22, 5, 9, 1, 14, 2, 2, 8, 19, 4, 6, 11};

// The logits after every id, each window of `window` ids from zero state, one token at a time.
std::vector<std::vector<float>> windowed_logits(const Model& model, const std::vector<int32_t>& ids, size_t window) {
    Context ctx(model);
    std::vector<std::vector<float>> out;
    for (size_t t = 0; t < ids.size(); t++) {
        if (t % window == 0) ctx.reset();
        const float* l = ctx.eval(ids[t]);
        out.emplace_back(l, l + model.vocab_rows());
    }
    return out;
}

std::vector<double> log_probs(const std::vector<float>& logits) {
    std::vector<double> out(logits.size());
    log_softmax(logits.data(), static_cast<int32_t>(logits.size()), out.data());
    return out;
}

// KL(ref || model) and top-1 agreement at one position over the model's rows (ids `row_ids`).
void agreement_at(const std::vector<float>& model, const std::vector<float>& ref, const std::vector<int32_t>& row_ids,
                  double* kld, int* agree) {
    std::vector<float> picked;
    for (int32_t id : row_ids) picked.push_back(ref[static_cast<size_t>(id)]);
    const std::vector<double> lm = log_probs(model), lr = log_probs(picked);
    for (size_t r = 0; r < lm.size(); r++) *kld += std::exp(lr[r]) * (lr[r] - lm[r]);
    size_t best_m = 0, best_r = 0;
    for (size_t r = 1; r < lm.size(); r++) {
        if (model[r] > model[best_m]) best_m = r;
        if (picked[r] > picked[best_r]) best_r = r;
    }
    *agree += best_m == best_r;
}

ModelSpec with_tokenizer(ModelSpec spec) {
    spec.has_tokenizer = true;
    spec.tokenizer.tokens = {"<PAD>", "<UNK>"};
    for (int32_t i = 2; i < spec.config.vocab_size; i++) spec.tokenizer.tokens.push_back("w" + std::to_string(i));
    return spec;
}

}  // namespace

TEST_CASE("run_windows: each window from zero state, every position's logits, as token-by-token decode") {
    // Every storage type: the converter measures models in each of them this way.
    for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0})
        for (int32_t window : {1, 4, 6}) {
            CAPTURE(dtype_name(dtype));
            CAPTURE(window);
            const auto model = test::model_from(test::random_spec(test::small_config(), dtype, 5));
            const size_t V = static_cast<size_t>(model->vocab_rows());
            const auto want = windowed_logits(*model, kIds, static_cast<size_t>(window));
            Context ctx(*model);
            std::vector<std::pair<size_t, int32_t>> seen;
            float diff = 0;
            run_windows(ctx, kIds.data(), kIds.size(), window, [&](size_t start, int32_t count, const float* logits) {
                seen.emplace_back(start, count);
                for (size_t i = 0; i < static_cast<size_t>(count); i++)
                    diff = test::worse(
                        diff,
                        test::max_abs_diff(std::vector<float>(logits + i * V, logits + (i + 1) * V), want[start + i]));
            });
            CHECK(diff == 0.0f);
            REQUIRE(seen.size() == (kIds.size() + static_cast<size_t>(window) - 1) / static_cast<size_t>(window));
            for (size_t w = 0; w < seen.size(); w++) {
                CHECK(seen[w].first == w * static_cast<size_t>(window));
                CHECK(seen[w].second == std::min<int32_t>(window, static_cast<int32_t>(kIds.size() - seen[w].first)));
            }
        }
    const auto model = test::model_from(test::random_spec(test::small_config(), DType::f32, 5));
    Context ctx(*model);
    const WindowFn nothing = [](size_t, int32_t, const float*) {};
    CHECK_THROWS_WITH_AS(run_windows(ctx, kIds.data(), kIds.size(), 0, nothing), doctest::Contains("outside [1"),
                         Error);
    CHECK_THROWS_WITH_AS(run_windows(ctx, kIds.data(), kIds.size(), 7, nothing), doctest::Contains("max_seq_length 6"),
                         Error);
    MESSAGE(
        "fp32, fp16, q8, q4, nf4, q3 and q2 models, windows of 1, 4 and 6 over 17 ids: the windows' logits "
        "equal token-by-token decode bit for bit; windows 0 and 7 (> max_seq_length 6) refused");
}

TEST_CASE("AgreementMeter and ReferenceLogits: KL and top-1 over the model's rows, the reference renormalized") {
    const ModelSpec ref_spec = test::random_spec(test::small_config(), DType::f32, 6);
    ModelSpec trimmed_spec = test::random_spec(test::small_config(), DType::q8_0, 6);  // the same weights in q8
    // The model keeps 20 of the 23 ids (rows of the reference renormalized over them).
    const std::vector<int32_t> kept = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22};
    trimmed_spec.config.vocab_size = static_cast<int32_t>(kept.size());
    trimmed_spec.config.vocab_ids = kept;
    for (SpecTensor& t : trimmed_spec.tensors)
        if (t.name == "embedding.weight" || t.name == "lm_head.weight") {
            const size_t H = static_cast<size_t>(t.shape[1]);
            std::vector<float> rows;
            for (int32_t id : kept)
                rows.insert(rows.end(), t.values.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(id) * H),
                            t.values.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(id + 1) * H));
            t.values = std::move(rows);
            t.shape[0] = static_cast<int64_t>(kept.size());
        }
    const auto ref = test::model_from(ref_spec);
    const auto model = test::model_from(trimmed_spec);
    std::vector<int32_t> ids;  // ids the trimmed model holds
    for (int32_t id : kIds)
        if (model->row_of(id) >= 0) ids.push_back(id);
    const auto ref_logits = windowed_logits(*ref, ids, 6), model_logits = windowed_logits(*model, ids, 6);
    double kld = 0;
    int agree = 0;
    AgreementMeter meter(*model, ref->row_of_id);
    for (size_t t = 0; t < ids.size(); t++) {
        agreement_at(model_logits[t], ref_logits[t], kept, &kld, &agree);
        meter.add(model_logits[t].data(), ref_logits[t].data());
    }
    const double n = static_cast<double>(ids.size());
    CHECK(meter.positions() == ids.size());
    CHECK(meter.result().kld == doctest::Approx(kld / n).epsilon(1e-12));
    CHECK(meter.result().top1 == static_cast<double>(agree) / n);
    CHECK(meter.result().kld > 0.0);
    CHECK(meter.result().top1 > 0.5);

    // Kept, then compared: the same numbers; the reference against itself: 0 and 1.
    Context ref_ctx(*ref), model_ctx(*model);
    const ReferenceLogits kept_ref(ref_ctx, ids, 6);
    CHECK(kept_ref.tokens() == ids.size());
    const Agreement a = kept_ref.compare(model_ctx);
    CHECK(a.kld == doctest::Approx(kld / n).epsilon(1e-12));
    CHECK(a.top1 == static_cast<double>(agree) / n);
    const Agreement self = kept_ref.compare(ref_ctx);
    CHECK(self.kld == 0.0);
    CHECK(self.top1 == 1.0);
    // A model with an id the reference lacks cannot be compared with it.
    CHECK_THROWS_WITH_AS(AgreementMeter(*ref, model->row_of_id),
                         doctest::Contains("token id 10 is not in the reference"), Error);
    MESSAGE("a trimmed q8 model (20 of 23 ids) against an FP32 reference over "
            << ids.size() << " positions: KL " << a.kld << ", top-1 " << a.top1
            << " as computed by hand; self 0 and 1");
}

TEST_CASE("perplexity: every position against the next token, windows from zero state, <UNK> counted") {
    const auto model = test::model_from(with_tokenizer(test::random_spec(test::small_config(), DType::f32, 8)));
    const auto ref = test::model_from(with_tokenizer(test::random_spec(test::small_config(), DType::f32, 9)));
    for (int32_t window : {6, 4}) {
        CAPTURE(window);
        const auto logits = windowed_logits(*model, kIds, static_cast<size_t>(window));
        const auto ref_logits = windowed_logits(*ref, kIds, static_cast<size_t>(window));
        std::vector<int32_t> all_ids(static_cast<size_t>(model->vocab_rows()));
        for (int32_t i = 0; i < model->vocab_rows(); i++) all_ids[static_cast<size_t>(i)] = i;
        double nll = 0, kld = 0;
        int agree = 0;
        for (size_t t = 0; t + 1 < kIds.size(); t++) {
            nll -= log_probs(logits[t])[static_cast<size_t>(kIds[t + 1])];
            agreement_at(logits[t], ref_logits[t], all_ids, &kld, &agree);
        }
        const double scored = static_cast<double>(kIds.size() - 1);
        Context ctx(*model), ref_ctx(*ref);
        const Perplexity alone = perplexity(ctx, kIds, window);
        CHECK(alone.tokens == kIds.size());
        CHECK(alone.scored == kIds.size() - 1);
        CHECK(alone.ppl == doctest::Approx(std::exp(nll / scored)).epsilon(1e-12));
        CHECK(alone.unk_fraction == doctest::Approx(1.0 / static_cast<double>(kIds.size())));  // one id 1
        CHECK(!alone.has_reference);
        const Perplexity vs = perplexity(ctx, kIds, window, &ref_ctx);
        CHECK(vs.ppl == alone.ppl);
        CHECK(vs.has_reference);
        CHECK(vs.vs_reference.kld == doctest::Approx(kld / scored).epsilon(1e-12));
        CHECK(vs.vs_reference.top1 == static_cast<double>(agree) / scored);
    }
    Context ctx(*model);
    CHECK_THROWS_WITH_AS(perplexity(ctx, {3}, 6), doctest::Contains("fewer than 2 tokens"), Error);
    CHECK_THROWS_WITH_AS(perplexity(ctx, kIds, 7), doctest::Contains("max_seq_length 6"), Error);
    CHECK_THROWS_WITH_AS(perplexity(ctx, {3, 4, 23}, 6), doctest::Contains("token id 23"), Error);
    ModelConfig shorter = test::small_config();
    shorter.max_seq_length = 4;
    const auto short_ref = test::model_from(test::random_spec(shorter, DType::f32, 10));
    Context short_ctx(*short_ref);
    CHECK_THROWS_WITH_AS(perplexity(ctx, kIds, 6, &short_ctx), doctest::Contains("of the reference"), Error);
    MESSAGE(
        "windows of 6 and 4 over 17 ids: perplexity, <UNK> share, KL and top-1 against a reference as computed "
        "by hand; too few tokens, a window past either model's max_seq_length and an unknown last id refused");
}
