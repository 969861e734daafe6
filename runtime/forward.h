// The model's forward pass over a block of rows at once: each row is one token of a sequence at
// a known position, with a pointer to that sequence's recurrent state. Decode is one row; a
// prompt is its tokens as consecutive rows sharing one state (prefill); a batch is one row per
// sequence, each with its own state. Matrix products run over all rows (a GEMM: one weight read
// serves every row); the recurrent parts (conv history, SSM scan) run row by row in order, so a
// state shared by consecutive rows advances exactly as token-by-token decode would.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels_cpu/quant_ops.h"
#include "runtime/model.h"

namespace itera {

// Sees the input of every matrix product, one row at a time (calibration collects statistics);
// nullptr in normal use.
struct ActivationObserver {
    virtual ~ActivationObserver() = default;
    virtual void observe(const Weight& w, const float* x) = 0;
};

// Where each layer's state lives inside one sequence's state buffers.
struct StateLayout {
    explicit StateLayout(const ModelConfig& config);
    std::vector<size_t> conv_off, ssm_off;  // per layer
    size_t conv = 0, ssm = 0;               // floats per sequence
};

// One sequence's recurrent state, all layers: conv history [K-1, inner] (oldest first, time-major
// so the conv is a SIMD loop over channels) and SSM state [state] per layer, at StateLayout offsets.
struct SequenceState {
    float* conv;
    float* ssm;
};

class Forward {
public:
    explicit Forward(const Model& model);

    // Runs n rows: tokens[r] (checkpoint ids, already checked against the vocabulary) at
    // positions[r] with state states[r]. Rows that share a state must be consecutive and in
    // order. Logits are computed for rows [logits_from, n) only (n: none).
    void run(const int32_t* tokens, const int32_t* positions, const SequenceState* states, int32_t n,
             int32_t logits_from);
    // The logits of row logits_from + i of the last run, one per vocabulary row.
    const float* logits(int32_t i) const { return logits_.data() + static_cast<size_t>(i) * vocab_; }

    void set_observer(ActivationObserver* observer) { observer_ = observer; }
    const StateLayout& layout() const { return layout_; }

private:
    struct ProductInput;  // a product's input rows, and their q8 blocks once a block format reads them
    void reserve(int32_t n);
    bool dispatched(int32_t n) const;
    void matmul(const Weight& w, ProductInput& in, float* y);
    // Rows [out_from, n) (ssm_block) or [from, n) (channel_block) get the block's output; ssm_block
    // advances the state of all n.
    void ssm_block(size_t layer, const SequenceState* states, int32_t n, int32_t out_from);
    void scan(size_t layer, const SequenceState* states, int32_t n, int32_t out_from);
    void channel_block(size_t layer, int32_t from, int32_t n);
    void ffn(const FfnWeights& f, ProductInput& a, float* out);
    void experts(size_t layer, ProductInput& a, float* x);

    const Model& model_;
    StateLayout layout_;
    int32_t H_ = 0, inner_ = 0, width_ = 0, experts_ = 0, top_k_ = 0, vocab_ = 0, rows_ = 0;
    ActivationObserver* observer_ = nullptr;
    // Scratch, [rows, width] each, grown to the largest n seen (dt_: each row's step size, decay_:
    // its exp(dt A), hs_: its SSM state after the update).
    std::vector<float> x_, a_, uz_, v_, delta_, dt_, decay_, bv_, hs_, y_, mix_, hidden_, router_, logits_;
    std::vector<float> gathered_, gathered_out_, route_weight_;
    std::vector<int32_t> chosen_, route_rows_;
    std::vector<float> chosen_weight_;
    std::vector<ActQ8> xq_, gq_, hq_;  // q8 blocks of a_, v_ or y_; of gathered_; of hidden_
};

}  // namespace itera
