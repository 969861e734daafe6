#include "runtime/forward.h"

#include <xmmintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels_cpu/dense_ops.h"
#include "kernels_cpu/ref_ops.h"

namespace itera {

StateLayout::StateLayout(const ModelConfig& config) {
    for (const LayerConfig& l : config.layers) {
        conv_off.push_back(conv);
        ssm_off.push_back(ssm);
        conv += static_cast<size_t>(l.inner) * static_cast<size_t>(l.conv_kernel - 1);
        ssm += static_cast<size_t>(l.state);
    }
}

Forward::Forward(const Model& model) : model_(model), layout_(model.config) {
    const ModelConfig& cfg = model.config;
    H_ = cfg.hidden;
    vocab_ = cfg.vocab_size;
    for (const LayerConfig& l : cfg.layers) {
        inner_ = std::max(inner_, l.inner);
        for (int32_t f : l.ffn_widths) width_ = std::max(width_, f);
        experts_ = std::max(experts_, static_cast<int32_t>(l.ffn_widths.size()));
        top_k_ = std::max(top_k_, l.top_k);
    }
    for (int32_t p = 0; p < cfg.max_seq_length; p++) positions_.push_back(p);
    reserve(1);
}

void Forward::run_sequence(const int32_t* window, int32_t from, int32_t n, SequenceState state, int32_t logit_rows) {
    shared_.assign(static_cast<size_t>(n), state);
    run(window + from, positions_.data() + from, shared_.data(), n, n - logit_rows);
}

void Forward::reserve(int32_t n) {
    if (n <= rows_) return;
    rows_ = n;
    const size_t r = static_cast<size_t>(n), H = static_cast<size_t>(H_), Di = static_cast<size_t>(inner_);
    const size_t W = static_cast<size_t>(width_);
    size_t N = 0;
    for (const LayerConfig& l : model_.config.layers) N = std::max(N, static_cast<size_t>(l.state));
    x_.resize(r * H);
    a_.resize(r * H);
    mix_.resize(r * H);
    uz_.resize(r * 2 * Di);
    v_.resize(r * Di);
    delta_.resize(r * Di);
    y_.resize(r * Di);
    bv_.resize(r * N);
    hs_.resize(r * N);
    decay_.resize(r * N);
    dt_.resize(r);
    hidden_.resize(r * W);
    router_.resize(r * static_cast<size_t>(experts_));
    chosen_.resize(r * static_cast<size_t>(top_k_));
    chosen_weight_.resize(r * static_cast<size_t>(top_k_));
    gathered_.resize(r * H);
    gathered_out_.resize(r * H);
    route_weight_.resize(r);
    route_rows_.resize(r);
    logits_.resize(r * static_cast<size_t>(vocab_));
    const int32_t widest = static_cast<int32_t>(std::max({H, 2 * Di, W}));
    xq_.resize(r * static_cast<size_t>(act_blocks(widest)));
    hq_.resize(r * static_cast<size_t>(act_blocks(static_cast<int32_t>(W))));
}

// A quantized weight multiplies its input quantized to q8 blocks; one quantized copy serves every
// weight that reads the same input.
const ActQ8* Forward::quantize_rows(const float* x, int32_t n, int32_t cols, std::vector<ActQ8>& buffer) {
    const size_t blocks = static_cast<size_t>(act_blocks(cols));
    for (int32_t r = 0; r < n; r++)
        quantize_activation(x + static_cast<size_t>(r) * cols, cols, buffer.data() + r * blocks);
    return buffer.data();
}

// Whether a product of n rows goes to the model's gemm provider (oneDNN or auto) rather than the
// native kernels below.
bool Forward::dispatched(int32_t n) const {
    return n > 1 && model_.gemm && model_.gemm->provider() != GemmProvider::native;
}

// Whether matmul reads w's input as q8 blocks (the caller quantizes it once for the weights that
// share it); a dispatched product takes the float input.
bool Forward::reads_q8(const Weight& w, int32_t n) const { return is_quantized(w.dtype) && !dispatched(n); }

// y[r, :] = W x[r, :]. xq: x quantized (when reads_q8(w, n)).
void Forward::matmul(const Weight& w, const float* x, const ActQ8* xq, int32_t n, float* y) {
    const size_t in = static_cast<size_t>(w.cols);
    if (observer_)
        for (int32_t r = 0; r < n; r++) observer_->observe(w, x + r * in);
    if (dispatched(n)) {
        model_.gemm->run(w, x, n, y);
    } else if (is_quantized(w.dtype)) {
        matmul_quant(w, xq, n, y);
    } else {
        matmul_dense(w, x, n, y);
    }
}

namespace {

// Subnormal floats flushed to zero for the duration of a forward pass (MXCSR FTZ + DAZ), the
// caller's mode restored after. Greedy decoding drives some activations into the subnormal range,
// where each operation costs ~100 cycles: measured, the micro model fell from 139,000 to 24,000
// tokens/s past its 200th token. Values below 1.2e-38 change no logit measurably.
class FlushSubnormals {
public:
    FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
    ~FlushSubnormals() { _mm_setcsr(saved_); }
    FlushSubnormals(const FlushSubnormals&) = delete;
    FlushSubnormals& operator=(const FlushSubnormals&) = delete;

private:
    unsigned saved_;
};

}  // namespace

void Forward::run(const int32_t* tokens, const int32_t* positions, const SequenceState* states, int32_t n,
                  int32_t logits_from) {
    const FlushSubnormals flush;
    reserve(n);
    const size_t H = static_cast<size_t>(H_);
    for (int32_t r = 0; r < n; r++) {
        float* x = x_.data() + r * H;
        ref::load_row(model_.embedding, model_.row_of(tokens[r]), x);
        ref::load_row(model_.position, positions[r], a_.data());
        for (size_t i = 0; i < H; i++) x[i] += a_[i];
    }
    // The last layer's outputs reach nothing but the logits, so it computes them for the logit rows
    // only (every row still advances its state). An observer sees every row.
    const int32_t last_from = observer_ ? 0 : std::min(logits_from, n);
    for (size_t l = 0; l < model_.layers.size(); l++) {
        const int32_t from = l + 1 == model_.layers.size() ? last_from : 0;
        ssm_block(l, states, n, from);
        channel_block(l, from, n);
    }
    const int32_t m = n - logits_from;
    if (m <= 0) return;
    layer_norm(x_.data() + logits_from * H, model_.final_norm_w, model_.final_norm_b, model_.config.norm_eps, m, H_,
               a_.data());
    const ActQ8* aq = reads_q8(model_.lm_head, m) ? quantize_rows(a_.data(), m, H_, xq_) : nullptr;
    matmul(model_.lm_head, a_.data(), aq, m, logits_.data());
}

void Forward::ssm_block(size_t layer, const SequenceState* states, int32_t n, int32_t out_from) {
    const ModelConfig& cfg = model_.config;
    const LayerConfig& lc = cfg.layers[layer];
    const SsmWeights& w = model_.layers[layer].ssm;
    const int32_t Di = lc.inner, N = lc.state;
    const size_t H = static_cast<size_t>(H_), D = static_cast<size_t>(Di);
    layer_norm(x_.data(), w.norm_w, w.norm_b, cfg.norm_eps, n, H_, a_.data());
    // uz[r] = in_proj a[r]: u = uz[r][0, Di), z = uz[r][Di, 2Di)
    const ActQ8* aq = reads_q8(w.in_proj, n) ? quantize_rows(a_.data(), n, H_, xq_) : nullptr;
    matmul(w.in_proj, a_.data(), aq, n, uz_.data());
    // Causal depthwise conv and SiLU, row by row (consecutive rows of one sequence advance its history).
    for (int32_t r = 0; r < n; r++)
        conv_silu_step(w.conv_t.data(), w.conv_bias.data(), Di, lc.conv_kernel, uz_.data() + r * 2 * D,
                       states[r].conv + layout_.conv_off[layer], v_.data() + r * D);
    // delta_proj and B both read v: one quantized copy serves both.
    const ActQ8* vq =
        reads_q8(w.delta_w, n) || reads_q8(w.b, n) ? quantize_rows(v_.data(), n, Di, xq_) : nullptr;
    matmul(w.delta_w, v_.data(), vq, n, delta_.data());
    matmul(w.b, v_.data(), vq, n, bv_.data());
    // Scan: dt = mean softplus(delta + bias); s = exp(dt A) s + dt B v; y = (C s + D v) * silu(z).
    // Only the state update is sequential: the step sizes and outputs of all rows are computed in
    // passes of their own, so the rows' independent work overlaps.
    step_sizes(delta_.data(), w.delta_bias.data(), n, Di, dt_.data());
    for (int32_t r = 0; r < n; r++)
        for (int32_t k = 0; k < N; k++) decay_[r * N + k] = dt_[r] * w.neg_a[k];
    exp_inplace(decay_.data(), n * N);
    for (int32_t r = 0; r < n; r++) {
        float* s = states[r].ssm + layout_.ssm_off[layer];
        const float dt = dt_[r];
        const float* bv = bv_.data() + r * static_cast<size_t>(N);
        const float* decay = decay_.data() + r * static_cast<size_t>(N);
        float* hs = hs_.data() + r * static_cast<size_t>(N);
        for (int32_t k = 0; k < N; k++) hs[k] = s[k] = decay[k] * s[k] + dt * bv[k];
    }
    const int32_t used = n - out_from;  // rows whose output is used
    if (used <= 0) return;
    const size_t f = static_cast<size_t>(out_from);
    ssm_output(w.c_t.data(), hs_.data() + f * N, N, w.d_skip.data(), v_.data() + f * D, uz_.data() + f * 2 * D + D,
               2 * Di, Di, used, y_.data());
    const ActQ8* yq = reads_q8(w.out_proj, used) ? quantize_rows(y_.data(), used, Di, xq_) : nullptr;
    matmul(w.out_proj, y_.data(), yq, used, mix_.data());
    float* x = x_.data() + f * H;
    for (size_t i = 0; i < static_cast<size_t>(used) * H; i++) x[i] += mix_[i];
}

void Forward::channel_block(size_t layer, int32_t from, int32_t n) {
    const ModelConfig& cfg = model_.config;
    const LayerConfig& lc = cfg.layers[layer];
    const LayerWeights& w = model_.layers[layer];
    const size_t H = static_cast<size_t>(H_);
    float* x = x_.data() + static_cast<size_t>(from) * H;
    n -= from;
    if (lc.kind == ChannelKind::none || n <= 0) return;
    layer_norm(x, w.mix_norm_w, w.mix_norm_b, cfg.norm_eps, n, H_, a_.data());
    if (lc.kind == ChannelKind::ffn) {
        const FfnWeights& f = w.experts[0];
        const ActQ8* aq = reads_q8(f.w1, n) ? quantize_rows(a_.data(), n, H_, xq_) : nullptr;
        matmul(f.w1, a_.data(), aq, n, hidden_.data());
        gelu_inplace(hidden_.data(), n * f.w1.rows);
        const ActQ8* hq = reads_q8(f.w2, n) ? quantize_rows(hidden_.data(), n, f.w1.rows, hq_) : nullptr;
        matmul(f.w2, hidden_.data(), hq, n, mix_.data());
        for (size_t i = 0; i < static_cast<size_t>(n) * H; i++) x[i] += mix_[i];
        return;
    }
    experts(layer, x, n);
}

// MoE: router, top-k and softmax per row, then each expert runs once over the rows routed to it
// (gathered into a block). Experts are taken in ascending index, so every row sums its experts
// in the order upstream does. x: the n rows' residual stream, a_ their normalized input.
void Forward::experts(size_t layer, float* x, int32_t n) {
    const LayerConfig& lc = model_.config.layers[layer];
    const LayerWeights& w = model_.layers[layer];
    const size_t H = static_cast<size_t>(H_);
    const int32_t E = static_cast<int32_t>(w.experts.size()), k = lc.top_k;
    const ActQ8* aq = reads_q8(w.router, n) ? quantize_rows(a_.data(), n, H_, xq_) : nullptr;
    matmul(w.router, a_.data(), aq, n, router_.data());
    for (int32_t r = 0; r < n; r++)
        ref::top_k_softmax(router_.data() + r * static_cast<size_t>(E), E, k,
                           chosen_.data() + r * static_cast<size_t>(k),
                           chosen_weight_.data() + r * static_cast<size_t>(k));
    for (int32_t e = 0; e < E; e++) {
        int32_t m = 0;
        for (int32_t r = 0; r < n; r++)
            for (int32_t j = 0; j < k; j++)
                if (chosen_[r * k + j] == e) {
                    route_rows_[m] = r;
                    route_weight_[m] = chosen_weight_[r * k + j];
                    std::memcpy(gathered_.data() + m * H, a_.data() + r * H, sizeof(float) * H);
                    m++;
                }
        if (m == 0) continue;
        const FfnWeights& f = w.experts[static_cast<size_t>(e)];
        const ActQ8* gq = reads_q8(f.w1, m) ? quantize_rows(gathered_.data(), m, H_, xq_) : nullptr;
        matmul(f.w1, gathered_.data(), gq, m, hidden_.data());
        gelu_inplace(hidden_.data(), m * f.w1.rows);
        const ActQ8* hq = reads_q8(f.w2, m) ? quantize_rows(hidden_.data(), m, f.w1.rows, hq_) : nullptr;
        matmul(f.w2, hidden_.data(), hq, m, gathered_out_.data());
        for (int32_t i = 0; i < m; i++) {
            float* xr = x + route_rows_[i] * H;
            const float* o = gathered_out_.data() + i * H;
            const float s = route_weight_[i];
            for (size_t c = 0; c < H; c++) xr[c] += s * o[c];
        }
    }
}

}  // namespace itera
