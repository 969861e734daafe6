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
std::string layer_prefix(int layer);                 // "layers.3."
std::string moe_prefix(int layer);                   // "layers.3.moe.layer."
std::string expert_prefix(int layer, int expert);    // "layers.3.moe.layer.experts.1."

}  // namespace itera
