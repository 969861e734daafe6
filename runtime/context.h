// One sequence on a backend (runtime/backend.h): its window (runtime/window.h), its logits, and
// its saved state. Up to max_seq_length tokens each new token costs O(1) (conv history [K-1, inner]
// and SSM state [N] per layer); past it the context reproduces upstream generation: it keeps the
// last max_seq_length tokens and re-runs them from zero state at positions 0..P-1 for each new token.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/backend.h"
#include "runtime/model.h"
#include "runtime/window.h"

namespace itera {

class Context {
public:
    explicit Context(const Model& model);  // on the CPU
    // On `backend`, a backend of this model (its slot 0 holds the sequence; runtime/devices.h
    // make_backend picks one by device).
    Context(const Model& model, std::unique_ptr<Backend> backend);

    void reset();
    // Feeds the next token (a checkpoint token id); returns the logits predicting the token after
    // it, one per vocabulary row (Model::id_of maps a row to its id when the vocabulary was
    // trimmed), or nullptr when want_logits is false (prompt tokens before the last skip the head).
    const float* eval(int32_t token, bool want_logits = true);
    // Feeds n >= 1 tokens in order, as n calls of eval() would, but runs them through the matrix
    // products together (a prompt's prefill); returns the last token's logits (or nullptr).
    const float* eval_tokens(const int32_t* tokens, int32_t n, bool want_logits = true);
    // Feeds n tokens that fit in the window (position() + n <= max_seq_length, else itera::Error)
    // through the products together, and returns the logits after each of them: [n][vocab rows],
    // valid until the next eval. Scoring a text this way costs one prefill per window.
    const float* eval_all(const int32_t* tokens, int32_t n);

    int32_t position() const { return window_.size(); }
    size_t state_bytes() const { return backend_->state_floats() * sizeof(float); }
    const Model& model() const { return model_; }
    const Backend& backend() const { return *backend_; }
    // CPU backend only (calibration); others throw itera::Error.
    void set_observer(ActivationObserver* observer) { backend_->set_observer(observer); }
    // The logits of the last eval(), or nullptr when it skipped them (or after reset()).
    const float* logits() const { return has_logits_ ? logits_ : nullptr; }

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
    // Feeds checked tokens through the window; returns the backend's logits rows for none (nullptr),
    // the last or every one of them.
    const float* feed(const int32_t* tokens, int32_t n, LogitRows logits);
    void check_ids(const int32_t* tokens, int32_t n) const;  // throws for an id not in the vocabulary

    const Model& model_;
    std::unique_ptr<Backend> backend_;
    Window window_;
    const float* logits_ = nullptr;  // into the backend (or restored_logits_), until the next eval
    std::vector<float> restored_logits_;
    bool has_logits_ = false;  // logits_ holds the last eval's logits
};

// The model fingerprint a saved state was taken with; throws itera::Error when `data` is not a
// saved state of a version this reader knows.
uint64_t saved_state_fingerprint(const uint8_t* data, size_t size);

}  // namespace itera
