#include "converter/budget.h"

#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "converter/measure.h"
#include "format/itl_file.h"
#include "format/itl_layout.h"
#include "runtime/tokenizer.h"

namespace itera {

// ---- the solver ----

std::vector<int> solve_knapsack(const std::vector<std::vector<KnapsackOption>>& items, uint64_t budget, uint64_t unit) {
    if (unit == 0) throw Error("knapsack unit must be positive");
    const size_t capacity = static_cast<size_t>(budget / unit);
    if (capacity > (size_t{1} << 24)) throw Error("knapsack budget too fine: use a larger unit");
    constexpr double kNone = std::numeric_limits<double>::infinity();
    // best[c]: least cost of the items so far within c units; pick[i][c]: item i's option there.
    std::vector<double> best(capacity + 1, 0.0), next(capacity + 1);
    std::vector<std::vector<int8_t>> pick(items.size(), std::vector<int8_t>(capacity + 1, -1));
    for (size_t i = 0; i < items.size(); i++) {
        if (items[i].empty() || items[i].size() > 127) throw Error("knapsack items need 1 to 127 options");
        for (size_t c = 0; c <= capacity; c++) {
            next[c] = kNone;
            for (size_t o = 0; o < items[i].size(); o++) {
                const uint64_t units = (items[i][o].bytes + unit - 1) / unit;
                if (units > c || best[c - units] == kNone) continue;
                const double cost = best[c - units] + items[i][o].cost;
                if (cost < next[c]) {
                    next[c] = cost;
                    pick[i][c] = static_cast<int8_t>(o);
                }
            }
        }
        best.swap(next);
    }
    if (best[capacity] == kNone) return {};
    std::vector<int> chosen(items.size());
    size_t c = capacity;
    for (size_t i = items.size(); i-- > 0;) {
        chosen[i] = pick[i][c];
        c -= static_cast<size_t>((items[i][static_cast<size_t>(chosen[i])].bytes + unit - 1) / unit);
    }
    return chosen;
}

// ---- the driver ----

namespace {

// The calibration tokens every measurement runs over: the first max_tokens (the FP32 model's
// logits over them are kept, at most 32 M floats).
std::vector<int32_t> score_ids(const ModelSpec& spec, const std::string& text, int64_t max_tokens) {
    if (!spec.has_tokenizer) throw Error("--target-size needs a tokenizer (--tokenizer TOK.json)");
    std::vector<int32_t> ids = Tokenizer(spec.tokenizer).encode(text);
    if (ids.empty()) throw Error("calibration text has no tokens");
    max_tokens = std::max<int64_t>(1, std::min<int64_t>(max_tokens, (int64_t{32} << 20) / spec.config.vocab_size));
    if (static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(static_cast<size_t>(max_tokens));
    return ids;
}

uint64_t aligned_bytes(DType dtype, const std::vector<int64_t>& shape) {
    const uint64_t b = tensor_bytes(dtype, shape);
    return (b + kItlTensorAlign - 1) / kItlTensorAlign * kItlTensorAlign;
}

// A dtype the user gave for this tensor (--precision, --keep), if any.
bool pinned(const SpecTensor& t, const QuantOptions& quant, DType* dtype) {
    bool found = false;
    if (const auto it = quant.dtypes.find(t.name); it != quant.dtypes.end()) {
        found = true;
        *dtype = it->second;
    }
    for (const auto& [glob, wanted] : quant.keep)
        if (fnmatch(glob.c_str(), t.name.c_str(), 0) == 0) {
            found = true;
            *dtype = wanted;
        }
    return found;
}

// Builds a model with any dtype per tensor from quantizations made once per (tensor, dtype) by
// quantize_spec (GPTQ where `stats` has the tensor's inputs), so that trying many assignments
// costs only serialization and the forward.
class Lowering {
public:
    Lowering(const ModelSpec& spec, const std::map<std::string, ActivationStats>& stats, Layout layout)
        : spec_(spec), stats_(stats), layout_(layout) {}

    // Tensors absent from `dtypes` stay fp32.
    ModelSpec build(const std::map<std::string, DType>& dtypes) {
        ModelSpec out = spec_;
        for (SpecTensor& t : out.tensors) {
            const auto d = dtypes.find(t.name);
            if (d == dtypes.end() || d->second == DType::f32) continue;
            auto it = done_.find({t.name, d->second});
            if (it == done_.end()) {
                ModelSpec one;
                one.tensors = {t};
                QuantOptions q;
                q.dtypes = {{t.name, d->second}};
                quantize_spec(one, q, &stats_);
                it = done_.emplace(std::make_pair(t.name, d->second), std::move(one.tensors[0].packed)).first;
            }
            t.dtype = d->second;
            t.packed = it->second;
        }
        choose_layouts(out, layout_);  // as the written file will have them
        return out;
    }

    const ModelSpec& spec() const { return spec_; }

private:
    const ModelSpec& spec_;
    const std::map<std::string, ActivationStats>& stats_;
    Layout layout_;
    std::map<std::pair<std::string, DType>, std::vector<uint8_t>> done_;  // packed bytes (empty for fp16)
};

// Every tensor of `spec` with the dtypes it may take, cheapest first (their KLDs still 0).
std::vector<BudgetTensor> candidates_of(const ModelSpec& spec, const QuantOptions& quant,
                                        const BudgetOptions& options) {
    std::vector<BudgetTensor> out;
    for (const SpecTensor& t : spec.tensors) {
        BudgetTensor bt;
        bt.name = t.name;
        bt.shape = t.shape;
        std::vector<DType> dtypes;
        DType given;
        if (pinned(t, quant, &given)) {
            dtypes = {given};
        } else {
            dtypes = {DType::f32, DType::f16};
            if (!read_elementwise(t.name, t.shape.size()))
                for (DType d : options.candidates)
                    if (std::find(dtypes.begin(), dtypes.end(), d) == dtypes.end()) dtypes.push_back(d);
        }
        for (DType d : dtypes) bt.candidates.push_back({d, aligned_bytes(d, t.shape), 0.0});
        std::stable_sort(bt.candidates.begin(), bt.candidates.end(),
                         [](const BudgetCandidate& a, const BudgetCandidate& b) { return a.bytes < b.bytes; });
        out.push_back(std::move(bt));
    }
    return out;
}

// The size of `spec` with every tensor at its cheapest candidate; *overhead: what of it is not
// tensors (the writer rounds to nearest here: only the size matters).
uint64_t smallest_file(const ModelSpec& spec, const std::vector<BudgetTensor>& tensors, uint64_t* overhead) {
    ModelSpec probe = spec;
    uint64_t tensor_bytes = 0;
    for (size_t i = 0; i < tensors.size(); i++) {
        probe.tensors[i].dtype = tensors[i].candidates[0].dtype;
        tensor_bytes += tensors[i].candidates[0].bytes;
    }
    const uint64_t size = serialize_itl(probe).size();
    *overhead = size - tensor_bytes;
    return size;
}

// Steps 2 and 3 on one model whose candidates carry their costs: fills out's dtypes, tensors,
// sizes, predicted loss (the costs summed) and measured agreement, or returns false when the
// budget cannot be met.
bool assign(Lowering& lowering, const Scorer& scorer, std::vector<BudgetTensor> tensors, const BudgetOptions& options,
            BudgetResult* out) {
    uint64_t overhead = 0;
    if (smallest_file(lowering.spec(), tensors, &overhead) > options.target_bytes) return false;
    std::vector<std::vector<KnapsackOption>> items;
    for (const BudgetTensor& bt : tensors) {
        items.emplace_back();
        for (const BudgetCandidate& c : bt.candidates) items.back().push_back({c.bytes, c.cost});
    }
    // 64-byte units, coarser for budgets above 4 MiB so that the table stays at most 64 K columns
    // (each tensor then rounds up by less than one unit).
    uint64_t unit = kItlTensorAlign;
    while (options.target_bytes / unit > (uint64_t{1} << 16)) unit *= 2;
    uint64_t excess = 0;
    for (int round = 1; round <= options.max_rounds && overhead + excess < options.target_bytes; round++) {
        const std::vector<int> chosen = solve_knapsack(items, options.target_bytes - overhead - excess, unit);
        if (chosen.empty()) return false;
        std::map<std::string, DType> dtypes;
        double predicted = 0;
        uint64_t tensor_bytes = 0;
        for (size_t i = 0; i < chosen.size(); i++) {
            tensors[i].chosen = chosen[i];
            const BudgetCandidate& c = tensors[i].candidates[static_cast<size_t>(chosen[i])];
            dtypes[tensors[i].name] = c.dtype;
            predicted += c.cost;
            tensor_bytes += c.bytes;
        }
        const ModelSpec built = lowering.build(dtypes);
        const uint64_t size = serialize_itl(built).size();
        if (size <= options.target_bytes) {
            out->dtypes = std::move(dtypes);
            out->tensors = std::move(tensors);
            out->file_bytes = size;
            out->overhead_bytes = size - tensor_bytes;
            out->predicted_kld = predicted;
            out->measured = scorer.score(built);
            out->rounds = round;
            return true;
        }
        excess += (size - options.target_bytes + unit - 1) / unit * unit;  // at least one unit less
    }
    return false;
}

// Step 4: when the measured KL exceeds the first-order prediction by more than 10%, every
// candidate is measured around the chosen file (its KL with only that tensor moved to the
// candidate, minus the file's own) and steps 2 and 3 run again on those costs; the new file
// replaces the old one if it measures better.
void refine(Lowering& lowering, const Scorer& scorer, const BudgetOptions& options, BudgetResult* result) {
    if (result->measured.kld <= 1.1 * result->predicted_kld) return;
    const double base = result->measured.kld;
    std::vector<BudgetTensor> tensors = result->tensors;
    for (BudgetTensor& bt : tensors)
        for (BudgetCandidate& c : bt.candidates) {
            std::map<std::string, DType> moved = result->dtypes;
            moved[bt.name] = c.dtype;
            c.kld_in_file = c.dtype == result->dtypes.at(bt.name) ? base : scorer.score(lowering.build(moved)).kld;
            c.cost = c.kld_in_file - base;
        }
    BudgetResult r;
    if (assign(lowering, scorer, std::move(tensors), options, &r) && r.measured.kld < base) {
        r.predicted_kld += base;
        r.refined = true;
        *result = std::move(r);
    }
    result->first_kld = base;
}

// The measured loss of a pruning plan's groups, summed: each group's sensitivity curve
// (analyze_pruning) read at the units the plan keeps, linearly between measured sizes.
double pruning_loss(const PruneAnalysis& analysis, const PrunePlan& plan) {
    double loss = 0;
    for (const GroupPlan& gp : plan.groups)
        for (const UnitGroup& g : analysis.groups) {
            if (g.name() != gp.group.name()) continue;
            const double kept = static_cast<double>(gp.keep.size());
            double hi_keep = g.units, hi_kld = 0;  // the measured size above `kept` (all units: 0)
            double value = g.sens_kld.empty() ? 0 : g.sens_kld.back();
            for (size_t j = 0; j < g.sens_keep.size(); j++) {  // sizes descending
                if (g.sens_keep[j] > kept) {
                    hi_keep = g.sens_keep[j];
                    hi_kld = g.sens_kld[j];
                    continue;
                }
                const double span = hi_keep - g.sens_keep[j];
                value = span > 0 ? hi_kld + (g.sens_kld[j] - hi_kld) * (hi_keep - kept) / span : g.sens_kld[j];
                break;
            }
            loss += value;
        }
    return loss;
}

}  // namespace

BudgetResult plan_budget(ModelSpec& spec, const std::string& calib_text, std::map<std::string, ActivationStats>& stats,
                         const QuantOptions& quant, const BudgetOptions& options) {
    // The variants: the model as given, then the pruning planner's plan at each ratio.
    // (Each variant's model is rebuilt from its plan when needed: one copy of the model at a time.)
    struct Variant {
        BudgetVariant summary;
        PrunePlan plan;
    };
    auto model_of = [&](const Variant& v) {
        ModelSpec pruned = spec;
        if (!v.plan.groups.empty() || !v.plan.vocab_keep_rows.empty()) apply_pruning(pruned, v.plan);
        return pruned;
    };
    std::vector<Variant> variants(1);
    if (options.prune) {
        PruneOptions po = options.prune_options;
        po.by_sensitivity = true;
        const PruneAnalysis analysis = analyze_pruning(spec, po, calib_text);
        for (double ratio : options.prune_ratios) {
            po.ratio = ratio;
            Variant v;
            try {
                v.plan = plan_pruning(spec, analysis, po);
            } catch (const Error&) {
                break;  // the scope has no more to give
            }
            v.summary.prune_ratio = ratio;
            v.summary.removed_weights = v.plan.removed_weights;
            v.summary.predicted_prune_kld = pruning_loss(analysis, v.plan);
            variants.push_back(std::move(v));
        }
    }
    // A budget no variant can meet is refused before anything is measured.
    uint64_t least = std::numeric_limits<uint64_t>::max(), least_overhead = 0;
    for (const Variant& v : variants) {
        uint64_t overhead = 0;
        const ModelSpec pruned = model_of(v);
        const uint64_t size = smallest_file(pruned, candidates_of(pruned, quant, options), &overhead);
        if (size < least) {
            least = size;
            least_overhead = overhead;
        }
    }
    if (least > options.target_bytes)
        throw Error("--target-size " + std::to_string(options.target_bytes) + " cannot be met: the smallest file " +
                    std::string(options.prune ? "pruning and " : "") + "these dtypes give is " + std::to_string(least) +
                    " bytes (" + std::to_string(least_overhead) + " of them header, metadata and tokenizer)");

    // 1. Sensitivity, on the model as given: every candidate's KLD with only its tensor lowered.
    const Scorer scorer(spec, score_ids(spec, calib_text, options.score_tokens));
    std::map<std::pair<std::string, DType>, double> kld_of;
    {
        Lowering lowering(spec, stats, quant.layout);
        for (const BudgetTensor& bt : candidates_of(spec, quant, options))
            for (const BudgetCandidate& c : bt.candidates)
                kld_of[{bt.name, c.dtype}] =
                    c.dtype == DType::f32 ? 0.0 : scorer.score(lowering.build({{bt.name, c.dtype}})).kld;
    }

    // 2 and 3 for each variant (pruned tensors keep the unpruned costs). The two that measure best
    // go on to step 4 (a refined runner-up can overtake the first).
    struct Built {
        BudgetResult result;
        ModelSpec spec;
        std::map<std::string, ActivationStats> stats;
        size_t index = 0;
    };
    std::vector<Built> finalists;
    std::vector<BudgetVariant> summaries;
    for (size_t i = 0; i < variants.size(); i++) {
        Variant& v = variants[i];
        Built b{{}, model_of(v), i == 0 ? stats : std::map<std::string, ActivationStats>{}, i};
        if (i > 0) b.stats = collect_activation_stats(b.spec, calib_text, options.calib_tokens);
        std::vector<BudgetTensor> tensors = candidates_of(b.spec, quant, options);
        for (BudgetTensor& bt : tensors)
            for (BudgetCandidate& c : bt.candidates) c.cost = c.kld = kld_of.at({bt.name, c.dtype});
        Lowering lowering(b.spec, b.stats, quant.layout);
        if (assign(lowering, scorer, std::move(tensors), options, &b.result)) {
            v.summary.file_bytes = b.result.file_bytes;
            v.summary.measured = b.result.measured;
            v.summary.predicted_kld = v.summary.predicted_prune_kld + b.result.predicted_kld;
            b.result.predicted_kld = v.summary.predicted_kld;
            finalists.push_back(std::move(b));
            std::sort(finalists.begin(), finalists.end(),
                      [](const Built& x, const Built& y) { return x.result.measured.kld < y.result.measured.kld; });
            if (finalists.size() > 2) finalists.pop_back();
        }
        summaries.push_back(v.summary);
    }
    if (finalists.empty())
        throw Error("--target-size " + std::to_string(options.target_bytes) +
                    " cannot be met: the metadata grew past the budget in every try");
    for (Built& f : finalists) {
        Lowering lowering(f.spec, f.stats, quant.layout);
        refine(lowering, scorer, options, &f.result);
    }
    Built& chosen = finalists.size() > 1 && finalists[1].result.measured.kld < finalists[0].result.measured.kld
                        ? finalists[1]
                        : finalists[0];
    BudgetResult best = std::move(chosen.result);
    const size_t best_index = chosen.index;
    best.prune = variants[best_index].plan;
    best.prune_ratio = variants[best_index].summary.prune_ratio;
    best.variants = std::move(summaries);
    best.score_tokens = scorer.tokens();
    if (best_index > 0) {
        spec = std::move(chosen.spec);
        stats = std::move(chosen.stats);
    }
    return best;
}

}  // namespace itera
