#include "runtime/context.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "format/itl_layout.h"
#include "runtime/cpu_backend.h"

namespace itera {

Context::Context(const Model& model) : Context(model, make_cpu_backend(model, BackendOptions{})) {}

Context::Context(const Model& model, std::unique_ptr<Backend> backend)
    : model_(model), backend_(std::move(backend)), window_(model.config.max_seq_length) {}

void Context::reset() {
    window_.clear();
    has_logits_ = false;
}

void Context::check_ids(const int32_t* tokens, int32_t n) const {
    if (n < 1) throw Error("no tokens to evaluate");
    for (int32_t i = 0; i < n; i++)
        if (model_.row_of(tokens[i]) < 0)
            throw Error("token id " + std::to_string(tokens[i]) + " is not in the model's vocabulary");
}

const float* Context::feed(const int32_t* tokens, int32_t n, LogitRows logits) {
    const Span span = window_.advance(tokens, n, logits);
    backend_->run(&span, 1);
    const float* rows = backend_->logits(0);
    // logits() is the last token's: the last row of `all`.
    logits_ = rows && logits == LogitRows::all ? rows + static_cast<size_t>(n - 1) * model_.config.vocab_size : rows;
    has_logits_ = logits_ != nullptr;
    return rows;
}

const float* Context::eval(int32_t token, bool want_logits) { return eval_tokens(&token, 1, want_logits); }

const float* Context::eval_tokens(const int32_t* tokens, int32_t n, bool want_logits) {
    check_ids(tokens, n);
    feed(tokens, n, want_logits ? LogitRows::last : LogitRows::none);
    return logits();
}

const float* Context::eval_all(const int32_t* tokens, int32_t n) {
    check_ids(tokens, n);
    return feed(tokens, n, LogitRows::all);  // the window refuses tokens that do not fit
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
    return kStateHeaderBytes + 4 * (window_.tokens().size() + backend_->state_floats() + logits);
}

void Context::save(uint8_t* out) const {
    const size_t logits = has_logits_ ? static_cast<size_t>(model_.config.vocab_size) : 0;
    // The backend's state in the saved layout (zeros when the next span will zero it anyway).
    std::vector<float> state(backend_->state_floats(), 0.0f);
    if (!window_.fresh()) backend_->read_state(0, state.data());
    const StateLayout layout(model_.config);
    std::memcpy(out, kStateMagic, sizeof kStateMagic);
    store_le(out + 8, kStateVersion, 4);
    store_le(out + 12, 0, 4);
    store_le(out + 16, model_.file->checksum(), 8);
    store_le(out + 32, window_.tokens().size(), 8);
    store_le(out + 40, layout.conv, 8);
    store_le(out + 48, layout.ssm, 8);
    store_le(out + 56, logits, 8);
    uint8_t* p = out + kStateHeaderBytes;
    auto put = [&](float v) {
        store_f32(p, v);
        p += 4;
    };
    for (int32_t t : window_.tokens()) {
        store_le(p, static_cast<uint32_t>(t), 4);
        p += 4;
    }
    for (float v : state) put(v);
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
    const StateLayout layout(cfg);
    if (conv != layout.conv || ssm != layout.ssm)
        throw Error("corrupt saved state: " + std::to_string(conv) + " conv and " + std::to_string(ssm) +
                    " ssm values, this model has " + std::to_string(layout.conv) + " and " +
                    std::to_string(layout.ssm));
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
    // The allocations, before anything changes.
    std::vector<int32_t> tokens(window);
    std::vector<float> state(conv + ssm);
    std::vector<float> restored(logits);
    for (uint64_t i = 0; i < window; i++) tokens[i] = token(i);
    p += 4 * window;
    auto get = [&] {
        const float v = load_f32(p);
        p += 4;
        return v;
    };
    for (float& v : state) v = get();
    for (float& v : restored) v = get();
    backend_->write_state(0, state.data());  // the only step that may still fail (a device error)
    window_.assign(tokens.data(), tokens.size());
    restored_logits_.swap(restored);
    has_logits_ = logits != 0;
    logits_ = has_logits_ ? restored_logits_.data() : nullptr;
}

}  // namespace itera
