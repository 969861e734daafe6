#include "runtime/evaluate.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "common/error.h"
#include "kernels_cpu/dense_ops.h"
#include "runtime/sampler.h"  // log_softmax

namespace itera {

namespace {

void check_window(const Model& model, int32_t window, const char* whose) {
    if (window < 1 || window > model.config.max_seq_length)
        throw Error("window " + std::to_string(window) + " is outside [1, max_seq_length " +
                    std::to_string(model.config.max_seq_length) + "] of the " + whose);
}

}  // namespace

void run_windows(Context& ctx, const int32_t* ids, size_t n, int32_t window, const WindowFn& on_window) {
    check_window(ctx.model(), window, "model");
    for (size_t start = 0; start < n; start += static_cast<size_t>(window)) {
        const auto count = static_cast<int32_t>(std::min(n - start, static_cast<size_t>(window)));
        ctx.reset();
        on_window(start, count, ctx.eval_all(ids + start, count));
    }
}

// ---- KL divergence and top-1 agreement ----

AgreementMeter::AgreementMeter(const Model& model, const std::vector<int32_t>& reference_row_of_id) {
    const size_t rows = static_cast<size_t>(model.vocab_rows());
    reference_row_.resize(rows);
    for (size_t r = 0; r < rows; r++) {
        const int32_t id = model.id_of(static_cast<int32_t>(r));
        const int32_t ref = id >= 0 && static_cast<size_t>(id) < reference_row_of_id.size()
                                ? reference_row_of_id[static_cast<size_t>(id)]
                                : -1;
        if (ref < 0) throw Error("token id " + std::to_string(id) + " is not in the reference's vocabulary");
        reference_row_[r] = ref;
    }
    picked_.resize(rows);
    log_probs_.resize(rows);
    reference_log_probs_.resize(rows);
}

void AgreementMeter::add(const float* logits, const float* reference_logits) {
    log_softmax(logits, static_cast<int32_t>(log_probs_.size()), log_probs_.data());
    add(logits, log_probs_.data(), reference_logits);
}

void AgreementMeter::add(const float* logits, const double* log_probs, const float* reference_logits) {
    const size_t rows = reference_row_.size();
    const auto n = static_cast<int32_t>(rows);
    for (size_t r = 0; r < rows; r++) picked_[r] = reference_logits[reference_row_[r]];
    log_softmax(picked_.data(), n, reference_log_probs_.data());
    const double* ref = reference_log_probs_.data();
    for (size_t r = 0; r < rows; r++) kld_ += std::exp(ref[r]) * (ref[r] - log_probs[r]);
    agree_ += argmax(logits, n) == argmax(picked_.data(), n);
    positions_++;
}

Agreement AgreementMeter::result() const {
    const double n = static_cast<double>(std::max<size_t>(positions_, 1));
    const double kld = kld_ / n;
    return {kld < 0 ? 0.0 : kld, static_cast<double>(agree_) / n};  // rounding can dip below 0; NaN stays
}

// ---- a kept reference ----

ReferenceLogits::ReferenceLogits(Context& reference, std::vector<int32_t> ids, int32_t window)
    : ids_(std::move(ids)),
      window_(window),
      rows_(reference.model().vocab_rows()),
      row_of_id_(reference.model().row_of_id) {
    logits_.resize(ids_.size() * static_cast<size_t>(rows_));
    run_windows(reference, ids_.data(), ids_.size(), window_, [&](size_t start, int32_t count, const float* logits) {
        std::copy(logits, logits + static_cast<size_t>(count) * static_cast<size_t>(rows_),
                  logits_.begin() + static_cast<std::ptrdiff_t>(start * static_cast<size_t>(rows_)));
    });
}

Agreement ReferenceLogits::compare(Context& model) const {
    AgreementMeter meter(model.model(), row_of_id_);
    const size_t rows = static_cast<size_t>(model.model().vocab_rows());
    run_windows(model, ids_.data(), ids_.size(), window_, [&](size_t start, int32_t count, const float* logits) {
        for (size_t i = 0; i < static_cast<size_t>(count); i++)
            meter.add(logits + i * rows, logits_.data() + (start + i) * static_cast<size_t>(rows_));
    });
    return meter.result();
}

// ---- perplexity ----

Perplexity perplexity(Context& ctx, const std::vector<int32_t>& ids, int32_t window, Context* reference) {
    const Model& model = ctx.model();
    if (ids.size() < 2) throw Error("fewer than 2 tokens to score");
    if (reference) check_window(reference->model(), window, "reference");
    std::unique_ptr<AgreementMeter> meter;
    if (reference) meter = std::make_unique<AgreementMeter>(model, reference->model().row_of_id);
    const size_t rows = static_cast<size_t>(model.vocab_rows());
    const size_t ref_rows = reference ? static_cast<size_t>(reference->model().vocab_rows()) : 0;
    std::vector<double> logp(rows);
    double nll = 0;
    // Every position but the last has a next token: windows over ids[0, n - 1).
    run_windows(ctx, ids.data(), ids.size() - 1, window, [&](size_t start, int32_t count, const float* logits) {
        const float* ref_logits = nullptr;
        if (reference) {
            reference->reset();
            ref_logits = reference->eval_all(ids.data() + start, count);
        }
        for (size_t i = 0; i < static_cast<size_t>(count); i++) {
            const float* row = logits + i * rows;
            const int32_t next = ids[start + i + 1], target = model.row_of(next);
            if (target < 0) throw Error("token id " + std::to_string(next) + " is not in the model's vocabulary");
            log_softmax(row, static_cast<int32_t>(rows), logp.data());
            nll -= logp[static_cast<size_t>(target)];
            if (meter) meter->add(row, logp.data(), ref_logits + i * ref_rows);
        }
    });
    Perplexity p;
    p.tokens = ids.size();
    p.scored = ids.size() - 1;
    p.ppl = std::exp(nll / static_cast<double>(p.scored));
    if (model.has_tokenizer) {
        const int32_t unk = model.tokenizer.unk();
        const auto n_unk = std::count(ids.begin(), ids.end(), unk);
        p.unk_fraction = static_cast<double>(n_unk) / static_cast<double>(ids.size());
    }
    if (meter) {
        p.has_reference = true;
        p.vs_reference = meter->result();
    }
    // A NaN or an infinity in the logits that matters reaches these sums (checked once, not per logit).
    if (!std::isfinite(p.ppl) || (meter && !std::isfinite(p.vs_reference.kld)))
        throw Error("the model produced non-finite logits (corrupt weights?)");
    return p;
}

}  // namespace itera
