// Structured pruning (converter/prune): removed units leave a model whose logits equal the
// unpruned model's with those units zeroed, shapes stay consistent with the config, the plan
// follows the scores and the ratio, the taylor score is the first-order loss change, and
// checkpoints in the torch.nn.utils.prune layout are folded.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "common/error.h"
#include "converter/checkpoint_to_spec.h"
#include "converter/prune.h"
#include "converter/vocabulary.h"
#include "format/itl_file.h"
#include "format/tensor_names.h"
#include "runtime/context.h"
#include "runtime/model.h"
#include "tests/model_fixtures.h"

using namespace itera;

namespace {

// FP32 random weights and a word tokenizer producing every id: <PAD> <UNK> w2 .. w22.
ModelSpec random_model(const ModelConfig& c, uint32_t seed) {
    ModelSpec spec = test::random_spec(c, DType::f32, seed);
    spec.has_tokenizer = true;
    spec.tokenizer.tokens = {"<PAD>", "<UNK>"};
    for (int32_t i = 2; i < c.vocab_size; i++) spec.tokenizer.tokens.push_back("w" + std::to_string(i));
    return spec;
}

SpecTensor& named(ModelSpec& spec, const std::string& name) {
    for (SpecTensor& t : spec.tensors)
        if (t.name == name) return t;
    FAIL("no tensor " << name);
    return spec.tensors[0];
}

std::vector<float> logits_of(const ModelSpec& spec, const std::vector<int32_t>& ids) {
    const auto model = test::model_from(spec);
    Context ctx(*model);
    std::vector<float> out;
    for (int32_t id : ids) {
        const float* l = ctx.eval(id);
        out.insert(out.end(), l, l + model->config.vocab_size);
    }
    return out;
}

// max |a - b| / max |a|
double relative_diff(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double d = 0, m = 0;
    for (size_t i = 0; i < a.size(); i++) {
        d = std::max(d, std::fabs(double{a[i]} - b[i]));
        m = std::max(m, std::fabs(double{a[i]}));
    }
    return d / m;
}

const std::vector<int32_t> kIds = {3, 7, 7, 12, 0, 22, 5, 9, 1, 14};  // past max_seq_length: the window slides

GroupPlan group_plan(UnitKind kind, int32_t layer, int32_t expert, int32_t units, std::vector<int32_t> keep) {
    GroupPlan gp;
    gp.group.kind = kind;
    gp.group.layer = layer;
    gp.group.expert = expert;
    gp.group.units = units;
    gp.keep = std::move(keep);
    return gp;
}

void zero_row(SpecTensor& t, int64_t row) {
    const int64_t cols = t.shape.back();
    for (int64_t c = 0; c < cols; c++) t.values[static_cast<size_t>(row * cols + c)] = 0.0f;
}

void zero_col(SpecTensor& t, int64_t col) {
    const int64_t cols = t.shape.back(), rows = t.shape[0];
    for (int64_t r = 0; r < rows; r++) t.values[static_cast<size_t>(r * cols + col)] = 0.0f;
}

}  // namespace

TEST_CASE("pruning neurons: the smaller model equals the model with those neurons zeroed") {
    const ModelSpec original = random_model(test::small_config(), 11);
    ModelSpec zeroed = original;
    // dense FFN of layer 0 keeps 0, 2, 3, 6; expert 1 keeps 1, 3, 5; expert 0 keeps only 4
    for (int j : {1, 4, 5}) zero_row(named(zeroed, "layers.0.moe.ffn.w1.weight"), j);
    for (int j : {0, 2, 4}) zero_col(named(zeroed, expert_prefix(1, 1) + "w2.weight"), j);
    for (int j : {0, 1, 2, 3}) zero_row(named(zeroed, expert_prefix(1, 0) + "w1.weight"), j);
    PrunePlan plan;
    plan.groups = {group_plan(UnitKind::ffn_neuron, 0, -1, 7, {0, 2, 3, 6}),
                   group_plan(UnitKind::expert_neuron, 1, 1, 6, {1, 3, 5}),
                   group_plan(UnitKind::expert_neuron, 1, 0, 5, {4})};
    ModelSpec pruned = original;
    apply_pruning(pruned, plan);
    CHECK(pruned.config.layers[0].ffn_widths == std::vector<int32_t>{4});
    CHECK(pruned.config.layers[1].ffn_widths == std::vector<int32_t>{1, 3, 4});
    CHECK(named(pruned, expert_prefix(1, 1) + "w2.weight").shape == std::vector<int64_t>{12, 3});
    const double diff = relative_diff(logits_of(zeroed, kIds), logits_of(pruned, kIds));
    INFO("max logit difference relative to the largest logit: " << diff);
    CHECK(diff < 1e-5);
    // The exact zero-unit plan finds the same units in the zeroed model.
    const PrunePlan found = zero_unit_plan(zeroed);
    REQUIRE(found.groups.size() == 3);
    ModelSpec refolded = zeroed;
    apply_pruning(refolded, found);
    CHECK(refolded.config.layers[0].ffn_widths == pruned.config.layers[0].ffn_widths);
    CHECK(refolded.config.layers[1].ffn_widths == pruned.config.layers[1].ffn_widths);
}

TEST_CASE("pruning SSM channels: every slice goes (u and z rows, conv, delta rows and columns, B, C, D, out_proj)") {
    // Channels m..2m-1 copy channels 0..m-1 everywhere, except that their columns of delta_proj,
    // B and out_proj are zero: they change nothing but the count of the dt mean, whose value
    // they repeat. Removing them must then give the unpruned logits.
    ModelConfig c = test::small_config();
    const int32_t m = 5;
    c.layers[0].inner = 2 * m;
    c.layers[1].inner = 2 * m;
    ModelSpec spec = random_model(c, 5);
    const int64_t H = c.hidden;
    for (int l = 0; l < 2; l++) {
        const std::string p = layer_prefix(l) + "ssm.";
        const int64_t N = c.layers[static_cast<size_t>(l)].state, K = c.layers[static_cast<size_t>(l)].conv_kernel;
        auto copy_row = [&](const std::string& name, int64_t from, int64_t to) {
            SpecTensor& t = named(spec, p + name);
            const int64_t row = static_cast<int64_t>(t.values.size()) / t.shape[0];
            for (int64_t k = 0; k < row; k++)
                t.values[static_cast<size_t>(to * row + k)] = t.values[static_cast<size_t>(from * row + k)];
        };
        for (int32_t i = 0; i < m; i++) {
            zero_col(named(spec, p + "ssm.delta_proj.weight"), m + i);
            zero_col(named(spec, p + "ssm.B"), m + i);
            zero_col(named(spec, p + "out_proj.weight"), m + i);
        }
        for (int32_t i = 0; i < m; i++) {
            copy_row("in_proj.weight", i, m + i);              // u
            copy_row("in_proj.weight", 2 * m + i, 3 * m + i);  // z
            for (const char* name :
                 {"conv1d.weight", "conv1d.bias", "ssm.C", "ssm.D", "ssm.delta_proj.weight", "ssm.delta_proj.bias"})
                copy_row(name, i, m + i);
        }
        CHECK(named(spec, p + "conv1d.weight").values.size() == static_cast<size_t>(2 * m * K));
        CHECK(named(spec, p + "ssm.B").shape == std::vector<int64_t>{N, 2 * m});
        CHECK(named(spec, p + "out_proj.weight").shape == std::vector<int64_t>{H, 2 * m});
    }
    PrunePlan plan;
    plan.groups = {group_plan(UnitKind::ssm_channel, 0, -1, 2 * m, {0, 1, 2, 3, 4}),
                   group_plan(UnitKind::ssm_channel, 1, -1, 2 * m, {0, 1, 2, 3, 4})};
    ModelSpec pruned = spec;
    apply_pruning(pruned, plan);
    CHECK(pruned.config.layers[0].inner == m);
    CHECK(named(pruned, "layers.1.ssm.in_proj.weight").shape == std::vector<int64_t>{2 * m, H});
    CHECK(named(pruned, "layers.1.ssm.ssm.delta_proj.weight").shape == std::vector<int64_t>{m, m});
    const double diff = relative_diff(logits_of(spec, kIds), logits_of(pruned, kIds));
    INFO("max logit difference relative to the largest logit: " << diff);
    CHECK(diff < 1e-5);
    // Removing the originals instead keeps the copies, which read nothing: logits change.
    ModelSpec wrong = spec;
    plan.groups[0].keep = {5, 6, 7, 8, 9};
    apply_pruning(wrong, plan);
    CHECK(relative_diff(logits_of(spec, kIds), logits_of(wrong, kIds)) > 1e-3);
}

TEST_CASE("pruning a whole expert: router row and expert go, later experts are renumbered") {
    // The MoE LayerNorm's weight is zero, so its output is its bias for every token and the
    // router's choice is fixed; expert 1 gets the lowest router logit and is never chosen.
    ModelSpec spec = random_model(test::small_config(), 9);
    for (float& v : named(spec, "layers.1.moe.layer.norm.weight").values) v = 0.0f;
    const std::vector<float> bias = named(spec, "layers.1.moe.layer.norm.bias").values;
    SpecTensor& router = named(spec, "layers.1.moe.layer.router.gate.weight");
    for (size_t i = 0; i < bias.size(); i++) router.values[bias.size() + i] = -10.0f * bias[i];
    PrunePlan plan;
    plan.groups = {group_plan(UnitKind::expert, 1, -1, 3, {0, 2}),
                   group_plan(UnitKind::expert_neuron, 1, 2, 4, {0, 1, 2, 3})};
    ModelSpec pruned = spec;
    apply_pruning(pruned, plan);
    CHECK(pruned.config.layers[1].ffn_widths == std::vector<int32_t>{5, 4});
    CHECK(named(pruned, "layers.1.moe.layer.router.gate.weight").shape == std::vector<int64_t>{2, 12});
    CHECK(named(pruned, expert_prefix(1, 1) + "w1.weight").values ==
          named(spec, expert_prefix(1, 2) + "w1.weight").values);
    const double diff = relative_diff(logits_of(spec, kIds), logits_of(pruned, kIds));
    INFO("max logit difference relative to the largest logit: " << diff);
    CHECK(diff < 1e-5);
    // top_k is 2: a third expert cannot go.
    plan.groups = {group_plan(UnitKind::expert, 1, -1, 3, {2})};
    ModelSpec too_far = spec;
    CHECK_THROWS_AS(apply_pruning(too_far, plan), Error);
}

TEST_CASE("pruning plans: refused when they do not describe the model") {
    const ModelSpec spec = random_model(test::small_config(), 3);
    auto refused = [&](GroupPlan gp) {
        ModelSpec s = spec;
        PrunePlan plan;
        plan.groups = {std::move(gp)};
        CHECK_THROWS_AS(apply_pruning(s, plan), Error);
    };
    refused(group_plan(UnitKind::ffn_neuron, 0, -1, 6, {0}));     // wrong unit count
    refused(group_plan(UnitKind::ffn_neuron, 0, -1, 7, {}));      // empty
    refused(group_plan(UnitKind::ffn_neuron, 0, -1, 7, {3, 1}));  // not ascending
    refused(group_plan(UnitKind::ffn_neuron, 0, -1, 7, {0, 7}));  // out of range
    refused(group_plan(UnitKind::ffn_neuron, 1, -1, 7, {0}));     // layer 1 is MoE
    refused(group_plan(UnitKind::expert_neuron, 1, 3, 4, {0}));   // no expert 3
    refused(group_plan(UnitKind::ssm_channel, 2, -1, 8, {0}));    // no layer 2
}

TEST_CASE("magnitude plan: reaches the ratio, drops the weakest units first, keeps shapes consistent") {
    ModelSpec spec = random_model(test::small_config(), 21);
    for (float& v : named(spec, expert_prefix(1, 2) + "w1.weight").values) v *= 1e-3f;  // expert 2: weak
    zero_row(named(spec, "layers.0.moe.ffn.w1.weight"), 3);
    PruneOptions options;
    options.ratio = 0.3;
    options.scope.ssm = true;
    const PruneAnalysis a = analyze_pruning(spec, options, "");
    CHECK(a.importance == Importance::magnitude);
    CHECK(a.groups.size() == 7);  // 2 SSM, 1 FFN, 3 expert neuron groups, 1 expert group
    const PrunePlan plan = plan_pruning(spec, a, options);
    INFO("removed " << plan.removed_weights << " of " << a.prunable_weights << " prunable weights");
    CHECK(static_cast<double>(plan.removed_weights) >= 0.3 * static_cast<double>(a.prunable_weights));
    CHECK(static_cast<double>(plan.removed_weights) < 0.4 * static_cast<double>(a.prunable_weights));
    bool ffn_seen = false;
    for (const GroupPlan& gp : plan.groups) {
        CHECK(gp.group.kind != UnitKind::expert);  // without calibration, whole experts stay
        if (gp.group.kind == UnitKind::ffn_neuron) {
            ffn_seen = true;
            CHECK(std::find(gp.keep.begin(), gp.keep.end(), 3) == gp.keep.end());  // the zero neuron goes
        }
    }
    CHECK(ffn_seen);
    ModelSpec pruned = spec;
    apply_pruning(pruned, plan);
    const std::vector<float> l = logits_of(pruned, kIds);
    for (float v : l) REQUIRE(std::isfinite(v));
    // More than the scope holds is refused.
    options.ratio = 0.99;
    CHECK_THROWS_AS(plan_pruning(spec, a, options), Error);
}

TEST_CASE("calibrated analysis: activation and taylor scores, sensitivities, a dead neuron goes first") {
    ModelSpec spec = random_model(test::small_config(), 33);
    zero_row(named(spec, expert_prefix(1, 1) + "w1.weight"), 2);  // GELU(0) = 0: adds nothing
    std::string text;
    std::mt19937 rng(4);
    for (int i = 0; i < 200; i++) text += "w" + std::to_string(2 + rng() % 21) + " ";
    for (Importance kind : {Importance::activation, Importance::taylor}) {
        PruneOptions options;
        options.importance = kind;
        options.scope.ssm = true;
        options.sensitivity_tokens = 64;
        options.ratio = 0.05;
        const PruneAnalysis a = analyze_pruning(spec, options, text);
        CHECK(a.importance == kind);
        CHECK(a.calib_tokens == 199);
        for (const UnitGroup& g : a.groups) {
            CAPTURE(g.name());
            REQUIRE(g.score.size() == static_cast<size_t>(g.units));
            REQUIRE(!g.sens_keep.empty());
            for (size_t j = 0; j < g.sens_keep.size(); j++) {
                CHECK(g.sens_keep[j] < g.units);
                CHECK(g.sens_kld[j] >= 0.0);  // a mean KL divergence, clamped at 0 against rounding
                if (j) CHECK(g.sens_keep[j] < g.sens_keep[j - 1]);
            }
            if (g.kind == UnitKind::expert_neuron && g.expert == 1) {
                CHECK(g.score[2] == 0.0);
                for (int32_t u = 0; u < g.units; u++)
                    if (u != 2) CHECK(g.score[static_cast<size_t>(u)] > 0.0);
            }
        }
        const PrunePlan plan = plan_pruning(spec, a, options);
        CHECK(static_cast<double>(plan.removed_weights) >= 0.05 * static_cast<double>(a.prunable_weights));
        ModelSpec pruned = spec;
        apply_pruning(pruned, plan);
        for (float v : logits_of(pruned, kIds)) REQUIRE(std::isfinite(v));
    }
}

TEST_CASE("taylor score is the first-order change of the next-token loss") {
    // One layer whose FFN neuron 2 adds a small vector to the residual stream just before the
    // final LayerNorm: removing it changes each token's loss by -g.c to first order, and the score
    // is the mean of |g.c|.
    ModelConfig c = test::small_config();
    c.layers = {LayerConfig{6, 3, 3, ChannelKind::ffn, 0, {5}}};
    ModelSpec spec = random_model(c, 17);
    SpecTensor& w2 = named(spec, "layers.0.moe.ffn.w2.weight");
    for (int64_t r = 0; r < w2.shape[0]; r++) w2.values[static_cast<size_t>(r * w2.shape[1] + 2)] *= 1e-2f;
    const std::string text = "w3 w7 w7 w12 w9 w22 w5 w9 w14 w4 w4 w8 w19 w2 w11";
    PruneOptions options;
    options.importance = Importance::taylor;
    options.by_sensitivity = false;
    const PruneAnalysis a = analyze_pruning(spec, options, text);
    REQUIRE(a.groups[0].kind == UnitKind::ffn_neuron);
    ModelSpec removed = spec;
    PrunePlan plan;
    plan.groups = {group_plan(UnitKind::ffn_neuron, 0, -1, 5, {0, 1, 3, 4})};
    apply_pruning(removed, plan);
    const std::vector<uint8_t> b1 = serialize_itl(spec), b2 = serialize_itl(removed);
    const auto m1 = load_model(ItlFile::from_memory(b1.data(), b1.size()));
    const auto m2 = load_model(ItlFile::from_memory(b2.data(), b2.size()));
    const std::vector<int32_t> ids = m1->tokenizer.encode(text);
    Context c1(*m1), c2(*m2);
    double total = 0;
    for (size_t t = 0; t + 1 < ids.size(); t++) {
        if (t % static_cast<size_t>(c.max_seq_length) == 0) {
            c1.reset();
            c2.reset();
        }
        auto loss = [&](Context& ctx) {
            const float* l = ctx.eval(ids[t]);
            double top = l[0], z = 0;
            for (int32_t r = 1; r < c.vocab_size; r++) top = std::max(top, double{l[r]});
            for (int32_t r = 0; r < c.vocab_size; r++) z += std::exp(l[r] - top);
            return top + std::log(z) - l[ids[t + 1]];
        };
        total += std::fabs(loss(c1) - loss(c2));
    }
    const double measured = total / static_cast<double>(ids.size() - 1), score = a.groups[0].score[2];
    INFO("mean |loss change| " << measured << ", taylor score " << score);
    CHECK(score > 0.0);
    CHECK(std::fabs(score - measured) < 0.02 * measured);
}

TEST_CASE("vocabulary rows no text can produce") {
    ModelSpec spec = random_model(test::small_config(), 2);
    // ids 10..22 have no token; <PAD> <BOS> "B" "c d" "" cannot come out of the word tokenizer,
    // nor the second "a" (the first one wins)
    spec.tokenizer.tokens = {"<PAD>", "<UNK>", "<BOS>", "<EOS>", "a", "B", "a", "c d", "", "e"};
    const std::vector<int32_t> expect = {1, 3, 4, 9};
    CHECK(reachable_vocab_rows(spec) == expect);
    PruneOptions options;
    options.scope.vocab = true;
    const PrunePlan plan = plan_pruning(spec, analyze_pruning(spec, options, ""), options);
    CHECK(plan.vocab_keep_rows == expect);
    CHECK(plan.removed_weights == 2 * 19 * 12);  // embedding and untied head
    apply_pruning(spec, plan);
    CHECK(spec.config.vocab_ids == expect);
    CHECK(spec.config.vocab_size == 4);
    CHECK(logits_of(spec, {1, 3, 4, 9, 9}).size() == 5 * 4);
    // Rows map to ids through vocab_ids: now "a" (id 4, row 2) becomes unreachable.
    spec.tokenizer.tokens[4] = "A";
    CHECK(reachable_vocab_rows(spec) == std::vector<int32_t>{0, 1, 3});
    // Character level: one code point per piece, a truncated one only at the end of a text.
    ModelSpec chars = random_model(test::small_config(), 2);
    chars.tokenizer.kind = TokenizerKind::chars;
    chars.tokenizer.tokens = {"<PAD>", "<UNK>", "<BOS>", "<EOS>", "a", "\xc3\xa9", "ab", "\xc3", " "};
    CHECK(reachable_vocab_rows(chars) == std::vector<int32_t>{1, 3, 4, 5, 7, 8});
}

TEST_CASE("checkpoints in the torch.nn.utils.prune layout: masks folded, zeroed neurons removed") {
    const ModelSpec spec = random_model(test::small_config(), 44);
    pt::Checkpoint ck;
    for (const SpecTensor& t : spec.tensors) {
        pt::Tensor pt_t;
        pt_t.dtype = "f32";
        pt_t.shape = t.shape;
        pt_t.values = t.values;
        ck.tensors[t.name] = pt_t;
        ck.order.push_back(t.name);
    }
    // expert 0's w1 loses rows 1 and 3, expert 1's w2 loses column 0, the dense FFN's w1 gets an
    // unstructured mask (kept as zeros), and layer 0's in_proj loses a row (SSM: kept as zeros)
    auto mask = [&](const std::string& name, auto masked) {
        pt::Tensor orig = ck.tensors.at(name), m = orig;
        const int64_t cols = orig.shape.back();
        for (size_t i = 0; i < m.values.size(); i++)
            m.values[i] = masked(static_cast<int64_t>(i) / cols, static_cast<int64_t>(i) % cols) ? 0.0f : 1.0f;
        ck.tensors.erase(name);
        ck.tensors[name + "_orig"] = orig;
        ck.tensors[name + "_mask"] = m;
        for (std::string& n : ck.order)
            if (n == name) n = name + "_orig";
        ck.order.push_back(name + "_mask");
    };
    mask(expert_prefix(1, 0) + "w1.weight", [](int64_t r, int64_t) { return r == 1 || r == 3; });
    mask(expert_prefix(1, 1) + "w2.weight", [](int64_t, int64_t c) { return c == 0; });
    mask("layers.0.moe.ffn.w1.weight", [](int64_t r, int64_t c) { return (r + c) % 3 == 0; });
    mask("layers.0.ssm.in_proj.weight", [](int64_t r, int64_t) { return r == 2; });
    PrunePlan removed;
    CheckpointOptions options;
    options.masked_units = &removed;
    ModelSpec folded = checkpoint_to_spec(ck, options);
    CHECK(folded.config.layers[1].ffn_widths == std::vector<int32_t>{3, 5, 4});
    CHECK(folded.config.layers[0].ffn_widths == std::vector<int32_t>{7});
    CHECK(folded.config.layers[0].inner == 10);
    CHECK(removed.groups.size() == 2);
    CHECK(removed.removed_weights == 3 * 2 * 12);
    // The zeroed reference: the unpruned model with the masks applied.
    ModelSpec masked = spec;
    for (int r : {1, 3}) zero_row(named(masked, expert_prefix(1, 0) + "w1.weight"), r);
    zero_col(named(masked, expert_prefix(1, 1) + "w2.weight"), 0);
    zero_row(named(masked, "layers.0.ssm.in_proj.weight"), 2);
    SpecTensor& w1 = named(masked, "layers.0.moe.ffn.w1.weight");
    for (size_t i = 0; i < w1.values.size(); i++)
        if ((i / 12 + i % 12) % 3 == 0) w1.values[i] = 0.0f;
    CHECK(named(folded, "layers.0.moe.ffn.w1.weight").values == w1.values);
    const double diff = relative_diff(logits_of(masked, kIds), logits_of(folded, kIds));
    INFO("max logit difference relative to the largest logit: " << diff);
    CHECK(diff < 1e-5);
    // A mask without its weight, or a weight with both forms, is refused.
    pt::Checkpoint bad = ck;
    bad.tensors.erase(expert_prefix(1, 0) + "w1.weight_orig");
    bad.order.erase(std::find(bad.order.begin(), bad.order.end(), expert_prefix(1, 0) + "w1.weight_orig"));
    CHECK_THROWS_AS(checkpoint_to_spec(bad, {}), Error);
    bad = ck;
    bad.tensors[expert_prefix(1, 0) + "w1.weight"] = bad.tensors.at(expert_prefix(1, 0) + "w1.weight_orig");
    bad.order.push_back(expert_prefix(1, 0) + "w1.weight");
    CHECK_THROWS_AS(checkpoint_to_spec(bad, {}), Error);
}
