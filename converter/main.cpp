// itera-convert: PyTorch checkpoint (.pt) -> packed .itl file, natively (no Python, no pickle code run).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "common/error.h"
#include "common/file_io.h"
#include "common/sha256.h"
#include "converter/checkpoint_to_spec.h"
#include "converter/pt/checkpoint.h"
#include "converter/tokenizer_json.h"
#include "format/itl_file.h"
#include "version.h"

namespace {

constexpr uint64_t kMaxCheckpointBytes = uint64_t{4} << 30;
constexpr uint64_t kMaxJsonBytes = uint64_t{256} << 20;

int run(int argc, char** argv) {
    CLI::App app{"itera-convert: convert an Itera-Lite PyTorch checkpoint (.pt) into a .itl model file.\n"
                 "The checkpoint is read natively: pickle globals are resolved against an allowlist and\n"
                 "no code from the file is ever executed."};
    std::string checkpoint_path, output, tokenizer_path, config_path, dtype_name = "fp32", moe_empty = "error";
    int top_k = 0;
    app.add_option("checkpoint", checkpoint_path, "PyTorch checkpoint (.pt, torch.save zip format)")->required();
    app.add_option("-o,--output", output, "output .itl file")->required();
    app.add_option("--tokenizer", tokenizer_path, "tokenizer JSON (upstream word or char layout), stored in the file");
    app.add_option("--config", config_path,
                   "config JSON (upstream IteraLiteConfig keys); wins over the checkpoint's own config");
    app.add_option("--top-k", top_k, "experts mixed per token in MoE layers (not recoverable from weights; default: "
                                     "config's top_k_experts, else 2)")
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--dtype", dtype_name, "storage type: fp32, or fp16 (matrices, embeddings, conv, B, C in FP16; "
                                          "norms, biases, A_log, D stay FP32; computed in FP32)")
        ->check(CLI::IsMember({"fp32", "fp16"}));
    app.add_option("--moe-empty", moe_empty, "a MoE layer with 0 experts: 'error' (default) or 'identity'")
        ->check(CLI::IsMember({"error", "identity"}));
    app.set_version_flag("--version", ITERA_VERSION);
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "error: %s (see itera-convert --help)\n", e.what());
        return 2;
    }

    const std::vector<uint8_t> bytes = itera::read_file_bytes(checkpoint_path, kMaxCheckpointBytes);
    const itera::pt::Checkpoint checkpoint = itera::pt::read_checkpoint_bytes(bytes.data(), bytes.size());
    itera::ConvertOptions options;
    options.top_k = top_k;
    itera::pt::Value config_file;
    if (!config_path.empty()) {
        config_file = itera::json_to_value(itera::read_file_text(config_path, kMaxJsonBytes), "config '" + config_path + "'");
        options.config_file = &config_file;
    }
    itera::parse_dtype(dtype_name, &options.dtype);
    options.moe_empty_identity = moe_empty == "identity";
    itera::ModelSpec spec = itera::checkpoint_to_spec(checkpoint, options);
    if (!tokenizer_path.empty()) {
        spec.tokenizer = itera::parse_tokenizer_json(itera::read_file_text(tokenizer_path, kMaxJsonBytes));
        spec.has_tokenizer = true;
        if (static_cast<int64_t>(spec.tokenizer.tokens.size()) > spec.config.vocab_size)
            throw itera::Error("tokenizer has " + std::to_string(spec.tokenizer.tokens.size()) +
                               " tokens but the model's vocabulary is " + std::to_string(spec.config.vocab_size));
    }
    spec.provenance.source_name = std::filesystem::path(checkpoint_path).filename().string();
    spec.provenance.source_sha256 = itera::sha256_hex(bytes.data(), bytes.size());
    spec.provenance.converter_version = ITERA_VERSION;
    for (int i = 1; i < argc; i++) spec.provenance.options += std::string(i > 1 ? " " : "") + argv[i];
    itera::write_itl(spec, output);

    int64_t params = 0;
    for (const auto& t : spec.tensors) params += static_cast<int64_t>(t.values.size());
    std::printf("wrote %s: %zu layers, %lld parameters, %s, %ju bytes\n", output.c_str(), spec.config.layers.size(),
                static_cast<long long>(params), dtype_name.c_str(),
                static_cast<uintmax_t>(std::filesystem::file_size(output)));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
