// Context's window semantics (runtime/context.h) over the reference forward, for the tests of the
// fast paths: up to max_seq_length P tokens, one reference_step each; past P, each new token
// re-runs the last P tokens from zero state at positions 0..P-1, as upstream generation does.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/model.h"
#include "runtime/reference_forward.h"

namespace itera::test {

class ReferenceContext {
public:
    explicit ReferenceContext(const Model& model)
        : model_(model), state_(model.config), logits_(static_cast<size_t>(model.vocab_rows())) {}

    // The logits after `token`, one per vocabulary row.
    const std::vector<float>& eval(int32_t token) {
        window_.push_back(token);
        const size_t P = static_cast<size_t>(model_.config.max_seq_length);
        if (window_.size() <= P) {
            reference_step(model_, token, static_cast<int32_t>(window_.size()) - 1, state_, logits_.data());
            return logits_;
        }
        window_.erase(window_.begin());
        state_ = ReferenceState(model_.config);
        for (size_t i = 0; i < P; i++)
            reference_step(model_, window_[i], static_cast<int32_t>(i), state_, logits_.data());
        return logits_;
    }

    void reset() {
        window_.clear();
        state_ = ReferenceState(model_.config);
    }

private:
    const Model& model_;
    std::vector<int32_t> window_;
    ReferenceState state_;
    std::vector<float> logits_;
};

}  // namespace itera::test
