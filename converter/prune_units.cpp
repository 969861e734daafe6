// Pruning's units: which groups of interchangeable units a model has, and removing units from the
// tensors (the slices listed in prune.h).
#include <algorithm>
#include <map>

#include "common/error.h"
#include "converter/prune.h"
#include "converter/vocabulary.h"
#include "format/tensor_names.h"

namespace itera {

namespace {

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

FfnNames neuron_names(const UnitGroup& g) {
    return g.kind == UnitKind::ffn_neuron ? ffn_names(g.layer) : expert_names(g.layer, g.expert);
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

// Removes whole experts of layer l (their router rows and tensors; the rest are renumbered).
void keep_experts(ModelSpec& spec, int32_t l, const std::vector<int32_t>& keep) {
    LayerConfig& lc = spec.config.layers[static_cast<size_t>(l)];
    keep_rows(spec_tensor(spec, router_name(l)), keep);
    std::map<std::string, std::string> renamed;  // old name -> new name
    std::vector<int32_t> widths;
    for (int32_t e : keep) {
        const FfnNames from = expert_names(l, e), to = expert_names(l, static_cast<int32_t>(widths.size()));
        renamed[from.w1] = to.w1;
        renamed[from.w2] = to.w2;
        widths.push_back(lc.ffn_widths[static_cast<size_t>(e)]);
    }
    const std::string experts = moe_prefix(l) + "experts.";
    std::vector<SpecTensor> tensors;
    for (SpecTensor& t : spec.tensors) {
        if (t.name.rfind(experts, 0) == 0) {
            const auto it = renamed.find(t.name);
            if (it == renamed.end()) continue;
            t.name = it->second;
        }
        tensors.push_back(std::move(t));
    }
    spec.tensors = std::move(tensors);
    lc.ffn_widths = widths;
}

}  // namespace

SpecTensor& spec_tensor(ModelSpec& spec, const std::string& name) {
    for (SpecTensor& t : spec.tensors)
        if (t.name == name) return t;
    throw Error("pruning: the model has no tensor '" + name + "'");
}

const SpecTensor& spec_tensor(const ModelSpec& spec, const std::string& name) {
    return spec_tensor(const_cast<ModelSpec&>(spec), name);
}

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

std::vector<std::string> group_tensors(const UnitGroup& g) {
    switch (g.kind) {
        case UnitKind::ssm_channel: {
            const SsmNames s = ssm_names(g.layer);
            return {s.in_proj, s.conv_w, s.conv_b, s.b, s.c, s.d, s.delta_w, s.delta_b, s.out_proj};
        }
        case UnitKind::ffn_neuron:
        case UnitKind::expert_neuron: {
            const FfnNames f = neuron_names(g);
            return {f.w1, f.w2};
        }
        case UnitKind::expert:
            return {router_name(g.layer), moe_prefix(g.layer) + "experts.*"};
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

void apply_pruning(ModelSpec& spec, const PrunePlan& plan) {
    for (const SpecTensor& t : spec.tensors)
        if (!t.packed.empty()) throw Error("pruning must come before quantization ('" + t.name + "' is packed)");
    for (const GroupPlan& gp : plan.groups) check_plan(spec.config, gp);
    for (const GroupPlan& gp : plan.groups) {
        const UnitGroup& g = gp.group;
        const std::vector<int32_t>& keep = gp.keep;
        LayerConfig& lc = spec.config.layers[static_cast<size_t>(g.layer)];
        if (g.kind == UnitKind::ssm_channel) {
            const SsmNames s = ssm_names(g.layer);
            std::vector<int32_t> uz = keep;  // u rows, then the same channels' z rows
            for (int32_t i : keep) uz.push_back(lc.inner + i);
            keep_rows(spec_tensor(spec, s.in_proj), uz);
            for (const std::string* name : {&s.conv_w, &s.conv_b, &s.c, &s.d, &s.delta_b})
                keep_rows(spec_tensor(spec, *name), keep);
            SpecTensor& delta = spec_tensor(spec, s.delta_w);
            keep_rows(delta, keep);
            keep_cols(delta, keep);
            keep_cols(spec_tensor(spec, s.b), keep);
            keep_cols(spec_tensor(spec, s.out_proj), keep);
            lc.inner = static_cast<int32_t>(keep.size());
        } else if (g.kind == UnitKind::ffn_neuron || g.kind == UnitKind::expert_neuron) {
            const FfnNames f = neuron_names(g);
            keep_rows(spec_tensor(spec, f.w1), keep);
            keep_cols(spec_tensor(spec, f.w2), keep);
            lc.ffn_widths[g.kind == UnitKind::ffn_neuron ? 0 : static_cast<size_t>(g.expert)] =
                static_cast<int32_t>(keep.size());
        }
    }
    for (const GroupPlan& gp : plan.groups)  // whole experts last: the neuron groups name old indices
        if (gp.group.kind == UnitKind::expert) keep_experts(spec, gp.group.layer, gp.keep);
    if (!plan.vocab_keep_rows.empty()) keep_vocab_rows(spec, plan.vocab_keep_rows);
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

const char* importance_name(Importance importance) {
    static const char* names[] = {"magnitude", "activation", "taylor"};
    return names[static_cast<int>(importance)];
}

const char* unit_kind_name(UnitKind kind) {
    static const char* names[] = {"ssm_channel", "ffn_neuron", "expert_neuron", "expert"};
    return names[static_cast<int>(kind)];
}

}  // namespace itera
