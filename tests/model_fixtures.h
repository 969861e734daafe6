// Small random models for the unit tests: a config with per-layer sizes and a MoE layer, random
// tensors of any dtype, and loading from (deliberately misaligned) memory.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "format/itl_file.h"
#include "format/model_spec.h"
#include "format/tensor_names.h"
#include "runtime/model.h"

namespace itera::test {

inline ModelConfig small_config() {
    ModelConfig c;
    c.vocab_size = 23;
    c.hidden = 12;
    c.max_seq_length = 6;
    c.tied_head = false;
    LayerConfig ssm_ffn{10, 3, 3, ChannelKind::ffn, 0, {7}};
    LayerConfig ssm_moe{8, 4, 4, ChannelKind::moe, 2, {5, 6, 4}};
    c.layers = {ssm_ffn, ssm_moe};
    return c;
}

inline ModelSpec random_spec(const ModelConfig& c, DType dtype, uint32_t seed) {
    ModelSpec spec;
    spec.config = c;
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    for (const ExpectedTensor& e : expected_tensors(c)) {
        SpecTensor t;
        t.name = e.name;
        t.shape = e.shape;
        // Block formats only where the runtime reads whole rows (products, embeddings).
        const bool rows = e.shape.size() == 2 && !e.name.ends_with("ssm.C");
        t.dtype = e.shape.size() >= 2 && (rows || !is_quantized(dtype)) ? dtype : DType::f32;
        int64_t n = 1;
        for (int64_t d : e.shape) n *= d;
        for (int64_t i = 0; i < n; i++) t.values.push_back(normal(rng));
        spec.tensors.push_back(std::move(t));
    }
    return spec;
}

// The model copies the file bytes (from_memory only uses a buffer in place when the caller keeps
// it alive; these bytes die here).
inline std::unique_ptr<Model> model_from(const ModelSpec& spec) {
    const std::vector<uint8_t> bytes = serialize_itl(spec);
    std::vector<uint8_t> misaligned(bytes.size() + 1);
    std::copy(bytes.begin(), bytes.end(), misaligned.begin() + 1);
    return load_model(ItlFile::from_memory(misaligned.data() + 1, bytes.size()));
}

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    float m = 0.0f;
    for (size_t i = 0; i < a.size(); i++) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

}  // namespace itera::test
