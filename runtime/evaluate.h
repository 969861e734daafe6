// How a model reads a text when it is measured, in one place. Upstream, `itera-run ppl` and the
// converter's measurements (calibration, pruning sensitivity, the --target-size search) all run
// a text in non-overlapping windows of W tokens, each from zero state, and compare next-token
// distributions position by position:
//
//   run_windows      the windows, every position's logits from one pass per window
//   AgreementMeter   KL(reference || model) and top-1 agreement, over the model's vocabulary rows
//                    with the reference renormalized over them
//   ReferenceLogits  a reference's logits over a text, kept, to compare many models with it
//   perplexity       exp(mean NLL) as `itera-run ppl` prints it, optionally against a reference
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/context.h"
#include "runtime/model.h"

namespace itera {

// Called once per window with the logits after each of ids[start, start + count): [count][vocab
// rows], valid during the call.
using WindowFn = std::function<void(size_t start, int32_t count, const float* logits)>;

// Runs ids[0, n) through `ctx` in non-overlapping windows of `window` tokens (1 <= window <=
// max_seq_length, else itera::Error), each from zero state (Context::reset, then Context::eval_all).
// An observer set on the context sees every row of every product, in token order per matrix.
void run_windows(Context& ctx, const int32_t* ids, size_t n, int32_t window, const WindowFn& on_window);

struct Agreement {
    double kld = 0;   // mean KL(reference || model) in nats over the positions, clamped at 0
    double top1 = 0;  // fraction of positions where both argmaxes agree
};

// Accumulates KL(reference || model) and top-1 agreement position by position. Both
// distributions are taken over the model's vocabulary rows (a trimmed model has fewer than its
// reference), the reference's renormalized over them.
class AgreementMeter {
public:
    // `reference_row_of_id`: the reference model's row of every token id (Model::row_of_id).
    // Throws itera::Error when the model has an id the reference lacks.
    AgreementMeter(const Model& model, const std::vector<int32_t>& reference_row_of_id);

    // One position: the model's logits [its rows] and the reference's [the reference's rows].
    void add(const float* logits, const float* reference_logits);
    // The same, with the model's log-probabilities already computed (log_softmax of `logits`).
    void add(const float* logits, const double* log_probs, const float* reference_logits);

    Agreement result() const;
    size_t positions() const { return positions_; }

private:
    std::vector<int32_t> reference_row_;  // of each model row
    std::vector<float> picked_;           // the reference's logits of the model's rows
    std::vector<double> log_probs_, reference_log_probs_;
    double kld_ = 0;
    size_t agree_ = 0, positions_ = 0;
};

// A reference model's logits at every position of `ids` (windows of `window` tokens), kept so
// that many models can be compared with it without running it again. Holds ids.size() x vocab
// rows floats: the caller bounds ids.
class ReferenceLogits {
public:
    ReferenceLogits(Context& reference, std::vector<int32_t> ids, int32_t window);

    // KL and top-1 agreement of `model` with the reference over the same windows of the same ids.
    Agreement compare(Context& model) const;
    size_t tokens() const { return ids_.size(); }

private:
    std::vector<int32_t> ids_;
    int32_t window_ = 0, rows_ = 0;
    std::vector<int32_t> row_of_id_;
    std::vector<float> logits_;  // [ids][rows_]
};

struct Perplexity {
    double ppl = 0;           // exp(mean NLL over the scored positions)
    size_t tokens = 0;        // ids given
    size_t scored = 0;        // positions scored: every one with a next token (tokens - 1)
    double unk_fraction = 0;  // share of the ids that are the tokenizer's <UNK> (0 without one)
    bool has_reference = false;
    Agreement vs_reference;  // with a reference: over the same positions
};

// Scores ids as upstream and `itera-run ppl` do: windows of `window` tokens from zero state, every
// position against the token after it (a window's last position against the next window's first
// token). With `reference`, the same windows run on it and each position's distributions are
// compared (AgreementMeter). Throws itera::Error for fewer than 2 ids, a window outside [1,
// max_seq_length] of either model, an id the reference lacks, or a non-finite result (broken
// weights).
Perplexity perplexity(Context& ctx, const std::vector<int32_t>& ids, int32_t window, Context* reference = nullptr);

}  // namespace itera
