// --target-size: chooses every tensor's storage type so that the file fits a byte budget with
// the least predicted loss, then builds the file and measures it for real.
//
//  1. Sensitivity. For each tensor and each dtype it may take, the mean KL divergence from the
//     FP32 model over the calibration tokens with only that tensor lowered (GPTQ-rounded when the
//     tensor has calibration statistics), measured with the runtime's own forward.
//  2. Assignment. Predicted loss = the sum of the chosen dtypes' KLDs (first order: the effects of
//     small perturbations add). Minimising it under sum of bytes <= budget is a multiple-choice
//     knapsack, solved exactly by dynamic programming over 64-byte units (every tensor starts on a
//     64-byte boundary, so those are the file's own units).
//  3. Check. The chosen file is serialized; when it is larger than the target (the compressed
//     metadata's size moves a little with the dtypes), the tensors' budget shrinks by the excess
//     and step 2 runs again. The result's KLD and top-1 agreement are then measured.
//  4. Refinement. When the measured KLD exceeds the prediction by more than 10% (the effects did
//     not add), every candidate is measured again around the chosen file (the file's KLD with only
//     that tensor moved to the candidate, minus the file's own), steps 2 and 3 run once more, and
//     the new file is kept if it measures better.
//
// With pruning (a --prune-scope), steps 2 and 3 also run on the structured-pruning planner's
// plans (converter/prune.h) at a ladder of ratios: the pruned tensors keep the dtype
// sensitivities measured unpruned, with their smaller byte counts. Each variant is built and
// measured for real; the two that measure best are refined (step 4), and the better one wins.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "converter/calibration.h"
#include "converter/prune.h"
#include "converter/quantize_spec.h"
#include "format/model_spec.h"
#include "runtime/evaluate.h"  // Agreement

namespace itera {

// ---- the solver ----

struct KnapsackOption {
    uint64_t bytes = 0;
    double cost = 0;
};

// One option per item with the least total cost such that the total bytes, each option's bytes
// rounded up to a multiple of `unit`, is at most `budget`. Returns the chosen option index of each
// item, or an empty vector when nothing fits. Items need at least one option, and at most 127.
std::vector<int> solve_knapsack(const std::vector<std::vector<KnapsackOption>>& items, uint64_t budget, uint64_t unit);

// ---- the driver ----

struct BudgetOptions {
    uint64_t target_bytes = 0;
    std::vector<DType> candidates;  // block formats tried on matrices, besides fp32 and fp16
    int64_t score_tokens = 2048;    // calibration tokens every measurement runs over
    int64_t calib_tokens = 16384;   // for the GPTQ statistics of a pruned variant
    int max_rounds = 4;             // step 3 repeats at most this often
    bool prune = false;             // also try pruned variants, within prune_options.scope
    PruneOptions prune_options;
    std::vector<double> prune_ratios = {0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8};
};

struct BudgetCandidate {
    DType dtype = DType::f32;
    uint64_t bytes = 0;       // rounded up to the 64-byte tensor alignment
    double kld = 0;           // step 1: measured with only this tensor lowered to `dtype`
    double kld_in_file = -1;  // step 4: the first choice's KLD with this tensor moved to `dtype` (-1: not run)
    double cost = 0;          // what step 2 minimises: kld, or in step 4 kld_in_file minus the file's KLD
};

struct BudgetTensor {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<BudgetCandidate> candidates;
    int chosen = 0;
};

// One pruning level tried (ratio 0: unpruned).
struct BudgetVariant {
    double prune_ratio = 0;
    int64_t removed_weights = 0;
    double predicted_prune_kld = 0;  // the pruned groups' measured losses, summed
    double predicted_kld = 0;        // that plus the dtypes' predicted loss
    uint64_t file_bytes = 0;         // 0: the budget could not be met
    Agreement measured;
};

struct BudgetResult {
    std::map<std::string, DType> dtypes;  // every tensor's choice, for QuantOptions::dtypes
    std::vector<BudgetTensor> tensors;
    uint64_t file_bytes = 0;      // of the chosen file, serialized
    uint64_t overhead_bytes = 0;  // header, metadata, tokenizer, padding: file_bytes - tensors' bytes
    double predicted_kld = 0;     // sum of the chosen candidates' costs (and pruning losses)
    Agreement measured;           // the chosen file against FP32 on the same tokens
    int64_t score_tokens = 0;
    int rounds = 0;
    bool refined = false;   // step 4 replaced the first choice
    double first_kld = -1;  // step 4 ran: the first choice's measured KLD
    PrunePlan prune;        // of the chosen variant (empty: unpruned)
    double prune_ratio = 0;
    std::vector<BudgetVariant> variants;  // every variant tried, the chosen one included
};

// `spec` is the FP32 model with its tokenizer and provenance (the metadata counts toward the
// size), `stats` its calibration statistics. Tensors that `quant` pins (quant.dtypes from
// --precision, quant.keep) keep their dtype; the driver chooses all others. When a pruned
// variant wins, `spec` and `stats` become the pruned model's. Throws itera::Error when even the
// smallest choice does not fit.
BudgetResult plan_budget(ModelSpec& spec, const std::string& calib_text, std::map<std::string, ActivationStats>& stats,
                         const QuantOptions& quant, const BudgetOptions& options);

}  // namespace itera
