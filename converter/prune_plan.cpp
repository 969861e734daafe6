// The pruning planner: how many units each group keeps so that the ratio is reached where the
// measured loss is least (or the same fraction everywhere), and which units those are.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "converter/prune.h"
#include "converter/vocabulary.h"
#include "runtime/tokenizer.h"

namespace itera {

namespace {

// "--prune 0.9 asks for more than the scope allows (at most 0.875)": the ratio as given, the limit
// rounded down, so that the number named is itself accepted.
Error too_much(double ratio, double most) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "--prune %g asks for more than the scope allows (at most %.3f)", ratio,
                  std::floor(most * 1000.0) / 1000.0);
    return Error(buf);
}

// Units ordered least important first (ties: lower index first).
std::vector<int32_t> removal_order(const UnitGroup& g) {
    std::vector<int32_t> order(static_cast<size_t>(g.units));
    for (int32_t i = 0; i < g.units; i++) order[static_cast<size_t>(i)] = i;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return g.score[static_cast<size_t>(a)] < g.score[static_cast<size_t>(b)];
    });
    return order;
}

PrunePlan plan_of(const std::vector<UnitGroup>& groups, const std::vector<int32_t>& kept) {
    PrunePlan plan;
    for (size_t i = 0; i < groups.size(); i++)
        if (kept[i] < groups[i].units) plan.groups.push_back(keep_best(groups[i], kept[i]));
    return plan;
}

}  // namespace

GroupPlan keep_best(const UnitGroup& g, int32_t kept) {
    const std::vector<int32_t> order = removal_order(g);
    GroupPlan gp;
    gp.group = g;
    gp.group.score.clear();
    gp.group.sens_keep.clear();
    gp.group.sens_kld.clear();
    gp.keep.assign(order.end() - kept, order.end());
    std::sort(gp.keep.begin(), gp.keep.end());
    return gp;
}

int32_t min_keep(const UnitGroup& g, const ModelConfig& config, double max_group_ratio) {
    int32_t k = std::max(1, static_cast<int32_t>(std::ceil(g.units * (1.0 - max_group_ratio) - 1e-9)));
    if (g.kind == UnitKind::expert) k = std::max(k, config.layers[static_cast<size_t>(g.layer)].top_k);
    return std::min(k, g.units);
}

PruneAnalysis analyze_pruning(const ModelSpec& spec, const PruneOptions& options, const std::string& calib_text) {
    PruneAnalysis a;
    a.groups = unit_groups(spec, options.scope);
    ModelConfig empty = spec.config;  // every in-scope group at zero units
    for (LayerConfig& lc : empty.layers) {
        if (options.scope.ssm) lc.inner = 0;
        if (lc.kind == ChannelKind::ffn && options.scope.ffn) lc.ffn_widths[0] = 0;
        if (lc.kind == ChannelKind::moe && options.scope.moe) lc.ffn_widths.clear();
    }
    a.prunable_weights = weights_of(spec.config) - weights_of(empty);
    if (calib_text.empty() || options.importance == Importance::magnitude) {
        for (UnitGroup& g : a.groups) magnitude_scores(spec, g);
    }
    if (calib_text.empty()) return a;
    if (!spec.has_tokenizer) throw Error("pruning with calibration text needs a tokenizer (--tokenizer TOK.json)");
    const std::vector<int32_t> ids = Tokenizer(spec.tokenizer).encode(calib_text);
    if (ids.size() < 2) throw Error("calibration text has fewer than 2 tokens");
    if (options.importance != Importance::magnitude) {
        a.calib_tokens = calibrated_scores(spec, a.groups, options.importance, ids, options.calib_tokens);
        a.importance = options.importance;
    }
    if (options.by_sensitivity) measure_sensitivity(spec, a.groups, options, ids);
    return a;
}

PrunePlan plan_pruning(const ModelSpec& spec, const PruneAnalysis& analysis, const PruneOptions& options) {
    if (!(options.ratio >= 0.0 && options.ratio < 1.0)) throw Error("--prune ratio must be in [0, 1)");
    const std::vector<UnitGroup>& groups = analysis.groups;
    for (const UnitGroup& g : groups)
        if (options.ratio > 0 && static_cast<int32_t>(g.score.size()) != g.units)
            throw Error("pruning: " + g.name() + " has no scores");
    const int64_t base = weights_of(spec.config);
    auto removed = [&](const std::vector<int32_t>& kept) {
        return base - weights_of(pruned_config(spec.config, plan_of(groups, kept)));
    };
    const double target = options.ratio * static_cast<double>(analysis.prunable_weights);
    std::vector<int32_t> kept(groups.size()), least(groups.size());
    for (size_t i = 0; i < groups.size(); i++) {
        kept[i] = groups[i].units;
        least[i] = min_keep(groups[i], spec.config, options.max_group_ratio);
    }
    bool sensitive = false;  // measured for every group that can shrink
    for (const UnitGroup& g : groups) sensitive = sensitive || !g.sens_keep.empty();
    sensitive = sensitive && options.by_sensitivity;
    if (target > 0 && !sensitive) {
        // The same fraction of every group (whole experts stay): the smallest that reaches target.
        auto at = [&](double f) {
            std::vector<int32_t> k(groups.size());
            for (size_t i = 0; i < groups.size(); i++)
                k[i] = groups[i].kind == UnitKind::expert
                           ? groups[i].units
                           : std::max(least[i],
                                      groups[i].units - static_cast<int32_t>(std::floor(f * groups[i].units + 1e-9)));
            return k;
        };
        if (static_cast<double>(removed(at(1.0))) < target)
            throw too_much(options.ratio,
                           static_cast<double>(removed(at(1.0))) / static_cast<double>(analysis.prunable_weights));
        double lo = 0, hi = 1;
        for (int it = 0; it < 60; it++) {
            const double mid = 0.5 * (lo + hi);
            (static_cast<double>(removed(at(mid))) >= target ? hi : lo) = mid;
        }
        kept = at(hi);
    } else if (target > 0) {
        // Greedy: each step takes the size change with the least measured KL per removed weight.
        std::vector<double> loss(groups.size(), 0.0);
        size_t last = 0;
        int32_t last_from = 0;
        while (static_cast<double>(removed(kept)) < target) {
            const int64_t now = removed(kept);
            double best = INFINITY;
            size_t best_g = 0, best_j = 0;
            for (size_t i = 0; i < groups.size(); i++) {
                for (size_t j = 0; j < groups[i].sens_keep.size(); j++) {
                    if (groups[i].sens_keep[j] >= kept[i]) continue;
                    std::vector<int32_t> k = kept;
                    k[i] = groups[i].sens_keep[j];
                    const int64_t dw = removed(k) - now;
                    if (dw <= 0) continue;
                    const double cost = (groups[i].sens_kld[j] - loss[i]) / static_cast<double>(dw);
                    if (cost < best) {
                        best = cost;
                        best_g = i;
                        best_j = j;
                    }
                }
            }
            if (best == INFINITY)
                throw too_much(options.ratio,
                               static_cast<double>(now) / static_cast<double>(analysis.prunable_weights));
            last = best_g;
            last_from = kept[best_g];
            kept[best_g] = groups[best_g].sens_keep[best_j];
            loss[best_g] = groups[best_g].sens_kld[best_j];
        }
        // The last step may overshoot: keep as many of its units as still reach the target.
        int32_t lo = kept[last], hi = last_from;  // removed(lo) >= target > removed(hi)
        while (hi - lo > 1) {
            const int32_t mid = lo + (hi - lo) / 2;
            std::vector<int32_t> k = kept;
            k[last] = mid;
            (static_cast<double>(removed(k)) >= target ? lo : hi) = mid;
        }
        kept[last] = lo;
    }
    PrunePlan plan = plan_of(groups, kept);
    if (options.scope.vocab) {
        // A file without vocab_ids must then list every kept id (4 bytes each before zstd): drop
        // rows only when they hold at least as many weights as there are ids to list.
        std::vector<int32_t> rows = reachable_vocab_rows(spec);
        const int64_t kept = static_cast<int64_t>(rows.size()), dropped = spec.config.vocab_size - kept;
        if (dropped > 0 && (!spec.config.vocab_ids.empty() || dropped * spec.config.hidden >= kept))
            plan.vocab_keep_rows = std::move(rows);
    }
    plan.removed_weights = base - weights_of(pruned_config(spec.config, plan));
    return plan;
}

PrunePlan prune_spec(ModelSpec& spec, const PruneOptions& options, const std::string& calib_text) {
    PruneAnalysis analysis;  // ratio 0 (a scope alone, e.g. vocab) needs no scores
    if (options.ratio > 0) {
        analysis = analyze_pruning(spec, options, calib_text);
    } else {
        analysis.groups = unit_groups(spec, options.scope);
    }
    const PrunePlan plan = plan_pruning(spec, analysis, options);
    apply_pruning(spec, plan);
    return plan;
}

PrunePlan zero_unit_plan(const ModelSpec& spec) {
    PruneScope all;
    all.ssm = false;
    PrunePlan plan;
    for (UnitGroup& g : unit_groups(spec, all)) {
        if (g.kind != UnitKind::ffn_neuron && g.kind != UnitKind::expert_neuron) continue;
        magnitude_scores(spec, g);  // ||w1 row|| * ||w2 column||: 0 when either is all zeros
        GroupPlan gp;
        for (int32_t j = 0; j < g.units; j++)
            if (g.score[static_cast<size_t>(j)] != 0.0) gp.keep.push_back(j);
        if (static_cast<int32_t>(gp.keep.size()) == g.units) continue;
        if (gp.keep.empty()) gp.keep.push_back(0);  // an expert keeps one (zero) neuron
        g.score.clear();
        gp.group = g;
        plan.groups.push_back(gp);
    }
    plan.removed_weights = weights_of(spec.config) - weights_of(pruned_config(spec.config, plan));
    return plan;
}

}  // namespace itera
