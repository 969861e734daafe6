// What a conversion did, as one struct: the file's summary figures, every tensor's dtype, bytes and
// error, the units pruning removed and the --target-size choice. It is serialized once, to the
// --report JSON (docs/cli.md) and to the lines itera-convert prints.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "converter/budget.h"
#include "converter/prune.h"
#include "converter/quantize_spec.h"

namespace itera {

struct ConversionReport {
    // The file
    uint64_t file_bytes = 0;
    size_t layers = 0;
    int64_t parameters = 0;      // values stored (after trimming and pruning)
    std::string storage;         // the --quant name ("fp32", "q4", ...) or "mixed precision"
    bool calibrated = false;     // calibration text was given
    bool vocab_trimmed = false;  // the file lists the ids of the rows it keeps
    int32_t vocab_rows = 0;
    std::vector<TensorReport> tensors;  // quantize_spec's, in file order
    // Pruning
    PrunePlan masked;     // neurons the checkpoint's prune masks zeroed, removed exactly
    bool pruned = false;  // --prune (or a --prune-scope alone) ran
    PrunePlan prune;      // what it removed
    Importance importance = Importance::magnitude;
    bool by_sensitivity = false;  // per-group ratios from measured sensitivities
    // --target-size
    bool budgeted = false;
    uint64_t target_bytes = 0;
    bool budget_prunes = false;  // it also chose how much to prune
    BudgetResult budget;
};

// Every unit removed: the masks', --prune's and the budget's plans in that order.
PrunePlan removed_units(const ConversionReport& report);

// The --report JSON. Numbers are %.6g, null where a field does not apply.
std::string report_json(const ConversionReport& report);

// {"removed_weights": N, "groups": [{"name", "kind", "layer", "expert", "units", "kept", "tensors",
// "keep"}...], "vocab_rows_kept": R} (models/recover.py replays "keep" in PyTorch).
std::string prune_report_json(const PrunePlan& plan);

// The lines itera-convert prints: the masks' and --prune's removals, then "<written>: 2 layers,
// 623840 parameters, q4 calibrated, 393888 bytes", then the --target-size result and the pruning
// levels it tried. `written` is "wrote PATH" for a file.
std::string summary_text(const ConversionReport& report, const std::string& written);

}  // namespace itera
