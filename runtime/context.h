// Per-sequence state: conv history [inner, K-1] and SSM state [N] per layer, so a new token costs
// O(1). Past max_seq_length the context reproduces upstream generation: it keeps the last
// max_seq_length tokens and re-runs them from zero state at positions 0..P-1 for each new token.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels_cpu/quant_ops.h"
#include "runtime/model.h"

namespace itera {

// Sees the input of every matrix product (calibration collects its statistics); nullptr in
// normal use.
struct ActivationObserver {
    virtual ~ActivationObserver() = default;
    virtual void observe(const Weight& w, const float* x) = 0;
};

class Context {
public:
    explicit Context(const Model& model);

    void reset();
    // Feeds the next token (a checkpoint token id); returns the logits predicting the token after
    // it, one per vocabulary row (Model::id_of maps a row to its id when the vocabulary was
    // trimmed), or nullptr when want_logits is false (prompt tokens before the last skip the head).
    const float* eval(int32_t token, bool want_logits = true);

    int32_t position() const { return static_cast<int32_t>(window_.size()); }
    size_t state_bytes() const { return (conv_.size() + ssm_.size()) * sizeof(float); }
    const Model& model() const { return model_; }
    void set_observer(ActivationObserver* observer) { observer_ = observer; }
    // The logits of the last eval(), or nullptr when it skipped them (or after reset()).
    const float* logits() const { return has_logits_ ? logits_.data() : nullptr; }

    // Saved state: everything a later eval() depends on, so a restored context continues exactly
    // as this one would. Little-endian, version 1:
    //    0  magic "ITERA\0ST"   8 version u32 = 1   12 reserved u32 = 0
    //   16  fingerprint u64: the model file's checksum (ItlFile::checksum)
    //   24  checksum u64: XXH3-64 of bytes [64, end)
    //   32  window u64 (<= max_seq_length)   40 conv u64   48 ssm u64   56 logits u64 (0 or vocab_size)
    //   64  window token ids i32[window], conv state f32[conv], ssm state f32[ssm], logits f32[logits]
    // restore() checks every field against this context's model before changing anything and
    // throws itera::Error on a mismatch, a wrong length or a corrupt blob.
    size_t saved_size() const;
    void save(uint8_t* out) const;  // writes saved_size() bytes
    void restore(const uint8_t* data, size_t size);

private:
    void zero_state();  // conv history and SSM state, not the window
    void step(int32_t token, int32_t pos, bool want_logits);
    const ActQ8* quantize_for(const Weight& w, const float* x, int32_t n, ActQ8* buffer);
    void matmul(const Weight& w, const float* x, const ActQ8* xq, float* y);
    void ssm_block(size_t layer, float* x);
    void channel_block(size_t layer, float* x);

    const Model& model_;
    std::vector<int32_t> window_;          // tokens fed since the state was last zero
    std::vector<size_t> conv_off_, ssm_off_;
    std::vector<float> conv_, ssm_;        // all layers' state, one allocation each
    // scratch, sized once for the widest layer
    std::vector<float> x_, a_, uz_, v_, delta_, bv_, y_, hidden_, mix_, router_, logits_;
    std::vector<ActQ8> xq_, hq_;           // quantized activations for block-format weights
    std::vector<int32_t> chosen_;
    std::vector<float> chosen_weight_;
    ActivationObserver* observer_ = nullptr;
    bool has_logits_ = false;              // logits_ holds the last eval's logits
};

// The model fingerprint a saved state was taken with; throws itera::Error when `data` is not a
// saved state of a version this reader knows.
uint64_t saved_state_fingerprint(const uint8_t* data, size_t size);

}  // namespace itera
