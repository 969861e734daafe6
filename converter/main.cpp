// itera-convert: PyTorch checkpoint (.pt) -> packed .itl file, natively (no Python, no pickle code run).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "common/cli_parse.h"
#include "common/error.h"
#include "common/file_io.h"
#include "common/sha256.h"
#include "converter/checkpoint_to_spec.h"
#include "converter/pt/checkpoint.h"
#include "converter/quantize_spec.h"
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
    std::string calib_path, report_path;
    std::vector<std::string> keep_rules;
    int64_t calib_tokens = 16384;
    bool no_trim = false;
    int top_k = 0;
    app.add_option("checkpoint", checkpoint_path, "PyTorch checkpoint (.pt, torch.save zip format)")->required();
    app.add_option("-o,--output", output, "output .itl file")->required();
    app.add_option("--tokenizer", tokenizer_path, "tokenizer JSON (upstream word or char layout), stored in the file");
    app.add_option("--config", config_path,
                   "config JSON (upstream IteraLiteConfig keys); wins over the checkpoint's own config");
    app.add_option("--top-k", top_k, "experts mixed per token in MoE layers (not recoverable from weights; default: "
                                     "config's top_k_experts, else 2)")
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--quant,--dtype", dtype_name,
                   "storage type of the matrices (projections, experts, router, embeddings, LM head): fp32 (default), "
                   "fp16, q8, q4 or nf4; with any but fp32, conv weights and C are stored fp16, and under q4 or nf4 the "
                   "SSM's B is kept at q8; LayerNorms, biases, A_log and D always stay fp32")
        ->check(CLI::IsMember({"fp32", "fp16", "q8", "q4", "nf4"}));
    app.add_option("--keep", keep_rules,
                   "per-tensor override 'GLOB=dtype' (e.g. 'lm_head.weight=q8', 'layers.*.ssm.in_proj.weight=fp16'); "
                   "repeatable, later rules win")
        ->take_all();
    app.add_option("--calib", calib_path,
                   "calibration text: run the model over it and round block formats with GPTQ error compensation "
                   "instead of round-to-nearest (needs --tokenizer)");
    app.add_option("--calib-tokens", calib_tokens, "at most this many calibration tokens (default 16384)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
    app.add_option("--report", report_path, "write a JSON report: every tensor's dtype, bytes and relative error");
    app.add_flag("--no-trim-vocab", no_trim,
                 "keep embedding / LM head rows that no tokenizer string can produce (trimmed by default when a "
                 "tokenizer is given; token ids stay the checkpoint's either way)");
    app.add_option("--moe-empty", moe_empty, "a MoE layer with 0 experts: 'error' (default) or 'identity'")
        ->check(CLI::IsMember({"error", "identity"}));
    app.set_version_flag("--version", ITERA_VERSION);
    if (const auto status = itera::parse_command_line(app, argc, argv, "itera-convert")) return *status;

    const std::vector<uint8_t> bytes = itera::read_file_bytes(checkpoint_path, kMaxCheckpointBytes);
    const itera::pt::Checkpoint checkpoint = itera::pt::read_checkpoint_bytes(bytes.data(), bytes.size());
    itera::ConvertOptions options;
    options.top_k = top_k;
    itera::pt::Value config_file;
    if (!config_path.empty()) {
        config_file = itera::json_to_value(itera::read_file_text(config_path, kMaxJsonBytes), "config '" + config_path + "'");
        options.config_file = &config_file;
    }
    options.moe_empty_identity = moe_empty == "identity";
    itera::QuantOptions quant;
    itera::parse_dtype(dtype_name, &quant.base);
    for (const std::string& rule : keep_rules) {
        const size_t eq = rule.rfind('=');
        itera::DType dtype;
        if (eq == std::string::npos || eq == 0 || !itera::parse_dtype(rule.substr(eq + 1), &dtype))
            throw itera::Error("--keep expects GLOB=fp32|fp16|q8|q4|nf4, got '" + rule + "'");
        quant.keep.emplace_back(rule.substr(0, eq), dtype);
    }
    quant.trim_vocab = !no_trim;

    itera::ModelSpec spec = itera::checkpoint_to_spec(checkpoint, options);
    if (!tokenizer_path.empty()) {
        spec.tokenizer = itera::parse_tokenizer_json(itera::read_file_text(tokenizer_path, kMaxJsonBytes));
        spec.has_tokenizer = true;
        if (static_cast<int64_t>(spec.tokenizer.tokens.size()) > spec.config.vocab_size)
            throw itera::Error("tokenizer has " + std::to_string(spec.tokenizer.tokens.size()) +
                               " tokens but the model's vocabulary is " + std::to_string(spec.config.vocab_size));
    }
    if (quant.trim_vocab) itera::trim_vocabulary(spec);
    std::map<std::string, itera::ActivationStats> stats;
    if (!calib_path.empty())
        stats = itera::collect_activation_stats(spec, itera::read_file_text(calib_path, kMaxJsonBytes), calib_tokens);
    const std::vector<itera::TensorReport> report =
        itera::quantize_spec(spec, quant, calib_path.empty() ? nullptr : &stats);
    spec.provenance.source_name = std::filesystem::path(checkpoint_path).filename().string();
    spec.provenance.source_sha256 = itera::sha256_hex(bytes.data(), bytes.size());
    spec.provenance.converter_version = ITERA_VERSION;
    for (int i = 1; i < argc; i++) spec.provenance.options += std::string(i > 1 ? " " : "") + argv[i];
    itera::write_itl(spec, output);

    const uintmax_t file_bytes = std::filesystem::file_size(output);
    if (!report_path.empty()) {
        const std::string json = itera::report_json(report, file_bytes);
        FILE* f = std::fopen(report_path.c_str(), "w");
        if (!f || std::fwrite(json.data(), 1, json.size(), f) != json.size() || std::fclose(f) != 0)
            throw itera::Error("cannot write report '" + report_path + "'");
    }
    int64_t params = 0;
    for (const auto& t : spec.tensors) params += static_cast<int64_t>(t.values.size());
    std::printf("wrote %s: %zu layers, %lld parameters, %s%s%s, %ju bytes\n", output.c_str(),
                spec.config.layers.size(), static_cast<long long>(params), dtype_name.c_str(),
                calib_path.empty() ? "" : " calibrated",
                spec.config.vocab_ids.empty() ? "" : (", vocabulary trimmed to " +
                                                      std::to_string(spec.config.vocab_size) + " rows").c_str(),
                file_bytes);
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return itera::run_reporting_errors(run, argc, argv); }
