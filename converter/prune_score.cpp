// Pruning's importance scores: magnitude from the weights alone, activation and taylor from the
// runtime's FP32 forward over calibration text, which an observer follows token by token.
#include <cmath>
#include <unordered_map>

#include "converter/measure.h"
#include "converter/prune.h"
#include "format/tensor_names.h"
#include "kernels_cpu/ref_ops.h"
#include "runtime/context.h"
#include "runtime/model.h"

namespace itera {

namespace {

double row_norm(const SpecTensor& t, int64_t row) {
    const int64_t cols = t.shape.back();
    double s = 0;
    for (int64_t c = 0; c < cols; c++)
        s += double{t.values[static_cast<size_t>(row * cols + c)]} * t.values[static_cast<size_t>(row * cols + c)];
    return std::sqrt(s);
}

double col_norm(const SpecTensor& t, int64_t col) {
    const int64_t cols = t.shape.back(), rows = t.shape[0];
    double s = 0;
    for (int64_t r = 0; r < rows; r++)
        s += double{t.values[static_cast<size_t>(r * cols + col)]} * t.values[static_cast<size_t>(r * cols + col)];
    return std::sqrt(s);
}

// ||w1 row j|| * ||w2 column j|| of every neuron of an FFN or expert.
void neuron_magnitudes(const ModelSpec& spec, const FfnNames& names, std::vector<double>* score) {
    const SpecTensor& w1 = spec_tensor(spec, names.w1);
    const SpecTensor& w2 = spec_tensor(spec, names.w2);
    for (int64_t j = 0; j < w1.shape[0]; j++) (*score)[static_cast<size_t>(j)] = row_norm(w1, j) * col_norm(w2, j);
}

// Watches the runtime's forward: the inputs of out_proj, the router and w2 are exactly what the
// units produce (y * SiLU(z) per SSM channel, GELU(w1 a) per neuron), so it rebuilds the residual
// stream from them and scores every unit by what it adds to it.
class ScoreObserver : public ActivationObserver {
public:
    ScoreObserver(const Model& model, bool taylor) : model_(model), taylor_(taylor) {
        const ModelConfig& cfg = model.config;
        const size_t L = cfg.layers.size(), H = static_cast<size_t>(cfg.hidden);
        g_.resize(L);
        h_.resize(L);
        gate_.resize(L);
        ssm_sum_.resize(L);
        neuron_sum_.resize(L);
        expert_sum_.resize(L);
        contribution_.resize(L);
        for (size_t l = 0; l < L; l++) {
            const LayerWeights& w = model.layers[l];
            where_[w.ssm.out_proj.data] = {Role::out_proj, l, 0};
            g_[l].assign(static_cast<size_t>(cfg.layers[l].inner), 0.0f);
            ssm_sum_[l].assign(g_[l].size(), 0.0);
            const size_t E = w.experts.size();
            if (cfg.layers[l].kind == ChannelKind::moe) where_[w.router.data] = {Role::router, l, 0};
            h_[l].resize(E);
            gate_[l].assign(E, 0.0f);
            neuron_sum_[l].resize(E);
            expert_sum_[l].assign(E, 0.0);
            contribution_[l].assign(E, std::vector<float>(H));
            for (size_t e = 0; e < E; e++) {
                where_[w.experts[e].w2.data] = {Role::w2, l, e};
                h_[l][e].assign(static_cast<size_t>(w.experts[e].w2.cols), 0.0f);
                neuron_sum_[l][e].assign(h_[l][e].size(), 0.0);
            }
        }
        x_.resize(H);
        tmp_.resize(H);
    }

    // Before each token: the residual stream starts as embedding + position.
    void begin(int32_t row, int32_t pos) {
        ref::load_row(model_.embedding, row, x_.data());
        ref::load_row(model_.position, pos, tmp_.data());
        for (size_t i = 0; i < x_.size(); i++) x_[i] += tmp_[i];
        for (size_t l = 0; l < gate_.size(); l++) {
            const bool dense = model_.config.layers[l].kind == ChannelKind::ffn;
            std::fill(gate_[l].begin(), gate_[l].end(), dense ? 1.0f : 0.0f);
        }
    }

    void observe(const Weight& w, const float* x) override {
        const auto it = where_.find(w.data);
        if (it == where_.end()) return;
        const Where at = it->second;
        if (at.role == Role::router) {
            std::vector<float> logits(static_cast<size_t>(w.rows));
            std::vector<int32_t> index(static_cast<size_t>(w.rows));
            std::vector<float> weight(static_cast<size_t>(w.rows));
            ref::matvec(w, x, logits.data());
            const int32_t k = model_.config.layers[at.layer].top_k;
            ref::top_k_softmax(logits.data(), w.rows, k, index.data(), weight.data());
            for (int32_t j = 0; j < k; j++)
                gate_[at.layer][static_cast<size_t>(index[static_cast<size_t>(j)])] = weight[static_cast<size_t>(j)];
            return;
        }
        std::vector<float>& in = at.role == Role::out_proj ? g_[at.layer] : h_[at.layer][at.expert];
        std::copy(x, x + in.size(), in.begin());
        ref::matvec(w, x, tmp_.data());
        const float scale = at.role == Role::out_proj ? 1.0f : gate_[at.layer][at.expert];
        if (at.role == Role::w2)
            for (size_t i = 0; i < x_.size(); i++) contribution_[at.layer][at.expert][i] = scale * tmp_[i];
        for (size_t i = 0; i < x_.size(); i++) x_[i] += scale * tmp_[i];
    }

    // After each token's forward. `logits`/`target_row` (taylor only): the next-token loss.
    void end(const float* logits, int32_t target_row) {
        tokens_++;
        const size_t L = g_.size();
        if (!taylor_) {
            for (size_t l = 0; l < L; l++) {
                for (size_t i = 0; i < g_[l].size(); i++) ssm_sum_[l][i] += double{g_[l][i]} * g_[l][i];
                for (size_t e = 0; e < h_[l].size(); e++) {
                    const double p = gate_[l][e];
                    if (p == 0.0) continue;
                    for (size_t j = 0; j < h_[l][e].size(); j++)
                        neuron_sum_[l][e][j] += p * p * h_[l][e][j] * h_[l][e][j];
                    double c2 = 0;
                    for (float c : contribution_[l][e]) c2 += double{c} * c;
                    expert_sum_[l][e] += c2;
                }
            }
            return;
        }
        const std::vector<double> dx = loss_gradient(logits, target_row);
        const LayerWeights* w = model_.layers.data();
        for (size_t l = 0; l < L; l++) {
            const std::vector<double> r = transpose_times(w[l].ssm.out_proj, dx);  // out_proj^T dx
            for (size_t i = 0; i < g_[l].size(); i++) ssm_sum_[l][i] += std::fabs(g_[l][i] * r[i]);
            for (size_t e = 0; e < h_[l].size(); e++) {
                const double p = gate_[l][e];
                if (p == 0.0) continue;
                const std::vector<double> r2 = transpose_times(w[l].experts[e].w2, dx);
                double total = 0;
                for (size_t j = 0; j < h_[l][e].size(); j++) {
                    const double t = p * h_[l][e][j] * r2[j];
                    neuron_sum_[l][e][j] += std::fabs(t);
                    total += t;
                }
                expert_sum_[l][e] += std::fabs(total);
            }
        }
    }

    // Final scores into the groups (activation: RMS of the unit's residual contribution;
    // taylor: mean |g . c|).
    void fill(std::vector<UnitGroup>& groups) const {
        const double n = static_cast<double>(std::max<int64_t>(tokens_, 1));
        for (UnitGroup& g : groups) {
            const size_t l = static_cast<size_t>(g.layer);
            const LayerWeights& w = model_.layers[l];
            g.score.assign(static_cast<size_t>(g.units), 0.0);
            for (int32_t u = 0; u < g.units; u++) {
                const size_t i = static_cast<size_t>(u);
                double s = 0;
                if (g.kind == UnitKind::ssm_channel) {
                    s = taylor_ ? ssm_sum_[l][i] / n
                                : std::sqrt(ssm_sum_[l][i] / n) * weight_col_norm(w.ssm.out_proj, u);
                } else if (g.kind == UnitKind::expert) {
                    s = taylor_ ? expert_sum_[l][i] / n : std::sqrt(expert_sum_[l][i] / n);
                } else {
                    const size_t e = g.kind == UnitKind::ffn_neuron ? 0 : static_cast<size_t>(g.expert);
                    s = taylor_ ? neuron_sum_[l][e][i] / n
                                : std::sqrt(neuron_sum_[l][e][i] / n) * weight_col_norm(w.experts[e].w2, u);
                }
                g.score[i] = s;
            }
        }
    }

private:
    enum class Role { out_proj, router, w2 };
    struct Where {
        Role role;
        size_t layer, expert;
    };

    static double weight_col_norm(const Weight& w, int32_t col) {
        const float* v = static_cast<const float*>(w.data);
        double s = 0;
        for (int32_t r = 0; r < w.rows; r++)
            s += double{v[static_cast<size_t>(r) * static_cast<size_t>(w.cols) + static_cast<size_t>(col)]} *
                 v[static_cast<size_t>(r) * static_cast<size_t>(w.cols) + static_cast<size_t>(col)];
        return std::sqrt(s);
    }

    static std::vector<double> transpose_times(const Weight& w, const std::vector<double>& d) {
        const float* v = static_cast<const float*>(w.data);
        std::vector<double> out(static_cast<size_t>(w.cols), 0.0);
        for (int32_t r = 0; r < w.rows; r++)
            for (int32_t c = 0; c < w.cols; c++)
                out[static_cast<size_t>(c)] +=
                    v[static_cast<size_t>(r) * static_cast<size_t>(w.cols) + static_cast<size_t>(c)] *
                    d[static_cast<size_t>(r)];
        return out;
    }

    // d loss / d x at the final LayerNorm's input: cross-entropy through the head, then LayerNorm
    // backward (x is the rebuilt residual stream).
    std::vector<double> loss_gradient(const float* logits, int32_t target_row) const {
        const int32_t V = model_.config.vocab_size;
        const size_t H = x_.size();
        double top = logits[0];
        for (int32_t r = 1; r < V; r++) top = std::max(top, double{logits[r]});
        double z = 0;
        for (int32_t r = 0; r < V; r++) z += std::exp(logits[r] - top);
        std::vector<double> da(H, 0.0);
        const float* head = static_cast<const float*>(model_.lm_head.data);
        for (int32_t r = 0; r < V; r++) {
            const double p = std::exp(logits[r] - top) / z - (r == target_row ? 1.0 : 0.0);
            for (size_t i = 0; i < H; i++) da[i] += p * head[static_cast<size_t>(r) * H + i];
        }
        double mean = 0, var = 0;
        for (float v : x_) mean += v;
        mean /= static_cast<double>(H);
        for (float v : x_) var += (v - mean) * (v - mean);
        var /= static_cast<double>(H);
        const double inv = 1.0 / std::sqrt(var + model_.config.norm_eps);
        const float* gamma = static_cast<const float*>(model_.final_norm_w.data);
        std::vector<double> xhat(H), dxhat(H), dx(H);
        double m1 = 0, m2 = 0;
        for (size_t i = 0; i < H; i++) {
            xhat[i] = (x_[i] - mean) * inv;
            dxhat[i] = gamma[i] * da[i];
            m1 += dxhat[i];
            m2 += dxhat[i] * xhat[i];
        }
        m1 /= static_cast<double>(H);
        m2 /= static_cast<double>(H);
        for (size_t i = 0; i < H; i++) dx[i] = inv * (dxhat[i] - m1 - xhat[i] * m2);
        return dx;
    }

    const Model& model_;
    bool taylor_;
    std::unordered_map<const void*, Where> where_;
    std::vector<float> x_, tmp_;
    std::vector<std::vector<float>> g_, gate_;                   // [layer][channel], [layer][expert]
    std::vector<std::vector<std::vector<float>>> h_;             // [layer][expert][neuron]
    std::vector<std::vector<std::vector<float>>> contribution_;  // [layer][expert][hidden]
    std::vector<std::vector<double>> ssm_sum_, expert_sum_;
    std::vector<std::vector<std::vector<double>>> neuron_sum_;
    int64_t tokens_ = 0;
};

}  // namespace

void magnitude_scores(const ModelSpec& spec, UnitGroup& g) {
    g.score.assign(static_cast<size_t>(g.units), 0.0);
    if (g.kind == UnitKind::ssm_channel) {
        const SsmNames s = ssm_names(g.layer);
        const SpecTensor& in = spec_tensor(spec, s.in_proj);
        const SpecTensor& out = spec_tensor(spec, s.out_proj);
        for (int32_t i = 0; i < g.units; i++) g.score[static_cast<size_t>(i)] = row_norm(in, i) * col_norm(out, i);
        return;
    }
    if (g.kind == UnitKind::ffn_neuron) return neuron_magnitudes(spec, ffn_names(g.layer), &g.score);
    if (g.kind == UnitKind::expert_neuron) return neuron_magnitudes(spec, expert_names(g.layer, g.expert), &g.score);
    for (int32_t e = 0; e < g.units; e++) {
        const LayerConfig& lc = spec.config.layers[static_cast<size_t>(g.layer)];
        std::vector<double> s(static_cast<size_t>(lc.ffn_widths[static_cast<size_t>(e)]));
        neuron_magnitudes(spec, expert_names(g.layer, e), &s);
        for (double v : s) g.score[static_cast<size_t>(e)] += v;
    }
}

int64_t calibrated_scores(const ModelSpec& spec, std::vector<UnitGroup>& groups, Importance importance,
                          const std::vector<int32_t>& ids, int64_t max_tokens) {
    const SpecModel fp32 = load_spec(fp32_copy(spec));
    const Model& model = *fp32.model;
    const bool taylor = importance == Importance::taylor;
    const size_t P = static_cast<size_t>(model.config.max_seq_length);
    const size_t n = std::min(ids.size() - 1, static_cast<size_t>(std::max<int64_t>(max_tokens, 1)));
    // One token at a time: the observer rebuilds one token's residual stream from the products it sees.
    ScoreObserver observer(model, taylor);
    Context ctx(model);
    ctx.set_observer(&observer);
    for (size_t t = 0; t < n; t++) {
        if (t % P == 0) ctx.reset();
        observer.begin(model.row_of(ids[t]), static_cast<int32_t>(t % P));
        const float* logits = ctx.eval(ids[t], taylor);
        observer.end(logits, taylor ? model.row_of(ids[t + 1]) : -1);
    }
    observer.fill(groups);
    return static_cast<int64_t>(n);
}

}  // namespace itera
