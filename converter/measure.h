// The converter runs the model it converts: to collect calibration statistics, to score units and
// measure pruning, and to measure every --target-size candidate. This is how, once: a ModelSpec is
// serialized to .itl bytes in memory and loaded from them (as the written file would load), and
// texts are run and compared as runtime/evaluate.h does (windows of max_seq_length from zero state).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "format/model_spec.h"
#include "runtime/evaluate.h"
#include "runtime/model.h"

namespace itera {

struct SpecModel {
    std::vector<uint8_t> bytes;    // the serialized file (the model may use it in place)
    std::unique_ptr<Model> model;  // declared after `bytes`: destroyed first
};

// `spec` as the runtime loads it, each tensor in its dtype.
SpecModel load_spec(const ModelSpec& spec);

// `spec` with every tensor at fp32 and no packed bytes: the model the converter measures against.
ModelSpec fp32_copy(const ModelSpec& spec);

// The FP32 model's logits over `ids` (in windows of max_seq_length), kept; score() runs a lowered
// or pruned variant of the model over the same windows and compares it with them. The caller
// bounds ids (the kept logits are ids x vocabulary rows floats).
class Scorer {
public:
    Scorer(const ModelSpec& spec, std::vector<int32_t> ids);
    Agreement score(const ModelSpec& variant) const;  // serializes and runs `variant`
    int64_t tokens() const { return static_cast<int64_t>(reference_->tokens()); }

private:
    std::unique_ptr<ReferenceLogits> reference_;
};

}  // namespace itera
