#include "converter/convert.h"

#include <cmath>
#include <map>

#include "common/error.h"
#include "common/sha256.h"
#include "converter/budget.h"
#include "converter/calibration.h"
#include "converter/checkpoint_to_spec.h"
#include "converter/precision.h"
#include "converter/pt/checkpoint.h"
#include "converter/quantize_spec.h"
#include "converter/tokenizer_json.h"
#include "converter/vocabulary.h"
#include "format/itl_file.h"
#include "version.h"

namespace itera {

namespace {

std::pair<std::string, DType> parse_keep_rule(const std::string& rule) {
    const size_t eq = rule.rfind('=');
    DType dtype;
    if (eq == std::string::npos || eq == 0 || !parse_dtype(rule.substr(eq + 1), &dtype))
        throw Error("--keep expects GLOB=fp32|fp16|q8|q4|nf4|q3|q2, got '" + rule + "'");
    return {rule.substr(0, eq), dtype};
}

// --prune or --prune-scope given, and whether pruning runs (a ratio of 0 alone prunes nothing).
bool pruning(const ConvertOptions& o) { return o.prune_ratio || o.prune_scope; }
bool prunes(const ConvertOptions& o) { return o.prune_ratio.value_or(0) > 0 || o.prune_scope; }

PruneScope scope_of(const ConvertOptions& o) { return parse_prune_scope(o.prune_scope.value_or("moe,ffn")); }

Importance importance_of(const ConvertOptions& o) {
    return o.prune_importance.value_or(o.calib_text ? Importance::activation : Importance::magnitude);
}

void check_range(const char* option, int64_t value, int64_t lo, int64_t hi) {
    if (value < lo || value > hi)
        throw Error(std::string(option) + " must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                    ", got " + std::to_string(value));
}

}  // namespace

std::string unused_option(const ConvertOptions& o) {
    if (o.prune_importance && !pruning(o)) return "--prune-importance needs --prune or --prune-scope";
    if (o.prune_uniform && !pruning(o)) return "--prune-uniform needs --prune or --prune-scope";
    if (o.prune_scope && !o.prune_ratio && o.target_size == 0 && !parse_prune_scope(*o.prune_scope).vocab)
        return "--prune-scope '" + *o.prune_scope +
               "' prunes nothing without --prune or --target-size (only vocab rows go alone)";
    return "";
}

void check_options(const ConvertOptions& o) {
    check_range("--top-k", o.top_k, 0, int64_t{1} << 20);
    check_range("--calib-tokens", o.calib_tokens, 1, int64_t{1} << 30);
    check_range("--score-tokens", o.score_tokens, 1, int64_t{1} << 30);
    if (o.target_size > (uint64_t{1} << 40))
        throw Error("--target-size must be at most " + std::to_string(uint64_t{1} << 40) + " bytes");
    if (o.prune_ratio && !(*o.prune_ratio >= 0.0 && *o.prune_ratio <= 0.95))
        throw Error("--prune must be a number in [0, 0.95], got " + std::to_string(*o.prune_ratio));
    for (const std::string& rule : o.keep) parse_keep_rule(rule);
    for (const std::string& map : o.precision) parse_precision(map);
    if (const std::string unused = unused_option(o); !unused.empty()) throw Error(unused);
    if (prunes(o)) {
        const PruneScope scope = scope_of(o);
        if (scope.vocab && !o.trim_vocab) throw Error("--prune-scope vocab contradicts --no-trim-vocab");
        if (o.prune_ratio.value_or(0) > 0 && !scope.moe && !scope.ffn && !scope.ssm)
            throw Error("--prune counts moe, ffn or ssm weights, and --prune-scope '" +
                        o.prune_scope.value_or("moe,ffn") +
                        "' has none of them (vocab rows are not counted in the ratio)");
        if (importance_of(o) != Importance::magnitude && !o.calib_text)
            throw Error(std::string("--prune-importance ") + importance_name(importance_of(o)) +
                        " needs calibration text (--calib TEXT)");
    }
    if (o.target_size > 0 && !o.calib_text) throw Error("--target-size needs calibration text (--calib TEXT)");
    if (o.target_size > 0 && o.quant)
        throw Error("--target-size chooses the dtypes itself: drop --quant (pin tensors with --precision)");
}

Conversion convert(const uint8_t* checkpoint_bytes, size_t size, const ConvertOptions& o) {
    check_options(o);
    Conversion c;
    ConversionReport& r = c.report;
    const pt::Checkpoint checkpoint = pt::read_checkpoint_bytes(checkpoint_bytes, size);

    // The checkpoint as a model, with its tokenizer and the rows it can produce.
    CheckpointOptions from;
    from.top_k = o.top_k;
    from.masked_units = &r.masked;  // torch.nn.utils.prune masks
    from.moe_empty_identity = o.moe_empty_identity;
    pt::Value config_file;
    if (o.config_json) {
        config_file = json_to_value(*o.config_json, o.config_source);
        from.config_file = &config_file;
    }
    ModelSpec spec = checkpoint_to_spec(checkpoint, from);
    if (o.tokenizer_json) {
        spec.tokenizer = parse_tokenizer_json(*o.tokenizer_json);
        spec.has_tokenizer = true;
        if (static_cast<int64_t>(spec.tokenizer.tokens.size()) > spec.config.vocab_size)
            throw Error("tokenizer has " + std::to_string(spec.tokenizer.tokens.size()) +
                        " tokens but the model's vocabulary is " + std::to_string(spec.config.vocab_size));
    }
    if (o.trim_vocab) trim_vocabulary(spec);

    // Pruning at a given ratio (or of a scope alone); with --target-size and a scope but no ratio,
    // the budget search chooses how much (below).
    const std::string calib_text = o.calib_text.value_or("");
    PruneOptions prune;
    if (prunes(o)) {
        prune.ratio = o.prune_ratio.value_or(0);
        prune.scope = scope_of(o);
        prune.by_sensitivity = !o.prune_uniform;
        prune.calib_tokens = o.calib_tokens;
        prune.importance = importance_of(o);
    }
    r.budget_prunes = o.target_size > 0 && o.prune_ratio.value_or(0) == 0 && o.prune_scope;
    if (prunes(o) && !r.budget_prunes) {
        r.prune = prune_spec(spec, prune, calib_text);
        r.pruned = true;
        r.importance = prune.importance;
        r.by_sensitivity = prune.by_sensitivity && o.calib_text;
    }
    spec.provenance.source_name = o.source_name;
    spec.provenance.source_sha256 = sha256_hex(checkpoint_bytes, size);
    spec.provenance.converter_version = ITERA_VERSION;
    spec.provenance.options = o.options_text;

    // Every tensor's dtype: --quant's policy, --precision, --keep, or the budget search.
    QuantOptions quant;
    quant.base = o.quant.value_or(DType::f32);
    for (const std::string& rule : o.keep) quant.keep.push_back(parse_keep_rule(rule));
    quant.trim_vocab = o.trim_vocab;
    quant.layout = o.layout;
    std::vector<PrecisionRule> precision;
    for (const std::string& map : o.precision)
        for (const PrecisionRule& rule : parse_precision(map)) precision.push_back(rule);
    quant.dtypes = resolve_precision(precision, spec.tensors);
    std::map<std::string, ActivationStats> stats;
    if (o.calib_text) stats = collect_activation_stats(spec, calib_text, o.calib_tokens);
    if (o.target_size > 0) {
        BudgetOptions budget;
        budget.target_bytes = o.target_size;
        budget.candidates = {DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0};
        budget.score_tokens = o.score_tokens;
        budget.calib_tokens = o.calib_tokens;
        budget.prune = r.budget_prunes;
        budget.prune_options = prune;
        r.budget = plan_budget(spec, calib_text, stats, quant, budget);
        r.budgeted = true;
        r.target_bytes = o.target_size;
        quant.dtypes = r.budget.dtypes;
    }
    r.tensors = quantize_spec(spec, quant, o.calib_text ? &stats : nullptr);
    choose_layouts(spec, quant.layout);
    c.itl = serialize_itl(spec);

    r.file_bytes = c.itl.size();
    r.layers = spec.config.layers.size();
    for (const SpecTensor& t : spec.tensors) r.parameters += static_cast<int64_t>(t.values.size());
    r.storage = quant.dtypes.empty() ? std::string(dtype_name(quant.base)) : "mixed precision";
    r.calibrated = o.calib_text.has_value();
    r.vocab_trimmed = !spec.config.vocab_ids.empty();
    r.vocab_rows = spec.config.vocab_size;
    return c;
}

}  // namespace itera
