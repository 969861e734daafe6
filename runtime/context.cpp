#include "runtime/context.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "format/itl_layout.h"
#include "kernels_cpu/quant_ops.h"
#include "kernels_cpu/ref_ops.h"

namespace itera {

Context::Context(const Model& model) : model_(model), forward_(model) {
    conv_.assign(forward_.layout().conv, 0.0f);
    ssm_.assign(forward_.layout().ssm, 0.0f);
    window_.reserve(static_cast<size_t>(model.config.max_seq_length));
}

void Context::reset() {
    zero_state();
    window_.clear();
    has_logits_ = false;
}

void Context::zero_state() {
    std::fill(conv_.begin(), conv_.end(), 0.0f);
    std::fill(ssm_.begin(), ssm_.end(), 0.0f);
}

void Context::run_window(size_t from, int32_t logit_rows) {
    const int32_t n = static_cast<int32_t>(window_.size() - from);
    forward_.run_sequence(window_.data(), static_cast<int32_t>(from), n, {conv_.data(), ssm_.data()}, logit_rows);
    logits_ = logit_rows > 0 ? forward_.logits(logit_rows - 1) : nullptr;
    has_logits_ = logit_rows > 0;
}

void Context::check_ids(const int32_t* tokens, int32_t n) const {
    for (int32_t i = 0; i < n; i++)
        if (model_.row_of(tokens[i]) < 0)
            throw Error("token id " + std::to_string(tokens[i]) + " is not in the model's vocabulary");
}

const float* Context::eval_all(const int32_t* tokens, int32_t n) {
    check_ids(tokens, n);
    if (n <= 0) throw Error("eval_all needs at least one token");
    if (window_.size() + static_cast<size_t>(n) > static_cast<size_t>(model_.config.max_seq_length))
        throw Error(std::to_string(n) + " tokens after " + std::to_string(window_.size()) + " exceed max_seq_length " +
                    std::to_string(model_.config.max_seq_length));
    const size_t from = window_.size();
    window_.insert(window_.end(), tokens, tokens + n);
    run_window(from, n);
    return forward_.logits(0);
}

const float* Context::eval(int32_t token, bool want_logits) { return eval_tokens(&token, 1, want_logits); }

const float* Context::eval_tokens(const int32_t* tokens, int32_t n, bool want_logits) {
    const size_t P = static_cast<size_t>(model_.config.max_seq_length);
    check_ids(tokens, n);
    int32_t i = 0;
    // Tokens that fit the window go through together.
    if (window_.size() < P) {
        const size_t from = window_.size();
        const int32_t fit = static_cast<int32_t>(std::min(P - from, static_cast<size_t>(n)));
        window_.insert(window_.end(), tokens, tokens + fit);
        run_window(from, want_logits && fit == n ? 1 : 0);
        i = fit;
    }
    // Upstream semantics past max_seq_length: slide the window and recompute it from zero state.
    for (; i < n; i++) {
        std::rotate(window_.begin(), window_.begin() + 1, window_.end());
        window_.back() = tokens[i];
        zero_state();
        run_window(0, want_logits && i + 1 == n ? 1 : 0);
    }
    return logits();
}

size_t Context::conv_index(size_t layer, size_t channel, size_t tap) const {
    const size_t inner = static_cast<size_t>(model_.config.layers[layer].inner);
    return forward_.layout().conv_off[layer] + tap * inner + channel;
}

// ---- saved state (layout in context.h) ----

namespace {

constexpr uint8_t kStateMagic[8] = {'I', 'T', 'E', 'R', 'A', 0, 'S', 'T'};
constexpr uint32_t kStateVersion = 1;
constexpr size_t kStateHeaderBytes = 64;

void store_f32(uint8_t* p, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    store_le(p, bits, 4);
}

float load_f32(const uint8_t* p) {
    const uint32_t bits = static_cast<uint32_t>(load_le(p, 4));
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
}

void check_state_header(const uint8_t* data, size_t size) {
    if (size < kStateHeaderBytes)
        throw Error("saved state is truncated: " + std::to_string(size) + " bytes, smaller than its 64-byte header");
    if (std::memcmp(data, kStateMagic, sizeof kStateMagic) != 0)
        throw Error("not a saved Itera context state (bad magic)");
    const uint32_t version = static_cast<uint32_t>(load_le(data + 8, 4));
    if (version != kStateVersion)
        throw Error("unsupported saved state version " + std::to_string(version) + " (this reader supports " +
                    std::to_string(kStateVersion) + ")");
    if (load_le(data + 12, 4) != 0) throw Error("corrupt saved state: reserved field is not zero");
}

}  // namespace

uint64_t saved_state_fingerprint(const uint8_t* data, size_t size) {
    check_state_header(data, size);
    return load_le(data + 16, 8);
}

size_t Context::saved_size() const {
    const size_t logits = has_logits_ ? static_cast<size_t>(model_.config.vocab_size) : 0;
    return kStateHeaderBytes + 4 * (window_.size() + conv_.size() + ssm_.size() + logits);
}

void Context::save(uint8_t* out) const {
    const size_t logits = has_logits_ ? static_cast<size_t>(model_.config.vocab_size) : 0;
    std::memcpy(out, kStateMagic, sizeof kStateMagic);
    store_le(out + 8, kStateVersion, 4);
    store_le(out + 12, 0, 4);
    store_le(out + 16, model_.file->checksum(), 8);
    store_le(out + 32, window_.size(), 8);
    store_le(out + 40, conv_.size(), 8);
    store_le(out + 48, ssm_.size(), 8);
    store_le(out + 56, logits, 8);
    uint8_t* p = out + kStateHeaderBytes;
    auto put = [&](float v) {
        store_f32(p, v);
        p += 4;
    };
    for (int32_t t : window_) {
        store_le(p, static_cast<uint32_t>(t), 4);
        p += 4;
    }
    // Conv history in the saved layout [inner, K-1] per layer (oldest first).
    for (size_t l = 0; l < model_.config.layers.size(); l++)
        for (size_t d = 0; d < static_cast<size_t>(model_.config.layers[l].inner); d++)
            for (size_t j = 0; j + 1 < static_cast<size_t>(model_.config.layers[l].conv_kernel); j++)
                put(conv_[conv_index(l, d, j)]);
    for (float v : ssm_) put(v);
    for (size_t i = 0; i < logits; i++) put(logits_[i]);
    const size_t payload = static_cast<size_t>(p - out) - kStateHeaderBytes;
    store_le(out + 24, XXH3_64bits(out + kStateHeaderBytes, payload), 8);
}

void Context::restore(const uint8_t* data, size_t size) {
    const ModelConfig& cfg = model_.config;
    const uint64_t fingerprint = saved_state_fingerprint(data, size);
    if (fingerprint != model_.file->checksum())
        throw Error("saved state belongs to a different model (fingerprint " + std::to_string(fingerprint) +
                    ", this model " + std::to_string(model_.file->checksum()) + ")");
    const uint64_t window = load_le(data + 32, 8), conv = load_le(data + 40, 8), ssm = load_le(data + 48, 8),
                   logits = load_le(data + 56, 8);
    // Each count is checked against this model before the sizes are added, so nothing overflows.
    if (window > static_cast<uint64_t>(cfg.max_seq_length))
        throw Error("corrupt saved state: " + std::to_string(window) + " window tokens, more than max_seq_length " +
                    std::to_string(cfg.max_seq_length));
    if (conv != conv_.size() || ssm != ssm_.size())
        throw Error("corrupt saved state: " + std::to_string(conv) + " conv and " + std::to_string(ssm) +
                    " ssm values, this model has " + std::to_string(conv_.size()) + " and " +
                    std::to_string(ssm_.size()));
    if (logits != 0 && logits != static_cast<size_t>(model_.config.vocab_size))
        throw Error("corrupt saved state: " + std::to_string(logits) + " logits, the vocabulary is " +
                    std::to_string(model_.config.vocab_size));
    const uint64_t expected = kStateHeaderBytes + 4 * (window + conv + ssm + logits);
    if (size != expected)
        throw Error("saved state is " + std::to_string(size) + " bytes, its header implies " +
                    std::to_string(expected));
    if (XXH3_64bits(data + kStateHeaderBytes, size - kStateHeaderBytes) != load_le(data + 24, 8))
        throw Error("corrupt saved state: checksum mismatch");
    const uint8_t* p = data + kStateHeaderBytes;
    auto token = [&](uint64_t i) { return static_cast<int32_t>(static_cast<uint32_t>(load_le(p + 4 * i, 4))); };
    for (uint64_t i = 0; i < window; i++)
        if (model_.row_of(token(i)) < 0)
            throw Error("corrupt saved state: token id " + std::to_string(token(i)) +
                        " is not in the model's vocabulary");
    restored_logits_.resize(logits);  // the one allocation, before anything changes
    // Everything is checked: from here on nothing throws (window_ has max_seq_length reserved).
    window_.resize(window);
    for (uint64_t i = 0; i < window; i++) window_[i] = token(i);
    p += 4 * window;
    auto get = [&] {
        const float v = load_f32(p);
        p += 4;
        return v;
    };
    for (size_t l = 0; l < model_.config.layers.size(); l++)
        for (size_t d = 0; d < static_cast<size_t>(model_.config.layers[l].inner); d++)
            for (size_t j = 0; j + 1 < static_cast<size_t>(model_.config.layers[l].conv_kernel); j++)
                conv_[conv_index(l, d, j)] = get();
    for (float& v : ssm_) v = get();
    has_logits_ = logits != 0;
    for (float& v : restored_logits_) v = get();
    logits_ = has_logits_ ? restored_logits_.data() : nullptr;
}

}  // namespace itera
