// What `itera-run info` and the C API's itera_model_info say about a model: its config, every
// tensor, and the file in parts (the embedding, the position embedding, each layer's SSM and
// channel blocks, the head) with their parameters, bytes and storage types.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/model.h"

namespace itera {

// One part of the file: the embedding, the position embedding, each layer's SSM and channel
// blocks, the head (final LayerNorm, and lm_head when untied).
struct Part {
    std::string name, shape, dtypes;
    int64_t params = 0;
    uint64_t bytes = 0;
};

std::vector<Part> file_parts(const Model& model);

// Over every tensor of the file.
struct TensorTotals {
    int64_t params = 0;
    uint64_t bytes = 0;
    double bits_per_weight = 0;
};
TensorTotals tensor_totals(const Model& model);

// The whole description as one JSON object (`itera-run info --json`, docs/cli.md); `source` is
// what its "file" names.
std::string model_info_json(const Model& model, const std::string& source);

}  // namespace itera
