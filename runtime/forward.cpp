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
    reserve(1);
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
    gq_.resize(r * static_cast<size_t>(act_blocks(H_)));
    hq_.resize(r * static_cast<size_t>(act_blocks(static_cast<int32_t>(W))));
}

// The input of one or more products: n rows of `cols` floats. A block-format weight multiplies
// them as q8 blocks (quant_ops.h), quantized on the first such product over this input and
// reused by the next ones (delta_proj and B both read v). `blocks` holds them; inputs that share
// it must not overlap in time.
struct Forward::ProductInput {
    const float* x;
    int32_t n, cols;
    std::vector<ActQ8>& blocks;
    bool quantized = false;

    const ActQ8* q8() {
        if (!quantized) {
            const size_t per_row = static_cast<size_t>(act_blocks(cols));
            for (int32_t r = 0; r < n; r++)
                quantize_activation(x + static_cast<size_t>(r) * cols, cols, blocks.data() + r * per_row);
            quantized = true;
        }
        return blocks.data();
    }
};

// Whether a product of n rows goes to the model's gemm provider (oneDNN or auto) rather than the
// native kernels below.
bool Forward::dispatched(int32_t n) const {
    return n > 1 && model_.gemm && model_.gemm->provider() != GemmProvider::native;
}

// y[r, :] = W x[r, :] for the input's rows: the gemm provider, the integer kernels on q8 blocks
// (a block format), or the FP32/FP16 kernels.
void Forward::matmul(const Weight& w, ProductInput& in, float* y) {
    if (observer_)
        for (int32_t r = 0; r < in.n; r++) observer_->observe(w, in.x + static_cast<size_t>(r) * w.cols);
    if (dispatched(in.n)) {
        model_.gemm->run(w, in.x, in.n, y);
    } else if (is_quantized(w.dtype)) {
        matmul_quant(w, in.q8(), in.n, y);
    } else {
        matmul_dense(w, in.x, in.n, y);
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
    for (int32_t r = 0; r < n; r++) {  // h = E[x] + Pos[t]
        float* x = x_.data() + r * H;
        ref::load_row(model_.embedding, model_.row_of(tokens[r]), x);
        ref::add_row(model_.position, positions[r], x);
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
    // logits = W_lm LN_f(h)
    layer_norm(x_.data() + logits_from * H, model_.final_norm_w, model_.final_norm_b, model_.config.norm_eps, m, H_,
               a_.data());
    ProductInput a{a_.data(), m, H_, xq_};
    matmul(model_.lm_head, a, logits_.data());
}

// The SSM block (research/upstream.md 2.2): h += W_out (y * silu(z)) for rows [out_from, n); all
// n rows advance their sequence's conv history and SSM state.
void Forward::ssm_block(size_t layer, const SequenceState* states, int32_t n, int32_t out_from) {
    const ModelConfig& cfg = model_.config;
    const LayerConfig& lc = cfg.layers[layer];
    const SsmWeights& w = model_.layers[layer].ssm;
    const int32_t Di = lc.inner;
    const size_t H = static_cast<size_t>(H_), D = static_cast<size_t>(Di);
    layer_norm(x_.data(), w.norm_w, w.norm_b, cfg.norm_eps, n, H_, a_.data());  // a = LN(h)
    ProductInput a{a_.data(), n, H_, xq_};
    matmul(w.in_proj, a, uz_.data());  // [u; z] = W_in a: u = uz[r][0, Di), z = uz[r][Di, 2 Di)
    // v = silu(causal conv(u)), row by row: consecutive rows of one sequence advance its history.
    for (int32_t r = 0; r < n; r++)
        conv_silu_step(w.conv_t.data(), w.conv_bias.data(), Di, lc.conv_kernel, uz_.data() + r * 2 * D,
                       states[r].conv + layout_.conv_off[layer], v_.data() + r * D);
    ProductInput v{v_.data(), n, Di, xq_};
    matmul(w.delta_w, v, delta_.data());  // delta = W_dt v (b_dt is added in the step size)
    matmul(w.b, v, bv_.data());           // B v
    scan(layer, states, n, out_from);     // y = (C s + D v) * silu(z)
    const int32_t used = n - out_from;    // rows whose output is used
    if (used <= 0) return;
    ProductInput y{y_.data(), used, Di, xq_};
    matmul(w.out_proj, y, mix_.data());  // h += W_out y
    ref::add(x_.data() + static_cast<size_t>(out_from) * H, mix_.data(), used * H_);
}

// The scan of n rows, upstream.md 2.2's three equations and the gate:
//   dt = mean softplus(delta + b_dt)    a step size per row
//   s  = exp(dt A) s + dt B v           A = -exp(A_log); row after row, as rows of one sequence share s
//   y  = (C s + D v) * silu(z)          rows [out_from, n)
// Only the state update is sequential: the step sizes, decays and outputs of all rows are each
// one pass, so the rows' independent work overlaps.
void Forward::scan(size_t layer, const SequenceState* states, int32_t n, int32_t out_from) {
    const LayerConfig& lc = model_.config.layers[layer];
    const SsmWeights& w = model_.layers[layer].ssm;
    const int32_t Di = lc.inner, N = lc.state;
    const size_t D = static_cast<size_t>(Di), S = static_cast<size_t>(N);
    step_sizes(delta_.data(), w.delta_bias.data(), n, Di, dt_.data());  // dt
    for (int32_t r = 0; r < n; r++)
        for (int32_t k = 0; k < N; k++) decay_[r * S + k] = dt_[r] * w.neg_a[k];
    exp_inplace(decay_.data(), n * N);  // exp(dt A)
    for (int32_t r = 0; r < n; r++) {   // s, kept per row in hs_ for the output
        float* s = states[r].ssm + layout_.ssm_off[layer];
        const float dt = dt_[r];
        const float* bv = bv_.data() + r * S;
        const float* decay = decay_.data() + r * S;
        float* hs = hs_.data() + r * S;
        for (int32_t k = 0; k < N; k++) hs[k] = s[k] = decay[k] * s[k] + dt * bv[k];
    }
    const int32_t used = n - out_from;
    if (used <= 0) return;
    const size_t f = static_cast<size_t>(out_from);
    ssm_output(w.c_t.data(), hs_.data() + f * S, N, w.d_skip.data(), v_.data() + f * D, uz_.data() + f * 2 * D + D,
               2 * Di, Di, used, y_.data());  // y
}

// The channel block for rows [from, n): nothing (none), h += W2 gelu(W1 LN(h)) (ffn), or the
// top-k experts (moe).
void Forward::channel_block(size_t layer, int32_t from, int32_t n) {
    const ModelConfig& cfg = model_.config;
    const LayerConfig& lc = cfg.layers[layer];
    const LayerWeights& w = model_.layers[layer];
    const size_t H = static_cast<size_t>(H_);
    float* x = x_.data() + static_cast<size_t>(from) * H;
    n -= from;
    if (lc.kind == ChannelKind::none || n <= 0) return;
    layer_norm(x, w.mix_norm_w, w.mix_norm_b, cfg.norm_eps, n, H_, a_.data());  // a = LN(h)
    ProductInput a{a_.data(), n, H_, xq_};
    if (lc.kind == ChannelKind::moe) return experts(layer, a, x);
    ffn(w.experts[0], a, mix_.data());
    ref::add(x, mix_.data(), n * H_);
}

// out = W2 gelu(W1 a) for a's rows: the dense FFN, or one expert.
void Forward::ffn(const FfnWeights& f, ProductInput& a, float* out) {
    matmul(f.w1, a, hidden_.data());
    gelu_inplace(hidden_.data(), a.n * f.w1.rows);
    ProductInput hidden{hidden_.data(), a.n, f.w1.rows, hq_};
    matmul(f.w2, hidden, out);
}

// MoE: r = W_g a, its top k and their softmax per row; then each expert runs once over the rows
// routed to it (gathered into a block, or `a` itself when it takes them all, as in decode), and
// x += p * its output. Experts are taken in ascending index, so every row sums its experts in
// the order upstream does. x: the rows' residual stream.
void Forward::experts(size_t layer, ProductInput& a, float* x) {
    const LayerConfig& lc = model_.config.layers[layer];
    const LayerWeights& w = model_.layers[layer];
    const size_t H = static_cast<size_t>(H_);
    const int32_t n = a.n, E = static_cast<int32_t>(w.experts.size()), k = lc.top_k;
    const size_t K = static_cast<size_t>(k);
    matmul(w.router, a, router_.data());
    for (int32_t r = 0; r < n; r++)
        ref::top_k_softmax(router_.data() + r * static_cast<size_t>(E), E, k, chosen_.data() + r * K,
                           chosen_weight_.data() + r * K);
    for (int32_t e = 0; e < E; e++) {
        int32_t m = 0;
        for (int32_t r = 0; r < n; r++)
            for (size_t j = 0; j < K; j++)
                if (chosen_[r * K + j] == e) {
                    route_rows_[m] = r;
                    route_weight_[m++] = chosen_weight_[r * K + j];
                }
        if (m == 0) continue;
        if (m == n) {  // every row, in order (an expert is chosen at most once per row)
            ffn(w.experts[static_cast<size_t>(e)], a, gathered_out_.data());
        } else {
            for (int32_t i = 0; i < m; i++)
                std::memcpy(gathered_.data() + i * H, a.x + route_rows_[i] * H, sizeof(float) * H);
            ProductInput gathered{gathered_.data(), m, H_, gq_};
            ffn(w.experts[static_cast<size_t>(e)], gathered, gathered_out_.data());
        }
        for (int32_t i = 0; i < m; i++)
            ref::add_scaled(x + route_rows_[i] * H, route_weight_[i], gathered_out_.data() + i * H, H_);
    }
}

}  // namespace itera
