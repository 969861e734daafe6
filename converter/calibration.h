// Calibration: runs the runtime's own forward over text and collects, for every matrix the
// forward multiplies by, the second moment of its inputs (sum of x x^T), which the GPTQ
// quantizer uses to decide where rounding error matters.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "format/model_spec.h"

namespace itera {

struct ActivationStats {
    int32_t cols = 0;
    int64_t tokens = 0;
    std::vector<double> xtx;  // [cols, cols], sum over observed inputs of x x^T
};

// `spec` must be the FP32 model with a tokenizer. Windows of max_seq_length tokens from zero
// state, as the runtime scores text; at most `max_tokens` tokens are used. Keyed by tensor name
// (a tied head's statistics belong to embedding.weight).
std::map<std::string, ActivationStats> collect_activation_stats(const ModelSpec& spec, const std::string& text,
                                                                int64_t max_tokens);

}  // namespace itera
