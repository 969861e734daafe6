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
#include "format/quant_blocks.h"
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

// The shipped model's widths (hidden 96, inner 192, state 16, conv 4; an FFN of 128 and a MoE of
// 4 experts of 128, top-2, tied head) with the given vocabulary and max_seq_length.
inline ModelConfig shipped_widths(int32_t vocab, int32_t max_seq) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.hidden = 96;
    c.max_seq_length = max_seq;
    c.tied_head = true;
    c.layers = {{192, 16, 4, ChannelKind::ffn, 0, {128}}, {192, 16, 4, ChannelKind::moe, 2, {128, 128, 128, 128}}};
    return c;
}

// A row_major matrix (fp32 floats, fp16 bits or block bytes) reordered into layout rows16.
template <class T>
std::vector<T> rows16_copy(DType dtype, const std::vector<T>& row_major, int64_t rows, int64_t cols) {
    std::vector<T> out(row_major.size());
    to_rows16(dtype, reinterpret_cast<const uint8_t*>(row_major.data()), rows, cols,
              reinterpret_cast<uint8_t*>(out.data()));
    return out;
}

// n values from N(0, 1).
inline std::vector<float> gaussian(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& f : v) f = dist(rng);
    return v;
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

// The larger of a and b, NaN when either is (std::max drops a NaN in its second argument).
inline float worse(float a, float b) { return std::isnan(a) || b <= a ? a : b; }

// NaN when any difference is NaN, so that a NaN fails every bound.
inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    float m = 0.0f;
    for (size_t i = 0; i < a.size(); i++) m = worse(m, std::fabs(a[i] - b[i]));
    return m;
}

}  // namespace itera::test
