// The model's hyper-parameters, shared by the converter (which fills it), the .itl file (which
// stores it) and the runtime (which checks every tensor shape against it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace itera {

// The channel-mixing block after each layer's SSM block. `none` makes it the identity (a MoE
// layer whose experts were lost, converted with `--moe-empty identity`).
enum class ChannelKind : int32_t { ffn = 0, moe = 1, none = 2 };

struct LayerConfig {
    int32_t inner = 0;        // SSM inner width Di (expand * hidden before any pruning)
    int32_t state = 0;        // SSM state size N
    int32_t conv_kernel = 0;  // causal depthwise conv kernel K
    ChannelKind kind = ChannelKind::ffn;
    int32_t top_k = 0;                // moe only: experts mixed per token
    std::vector<int32_t> ffn_widths;  // ffn: one width; moe: one width per expert; none: empty
};

struct ModelConfig {
    int32_t vocab_size = 0;
    int32_t hidden = 0;
    int32_t max_seq_length = 0;  // rows of the position embedding
    bool tied_head = true;       // lm_head shares embedding.weight
    float norm_eps = 1e-5f;
    std::vector<LayerConfig> layers;
    // Vocabulary trimming: checkpoint token id of each embedding row, ascending (vocab_size of
    // them). Empty: row i is id i.
    std::vector<int32_t> vocab_ids;
};

// Throws itera::Error naming the first field out of range (sizes must be positive and bounded
// so a corrupt file cannot request a huge allocation).
void validate_config(const ModelConfig& config);

}  // namespace itera
