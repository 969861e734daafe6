// The tensors a model with a given config consists of: PyTorch state-dict names and shapes.
// The converter gathers exactly these from a checkpoint; the runtime requires exactly these
// in a .itl file. A tied head has no `lm_head.weight` (it reads `embedding.weight`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "format/model_config.h"

namespace itera {

struct ExpectedTensor {
    std::string name;
    std::vector<int64_t> shape;
};

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config);

// "[2000, 64]": a shape as the messages and `itera-run info` print it.
std::string shape_text(const std::vector<int64_t>& shape);

// "layers.3.ssm.in_proj.weight" style prefixes used by both sides.
std::string layer_prefix(int layer);               // "layers.3."
std::string moe_prefix(int layer);                 // "layers.3.moe.layer."
std::string expert_prefix(int layer, int expert);  // "layers.3.moe.layer.experts.1."

// Every tensor's name is built here (expected_tensors lists them all for a config).
inline constexpr const char* kEmbeddingName = "embedding.weight";
inline constexpr const char* kPositionName = "position_embedding.weight";
inline constexpr const char* kFinalNormWeightName = "norm.weight";
inline constexpr const char* kFinalNormBiasName = "norm.bias";
inline constexpr const char* kLmHeadName = "lm_head.weight";

struct SsmNames {  // layers.<l>.ssm.*
    std::string norm_w, norm_b, in_proj, conv_w, conv_b, a_log, b, c, d, delta_w, delta_b, out_proj;
};
SsmNames ssm_names(int layer);

struct FfnNames {  // a dense FFN's or one expert's two matrices
    std::string w1, w2;
};
FfnNames ffn_names(int layer);                 // layers.<l>.moe.ffn.*
FfnNames expert_names(int layer, int expert);  // layers.<l>.moe.layer.experts.<e>.*
std::string router_name(int layer);            // layers.<l>.moe.layer.router.gate.weight

struct NormNames {  // a LayerNorm's weight and bias
    std::string w, b;
};
// The channel block's norm: layers.<l>.moe.norm.* before a dense FFN, layers.<l>.moe.layer.norm.*
// before a MoE (upstream nests the MoE one level deeper). Only for ffn and moe layers.
NormNames mix_norm_names(int layer, ChannelKind kind);

// Tensors of any layer recognised by name: the conv weight and C (read element by element) and B.
bool is_conv_weight_name(const std::string& name);
bool is_ssm_c_name(const std::string& name);
bool is_ssm_b_name(const std::string& name);

}  // namespace itera
