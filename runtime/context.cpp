#include "runtime/context.h"

#include <algorithm>

#include "common/error.h"
#include "kernels_cpu/ref_ops.h"

namespace itera {

Context::Context(const Model& model) : model_(model) {
    const ModelConfig& cfg = model.config;
    size_t conv = 0, ssm = 0, inner = 0, width = 0, experts = 0;
    for (const LayerConfig& l : cfg.layers) {
        conv_off_.push_back(conv);
        ssm_off_.push_back(ssm);
        conv += static_cast<size_t>(l.inner) * static_cast<size_t>(l.conv_kernel - 1);
        ssm += static_cast<size_t>(l.state);
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
    hidden_.resize(width);
    router_.resize(experts);
    chosen_.resize(experts);
    chosen_weight_.resize(experts);
    logits_.resize(static_cast<size_t>(cfg.vocab_size));
    window_.reserve(static_cast<size_t>(cfg.max_seq_length));
}

void Context::reset() {
    std::fill(conv_.begin(), conv_.end(), 0.0f);
    std::fill(ssm_.begin(), ssm_.end(), 0.0f);
    window_.clear();
}

const float* Context::eval(int32_t token, bool want_logits) {
    const ModelConfig& cfg = model_.config;
    if (token < 0 || token >= cfg.vocab_size)
        throw Error("token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                    std::to_string(cfg.vocab_size) + ")");
    if (position() < cfg.max_seq_length) {
        window_.push_back(token);
        step(token, position() - 1, want_logits);
    } else {
        // Upstream semantics: slide the window and recompute it from zero state.
        std::vector<int32_t> window(window_.begin() + 1, window_.end());
        window.push_back(token);
        reset();
        for (size_t i = 0; i < window.size(); i++) {
            window_.push_back(window[i]);
            step(window[i], static_cast<int32_t>(i), want_logits && i + 1 == window.size());
        }
    }
    return want_logits ? logits_.data() : nullptr;
}

void Context::step(int32_t token, int32_t pos, bool want_logits) {
    const ModelConfig& cfg = model_.config;
    const int32_t H = cfg.hidden;
    ref::load_row(model_.embedding, token, x_.data());
    ref::load_row(model_.position, pos, a_.data());
    for (int32_t i = 0; i < H; i++) x_[i] += a_[i];
    for (size_t l = 0; l < model_.layers.size(); l++) {
        ssm_block(l, x_.data());
        channel_block(l, x_.data());
    }
    if (!want_logits) return;
    ref::layer_norm(x_.data(), model_.final_norm_w, model_.final_norm_b, cfg.norm_eps, H, a_.data());
    ref::matvec(model_.lm_head, a_.data(), logits_.data());
}

void Context::ssm_block(size_t layer, float* x) {
    const ModelConfig& cfg = model_.config;
    const LayerConfig& lc = cfg.layers[layer];
    const SsmWeights& w = model_.layers[layer].ssm;
    const int32_t Di = lc.inner;
    ref::layer_norm(x, w.norm_w, w.norm_b, cfg.norm_eps, cfg.hidden, a_.data());
    ref::matvec(w.in_proj, a_.data(), uz_.data());  // u = uz[0, Di), z = uz[Di, 2Di)
    ref::conv_step(w.conv_w, w.conv_b, Di, lc.conv_kernel, uz_.data(), conv_.data() + conv_off_[layer],
                   v_.data());
    for (int32_t i = 0; i < Di; i++) v_[i] = ref::silu(v_[i]);
    ref::matvec(w.delta_w, v_.data(), delta_.data());
    ref::add_bias(w.delta_b, delta_.data());
    ref::scan_step(w.a_log, w.b, w.c, w.d, Di, lc.state, v_.data(), delta_.data(), ssm_.data() + ssm_off_[layer],
                   y_.data());
    for (int32_t i = 0; i < Di; i++) y_[i] *= ref::silu(uz_[Di + i]);
    ref::matvec(w.out_proj, y_.data(), mix_.data());
    for (int32_t i = 0; i < cfg.hidden; i++) x[i] += mix_[i];
}

void Context::channel_block(size_t layer, float* x) {
    const ModelConfig& cfg = model_.config;
    const LayerConfig& lc = cfg.layers[layer];
    const LayerWeights& w = model_.layers[layer];
    const int32_t H = cfg.hidden;
    if (lc.kind == ChannelKind::none) return;
    ref::layer_norm(x, w.mix_norm_w, w.mix_norm_b, cfg.norm_eps, H, a_.data());
    auto expert = [&](const FfnWeights& f, float scale) {
        ref::matvec(f.w1, a_.data(), hidden_.data());
        for (int32_t i = 0; i < f.w1.rows; i++) hidden_[i] = ref::gelu(hidden_[i]);
        ref::matvec(f.w2, hidden_.data(), mix_.data());
        for (int32_t i = 0; i < H; i++) x[i] += scale * mix_[i];
    };
    if (lc.kind == ChannelKind::ffn) {
        expert(w.experts[0], 1.0f);
        return;
    }
    const int32_t E = static_cast<int32_t>(w.experts.size());
    const int32_t k = lc.top_k;
    ref::matvec(w.router, a_.data(), router_.data());
    ref::top_k_softmax(router_.data(), E, k, chosen_.data(), chosen_weight_.data());
    // Combine in ascending expert index, the order upstream sums them.
    for (int32_t e = 0; e < E; e++)
        for (int32_t j = 0; j < k; j++)
            if (chosen_[j] == e) expert(w.experts[static_cast<size_t>(e)], chosen_weight_[j]);
}

}  // namespace itera
