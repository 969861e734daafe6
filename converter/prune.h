// Structured pruning: removes whole units from a converted FP32 ModelSpec and leaves physically
// smaller dense tensors (the format and runtime size every layer and expert from its config).
//
// A unit, and the slices that go with it:
//   ssm_channel    inner channel i of layer l's SSM block: in_proj rows i and Di+i (u and z),
//                  conv1d row i and bias i, delta_proj row i, column i and bias i, B column i,
//                  C row i, D[i], out_proj column i
//   ffn_neuron     neuron j of layer l's dense FFN: w1 row j, w2 column j
//   expert_neuron  neuron j of expert e of layer l: w1 row j, w2 column j
//   expert         expert e of layer l: its w1 and w2, router row e
// Removing a neuron whose w1 row or w2 column is zero is exact (GELU(0) = 0, no biases). Removing
// an SSM channel is not even when the channel is zero: the step size dt is the mean of
// softplus(delta) over the inner channels, so its denominator changes (docs/compression.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "format/model_spec.h"

namespace itera {

enum class UnitKind : int32_t { ssm_channel, ffn_neuron, expert_neuron, expert };

// --prune-scope: moe = expert neurons and whole experts, ffn = dense FFN neurons, ssm = SSM
// channels, vocab = embedding / head rows that no text can produce (not counted in the ratio).
// The default leaves SSM channels (costly without fine-tuning) and the vocabulary (dropped rows
// refuse --ids) alone.
struct PruneScope {
    bool moe = true, ffn = true, ssm = false, vocab = false;
};

// How units are ranked inside a group (higher score = kept):
//   magnitude   ||input-side weights|| * ||output-side weights|| of the unit (no data)
//   activation  RMS over calibration tokens of what the unit adds to the residual stream
//               (gate-weighted for experts)
//   taylor      mean over calibration tokens of |g . c|: c what the unit adds to the residual
//               stream, g the gradient of the next-token loss at the final LayerNorm's input
//               (first order, later layers taken as the residual identity)
enum class Importance : int32_t { magnitude, activation, taylor };

struct PruneOptions {
    double ratio = 0;  // fraction of the in-scope prunable weights to remove, 0 <= ratio < 1
    PruneScope scope;
    Importance importance = Importance::activation;
    bool by_sensitivity = true;         // per-group ratios from the measured loss of pruning each group
    int64_t calib_tokens = 2048;        // calibration tokens for the activation / taylor scores
    int64_t sensitivity_tokens = 1024;  // calibration tokens each sensitivity measurement runs
    double max_group_ratio = 0.875;     // no group loses more than this fraction of its units
};

// One set of interchangeable units: the channels of an SSM block, the neurons of an FFN or of one
// expert, or the experts of a MoE layer.
struct UnitGroup {
    UnitKind kind = UnitKind::ffn_neuron;
    int32_t layer = 0;
    int32_t expert = -1;           // expert_neuron: the expert's index before pruning
    int32_t units = 0;             // units before pruning
    int64_t weights_per_unit = 0;  // weights one unit holds (an expert: its full size)
    std::vector<double> score;     // importance per unit (empty until measured)
    // Measured sensitivity (calibration only): sens_kld[k] = mean KL divergence from the unpruned
    // model when only this group is cut to sens_keep[k] units (its least important ones go first).
    std::vector<int32_t> sens_keep;
    std::vector<double> sens_kld;
    std::string name() const;  // "layers.1.ssm.channels", "layers.1.moe.layer.experts.2.neurons", ...
};

// Everything plan_pruning needs, measured once and reusable for any ratio.
struct PruneAnalysis {
    Importance importance = Importance::magnitude;  // what the scores are (magnitude without text)
    std::vector<UnitGroup> groups;
    int64_t prunable_weights = 0;  // weights held by in-scope units
    int64_t calib_tokens = 0;      // calibration tokens used (0: magnitude only)
};

struct GroupPlan {
    UnitGroup group;            // scores dropped
    std::vector<int32_t> keep;  // ascending indices (before pruning) of the units kept
};

struct PrunePlan {
    std::vector<GroupPlan> groups;         // only groups that lose units
    std::vector<int32_t> vocab_keep_rows;  // embedding rows kept (empty: all)
    int64_t removed_weights = 0;           // weights the plan removes, vocabulary rows included
};

// The in-scope groups of `spec`, scores empty.
std::vector<UnitGroup> unit_groups(const ModelSpec& spec, const PruneScope& scope);

// Scores every in-scope unit and, when options.by_sensitivity and there is calibration text,
// measures each group's sensitivity with the runtime's own forward. Empty `calib_text`: magnitude
// scores whatever options.importance says. `spec` must be FP32 with a tokenizer when text is given.
PruneAnalysis analyze_pruning(const ModelSpec& spec, const PruneOptions& options, const std::string& calib_text);

// Chooses which units go so that about options.ratio of analysis.prunable_weights is removed:
// with sensitivities, greedily where the measured loss per removed weight is lowest; without,
// the same fraction of every group (whole experts are then never removed). Never leaves a group
// empty, a MoE layer with fewer experts than top_k, or a group below 1 - max_group_ratio. With
// scope.vocab, drops the unreachable rows unless the vocab_ids list the file would gain is larger.
PrunePlan plan_pruning(const ModelSpec& spec, const PruneAnalysis& analysis, const PruneOptions& options);

// Rewrites the tensors and config of `spec` (FP32 values; dtypes are chosen afterwards).
void apply_pruning(ModelSpec& spec, const PrunePlan& plan);

// analyze (skipped at ratio 0) + plan + apply; returns the plan applied.
PrunePlan prune_spec(ModelSpec& spec, const PruneOptions& options, const std::string& calib_text);

// Exact structural removal for checkpoints pruned in PyTorch: FFN and expert neurons whose w1 row
// or w2 column is entirely zero (at least one neuron stays per expert). SSM channels and experts
// are left in place as zeros (removing them changes the output, see above).
PrunePlan zero_unit_plan(const ModelSpec& spec);

// "moe,ffn,ssm,vocab" (any subset, comma-separated) -> scope; throws itera::Error otherwise.
PruneScope parse_prune_scope(const std::string& list);
const char* importance_name(Importance importance);  // "magnitude", "activation", "taylor"
const char* unit_kind_name(UnitKind kind);           // "ssm_channel", "ffn_neuron", ...

// ---- the jobs, one file each: prune_units.cpp (units, slicing), prune_score.cpp (importance),
// prune_sensitivity.cpp (measured loss per group size), prune_plan.cpp (the planner) ----

// The tensors a group's units are slices of (for the report; "experts.*" for whole experts).
std::vector<std::string> group_tensors(const UnitGroup& g);
// The tensor of `spec` named `name`; throws itera::Error when there is none.
SpecTensor& spec_tensor(ModelSpec& spec, const std::string& name);
const SpecTensor& spec_tensor(const ModelSpec& spec, const std::string& name);
// Weights a model of this config holds, and its config after `plan` (whose groups describe it).
int64_t weights_of(const ModelConfig& config);
ModelConfig pruned_config(const ModelConfig& config, const PrunePlan& plan);

// Magnitude scores of a group's units (no data).
void magnitude_scores(const ModelSpec& spec, UnitGroup& g);
// Activation or taylor scores of every group's units from the runtime's FP32 forward over the
// first `max_tokens` positions of `ids` (that have a next token), token by token in windows of
// max_seq_length. Returns the positions used.
int64_t calibrated_scores(const ModelSpec& spec, std::vector<UnitGroup>& groups, Importance importance,
                          const std::vector<int32_t>& ids, int64_t max_tokens);
// Each group's sens_keep / sens_kld: the mean KL divergence from `spec` over the first
// options.sensitivity_tokens of `ids` with only that group cut to 7/8, 6/8, ... of its units
// (experts: one fewer at a time), its least important units first. Needs the scores.
void measure_sensitivity(const ModelSpec& spec, std::vector<UnitGroup>& groups, const PruneOptions& options,
                         const std::vector<int32_t>& ids);
// The plan keeping a group's `kept` most important units, and the fewest units a group may keep.
GroupPlan keep_best(const UnitGroup& g, int32_t kept);
int32_t min_keep(const UnitGroup& g, const ModelConfig& config, double max_group_ratio);

}  // namespace itera
