// Many independent sequences on one backend (runtime/backend.h), one slot each. eval() feeds one
// token to every sequence and runs them through the model as one block of rows (a GEMM per weight
// instead of one GEMV per sequence); run() feeds some of them any number of tokens together (a
// new prompt's prefill beside the others' next token: continuous batching). Each sequence keeps
// its own window (runtime/window.h) and behaves exactly like a Context fed the same tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/backend.h"
#include "runtime/model.h"
#include "runtime/window.h"

namespace itera {

class Batch {
public:
    // On the CPU, with `threads` threads over contiguous ranges of the sequences.
    Batch(const Model& model, int32_t sequences, int32_t threads);
    // On `backend`, a backend of this model: one sequence per slot.
    Batch(const Model& model, std::unique_ptr<Backend> backend);

    int32_t size() const { return static_cast<int32_t>(windows_.size()); }
    const Model& model() const { return model_; }
    const Backend& backend() const { return *backend_; }

    // Feeds tokens[i] (a checkpoint token id) to sequence i, for every sequence; afterwards
    // logits(i) predicts the token after it. Throws itera::Error (changing nothing) for a token
    // outside the vocabulary.
    void eval(const int32_t* tokens);

    // Sequence `seq` gets ids[0, n), n >= 1, logits after the last.
    struct Feed {
        int32_t seq = 0;
        const int32_t* ids = nullptr;
        int32_t n = 0;
    };
    // Runs the feeds together, each on a different sequence; the others are untouched. Throws
    // itera::Error (changing nothing) for a sequence out of range or fed twice, an empty feed or a
    // token outside the vocabulary.
    void run(const Feed* feeds, int32_t n);

    // The logits after sequence i's last token of the last eval() or run(), one per vocabulary
    // row; nullptr when that call did not feed it (and after reset(i)). Valid until the next call
    // that changes the batch.
    const float* logits(int32_t i) const;
    // Clears one sequence (empty window; its state is zeroed by its next feed).
    void reset(int32_t i);
    int32_t position(int32_t i) const { return windows_[static_cast<size_t>(i)].size(); }
    // Recurrent state per sequence, bytes (conv history + SSM state of every layer).
    size_t state_bytes() const { return backend_->state_floats() * sizeof(float); }

private:
    void check_ids(int32_t seq, const int32_t* ids, int32_t n) const;

    const Model& model_;
    std::unique_ptr<Backend> backend_;
    std::vector<Window> windows_;
    std::vector<Span> spans_;       // of the last run
    std::vector<int32_t> span_of_;  // per sequence: its span in the last run, or -1
    std::vector<uint64_t> fed_in_;  // per sequence: the run() that last fed it (duplicate check)
    uint64_t runs_ = 0;
};

}  // namespace itera
