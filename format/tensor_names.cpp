#include "format/tensor_names.h"

namespace itera {

std::string shape_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

std::string layer_prefix(int layer) { return "layers." + std::to_string(layer) + "."; }
std::string moe_prefix(int layer) { return layer_prefix(layer) + "moe.layer."; }
std::string expert_prefix(int layer, int expert) {
    return moe_prefix(layer) + "experts." + std::to_string(expert) + ".";
}

SsmNames ssm_names(int layer) {
    const std::string p = layer_prefix(layer) + "ssm.";
    SsmNames n;
    n.norm_w = p + "norm.weight";
    n.norm_b = p + "norm.bias";
    n.in_proj = p + "in_proj.weight";
    n.conv_w = p + "conv1d.weight";
    n.conv_b = p + "conv1d.bias";
    n.a_log = p + "ssm.A_log";
    n.b = p + "ssm.B";
    n.c = p + "ssm.C";
    n.d = p + "ssm.D";
    n.delta_w = p + "ssm.delta_proj.weight";
    n.delta_b = p + "ssm.delta_proj.bias";
    n.out_proj = p + "out_proj.weight";
    return n;
}

FfnNames ffn_names(int layer) {
    const std::string p = layer_prefix(layer) + "moe.ffn.";
    return {p + "w1.weight", p + "w2.weight"};
}

FfnNames expert_names(int layer, int expert) {
    const std::string p = expert_prefix(layer, expert);
    return {p + "w1.weight", p + "w2.weight"};
}

std::string router_name(int layer) { return moe_prefix(layer) + "router.gate.weight"; }

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_conv_weight_name(const std::string& name) { return ends_with(name, ".ssm.conv1d.weight"); }
bool is_ssm_c_name(const std::string& name) { return ends_with(name, ".ssm.ssm.C"); }
bool is_ssm_b_name(const std::string& name) { return ends_with(name, ".ssm.ssm.B"); }

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config) {
    const int64_t H = config.hidden;
    std::vector<ExpectedTensor> out = {
        {kEmbeddingName, {config.vocab_size, H}},
        {kPositionName, {config.max_seq_length, H}},
    };
    for (size_t l = 0; l < config.layers.size(); l++) {
        const LayerConfig& layer = config.layers[l];
        const int li = static_cast<int>(l);
        const int64_t Di = layer.inner, N = layer.state, K = layer.conv_kernel;
        SsmNames s = ssm_names(li);
        out.push_back({std::move(s.norm_w), {H}});
        out.push_back({std::move(s.norm_b), {H}});
        out.push_back({std::move(s.in_proj), {2 * Di, H}});
        out.push_back({std::move(s.conv_w), {Di, 1, K}});
        out.push_back({std::move(s.conv_b), {Di}});
        out.push_back({std::move(s.a_log), {N}});
        out.push_back({std::move(s.b), {N, Di}});
        out.push_back({std::move(s.c), {Di, N}});
        out.push_back({std::move(s.d), {Di}});
        out.push_back({std::move(s.delta_w), {Di, Di}});
        out.push_back({std::move(s.delta_b), {Di}});
        out.push_back({std::move(s.out_proj), {H, Di}});
        if (layer.kind == ChannelKind::ffn) {
            const int64_t F = layer.ffn_widths.at(0);
            const std::string p = layer_prefix(li) + "moe.";
            FfnNames f = ffn_names(li);
            out.push_back({p + "norm.weight", {H}});
            out.push_back({p + "norm.bias", {H}});
            out.push_back({std::move(f.w1), {F, H}});
            out.push_back({std::move(f.w2), {H, F}});
        } else if (layer.kind == ChannelKind::moe) {
            const std::string m = moe_prefix(li);
            const int64_t E = static_cast<int64_t>(layer.ffn_widths.size());
            out.push_back({m + "norm.weight", {H}});
            out.push_back({m + "norm.bias", {H}});
            out.push_back({router_name(li), {E, H}});
            for (int64_t e = 0; e < E; e++) {
                const int64_t F = layer.ffn_widths[static_cast<size_t>(e)];
                FfnNames x = expert_names(li, static_cast<int>(e));
                out.push_back({std::move(x.w1), {F, H}});
                out.push_back({std::move(x.w2), {H, F}});
            }
        }
    }
    out.push_back({kFinalNormWeightName, {H}});
    out.push_back({kFinalNormBiasName, {H}});
    if (!config.tied_head) out.push_back({kLmHeadName, {config.vocab_size, H}});
    return out;
}

}  // namespace itera
