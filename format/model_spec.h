// What the converter hands to the writer: config, tokenizer, provenance and named FP32 tensors
// with the dtype each is to be stored in.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "format/dtype.h"
#include "format/model_config.h"

namespace itera {

enum class TokenizerKind : int32_t { word = 0, chars = 1 };

struct TokenizerSpec {
    TokenizerKind kind = TokenizerKind::word;
    std::vector<std::string> tokens;  // index = token id
};

struct Provenance {
    std::string source_name;    // checkpoint file name (no directories)
    std::string source_sha256;  // hex
    std::string converter_version;
    std::string options;  // the converter's command-line options
};

struct SpecTensor {
    std::string name;  // PyTorch state-dict name
    std::vector<int64_t> shape;
    DType dtype = DType::f32;   // stored type
    std::vector<float> values;  // row-major, product(shape) values
    // Already-encoded bytes in `dtype` (e.g. from a calibrated quantizer), row-major, written
    // verbatim (reordered for rows16); when empty the writer encodes `values` (round-to-nearest
    // for block formats).
    std::vector<uint8_t> packed;
    Layout layout = Layout::row_major;  // rows16: fp32 / fp16 / q4_0 / q8_0 matrices of >= 16 rows (quant_blocks.h)
};

struct ModelSpec {
    ModelConfig config;
    bool has_tokenizer = false;
    TokenizerSpec tokenizer;
    Provenance provenance;
    std::vector<SpecTensor> tensors;
};

}  // namespace itera
