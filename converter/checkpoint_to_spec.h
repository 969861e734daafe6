// Maps a PyTorch checkpoint's state dict onto an Itera-Lite ModelSpec: the config is inferred from
// tensor shapes and cross-checked against the checkpoint's config (or --config), every expected
// tensor is taken with its exact shape, and any tensor left over is an error.
// Checkpoints pruned with torch.nn.utils.prune (`<name>_orig` + `<name>_mask` instead of `<name>`)
// are folded to orig * mask; FFN and expert neurons the masks zero entirely are then removed
// (exactly: converter/prune.h zero_unit_plan), other masked weights stay as zeros.
#pragma once

#include "converter/pt/checkpoint.h"
#include "format/model_spec.h"

namespace itera {

struct PrunePlan;

struct CheckpointOptions {
    int32_t top_k = 0;                       // > 0: overrides any config
    const pt::Value* config_file = nullptr;  // --config CFG.json, parsed; wins over the checkpoint's
    bool moe_empty_identity = false;         // a MoE layer with 0 experts becomes the identity
    PrunePlan* masked_units = nullptr;       // when set: receives the units removed because prune masks zeroed them
};

ModelSpec checkpoint_to_spec(const pt::Checkpoint& checkpoint, const CheckpointOptions& options);

// A JSON document as the same plain value tree the pickle reader produces.
pt::Value json_to_value(const std::string& json_text, const std::string& what);

}  // namespace itera
