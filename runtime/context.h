// Per-sequence state: conv history [inner, K-1] and SSM state [N] per layer, so a new token costs
// O(1). Past max_seq_length the context reproduces upstream generation: it keeps the last
// max_seq_length tokens and re-runs them from zero state at positions 0..P-1 for each new token.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/model.h"

namespace itera {

class Context {
public:
    explicit Context(const Model& model);

    void reset();
    // Feeds the next token; returns the logits [vocab_size] predicting the token after it, or
    // nullptr when want_logits is false (prompt tokens before the last skip the LM head).
    const float* eval(int32_t token, bool want_logits = true);

    int32_t position() const { return static_cast<int32_t>(window_.size()); }
    size_t state_bytes() const { return (conv_.size() + ssm_.size()) * sizeof(float); }
    const Model& model() const { return model_; }

private:
    void step(int32_t token, int32_t pos, bool want_logits);
    void ssm_block(size_t layer, float* x);
    void channel_block(size_t layer, float* x);

    const Model& model_;
    std::vector<int32_t> window_;          // tokens fed since the state was last zero
    std::vector<size_t> conv_off_, ssm_off_;
    std::vector<float> conv_, ssm_;        // all layers' state, one allocation each
    // scratch, sized once for the widest layer
    std::vector<float> x_, a_, uz_, v_, delta_, y_, hidden_, mix_, router_, logits_;
    std::vector<int32_t> chosen_;
    std::vector<float> chosen_weight_;
};

}  // namespace itera
