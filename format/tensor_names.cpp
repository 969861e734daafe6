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

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config) {
    const int64_t H = config.hidden;
    std::vector<ExpectedTensor> out = {
        {"embedding.weight", {config.vocab_size, H}},
        {"position_embedding.weight", {config.max_seq_length, H}},
    };
    for (size_t l = 0; l < config.layers.size(); l++) {
        const LayerConfig& layer = config.layers[l];
        const std::string p = layer_prefix(static_cast<int>(l));
        const int64_t Di = layer.inner, N = layer.state, K = layer.conv_kernel;
        out.push_back({p + "ssm.norm.weight", {H}});
        out.push_back({p + "ssm.norm.bias", {H}});
        out.push_back({p + "ssm.in_proj.weight", {2 * Di, H}});
        out.push_back({p + "ssm.conv1d.weight", {Di, 1, K}});
        out.push_back({p + "ssm.conv1d.bias", {Di}});
        out.push_back({p + "ssm.ssm.A_log", {N}});
        out.push_back({p + "ssm.ssm.B", {N, Di}});
        out.push_back({p + "ssm.ssm.C", {Di, N}});
        out.push_back({p + "ssm.ssm.D", {Di}});
        out.push_back({p + "ssm.ssm.delta_proj.weight", {Di, Di}});
        out.push_back({p + "ssm.ssm.delta_proj.bias", {Di}});
        out.push_back({p + "ssm.out_proj.weight", {H, Di}});
        if (layer.kind == ChannelKind::ffn) {
            const int64_t F = layer.ffn_widths.at(0);
            out.push_back({p + "moe.norm.weight", {H}});
            out.push_back({p + "moe.norm.bias", {H}});
            out.push_back({p + "moe.ffn.w1.weight", {F, H}});
            out.push_back({p + "moe.ffn.w2.weight", {H, F}});
        } else if (layer.kind == ChannelKind::moe) {
            const std::string m = moe_prefix(static_cast<int>(l));
            const int64_t E = static_cast<int64_t>(layer.ffn_widths.size());
            out.push_back({m + "norm.weight", {H}});
            out.push_back({m + "norm.bias", {H}});
            out.push_back({m + "router.gate.weight", {E, H}});
            for (int64_t e = 0; e < E; e++) {
                const std::string x = expert_prefix(static_cast<int>(l), static_cast<int>(e));
                const int64_t F = layer.ffn_widths[static_cast<size_t>(e)];
                out.push_back({x + "w1.weight", {F, H}});
                out.push_back({x + "w2.weight", {H, F}});
            }
        }
    }
    out.push_back({"norm.weight", {H}});
    out.push_back({"norm.bias", {H}});
    if (!config.tied_head) out.push_back({"lm_head.weight", {config.vocab_size, H}});
    return out;
}

}  // namespace itera
