#include "runtime/context.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "format/itl_layout.h"
#include "kernels_cpu/quant_ops.h"
#include "kernels_cpu/ref_ops.h"

namespace itera {

Context::Context(const Model& model) : model_(model) {
    const ModelConfig& cfg = model.config;
    size_t conv = 0, ssm = 0, inner = 0, width = 0, experts = 0, state = 0;
    for (const LayerConfig& l : cfg.layers) {
        conv_off_.push_back(conv);
        ssm_off_.push_back(ssm);
        conv += static_cast<size_t>(l.inner) * static_cast<size_t>(l.conv_kernel - 1);
        ssm += static_cast<size_t>(l.state);
        state = std::max(state, static_cast<size_t>(l.state));
        inner = std::max(inner, static_cast<size_t>(l.inner));
        for (int32_t f : l.ffn_widths) width = std::max(width, static_cast<size_t>(f));
        experts = std::max(experts, l.ffn_widths.size());
    }
    const size_t H = static_cast<size_t>(cfg.hidden);
    conv_.assign(conv, 0.0f);
    ssm_.assign(ssm, 0.0f);
    x_.resize(H);
    a_.resize(H);
    mix_.resize(H);
    uz_.resize(2 * inner);
    v_.resize(inner);
    delta_.resize(inner);
    y_.resize(inner);
    bv_.resize(state);
    hidden_.resize(width);
    xq_.resize(static_cast<size_t>(act_blocks(static_cast<int32_t>(std::max({H, 2 * inner, width})))));
    hq_.resize(static_cast<size_t>(act_blocks(static_cast<int32_t>(width))));
    router_.resize(experts);
    chosen_.resize(experts);
    chosen_weight_.resize(experts);
    logits_.resize(static_cast<size_t>(cfg.vocab_size));
    window_.reserve(static_cast<size_t>(cfg.max_seq_length));
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

const float* Context::eval(int32_t token, bool want_logits) {
    const ModelConfig& cfg = model_.config;
    if (model_.row_of(token) < 0)
        throw Error("token id " + std::to_string(token) + " is not in the model's vocabulary");
    if (position() < cfg.max_seq_length) {
        window_.push_back(token);
        step(token, position() - 1, want_logits);
    } else {
        // Upstream semantics: slide the window and recompute it from zero state.
        std::rotate(window_.begin(), window_.begin() + 1, window_.end());
        window_.back() = token;
        zero_state();
        for (size_t i = 0; i < window_.size(); i++)
            step(window_[i], static_cast<int32_t>(i), want_logits && i + 1 == window_.size());
    }
    has_logits_ = want_logits;
    return want_logits ? logits_.data() : nullptr;
}

void Context::step(int32_t token, int32_t pos, bool want_logits) {
    const ModelConfig& cfg = model_.config;
    const int32_t H = cfg.hidden;
    ref::load_row(model_.embedding, model_.row_of(token), x_.data());
    ref::load_row(model_.position, pos, a_.data());
    for (int32_t i = 0; i < H; i++) x_[i] += a_[i];
    for (size_t l = 0; l < model_.layers.size(); l++) {
        ssm_block(l, x_.data());
        channel_block(l, x_.data());
    }
    if (!want_logits) return;
    ref::layer_norm(x_.data(), model_.final_norm_w, model_.final_norm_b, cfg.norm_eps, H, a_.data());
    matmul(model_.lm_head, a_.data(), quantize_for(model_.lm_head, a_.data(), H, xq_.data()), logits_.data());
}

// A quantized weight multiplies the activation quantized to q8 blocks; one quantized copy serves
// every weight that reads the same input.
const ActQ8* Context::quantize_for(const Weight& w, const float* x, int32_t n, ActQ8* buffer) {
    if (!is_quantized(w.dtype)) return nullptr;
    quantize_activation(x, n, buffer);
    return buffer;
}

void Context::matmul(const Weight& w, const float* x, const ActQ8* xq, float* y) {
    if (observer_) observer_->observe(w, x);
    if (is_quantized(w.dtype)) {
        matvec_quant(w, xq, y);
    } else {
        ref::matvec(w, x, y);
    }
}

void Context::ssm_block(size_t layer, float* x) {
    const ModelConfig& cfg = model_.config;
    const LayerConfig& lc = cfg.layers[layer];
    const SsmWeights& w = model_.layers[layer].ssm;
    const int32_t Di = lc.inner;
    ref::layer_norm(x, w.norm_w, w.norm_b, cfg.norm_eps, cfg.hidden, a_.data());
    // u = uz[0, Di), z = uz[Di, 2Di)
    matmul(w.in_proj, a_.data(), quantize_for(w.in_proj, a_.data(), cfg.hidden, xq_.data()), uz_.data());
    ref::conv_step(w.conv_w, w.conv_b, Di, lc.conv_kernel, uz_.data(), conv_.data() + conv_off_[layer],
                   v_.data());
    for (int32_t i = 0; i < Di; i++) v_[i] = ref::silu(v_[i]);
    // delta_proj and B both read v: one quantized copy serves both.
    const ActQ8* vq = nullptr;
    if (is_quantized(w.delta_w.dtype) || is_quantized(w.b.dtype)) {
        quantize_activation(v_.data(), Di, xq_.data());
        vq = xq_.data();
    }
    matmul(w.delta_w, v_.data(), vq, delta_.data());
    ref::add_bias(w.delta_b, delta_.data());
    matmul(w.b, v_.data(), vq, bv_.data());
    ref::scan_step(w.a_log, w.c, w.d, Di, lc.state, v_.data(), delta_.data(), bv_.data(), ssm_.data() + ssm_off_[layer],
                   y_.data());
    for (int32_t i = 0; i < Di; i++) y_[i] *= ref::silu(uz_[Di + i]);
    matmul(w.out_proj, y_.data(), quantize_for(w.out_proj, y_.data(), Di, xq_.data()), mix_.data());
    for (int32_t i = 0; i < cfg.hidden; i++) x[i] += mix_[i];
}

void Context::channel_block(size_t layer, float* x) {
    const ModelConfig& cfg = model_.config;
    const LayerConfig& lc = cfg.layers[layer];
    const LayerWeights& w = model_.layers[layer];
    const int32_t H = cfg.hidden;
    if (lc.kind == ChannelKind::none) return;
    ref::layer_norm(x, w.mix_norm_w, w.mix_norm_b, cfg.norm_eps, H, a_.data());
    // The router and every expert's w1 read a_: quantize it once if any of them is quantized.
    bool any_quantized = is_quantized(w.router.dtype);
    for (const FfnWeights& f : w.experts) any_quantized = any_quantized || is_quantized(f.w1.dtype);
    const ActQ8* aq = nullptr;
    if (any_quantized) {
        quantize_activation(a_.data(), H, xq_.data());
        aq = xq_.data();
    }
    auto expert = [&](const FfnWeights& f, float scale) {
        matmul(f.w1, a_.data(), aq, hidden_.data());
        for (int32_t i = 0; i < f.w1.rows; i++) hidden_[i] = ref::gelu(hidden_[i]);
        matmul(f.w2, hidden_.data(), quantize_for(f.w2, hidden_.data(), f.w1.rows, hq_.data()), mix_.data());
        for (int32_t i = 0; i < H; i++) x[i] += scale * mix_[i];
    };
    if (lc.kind == ChannelKind::ffn) {
        expert(w.experts[0], 1.0f);
        return;
    }
    const int32_t E = static_cast<int32_t>(w.experts.size());
    const int32_t k = lc.top_k;
    matmul(w.router, a_.data(), aq, router_.data());
    ref::top_k_softmax(router_.data(), E, k, chosen_.data(), chosen_weight_.data());
    // Combine in ascending expert index, the order upstream sums them.
    for (int32_t e = 0; e < E; e++)
        for (int32_t j = 0; j < k; j++)
            if (chosen_[j] == e) expert(w.experts[static_cast<size_t>(e)], chosen_weight_[j]);
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
    if (std::memcmp(data, kStateMagic, sizeof kStateMagic) != 0) throw Error("not a saved Itera context state (bad magic)");
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
    const size_t logits = has_logits_ ? logits_.size() : 0;
    return kStateHeaderBytes + 4 * (window_.size() + conv_.size() + ssm_.size() + logits);
}

void Context::save(uint8_t* out) const {
    const size_t logits = has_logits_ ? logits_.size() : 0;
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
    for (float v : conv_) put(v);
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
                    " ssm values, this model has " + std::to_string(conv_.size()) + " and " + std::to_string(ssm_.size()));
    if (logits != 0 && logits != logits_.size())
        throw Error("corrupt saved state: " + std::to_string(logits) + " logits, the vocabulary is " +
                    std::to_string(logits_.size()));
    const uint64_t expected = kStateHeaderBytes + 4 * (window + conv + ssm + logits);
    if (size != expected)
        throw Error("saved state is " + std::to_string(size) + " bytes, its header implies " + std::to_string(expected));
    if (XXH3_64bits(data + kStateHeaderBytes, size - kStateHeaderBytes) != load_le(data + 24, 8))
        throw Error("corrupt saved state: checksum mismatch");
    const uint8_t* p = data + kStateHeaderBytes;
    auto token = [&](uint64_t i) { return static_cast<int32_t>(static_cast<uint32_t>(load_le(p + 4 * i, 4))); };
    for (uint64_t i = 0; i < window; i++)
        if (model_.row_of(token(i)) < 0)
            throw Error("corrupt saved state: token id " + std::to_string(token(i)) + " is not in the model's vocabulary");
    // Everything is checked: from here on nothing throws (window_ has max_seq_length reserved).
    window_.resize(window);
    for (uint64_t i = 0; i < window; i++) window_[i] = token(i);
    p += 4 * window;
    auto get = [&] {
        const float v = load_f32(p);
        p += 4;
        return v;
    };
    for (float& v : conv_) v = get();
    for (float& v : ssm_) v = get();
    has_logits_ = logits != 0;
    if (has_logits_)
        for (float& v : logits_) v = get();
}

}  // namespace itera
