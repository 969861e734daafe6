#include "format/model_config.h"

#include <cmath>
#include <string>

#include "common/error.h"

namespace itera {

// Generous bounds: far above any Itera-Lite model, low enough that a corrupt file cannot make
// the runtime allocate absurd amounts of memory.
constexpr int64_t kMaxVocab = 1 << 24;
constexpr int64_t kMaxHidden = 65536;
constexpr int64_t kMaxSeqLength = 1 << 20;
constexpr size_t kMaxLayers = 1024;
constexpr int64_t kMaxInner = 1 << 18;
constexpr int64_t kMaxState = 4096;
constexpr int64_t kMaxConvKernel = 64;
constexpr int64_t kMaxFfnWidth = 1 << 18;
constexpr size_t kMaxExperts = 1024;

static void check_range(const std::string& field, int64_t value, int64_t lo, int64_t hi) {
    if (value < lo || value > hi)
        throw Error("invalid model config: " + field + " = " + std::to_string(value) + " (must be " +
                    std::to_string(lo) + ".." + std::to_string(hi) + ")");
}

void validate_config(const ModelConfig& config) {
    check_range("vocab_size", config.vocab_size, 1, kMaxVocab);
    if (!config.vocab_ids.empty()) {
        check_range("vocab_ids count", static_cast<int64_t>(config.vocab_ids.size()), config.vocab_size,
                    config.vocab_size);
        for (size_t i = 0; i < config.vocab_ids.size(); i++) {
            const int64_t floor = i ? int64_t{config.vocab_ids[i - 1]} + 1 : 0;  // strictly ascending
            check_range("vocab_ids[" + std::to_string(i) + "]", config.vocab_ids[i], floor, kMaxVocab - 1);
        }
    }
    check_range("hidden", config.hidden, 1, kMaxHidden);
    check_range("max_seq_length", config.max_seq_length, 1, kMaxSeqLength);
    if (!std::isfinite(config.norm_eps) || config.norm_eps <= 0.0f)
        throw Error("invalid model config: norm_eps = " + std::to_string(config.norm_eps) +
                    " (must be finite and positive)");
    check_range("number of layers", static_cast<int64_t>(config.layers.size()), 1, kMaxLayers);
    for (size_t i = 0; i < config.layers.size(); i++) {
        const LayerConfig& layer = config.layers[i];
        const std::string at = "layers[" + std::to_string(i) + "].";
        check_range(at + "inner", layer.inner, 1, kMaxInner);
        check_range(at + "state", layer.state, 1, kMaxState);
        check_range(at + "conv_kernel", layer.conv_kernel, 1, kMaxConvKernel);
        const int64_t widths = static_cast<int64_t>(layer.ffn_widths.size());
        if (layer.kind == ChannelKind::ffn) {
            check_range(at + "ffn_widths count (ffn)", widths, 1, 1);
            check_range(at + "top_k (ffn)", layer.top_k, 0, 0);
        } else if (layer.kind == ChannelKind::moe) {
            check_range(at + "ffn_widths count (experts)", widths, 1, kMaxExperts);
            check_range(at + "top_k", layer.top_k, 1, widths);
        } else if (layer.kind == ChannelKind::none) {
            check_range(at + "ffn_widths count (none)", widths, 0, 0);
            check_range(at + "top_k (none)", layer.top_k, 0, 0);
        } else {
            throw Error("invalid model config: " + at + "kind = " + std::to_string(static_cast<int32_t>(layer.kind)) +
                        " (must be 0 ffn, 1 moe or 2 none)");
        }
        for (size_t e = 0; e < layer.ffn_widths.size(); e++)
            check_range(at + "ffn_widths[" + std::to_string(e) + "]", layer.ffn_widths[e], 1, kMaxFfnWidth);
    }
}

}  // namespace itera
