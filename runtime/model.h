// An immutable, loaded model: the .itl file plus plain per-layer structs of weight views into it.
// Thread-shareable; all per-sequence state lives in a backend's slots (runtime/backend.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "format/itl_file.h"
#include "kernels_cpu/gemm_provider.h"
#include "kernels_cpu/weight.h"
#include "runtime/tokenizer.h"

namespace itera {

struct SsmWeights {
    Weight norm_w, norm_b;
    Weight in_proj;           // [2*inner, hidden]: rows [0, inner) give u, the rest z
    Weight conv_w, conv_b;    // [inner, K], [inner]
    Weight a_log, b, c, d;    // [state], [state, inner] (a matrix product), [inner, state], [inner]
    Weight delta_w, delta_b;  // [inner, inner], [inner]
    Weight out_proj;          // [hidden, inner]
    // Small per-channel tables derived at load in FP32 (a few KB per layer), laid out for SIMD
    // loops over the inner channels; the tensors above stay the truth the reference reads.
    std::vector<float> neg_a;       // [state]: -exp(A_log)
    std::vector<float> c_t;         // [state, inner]: C transposed
    std::vector<float> conv_t;      // [K, inner]: conv weight transposed
    std::vector<float> conv_bias;   // [inner]
    std::vector<float> d_skip;      // [inner]: D
    std::vector<float> delta_bias;  // [inner]
};

struct FfnWeights {
    Weight w1;  // [width, hidden]
    Weight w2;  // [hidden, width]
};

struct LayerWeights {
    SsmWeights ssm;
    Weight mix_norm_w, mix_norm_b;    // the channel block's LayerNorm (ffn and moe)
    Weight router;                    // moe: [experts, hidden]
    std::vector<FfnWeights> experts;  // ffn: one; moe: one per expert; none: empty
};

struct Model {
    std::unique_ptr<ItlFile> file;
    ModelConfig config;
    bool has_tokenizer = false;
    Tokenizer tokenizer;
    Weight embedding, position, final_norm_w, final_norm_b, lm_head;
    std::vector<LayerWeights> layers;
    // Token ids are the checkpoint's. With a trimmed vocabulary, embedding / lm head row r holds
    // id config.vocab_ids[r]; logits come per row.
    std::vector<int32_t> row_of_id;  // -1: the id was trimmed away
    // Which kernels run the products over many rows (prefill, batch decode): `--kernels`; nullptr
    // is the native kernels. Shared by every context of the model (GemmDispatch is thread-safe).
    std::shared_ptr<GemmDispatch> gemm;

    int32_t vocab_rows() const { return config.vocab_size; }
    // One past the largest token id the model knows.
    int32_t id_limit() const { return static_cast<int32_t>(row_of_id.size()); }
    int32_t row_of(int32_t id) const { return id >= 0 && id < id_limit() ? row_of_id[static_cast<size_t>(id)] : -1; }
    int32_t id_of(int32_t row) const {
        return config.vocab_ids.empty() ? row : config.vocab_ids[static_cast<size_t>(row)];
    }
};

// Loads and validates: every tensor the config implies must be present with its exact shape, and
// no other tensor may be. Throws itera::Error.
std::unique_ptr<Model> load_model(std::unique_ptr<ItlFile> file);
std::unique_ptr<Model> load_model_file(const std::string& path);

}  // namespace itera
