// itera-convert: PyTorch checkpoint (.pt) -> packed .itl file, natively (no Python, no pickle code run).
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "common/cli_parse.h"
#include "common/error.h"
#include "common/file_io.h"
#include "common/sha256.h"
#include "converter/budget.h"
#include "converter/checkpoint_to_spec.h"
#include "converter/precision.h"
#include "converter/prune.h"
#include "converter/pt/checkpoint.h"
#include "converter/quantize_spec.h"
#include "converter/tokenizer_json.h"
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
    CLI::App app{"itera-convert: convert an Itera-Lite PyTorch checkpoint (.pt) into a .itl model file.\n"
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
    app.add_option("--top-k", top_k, "experts mixed per token in MoE layers (not recoverable from weights; default: "
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
    app.add_option("--precision", precision_maps,
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
    // An option that only refines another one does nothing alone: say so instead of ignoring it.
    const bool pruning = app.count("--prune") > 0 || app.count("--prune-scope") > 0;
    const std::pair<const char*, bool> refinements[] = {
        {"--calib-tokens needs --calib", app.count("--calib-tokens") > 0 && calib_path.empty()},
        {"--score-tokens needs --target-size", app.count("--score-tokens") > 0 && target_size == 0},
        {"--prune-importance needs --prune or --prune-scope", app.count("--prune-importance") > 0 && !pruning},
        {"--prune-uniform needs --prune or --prune-scope", prune_uniform && !pruning}};
    for (const auto& [message, refused] : refinements)
        if (refused) return itera::usage_error(message, "itera-convert");
    if (app.count("--prune-scope") > 0 && app.count("--prune") == 0 && target_size == 0 &&
        !itera::parse_prune_scope(prune_scope).vocab)
        return itera::usage_error("--prune-scope '" + prune_scope +
                                      "' prunes nothing without --prune or --target-size (only vocab rows go alone)",
                                  "itera-convert");
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

    const std::vector<uint8_t> bytes = itera::read_file_bytes(checkpoint_path, itera::pt::kMaxCheckpointBytes);
    const itera::pt::Checkpoint checkpoint = itera::pt::read_checkpoint_bytes(bytes.data(), bytes.size());
    itera::ConvertOptions options;
    options.top_k = top_k;
    itera::PrunePlan prune_plan;  // torch.nn.utils.prune masks, then --prune
    options.masked_units = &prune_plan;
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
            throw itera::Error("--keep expects GLOB=fp32|fp16|q8|q4|nf4|q3|q2, got '" + rule + "'");
        quant.keep.emplace_back(rule.substr(0, eq), dtype);
    }
    quant.trim_vocab = !no_trim;
    itera::parse_layout(layout_name, &quant.layout);

    itera::ModelSpec spec = itera::checkpoint_to_spec(checkpoint, options);
    if (!tokenizer_path.empty()) {
        spec.tokenizer = itera::parse_tokenizer_json(itera::read_file_text(tokenizer_path, kMaxJsonBytes));
        spec.has_tokenizer = true;
        if (static_cast<int64_t>(spec.tokenizer.tokens.size()) > spec.config.vocab_size)
            throw itera::Error("tokenizer has " + std::to_string(spec.tokenizer.tokens.size()) +
                               " tokens but the model's vocabulary is " + std::to_string(spec.config.vocab_size));
    }
    if (quant.trim_vocab) itera::trim_vocabulary(spec);
    if (!prune_plan.groups.empty())
        std::printf("prune masks: %zu unit groups lose their zeroed neurons, %lld weights\n", prune_plan.groups.size(),
                    static_cast<long long>(prune_plan.removed_weights));
    itera::PruneOptions prune;
    if (prune_ratio > 0 || app.count("--prune-scope") > 0) {
        prune.ratio = prune_ratio;
        prune.scope = itera::parse_prune_scope(prune_scope);
        if (prune.scope.vocab && no_trim) throw itera::Error("--prune-scope vocab contradicts --no-trim-vocab");
        if (prune_ratio > 0 && !prune.scope.moe && !prune.scope.ffn && !prune.scope.ssm)
            throw itera::Error("--prune counts moe, ffn or ssm weights, and --prune-scope '" + prune_scope +
                               "' has none of them (vocab rows are not counted in the ratio)");
        prune.by_sensitivity = !prune_uniform;
        prune.calib_tokens = calib_tokens;
        if (prune_importance.empty()) prune_importance = calib_path.empty() ? "magnitude" : "activation";
        if (prune_importance != "magnitude" && calib_path.empty())
            throw itera::Error("--prune-importance " + prune_importance + " needs calibration text (--calib TEXT)");
        prune.importance = prune_importance == "taylor"       ? itera::Importance::taylor
                           : prune_importance == "activation" ? itera::Importance::activation
                                                              : itera::Importance::magnitude;
    }
    // With --target-size and a --prune-scope but no --prune ratio, the budget driver chooses how
    // much to prune (below).
    const bool budget_prunes = target_size > 0 && prune_ratio == 0 && app.count("--prune-scope") > 0;
    if ((prune_ratio > 0 || app.count("--prune-scope") > 0) && !budget_prunes) {
        const itera::PrunePlan plan = itera::prune_spec(
            spec, prune, calib_path.empty() ? "" : itera::read_file_text(calib_path, kMaxJsonBytes));
        const bool sensitivity = prune.by_sensitivity && !calib_path.empty();
        std::printf("pruned %lld weights (%s importance%s):", static_cast<long long>(plan.removed_weights),
                    prune_importance.c_str(), sensitivity ? ", per-group sensitivity" : "");
        for (const itera::GroupPlan& g : plan.groups)
            std::printf(" %s %d/%d", g.group.name().c_str(), static_cast<int>(g.keep.size()), g.group.units);
        if (!plan.vocab_keep_rows.empty()) std::printf(" vocabulary rows %zu", plan.vocab_keep_rows.size());
        std::printf("\n");
        prune_plan.groups.insert(prune_plan.groups.end(), plan.groups.begin(), plan.groups.end());
        prune_plan.vocab_keep_rows = plan.vocab_keep_rows;
        prune_plan.removed_weights += plan.removed_weights;
    }
    spec.provenance.source_name = std::filesystem::path(checkpoint_path).filename().string();
    spec.provenance.source_sha256 = itera::sha256_hex(bytes.data(), bytes.size());
    spec.provenance.converter_version = ITERA_VERSION;
    for (int i = 1; i < argc; i++) spec.provenance.options += std::string(i > 1 ? " " : "") + argv[i];
    std::vector<itera::PrecisionRule> precision;
    for (const std::string& map : precision_maps)
        for (const itera::PrecisionRule& r : itera::parse_precision(map)) precision.push_back(r);
    quant.dtypes = itera::resolve_precision(precision, spec.tensors);
    const std::string calib_text = calib_path.empty() ? "" : itera::read_file_text(calib_path, kMaxJsonBytes);
    std::map<std::string, itera::ActivationStats> stats;
    if (!calib_path.empty()) stats = itera::collect_activation_stats(spec, calib_text, calib_tokens);
    // --target-size: the budget driver picks every tensor's dtype (its measurements print below).
    itera::BudgetOptions budget_options;
    budget_options.target_bytes = target_size;
    budget_options.candidates = {itera::DType::q8_0, itera::DType::q4_0, itera::DType::nf4, itera::DType::q3_0,
                                 itera::DType::q2_0};
    budget_options.score_tokens = score_tokens;
    budget_options.calib_tokens = calib_tokens;
    budget_options.prune = budget_prunes;
    budget_options.prune_options = prune;
    itera::BudgetResult budget;
    if (target_size > 0) {
        if (calib_path.empty()) throw itera::Error("--target-size needs calibration text (--calib TEXT)");
        if (app.count("--quant") > 0)
            throw itera::Error("--target-size chooses the dtypes itself: drop --quant (pin tensors with --precision)");
        budget = itera::plan_budget(spec, calib_text, stats, quant, budget_options);
        quant.dtypes = budget.dtypes;
        prune_plan.groups.insert(prune_plan.groups.end(), budget.prune.groups.begin(), budget.prune.groups.end());
        if (!budget.prune.vocab_keep_rows.empty()) prune_plan.vocab_keep_rows = budget.prune.vocab_keep_rows;
        prune_plan.removed_weights += budget.prune.removed_weights;
    }
    const std::vector<itera::TensorReport> report =
        itera::quantize_spec(spec, quant, calib_path.empty() ? nullptr : &stats);
    itera::choose_layouts(spec, quant.layout);
    // The report's file is opened before the model is written: a report that cannot be written
    // fails the run while an existing -o file is still untouched.
    std::unique_ptr<FILE, int (*)(FILE*)> report_file(nullptr, std::fclose);
    if (!report_path.empty()) {
        report_file.reset(std::fopen(report_path.c_str(), "w"));
        if (!report_file) throw itera::Error("cannot write report '" + report_path + "': " + std::strerror(errno));
    }
    itera::write_itl(spec, output);

    const uintmax_t file_bytes = std::filesystem::file_size(output);
    if (!report_path.empty()) {
        std::string json = target_size > 0 ? itera::budget_report_json(budget, budget_options, report)
                                           : itera::report_json(report, file_bytes);
        // Units removed (prune masks, --prune): a top-level "pruning" member.
        if (!prune_plan.groups.empty() || !prune_plan.vocab_keep_rows.empty())
            json.insert(json.find('{') + 1, "\n  \"pruning\": " + itera::prune_report_json(prune_plan) + ",");
        if (std::fwrite(json.data(), 1, json.size(), report_file.get()) != json.size() ||
            std::fclose(report_file.release()) != 0)
            throw itera::Error("cannot write report '" + report_path + "': " + std::strerror(errno));
    }
    int64_t params = 0;
    for (const auto& t : spec.tensors) params += static_cast<int64_t>(t.values.size());
    std::printf("wrote %s: %zu layers, %lld parameters, %s%s%s, %ju bytes\n", output.c_str(),
                spec.config.layers.size(), static_cast<long long>(params),
                quant.dtypes.empty() ? dtype_name.c_str() : "mixed precision",
                calib_path.empty() ? "" : " calibrated",
                spec.config.vocab_ids.empty() ? "" : (", vocabulary trimmed to " +
                                                      std::to_string(spec.config.vocab_size) + " rows").c_str(),
                file_bytes);
    if (target_size > 0)
        std::printf("target %ju bytes: KL divergence %.6f nats from FP32, top-1 agreement %.2f%% on %lld calibration "
                    "tokens (predicted KL %.6f%s)\n",
                    static_cast<uintmax_t>(target_size), budget.measured.kld, 100.0 * budget.measured.top1,
                    static_cast<long long>(budget.score_tokens), budget.predicted_kld,
                    budget.refined ? ", after re-measuring around the first choice" : "");
    if (budget_prunes) {
        std::printf("pruning levels tried (of the --prune-scope weights; measured KL):");
        for (const itera::BudgetVariant& v : budget.variants) {
            if (v.file_bytes)
                std::printf(" %.0f%% %.6f", 100.0 * v.prune_ratio, v.measured.kld);
            else
                std::printf(" %.0f%% -", 100.0 * v.prune_ratio);
        }
        std::printf("; chosen %.0f%%\n", 100.0 * budget.prune_ratio);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return itera::run_reporting_errors(run, argc, argv); }
