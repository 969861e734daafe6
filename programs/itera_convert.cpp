// itera-convert: PyTorch checkpoint (.pt) -> packed .itl file, natively (no Python, no pickle code run).
// The command line only: the conversion is converter/convert.h.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "common/cli_parse.h"
#include "common/error.h"
#include "common/file_io.h"
#include "converter/convert.h"
#include "converter/pt/checkpoint.h"
#include "format/itl_file.h"
#include "version.h"

namespace {

constexpr uint64_t kMaxJsonBytes = uint64_t{256} << 20;

// Whether two paths name one file: existing files by device and inode (hard links, symlinks), a path
// not yet created by its absolute, normalized form.
bool same_file(const std::string& a, const std::string& b) {
    std::error_code ec;
    if (std::filesystem::equivalent(a, b, ec)) return true;
    std::error_code ea, eb;
    const std::filesystem::path pa = std::filesystem::weakly_canonical(a, ea),
                                pb = std::filesystem::weakly_canonical(b, eb);
    return !ea && !eb && pa == pb;
}

int run(int argc, char** argv) {
    CLI::App app{
        "itera-convert: convert an Itera-Lite PyTorch checkpoint (.pt) into a .itl model file.\n"
        "The checkpoint is read natively: pickle globals are resolved against an allowlist and\n"
        "no code from the file is ever executed."};
    std::string checkpoint_path, output, tokenizer_path, config_path, dtype_name = "fp32", moe_empty = "error",
                                                                      layout_name = "rows16";
    std::string calib_path, report_path;
    std::vector<std::string> keep_rules, precision_maps;
    int64_t calib_tokens = 16384, score_tokens = 2048;
    uint64_t target_size = 0;
    bool no_trim = false;
    int top_k = 0;
    double prune_ratio = 0;
    std::string prune_scope = "moe,ffn", prune_importance;
    bool prune_uniform = false;
    app.add_option("checkpoint", checkpoint_path, "PyTorch checkpoint (.pt, torch.save zip format)")->required();
    app.add_option("-o,--output", output, "output .itl file")->required()->check(itera::non_empty());
    app.add_option("--tokenizer", tokenizer_path, "tokenizer JSON (upstream word or char layout), stored in the file")
        ->check(itera::non_empty());
    app.add_option("--config", config_path,
                   "config JSON (upstream IteraLiteConfig keys); wins over the checkpoint's own config")
        ->check(itera::non_empty());
    app.add_option("--top-k", top_k,
                   "experts mixed per token in MoE layers (not recoverable from weights; default: "
                   "config's top_k_experts, else 2)")
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--quant,--dtype", dtype_name,
                   "storage type of the matrices (projections, experts, router, embeddings, LM head): fp32 (default), "
                   "fp16, q8, q4, nf4, q3 or q2; with any but fp32, conv weights and C are stored fp16, and under q4, "
                   "nf4, q3 or q2 the SSM's B is kept at q8; LayerNorms, biases, A_log and D always stay fp32")
        ->check(CLI::IsMember({"fp32", "fp16", "q8", "q4", "nf4", "q3", "q2"}));
    app.add_option("--keep", keep_rules,
                   "per-tensor override 'GLOB=dtype' (e.g. 'lm_head.weight=q8', 'layers.*.ssm.in_proj.weight=fp16'); "
                   "repeatable, later rules win")
        ->take_all();
    app.add_option(
           "--precision", precision_maps,
           "per-tensor dtypes as a glob map 'GLOB=dtype,...' over the file's tensor names (e.g. "
           "'embedding=q8,layers.*.ssm.*=fp16,layers.*.moe.*=q4'): a pattern matches a name or its dot-separated "
           "prefix, later rules win, a rule that changes no tensor is an error; wins over --quant, --keep wins "
           "over it")
        ->take_all();
    app.add_option("--target-size", target_size,
                   "choose every tensor's dtype so that the file is at most BYTES, with the least KL divergence "
                   "predicted from per-tensor measurements on the --calib text (required); --precision and --keep "
                   "pin the tensors they set")
        ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40));
    app.add_option("--score-tokens", score_tokens,
                   "with --target-size: calibration tokens each measurement runs over (default 2048)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
    app.add_option("--calib", calib_path,
                   "calibration text: run the model over it and round block formats with GPTQ error compensation "
                   "instead of round-to-nearest (needs --tokenizer)")
        ->check(itera::non_empty());
    app.add_option("--calib-tokens", calib_tokens, "at most this many calibration tokens (default 16384)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
    app.add_option("--prune", prune_ratio,
                   "structured pruning: remove this fraction of the weights in --prune-scope, as whole units (expert "
                   "and FFN neurons, whole experts, SSM channels), leaving smaller dense tensors")
        ->check(itera::number_in(0.0, 0.95));
    app.add_option("--prune-scope", prune_scope,
                   "what --prune may remove, comma-separated: moe (expert neurons, whole experts), ffn (dense FFN "
                   "neurons), ssm (SSM inner channels), vocab (rows no text can produce; not counted in the ratio); "
                   "default moe,ffn");
    app.add_option("--prune-importance", prune_importance,
                   "how units are ranked: magnitude (weights only), activation (what each unit adds on the --calib "
                   "text) or taylor (first-order loss change on the --calib text); default activation with --calib, "
                   "else magnitude")
        ->check(CLI::IsMember({"magnitude", "activation", "taylor"}));
    app.add_flag("--prune-uniform", prune_uniform,
                 "remove the same fraction of every unit group instead of per-group fractions chosen by the "
                 "measured loss of pruning each group on the --calib text");
    app.add_option("--report", report_path, "write a JSON report: every tensor's dtype, bytes and relative error")
        ->check(itera::non_empty());
    app.add_flag("--no-trim-vocab", no_trim,
                 "keep embedding / LM head rows that no tokenizer string can produce (trimmed by default when a "
                 "tokenizer is given; token ids stay the checkpoint's either way)");
    app.add_option("--layout", layout_name,
                   "order of the fp32, fp16, q4 and q8 matrices' elements: rows16 (default; 16 rows "
                   "interleaved for the CPU's 512-bit kernels, docs/format.md) or row_major (C order; ggml's "
                   "Q4_0 / Q8_0 rows)")
        ->check(CLI::IsMember({"rows16", "row_major"}));
    app.add_option("--moe-empty", moe_empty, "a MoE layer with 0 experts: 'error' (default) or 'identity'")
        ->check(CLI::IsMember({"error", "identity"}));
    app.set_version_flag("--version", ITERA_VERSION);
    if (const auto status = itera::parse_command_line(app, argc, argv, "itera-convert")) return *status;

    // The options as the library takes them (the files are read below, once the paths are checked).
    itera::ConvertOptions options;
    options.top_k = top_k;
    if (app.count("--quant") > 0) {
        options.quant.emplace();
        itera::parse_dtype(dtype_name, &*options.quant);
    }
    options.keep = keep_rules;
    options.precision = precision_maps;
    options.calib_tokens = calib_tokens;
    options.score_tokens = score_tokens;
    options.target_size = target_size;
    if (app.count("--prune") > 0) options.prune_ratio = prune_ratio;
    if (app.count("--prune-scope") > 0) options.prune_scope = prune_scope;
    if (!prune_importance.empty()) {
        options.prune_importance = prune_importance == "taylor"       ? itera::Importance::taylor
                                   : prune_importance == "activation" ? itera::Importance::activation
                                                                      : itera::Importance::magnitude;
    }
    options.prune_uniform = prune_uniform;
    options.trim_vocab = !no_trim;
    itera::parse_layout(layout_name, &options.layout);
    options.moe_empty_identity = moe_empty == "identity";
    options.source_name = std::filesystem::path(checkpoint_path).filename().string();
    for (int i = 1; i < argc; i++) options.options_text += std::string(i > 1 ? " " : "") + argv[i];

    // An option that only refines another one does nothing alone: say so instead of ignoring it.
    if (app.count("--calib-tokens") > 0 && calib_path.empty())
        return itera::usage_error("--calib-tokens needs --calib", "itera-convert");
    if (app.count("--score-tokens") > 0 && target_size == 0)
        return itera::usage_error("--score-tokens needs --target-size", "itera-convert");
    if (const std::string unused = itera::unused_option(options); !unused.empty())
        return itera::usage_error(unused, "itera-convert");
    itera::check_itl_target(output);
    // Nothing this run reads may be what it writes.
    const std::pair<const char*, const std::string*> inputs[] = {{"the checkpoint", &checkpoint_path},
                                                                 {"--tokenizer", &tokenizer_path},
                                                                 {"--config", &config_path},
                                                                 {"--calib", &calib_path}};
    for (const auto& [what, path] : inputs) {
        if (path->empty()) continue;
        if (same_file(output, *path)) throw itera::Error("-o '" + output + "' is " + what + ": choose another output");
        if (!report_path.empty() && same_file(report_path, *path))
            throw itera::Error("--report '" + report_path + "' is " + what + ": choose another report file");
    }
    if (!report_path.empty() && same_file(report_path, output))
        throw itera::Error("--report '" + report_path + "' is the -o file: choose another report file");

    const std::vector<uint8_t> checkpoint = itera::read_file_bytes(checkpoint_path, itera::pt::kMaxCheckpointBytes);
    if (!config_path.empty()) {
        options.config_json = itera::read_file_text(config_path, kMaxJsonBytes);
        options.config_source = "config '" + config_path + "'";
    }
    if (!tokenizer_path.empty()) options.tokenizer_json = itera::read_file_text(tokenizer_path, kMaxJsonBytes);
    if (!calib_path.empty()) options.calib_text = itera::read_file_text(calib_path, kMaxJsonBytes);
    const itera::Conversion conversion = itera::convert(checkpoint.data(), checkpoint.size(), options);

    // The report's file is opened before the model is written: a report that cannot be written
    // fails the run while an existing -o file is still untouched.
    std::unique_ptr<FILE, int (*)(FILE*)> report_file(nullptr, std::fclose);
    if (!report_path.empty()) {
        report_file.reset(std::fopen(report_path.c_str(), "w"));
        if (!report_file) throw itera::Error("cannot write report '" + report_path + "': " + std::strerror(errno));
    }
    itera::write_itl_bytes(conversion.itl, output);
    if (!report_path.empty()) {
        const std::string json = itera::report_json(conversion.report);
        if (std::fwrite(json.data(), 1, json.size(), report_file.get()) != json.size() ||
            std::fclose(report_file.release()) != 0)
            throw itera::Error("cannot write report '" + report_path + "': " + std::strerror(errno));
    }
    std::fputs(itera::summary_text(conversion.report, "wrote " + output).c_str(), stdout);
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return itera::run_reporting_errors(run, argc, argv); }
