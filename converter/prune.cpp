#include "converter/prune.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>

#include "common/error.h"
#include "format/itl_file.h"
#include "format/tensor_names.h"
#include "kernels_cpu/ref_ops.h"
#include "runtime/context.h"
#include "runtime/model.h"
#include "runtime/sampler.h"

namespace itera {

namespace {

size_t tensor_index(const ModelSpec& spec, const std::string& name) {
    for (size_t i = 0; i < spec.tensors.size(); i++)
        if (spec.tensors[i].name == name) return i;
    throw Error("pruning: the model has no tensor '" + name + "'");
}

SpecTensor& tensor(ModelSpec& spec, const std::string& name) { return spec.tensors[tensor_index(spec, name)]; }
const SpecTensor& tensor(const ModelSpec& spec, const std::string& name) {
    return spec.tensors[tensor_index(spec, name)];
}

// Keeps rows `keep` of the outermost dimension.
void keep_rows(SpecTensor& t, const std::vector<int32_t>& keep) {
    const size_t row = t.values.size() / static_cast<size_t>(t.shape[0]);
    std::vector<float> out;
    out.reserve(keep.size() * row);
    for (int32_t r : keep) {
        const auto first = t.values.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(r) * row);
        out.insert(out.end(), first, first + static_cast<std::ptrdiff_t>(row));
    }
    t.values = std::move(out);
    t.shape[0] = static_cast<int64_t>(keep.size());
}

// Keeps columns `keep` of the last dimension.
void keep_cols(SpecTensor& t, const std::vector<int32_t>& keep) {
    const size_t cols = static_cast<size_t>(t.shape.back());
    const size_t rows = t.values.size() / cols;
    std::vector<float> out;
    out.reserve(rows * keep.size());
    for (size_t r = 0; r < rows; r++)
        for (int32_t c : keep) out.push_back(t.values[r * cols + static_cast<size_t>(c)]);
    t.values = std::move(out);
    t.shape.back() = static_cast<int64_t>(keep.size());
}

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

std::string ffn_prefix(const UnitGroup& g) {
    return g.kind == UnitKind::ffn_neuron ? layer_prefix(g.layer) + "moe.ffn." : expert_prefix(g.layer, g.expert);
}

// The tensors a group's units are slices of (for the report).
std::vector<std::string> group_tensors(const UnitGroup& g) {
    const std::string p = layer_prefix(g.layer) + "ssm.";
    switch (g.kind) {
        case UnitKind::ssm_channel:
            return {p + "in_proj.weight", p + "conv1d.weight", p + "conv1d.bias",           p + "ssm.B",
                    p + "ssm.C",          p + "ssm.D",         p + "ssm.delta_proj.weight", p + "ssm.delta_proj.bias",
                    p + "out_proj.weight"};
        case UnitKind::ffn_neuron:
        case UnitKind::expert_neuron:
            return {ffn_prefix(g) + "w1.weight", ffn_prefix(g) + "w2.weight"};
        case UnitKind::expert:
            return {moe_prefix(g.layer) + "router.gate.weight", moe_prefix(g.layer) + "experts.*"};
    }
    return {};
}

int64_t weights_of(const ModelConfig& config) {
    int64_t n = 0;
    for (const ExpectedTensor& e : expected_tensors(config)) {
        int64_t p = 1;
        for (int64_t d : e.shape) p *= d;
        n += p;
    }
    return n;
}

// The config after `plan` (its groups must describe `config`).
ModelConfig pruned_config(const ModelConfig& config, const PrunePlan& plan) {
    ModelConfig c = config;
    for (const GroupPlan& gp : plan.groups) {
        const UnitGroup& g = gp.group;
        LayerConfig& lc = c.layers.at(static_cast<size_t>(g.layer));
        const auto kept = static_cast<int32_t>(gp.keep.size());
        if (g.kind == UnitKind::ssm_channel) lc.inner = kept;
        if (g.kind == UnitKind::ffn_neuron) lc.ffn_widths.at(0) = kept;
        if (g.kind == UnitKind::expert_neuron) lc.ffn_widths.at(static_cast<size_t>(g.expert)) = kept;
    }
    for (const GroupPlan& gp : plan.groups) {  // experts go last: neuron groups use the old indices
        if (gp.group.kind != UnitKind::expert) continue;
        LayerConfig& lc = c.layers.at(static_cast<size_t>(gp.group.layer));
        std::vector<int32_t> widths;
        for (int32_t e : gp.keep) widths.push_back(lc.ffn_widths.at(static_cast<size_t>(e)));
        lc.ffn_widths = widths;
    }
    if (!plan.vocab_keep_rows.empty()) c.vocab_size = static_cast<int32_t>(plan.vocab_keep_rows.size());
    return c;
}

// ---- scores ----

void magnitude_scores(const ModelSpec& spec, UnitGroup& g) {
    g.score.assign(static_cast<size_t>(g.units), 0.0);
    if (g.kind == UnitKind::ssm_channel) {
        const std::string p = layer_prefix(g.layer) + "ssm.";
        const SpecTensor& in = tensor(spec, p + "in_proj.weight");
        const SpecTensor& out = tensor(spec, p + "out_proj.weight");
        for (int32_t i = 0; i < g.units; i++) g.score[static_cast<size_t>(i)] = row_norm(in, i) * col_norm(out, i);
        return;
    }
    auto neurons = [&](const std::string& prefix, std::vector<double>* score) {
        const SpecTensor& w1 = tensor(spec, prefix + "w1.weight");
        const SpecTensor& w2 = tensor(spec, prefix + "w2.weight");
        for (int64_t j = 0; j < w1.shape[0]; j++) (*score)[static_cast<size_t>(j)] = row_norm(w1, j) * col_norm(w2, j);
    };
    if (g.kind != UnitKind::expert) return neurons(ffn_prefix(g), &g.score);
    for (int32_t e = 0; e < g.units; e++) {
        const LayerConfig& lc = spec.config.layers[static_cast<size_t>(g.layer)];
        std::vector<double> s(static_cast<size_t>(lc.ffn_widths[static_cast<size_t>(e)]));
        neurons(expert_prefix(g.layer, e), &s);
        for (double v : s) g.score[static_cast<size_t>(e)] += v;
    }
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

// A FP32 copy of `spec`, loaded by the runtime.
std::unique_ptr<Model> load_fp32(const ModelSpec& spec, std::vector<uint8_t>* bytes) {
    ModelSpec fp32 = spec;
    for (SpecTensor& t : fp32.tensors) {
        t.dtype = DType::f32;
        t.packed.clear();
    }
    *bytes = serialize_itl(fp32);
    return load_model(ItlFile::from_memory(bytes->data(), bytes->size()));
}

// Log-probabilities at every position of `ids` but the last, in windows of max_seq_length from
// zero state (as `itera-run ppl` scores text).
std::vector<float> window_log_probs(const ModelSpec& spec, const std::vector<int32_t>& ids) {
    std::vector<uint8_t> bytes;
    const auto model = load_fp32(spec, &bytes);
    Context ctx(*model);
    const int32_t V = model->config.vocab_size;
    const size_t P = static_cast<size_t>(model->config.max_seq_length);
    std::vector<float> out((ids.size() - 1) * static_cast<size_t>(V));  // floats: (ids - 1) x V of them
    std::vector<double> logp(static_cast<size_t>(V));
    for (size_t t = 0; t + 1 < ids.size(); t++) {
        if (t % P == 0) ctx.reset();
        log_softmax(ctx.eval(ids[t]), V, logp.data());
        std::copy(logp.begin(), logp.end(), out.begin() + static_cast<ptrdiff_t>(t * static_cast<size_t>(V)));
    }
    return out;
}

double mean_kld(const std::vector<float>& ref, const std::vector<float>& got, int32_t V) {
    double kld = 0;
    for (size_t i = 0; i < ref.size(); i++) kld += std::exp(double{ref[i]}) * (double{ref[i]} - got[i]);
    return kld / static_cast<double>(ref.size() / static_cast<size_t>(V));
}

// "--prune 0.9 asks for more than the scope allows (at most 0.875)": the ratio as given, the limit
// rounded down, so that the number named is itself accepted.
Error too_much(double ratio, double most) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "--prune %g asks for more than the scope allows (at most %.3f)", ratio,
                  std::floor(most * 1000.0) / 1000.0);
    return Error(buf);
}

// Units ordered least important first (ties: lower index first).
std::vector<int32_t> removal_order(const UnitGroup& g) {
    std::vector<int32_t> order(static_cast<size_t>(g.units));
    for (int32_t i = 0; i < g.units; i++) order[static_cast<size_t>(i)] = i;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return g.score[static_cast<size_t>(a)] < g.score[static_cast<size_t>(b)];
    });
    return order;
}

GroupPlan keep_best(const UnitGroup& g, int32_t kept) {
    const std::vector<int32_t> order = removal_order(g);
    GroupPlan gp;
    gp.group = g;
    gp.group.score.clear();
    gp.group.sens_keep.clear();
    gp.group.sens_kld.clear();
    gp.keep.assign(order.end() - kept, order.end());
    std::sort(gp.keep.begin(), gp.keep.end());
    return gp;
}

// The fewest units a group may keep.
int32_t min_keep(const UnitGroup& g, const ModelConfig& config, double max_group_ratio) {
    int32_t k = std::max(1, static_cast<int32_t>(std::ceil(g.units * (1.0 - max_group_ratio) - 1e-9)));
    if (g.kind == UnitKind::expert) k = std::max(k, config.layers[static_cast<size_t>(g.layer)].top_k);
    return std::min(k, g.units);
}

PrunePlan plan_of(const std::vector<UnitGroup>& groups, const std::vector<int32_t>& kept) {
    PrunePlan plan;
    for (size_t i = 0; i < groups.size(); i++)
        if (kept[i] < groups[i].units) plan.groups.push_back(keep_best(groups[i], kept[i]));
    return plan;
}

void check_plan(const ModelConfig& config, const GroupPlan& gp) {
    const UnitGroup& g = gp.group;
    if (g.layer < 0 || static_cast<size_t>(g.layer) >= config.layers.size())
        throw Error("pruning plan: layer " + std::to_string(g.layer) + " does not exist");
    const LayerConfig& lc = config.layers[static_cast<size_t>(g.layer)];
    int32_t units = 0;
    switch (g.kind) {
        case UnitKind::ssm_channel:
            units = lc.inner;
            break;
        case UnitKind::ffn_neuron:
            units = lc.kind == ChannelKind::ffn ? lc.ffn_widths[0] : -1;
            break;
        case UnitKind::expert_neuron:
            units = lc.kind == ChannelKind::moe && g.expert >= 0 && static_cast<size_t>(g.expert) < lc.ffn_widths.size()
                        ? lc.ffn_widths[static_cast<size_t>(g.expert)]
                        : -1;
            break;
        case UnitKind::expert:
            units = lc.kind == ChannelKind::moe ? static_cast<int32_t>(lc.ffn_widths.size()) : -1;
            break;
    }
    if (units != g.units) throw Error("pruning plan for " + g.name() + " does not match the model");
    if (gp.keep.empty() || (g.kind == UnitKind::expert && static_cast<int32_t>(gp.keep.size()) < lc.top_k))
        throw Error("pruning plan leaves " + g.name() + " with too few units");
    for (size_t i = 0; i < gp.keep.size(); i++)
        if (gp.keep[i] < (i ? gp.keep[i - 1] + 1 : 0) || gp.keep[i] >= units)
            throw Error("pruning plan for " + g.name() + ": kept indices must be ascending and in range");
}

}  // namespace

std::string UnitGroup::name() const {
    switch (kind) {
        case UnitKind::ssm_channel:
            return layer_prefix(layer) + "ssm.channels";
        case UnitKind::ffn_neuron:
            return layer_prefix(layer) + "moe.ffn.neurons";
        case UnitKind::expert_neuron:
            return expert_prefix(layer, expert) + "neurons";
        case UnitKind::expert:
            return moe_prefix(layer) + "experts";
    }
    return "";
}

std::vector<UnitGroup> unit_groups(const ModelSpec& spec, const PruneScope& scope) {
    const ModelConfig& cfg = spec.config;
    const int64_t H = cfg.hidden;
    std::vector<UnitGroup> out;
    for (size_t l = 0; l < cfg.layers.size(); l++) {
        const LayerConfig& lc = cfg.layers[l];
        UnitGroup g;
        g.layer = static_cast<int32_t>(l);
        if (scope.ssm) {
            g.kind = UnitKind::ssm_channel;
            g.units = lc.inner;
            // u and z rows, conv row and bias, delta row + column + bias, B column, C row, D, out_proj column
            g.weights_per_unit = 2 * H + lc.conv_kernel + 1 + 2 * int64_t{lc.inner} + 2 * int64_t{lc.state} + 1 + H;
            out.push_back(g);
        }
        if (lc.kind == ChannelKind::ffn && scope.ffn) {
            g.kind = UnitKind::ffn_neuron;
            g.units = lc.ffn_widths[0];
            g.weights_per_unit = 2 * H;
            out.push_back(g);
        }
        if (lc.kind == ChannelKind::moe && scope.moe) {
            const auto E = static_cast<int32_t>(lc.ffn_widths.size());
            int64_t total = 0;
            for (int32_t e = 0; e < E; e++) {
                g.kind = UnitKind::expert_neuron;
                g.expert = e;
                g.units = lc.ffn_widths[static_cast<size_t>(e)];
                g.weights_per_unit = 2 * H;
                total += 2 * H * g.units + H;
                out.push_back(g);
            }
            g.kind = UnitKind::expert;
            g.expert = -1;
            g.units = E;
            g.weights_per_unit = total / E;
            out.push_back(g);
        }
    }
    return out;
}

PruneAnalysis analyze_pruning(const ModelSpec& spec, const PruneOptions& options, const std::string& calib_text) {
    PruneAnalysis a;
    a.groups = unit_groups(spec, options.scope);
    ModelConfig empty = spec.config;  // every in-scope group at zero units
    for (LayerConfig& lc : empty.layers) {
        if (options.scope.ssm) lc.inner = 0;
        if (lc.kind == ChannelKind::ffn && options.scope.ffn) lc.ffn_widths[0] = 0;
        if (lc.kind == ChannelKind::moe && options.scope.moe) lc.ffn_widths.clear();
    }
    a.prunable_weights = weights_of(spec.config) - weights_of(empty);
    if (calib_text.empty() || options.importance == Importance::magnitude) {
        for (UnitGroup& g : a.groups) magnitude_scores(spec, g);
    }
    if (calib_text.empty()) return a;
    if (!spec.has_tokenizer) throw Error("pruning with calibration text needs a tokenizer (--tokenizer TOK.json)");
    std::vector<uint8_t> bytes;
    const auto model = load_fp32(spec, &bytes);
    std::vector<int32_t> ids = model->tokenizer.encode(calib_text);
    if (ids.size() < 2) throw Error("calibration text has fewer than 2 tokens");
    const size_t P = static_cast<size_t>(model->config.max_seq_length);
    if (options.importance != Importance::magnitude) {
        const bool taylor = options.importance == Importance::taylor;
        const size_t n = std::min(ids.size() - 1, static_cast<size_t>(std::max<int64_t>(options.calib_tokens, 1)));
        ScoreObserver observer(*model, taylor);
        Context ctx(*model);
        ctx.set_observer(&observer);
        for (size_t t = 0; t < n; t++) {
            if (t % P == 0) ctx.reset();
            observer.begin(model->row_of(ids[t]), static_cast<int32_t>(t % P));
            const float* logits = ctx.eval(ids[t], taylor);
            observer.end(logits, taylor ? model->row_of(ids[t + 1]) : -1);
        }
        observer.fill(a.groups);
        a.importance = options.importance;
        a.calib_tokens = static_cast<int64_t>(n);
    }
    if (!options.by_sensitivity) return a;
    // Sensitivity: prune one group at a time to each of a few sizes, measure KL from the original.
    // The reference log-probabilities are kept: at most 32 M floats of them.
    const int64_t most = std::max<int64_t>(
        2, std::min<int64_t>(options.sensitivity_tokens, (int64_t{32} << 20) / spec.config.vocab_size));
    const std::vector<int32_t> sens_ids(
        ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), static_cast<size_t>(most))));
    const std::vector<float> ref = window_log_probs(spec, sens_ids);
    for (UnitGroup& g : a.groups) {
        const int32_t lo = min_keep(g, spec.config, options.max_group_ratio);
        std::set<int32_t, std::greater<int32_t>> sizes;
        if (g.kind == UnitKind::expert) {
            for (int32_t k = g.units - 1; k >= lo; k--) sizes.insert(k);
        } else {
            for (int j = 1; j < 8; j++)
                sizes.insert(std::max(lo, static_cast<int32_t>(std::lround(g.units * (8 - j) / 8.0))));
        }
        sizes.erase(g.units);
        for (int32_t k : sizes) {
            ModelSpec copy = spec;
            PrunePlan plan;
            plan.groups.push_back(keep_best(g, k));
            apply_pruning(copy, plan);
            g.sens_keep.push_back(k);
            g.sens_kld.push_back(mean_kld(ref, window_log_probs(copy, sens_ids), spec.config.vocab_size));
        }
    }
    return a;
}

PrunePlan plan_pruning(const ModelSpec& spec, const PruneAnalysis& analysis, const PruneOptions& options) {
    if (!(options.ratio >= 0.0 && options.ratio < 1.0)) throw Error("--prune ratio must be in [0, 1)");
    const std::vector<UnitGroup>& groups = analysis.groups;
    for (const UnitGroup& g : groups)
        if (options.ratio > 0 && static_cast<int32_t>(g.score.size()) != g.units)
            throw Error("pruning: " + g.name() + " has no scores");
    const int64_t base = weights_of(spec.config);
    auto removed = [&](const std::vector<int32_t>& kept) {
        return base - weights_of(pruned_config(spec.config, plan_of(groups, kept)));
    };
    const double target = options.ratio * static_cast<double>(analysis.prunable_weights);
    std::vector<int32_t> kept(groups.size()), least(groups.size());
    for (size_t i = 0; i < groups.size(); i++) {
        kept[i] = groups[i].units;
        least[i] = min_keep(groups[i], spec.config, options.max_group_ratio);
    }
    bool sensitive = false;  // measured for every group that can shrink
    for (const UnitGroup& g : groups) sensitive = sensitive || !g.sens_keep.empty();
    sensitive = sensitive && options.by_sensitivity;
    if (target > 0 && !sensitive) {
        // The same fraction of every group (whole experts stay): the smallest that reaches target.
        auto at = [&](double f) {
            std::vector<int32_t> k(groups.size());
            for (size_t i = 0; i < groups.size(); i++)
                k[i] = groups[i].kind == UnitKind::expert
                           ? groups[i].units
                           : std::max(least[i],
                                      groups[i].units - static_cast<int32_t>(std::floor(f * groups[i].units + 1e-9)));
            return k;
        };
        if (static_cast<double>(removed(at(1.0))) < target)
            throw too_much(options.ratio,
                           static_cast<double>(removed(at(1.0))) / static_cast<double>(analysis.prunable_weights));
        double lo = 0, hi = 1;
        for (int it = 0; it < 60; it++) {
            const double mid = 0.5 * (lo + hi);
            (static_cast<double>(removed(at(mid))) >= target ? hi : lo) = mid;
        }
        kept = at(hi);
    } else if (target > 0) {
        // Greedy: each step takes the size change with the least measured KL per removed weight.
        std::vector<double> loss(groups.size(), 0.0);
        size_t last = 0;
        int32_t last_from = 0;
        while (static_cast<double>(removed(kept)) < target) {
            const int64_t now = removed(kept);
            double best = INFINITY;
            size_t best_g = 0, best_j = 0;
            for (size_t i = 0; i < groups.size(); i++) {
                for (size_t j = 0; j < groups[i].sens_keep.size(); j++) {
                    if (groups[i].sens_keep[j] >= kept[i]) continue;
                    std::vector<int32_t> k = kept;
                    k[i] = groups[i].sens_keep[j];
                    const int64_t dw = removed(k) - now;
                    if (dw <= 0) continue;
                    const double cost = (groups[i].sens_kld[j] - loss[i]) / static_cast<double>(dw);
                    if (cost < best) {
                        best = cost;
                        best_g = i;
                        best_j = j;
                    }
                }
            }
            if (best == INFINITY)
                throw too_much(options.ratio,
                               static_cast<double>(now) / static_cast<double>(analysis.prunable_weights));
            last = best_g;
            last_from = kept[best_g];
            kept[best_g] = groups[best_g].sens_keep[best_j];
            loss[best_g] = groups[best_g].sens_kld[best_j];
        }
        // The last step may overshoot: keep as many of its units as still reach the target.
        int32_t lo = kept[last], hi = last_from;  // removed(lo) >= target > removed(hi)
        while (hi - lo > 1) {
            const int32_t mid = lo + (hi - lo) / 2;
            std::vector<int32_t> k = kept;
            k[last] = mid;
            (static_cast<double>(removed(k)) >= target ? lo : hi) = mid;
        }
        kept[last] = lo;
    }
    PrunePlan plan = plan_of(groups, kept);
    if (options.scope.vocab) {
        // A file without vocab_ids must then list every kept id (4 bytes each before zstd): drop
        // rows only when they hold at least as many weights as there are ids to list.
        std::vector<int32_t> rows = reachable_vocab_rows(spec);
        const int64_t kept = static_cast<int64_t>(rows.size()), dropped = spec.config.vocab_size - kept;
        if (dropped > 0 && (!spec.config.vocab_ids.empty() || dropped * spec.config.hidden >= kept))
            plan.vocab_keep_rows = std::move(rows);
    }
    plan.removed_weights = base - weights_of(pruned_config(spec.config, plan));
    return plan;
}

void apply_pruning(ModelSpec& spec, const PrunePlan& plan) {
    for (const SpecTensor& t : spec.tensors)
        if (!t.packed.empty()) throw Error("pruning must come before quantization ('" + t.name + "' is packed)");
    for (const GroupPlan& gp : plan.groups) check_plan(spec.config, gp);
    for (const GroupPlan& gp : plan.groups) {
        const UnitGroup& g = gp.group;
        const std::vector<int32_t>& keep = gp.keep;
        LayerConfig& lc = spec.config.layers[static_cast<size_t>(g.layer)];
        if (g.kind == UnitKind::ssm_channel) {
            const std::string p = layer_prefix(g.layer) + "ssm.";
            std::vector<int32_t> uz = keep;  // u rows, then the same channels' z rows
            for (int32_t i : keep) uz.push_back(lc.inner + i);
            keep_rows(tensor(spec, p + "in_proj.weight"), uz);
            for (const char* name : {"conv1d.weight", "conv1d.bias", "ssm.C", "ssm.D", "ssm.delta_proj.bias"})
                keep_rows(tensor(spec, p + name), keep);
            SpecTensor& delta = tensor(spec, p + "ssm.delta_proj.weight");
            keep_rows(delta, keep);
            keep_cols(delta, keep);
            keep_cols(tensor(spec, p + "ssm.B"), keep);
            keep_cols(tensor(spec, p + "out_proj.weight"), keep);
            lc.inner = static_cast<int32_t>(keep.size());
        } else if (g.kind == UnitKind::ffn_neuron || g.kind == UnitKind::expert_neuron) {
            keep_rows(tensor(spec, ffn_prefix(g) + "w1.weight"), keep);
            keep_cols(tensor(spec, ffn_prefix(g) + "w2.weight"), keep);
            lc.ffn_widths[g.kind == UnitKind::ffn_neuron ? 0 : static_cast<size_t>(g.expert)] =
                static_cast<int32_t>(keep.size());
        }
    }
    for (const GroupPlan& gp : plan.groups) {  // whole experts last: the neuron groups name old indices
        if (gp.group.kind != UnitKind::expert) continue;
        const int32_t l = gp.group.layer;
        LayerConfig& lc = spec.config.layers[static_cast<size_t>(l)];
        keep_rows(tensor(spec, moe_prefix(l) + "router.gate.weight"), gp.keep);
        std::map<int32_t, int32_t> new_index;
        std::vector<int32_t> widths;
        for (int32_t e : gp.keep) {
            new_index[e] = static_cast<int32_t>(widths.size());
            widths.push_back(lc.ffn_widths[static_cast<size_t>(e)]);
        }
        const std::string prefix = moe_prefix(l) + "experts.";
        std::vector<SpecTensor> tensors;
        for (SpecTensor& t : spec.tensors) {
            if (t.name.rfind(prefix, 0) == 0) {
                const size_t dot = t.name.find('.', prefix.size());
                const int32_t e = std::stoi(t.name.substr(prefix.size(), dot - prefix.size()));
                const auto it = new_index.find(e);
                if (it == new_index.end()) continue;
                t.name = expert_prefix(l, it->second) + t.name.substr(dot + 1);
            }
            tensors.push_back(std::move(t));
        }
        spec.tensors = std::move(tensors);
        lc.ffn_widths = widths;
    }
    if (!plan.vocab_keep_rows.empty()) {
        const std::vector<int32_t>& rows = plan.vocab_keep_rows;
        for (size_t i = 0; i < rows.size(); i++)
            if (rows[i] < (i ? rows[i - 1] + 1 : 0) || rows[i] >= spec.config.vocab_size)
                throw Error("pruning plan: vocabulary rows must be ascending and in range");
        for (SpecTensor& t : spec.tensors)
            if (t.name == "embedding.weight" || t.name == "lm_head.weight") keep_rows(t, rows);
        std::vector<int32_t> ids;
        for (int32_t r : rows)
            ids.push_back(spec.config.vocab_ids.empty() ? r : spec.config.vocab_ids[static_cast<size_t>(r)]);
        spec.config.vocab_ids = ids;
        spec.config.vocab_size = static_cast<int32_t>(rows.size());
    }
    // The canonical order, and a check that every shape agrees with the new config.
    validate_config(spec.config);
    std::map<std::string, SpecTensor> by_name;
    for (SpecTensor& t : spec.tensors) by_name[t.name] = std::move(t);
    spec.tensors.clear();
    for (const ExpectedTensor& e : expected_tensors(spec.config)) {
        auto it = by_name.find(e.name);
        if (it == by_name.end() || it->second.shape != e.shape)
            throw Error("pruning left tensor '" + e.name + "' inconsistent with the config");
        spec.tensors.push_back(std::move(it->second));
        by_name.erase(it);
    }
    if (!by_name.empty()) throw Error("pruning left an unexpected tensor '" + by_name.begin()->first + "'");
}

PrunePlan prune_spec(ModelSpec& spec, const PruneOptions& options, const std::string& calib_text) {
    PruneAnalysis analysis;  // ratio 0 (a scope alone, e.g. vocab) needs no scores
    if (options.ratio > 0) {
        analysis = analyze_pruning(spec, options, calib_text);
    } else {
        analysis.groups = unit_groups(spec, options.scope);
    }
    const PrunePlan plan = plan_pruning(spec, analysis, options);
    apply_pruning(spec, plan);
    return plan;
}

PrunePlan zero_unit_plan(const ModelSpec& spec) {
    PruneScope all;
    all.ssm = false;
    PrunePlan plan;
    const int64_t before = weights_of(spec.config);
    for (UnitGroup& g : unit_groups(spec, all)) {
        if (g.kind != UnitKind::ffn_neuron && g.kind != UnitKind::expert_neuron) continue;
        const SpecTensor& w1 = tensor(spec, ffn_prefix(g) + "w1.weight");
        const SpecTensor& w2 = tensor(spec, ffn_prefix(g) + "w2.weight");
        GroupPlan gp;
        for (int32_t j = 0; j < g.units; j++)
            if (row_norm(w1, j) != 0.0 && col_norm(w2, j) != 0.0) gp.keep.push_back(j);
        if (static_cast<int32_t>(gp.keep.size()) == g.units) continue;
        if (gp.keep.empty()) gp.keep.push_back(0);  // an expert keeps one (zero) neuron
        gp.group = g;
        plan.groups.push_back(gp);
    }
    plan.removed_weights = before - weights_of(pruned_config(spec.config, plan));
    return plan;
}

std::vector<int32_t> reachable_vocab_rows(const ModelSpec& spec) {
    std::vector<int32_t> rows;
    const std::vector<std::string>& tokens = spec.tokenizer.tokens;
    std::set<std::string> seen;
    for (int32_t r = 0; r < spec.config.vocab_size; r++) {
        const int32_t id = spec.config.vocab_ids.empty() ? r : spec.config.vocab_ids[static_cast<size_t>(r)];
        bool ok = !spec.has_tokenizer;
        if (spec.has_tokenizer && id < static_cast<int32_t>(tokens.size())) {
            const std::string& s = tokens[static_cast<size_t>(id)];
            ok = !s.empty() && seen.insert(s).second;                // encode finds the first of equal pieces
            if (ok && spec.tokenizer.kind == TokenizerKind::word) {  // lower-cased, split on whitespace
                for (unsigned char c : s)
                    if ((c >= 'A' && c <= 'Z') || c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f))
                        ok = false;
            } else if (ok) {  // the tokenizer cuts the length its lead byte announces, less at the text's end
                const auto lead = static_cast<unsigned char>(s[0]);
                const size_t n = lead >= 0xf0 && lead < 0xf8 ? 4
                                 : lead >= 0xe0              ? (lead < 0xf0 ? 3 : 1)
                                 : lead >= 0xc0              ? 2
                                                             : 1;
                ok = s.size() <= n;
            }
            ok = ok || s == "<UNK>" || s == "<EOS>";  // <UNK>: unknown pieces; <EOS>: ends generation
        }
        if (ok) rows.push_back(r);
    }
    return rows;
}

PruneScope parse_prune_scope(const std::string& list) {
    PruneScope scope{false, false, false, false};
    size_t start = 0;
    while (start <= list.size()) {
        const size_t comma = std::min(list.find(',', start), list.size());
        const std::string item = list.substr(start, comma - start);
        if (item == "moe")
            scope.moe = true;
        else if (item == "ffn")
            scope.ffn = true;
        else if (item == "ssm")
            scope.ssm = true;
        else if (item == "vocab")
            scope.vocab = true;
        else
            throw Error("--prune-scope expects a comma-separated list of moe, ffn, ssm, vocab; got '" + list + "'");
        start = comma + 1;
    }
    return scope;
}

std::string prune_report_json(const PrunePlan& plan) {
    static const char* kinds[] = {"ssm_channel", "ffn_neuron", "expert_neuron", "expert"};
    std::string out = "{\"removed_weights\": " + std::to_string(plan.removed_weights) + ", \"groups\": [";
    for (size_t i = 0; i < plan.groups.size(); i++) {
        const GroupPlan& gp = plan.groups[i];
        const UnitGroup& g = gp.group;
        out += std::string(i ? ", " : "") + "\n    {\"name\": \"" + g.name() + "\", \"kind\": \"" +
               kinds[static_cast<int>(g.kind)] + "\", \"layer\": " + std::to_string(g.layer) +
               ", \"expert\": " + std::to_string(g.expert) + ", \"units\": " + std::to_string(g.units) +
               ", \"kept\": " + std::to_string(gp.keep.size()) + ", \"tensors\": [";
        const std::vector<std::string> names = group_tensors(g);
        for (size_t j = 0; j < names.size(); j++) out += std::string(j ? ", " : "") + "\"" + names[j] + "\"";
        out += "], \"keep\": [";
        for (size_t j = 0; j < gp.keep.size(); j++) out += std::string(j ? "," : "") + std::to_string(gp.keep[j]);
        out += "]}";
    }
    out += "]";
    if (!plan.vocab_keep_rows.empty()) out += ", \"vocab_rows_kept\": " + std::to_string(plan.vocab_keep_rows.size());
    return out + "}";
}

}  // namespace itera
