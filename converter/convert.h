// The conversion pipeline as a library call: the bytes of a PyTorch checkpoint and the options
// itera-convert takes, as typed fields -> the bytes of the .itl file and a report of what was done.
// itera-convert (converter/main.cpp) and the C entry point (include/itera_convert.h) call it; the
// same inputs give the same bytes whoever calls.
//
// The steps, in order (docs/cli.md): read the checkpoint and infer the config; attach the
// tokenizer; trim the vocabulary; prune (--prune, or a --prune-scope alone); resolve --precision;
// calibrate; with --target-size, measure and choose every dtype (and how much to prune); quantize;
// serialize.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "converter/prune.h"
#include "converter/report.h"
#include "format/dtype.h"

namespace itera {

struct ConvertOptions {
    std::optional<std::string> tokenizer_json;   // --tokenizer: the JSON text; stored in the file
    std::optional<std::string> config_json;      // --config: the JSON text, checked against the weights
    std::string config_source = "config";        // how messages name it ("config 'cfg.json'")
    int32_t top_k = 0;                           // --top-k (1 to 2^20); 0: the config's, else 2
    std::optional<DType> quant;                  // --quant; unset: fp32, and --target-size may choose
    std::vector<std::string> keep;               // --keep rules 'GLOB=DTYPE', later rules win
    std::vector<std::string> precision;          // --precision maps 'GLOB=DTYPE,...', in order
    std::optional<std::string> calib_text;       // --calib: the text
    int64_t calib_tokens = 16384;                // --calib-tokens (1 to 2^30)
    int64_t score_tokens = 2048;                 // --score-tokens (1 to 2^30), with target_size
    uint64_t target_size = 0;                    // --target-size in bytes (up to 2^40); 0: none
    std::optional<double> prune_ratio;           // --prune (0 to 0.95)
    std::optional<std::string> prune_scope;      // --prune-scope list; unset: moe,ffn
    std::optional<Importance> prune_importance;  // --prune-importance; unset: activation with text, else magnitude
    bool prune_uniform = false;                  // --prune-uniform
    bool trim_vocab = true;                      // false: --no-trim-vocab
    Layout layout = Layout::rows16;              // --layout
    bool moe_empty_identity = false;             // --moe-empty identity
    std::string source_name;                     // provenance: the checkpoint's file name
    std::string options_text;                    // provenance: the options as given (itera-convert: argv)
};

struct Conversion {
    std::vector<uint8_t> itl;  // the .itl file (write_itl_bytes writes it atomically)
    ConversionReport report;
};

// An option that refines another one given without it (--prune-importance, --prune-uniform without
// --prune or --prune-scope), or a prune scope that prunes nothing alone: its message, or "" when
// there is none. itera-convert reports it as a usage error; convert() refuses it.
std::string unused_option(const ConvertOptions& options);

// Throws itera::Error naming the first option that is out of range, malformed (a --keep rule, a
// --precision map, a --prune-scope list) or contradicts another (--target-size without --calib or
// with --quant, --prune-scope vocab with --no-trim-vocab, ...). Needs no checkpoint.
void check_options(const ConvertOptions& options);

// check_options, then the steps above. Throws itera::Error: bad options, a checkpoint that is
// not a well-formed Itera-Lite state dict, a tokenizer or config that disagrees with it, a budget
// that cannot be met, ...
Conversion convert(const uint8_t* checkpoint, size_t size, const ConvertOptions& options);

}  // namespace itera
