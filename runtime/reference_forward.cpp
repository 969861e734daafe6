#include "runtime/reference_forward.h"

#include <string>

#include "common/error.h"
#include "kernels_cpu/ref_ops.h"

namespace itera {

using Vec = std::vector<float>;

ReferenceState::ReferenceState(const ModelConfig& config) {
    for (const LayerConfig& l : config.layers) {
        conv.emplace_back(static_cast<size_t>(l.inner) * (l.conv_kernel - 1), 0.0f);
        ssm.emplace_back(l.state, 0.0f);
    }
}

namespace {

// h += scale * W2 gelu(W1 a): the dense FFN (scale 1) or one expert of a MoE layer.
void add_ffn(const FfnWeights& f, const float* a, float scale, float* h) {
    Vec hidden(f.w1.rows), out(f.w2.rows);
    ref::matvec(f.w1, a, hidden.data());
    for (float& e : hidden) e = ref::gelu(e);
    ref::matvec(f.w2, hidden.data(), out.data());
    ref::add_scaled(h, scale, out.data(), f.w2.rows);
}

// The SSM block: h += W_out (y * silu(z)), advancing the layer's conv history and state s.
void ssm_block(const SsmWeights& w, const LayerConfig& l, float eps, int32_t H, float* h, Vec& history, Vec& s) {
    const int32_t Di = l.inner, N = l.state;
    Vec a(H), uz(2 * Di), v(Di), delta(Di), bv(N), y(Di), out(H);
    ref::layer_norm(h, w.norm_w, w.norm_b, eps, H, a.data());  // a = LN(h)
    ref::matvec(w.in_proj, a.data(), uz.data());               // [u; z] = W_in a
    const float* u = uz.data();
    const float* z = uz.data() + Di;
    ref::conv_step(w.conv_w, w.conv_b, Di, l.conv_kernel, u, history.data(), v.data());  // c = causal conv(u)
    for (float& c : v) c = ref::silu(c);                                                 // v = silu(c)
    ref::matvec(w.delta_w, v.data(), delta.data());                                      // delta = W_dt v + b_dt
    ref::add_row(w.delta_b, 0, delta.data());
    ref::matvec(w.b, v.data(), bv.data());  // B v
    // dt = mean softplus(delta);  s = exp(dt A) s + dt B v, A = -exp(A_log);  y = C s + D v
    ref::scan_step(w.a_log, w.c, w.d, Di, N, v.data(), delta.data(), bv.data(), s.data(), y.data());
    for (int32_t i = 0; i < Di; i++) y[i] *= ref::silu(z[i]);  // y * silu(z)
    ref::matvec(w.out_proj, y.data(), out.data());             // h += W_out (y * silu(z))
    ref::add(h, out.data(), H);
}

// The channel block: nothing (none), h += FFN(LN(h)) (ffn), or h += the top-k experts (moe).
void channel_block(const LayerWeights& w, const LayerConfig& l, float eps, int32_t H, float* h) {
    if (l.kind == ChannelKind::none) return;
    Vec a(H);
    ref::layer_norm(h, w.mix_norm_w, w.mix_norm_b, eps, H, a.data());  // a = LN(h)
    if (l.kind == ChannelKind::ffn) return add_ffn(w.experts[0], a.data(), 1.0f, h);
    const int32_t E = static_cast<int32_t>(w.experts.size()), k = l.top_k;
    Vec r(E), p(k);
    std::vector<int32_t> chosen(k);
    ref::matvec(w.router, a.data(), r.data());                    // r = W_g a
    ref::top_k_softmax(r.data(), E, k, chosen.data(), p.data());  // the k largest, softmax over them
    for (int32_t e = 0; e < E; e++)  // h += p_j W2_e gelu(W1_e a), experts in ascending index as upstream
        for (int32_t j = 0; j < k; j++)
            if (chosen[j] == e) add_ffn(w.experts[e], a.data(), p[j], h);
}

}  // namespace

void reference_step(const Model& model, int32_t token, int32_t pos, ReferenceState& state, float* logits) {
    const ModelConfig& cfg = model.config;
    if (model.row_of(token) < 0) throw Error("token id " + std::to_string(token) + " is not in the model's vocabulary");
    if (pos < 0 || pos >= cfg.max_seq_length)
        throw Error("position " + std::to_string(pos) + " is outside max_seq_length " +
                    std::to_string(cfg.max_seq_length));
    const int32_t H = cfg.hidden;
    Vec h(H), a(H);
    ref::load_row(model.embedding, model.row_of(token), h.data());  // h = E[x] + Pos[t]
    ref::add_row(model.position, pos, h.data());
    for (size_t l = 0; l < model.layers.size(); l++) {
        ssm_block(model.layers[l].ssm, cfg.layers[l], cfg.norm_eps, H, h.data(), state.conv[l], state.ssm[l]);
        channel_block(model.layers[l], cfg.layers[l], cfg.norm_eps, H, h.data());
    }
    ref::layer_norm(h.data(), model.final_norm_w, model.final_norm_b, cfg.norm_eps, H, a.data());
    ref::matvec(model.lm_head, a.data(), logits);  // logits = W_lm LN_f(h); W_lm is the embedding when tied
}

std::vector<float> reference_logits(const Model& model, const int32_t* ids, int32_t n) {
    if (n < 0 || n > model.config.max_seq_length)
        throw Error(std::to_string(n) + " ids exceed max_seq_length " + std::to_string(model.config.max_seq_length));
    const size_t V = static_cast<size_t>(model.vocab_rows());
    std::vector<float> logits(n * V);
    ReferenceState state(model.config);
    for (int32_t t = 0; t < n; t++) reference_step(model, ids[t], t, state, logits.data() + t * V);
    return logits;
}

}  // namespace itera
