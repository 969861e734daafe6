// An immutable, loaded model: the .itl file plus plain per-layer structs of weight views into it.
// Thread-shareable; all per-sequence state lives in Context.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "format/itl_file.h"
#include "kernels_cpu/weight.h"
#include "runtime/tokenizer.h"

namespace itera {

struct SsmWeights {
    Weight norm_w, norm_b;
    Weight in_proj;          // [2*inner, hidden]: rows [0, inner) give u, the rest z
    Weight conv_w, conv_b;   // [inner, K], [inner]
    Weight a_log, b, c, d;   // [state], [state, inner], [inner, state], [inner]
    Weight delta_w, delta_b; // [inner, inner], [inner]
    Weight out_proj;         // [hidden, inner]
};

struct FfnWeights {
    Weight w1;  // [width, hidden]
    Weight w2;  // [hidden, width]
};

struct LayerWeights {
    SsmWeights ssm;
    Weight mix_norm_w, mix_norm_b;   // the channel block's LayerNorm (ffn and moe)
    Weight router;                   // moe: [experts, hidden]
    std::vector<FfnWeights> experts; // ffn: one; moe: one per expert; none: empty
};

struct Model {
    std::unique_ptr<ItlFile> file;
    ModelConfig config;
    bool has_tokenizer = false;
    Tokenizer tokenizer;
    Weight embedding, position, final_norm_w, final_norm_b, lm_head;
    std::vector<LayerWeights> layers;
};

// Loads and validates: every tensor the config implies must be present with its exact shape, and
// no other tensor may be. Throws itera::Error.
std::unique_ptr<Model> load_model(std::unique_ptr<ItlFile> file);
std::unique_ptr<Model> load_model_file(const std::string& path);

}  // namespace itera
