// How much each group of units can lose: the measured KL divergence from the unpruned model with
// only that group cut to a few sizes (the planner spends the ratio where it costs least).
#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "converter/measure.h"
#include "converter/prune.h"

namespace itera {

void measure_sensitivity(const ModelSpec& spec, std::vector<UnitGroup>& groups, const PruneOptions& options,
                         const std::vector<int32_t>& ids) {
    // Every position with a next token among the first sensitivity_tokens ids; the reference's
    // logits are kept: at most 32 M floats of them.
    const int64_t most = std::max<int64_t>(
        2, std::min<int64_t>(options.sensitivity_tokens, (int64_t{32} << 20) / spec.config.vocab_size));
    const size_t n = std::min(ids.size(), static_cast<size_t>(most));
    const Scorer scorer(spec, std::vector<int32_t>(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n - 1)));
    for (UnitGroup& g : groups) {
        const int32_t lo = min_keep(g, spec.config, options.max_group_ratio);
        std::set<int32_t, std::greater<int32_t>> sizes;
        if (g.kind == UnitKind::expert) {
            for (int32_t k = g.units - 1; k >= lo; k--) sizes.insert(k);
        } else {
            for (int j = 1; j < 8; j++)
                sizes.insert(std::max(lo, static_cast<int32_t>(std::lround(g.units * (8 - j) / 8.0))));
        }
        sizes.erase(g.units);
        for (int32_t k : sizes) {
            ModelSpec copy = spec;
            PrunePlan plan;
            plan.groups.push_back(keep_best(g, k));
            apply_pruning(copy, plan);
            g.sens_keep.push_back(k);
            g.sens_kld.push_back(scorer.score(copy).kld);
        }
    }
}

}  // namespace itera
