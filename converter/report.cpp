#include "converter/report.h"

#include <cstdio>

#include "format/tensor_names.h"

namespace itera {

namespace {

// %.6g, or null for the -1 of "does not apply".
std::string num(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.6g", v);
    return v < 0 ? std::string("null") : std::string(b);
}

std::string quote(const std::string& s) {
    std::string q(1, '"');
    q += s;
    q += '"';
    return q;
}

// After "{": the file's size and every tensor's dtype, bytes and errors.
std::string tensors_members(const ConversionReport& r) {
    std::string out = "\n  \"file_bytes\": " + std::to_string(r.file_bytes) + ",\n  \"tensors\": [\n";
    for (size_t i = 0; i < r.tensors.size(); i++) {
        const TensorReport& t = r.tensors[i];
        out += "    {\"name\": " + quote(t.name) + ", \"shape\": " + shape_text(t.shape) +
               ", \"dtype\": " + quote(std::string(dtype_name(t.dtype))) + ", \"bytes\": " + std::to_string(t.bytes) +
               ", \"rms_error_rtn\": " + num(t.rms_error_rtn) +
               ", \"rms_error_calibrated\": " + num(t.rms_error_calibrated) +
               ", \"output_error_rtn\": " + num(t.output_error_rtn) +
               ", \"output_error_calibrated\": " + num(t.output_error_calibrated) + "}" +
               (i + 1 < r.tensors.size() ? ",\n" : "\n");
    }
    return out + "  ]";
}

// After "{", with --target-size: the summary, the variants tried, every tensor's choice with its
// candidates, and the quantizer's per-tensor errors.
std::string budget_members(const ConversionReport& r) {
    const BudgetResult& b = r.budget;
    std::string precision;
    for (const BudgetTensor& bt : b.tensors)
        precision += (precision.empty() ? "" : ",") + bt.name + "=" +
                     std::string(dtype_name(bt.candidates[static_cast<size_t>(bt.chosen)].dtype));
    std::string out =
        "\n  \"target_bytes\": " + std::to_string(r.target_bytes) +
        ",\n  \"file_bytes\": " + std::to_string(b.file_bytes) +
        ",\n  \"overhead_bytes\": " + std::to_string(b.overhead_bytes) +
        ",\n  \"score_tokens\": " + std::to_string(b.score_tokens) + ",\n  \"rounds\": " + std::to_string(b.rounds) +
        ",\n  \"refined\": " + (b.refined ? "true" : "false") + ",\n  \"first_kld\": " + num(b.first_kld) +
        ",\n  \"predicted_kld\": " + num(b.predicted_kld) + ",\n  \"measured_kld\": " + num(b.measured.kld) +
        ",\n  \"measured_top1\": " + num(b.measured.top1) + ",\n  \"prune_ratio\": " + num(b.prune_ratio) +
        ",\n  \"variants\": [";
    for (size_t i = 0; i < b.variants.size(); i++) {
        const BudgetVariant& v = b.variants[i];
        const bool met = v.file_bytes > 0;
        out += std::string(i ? "," : "") + "\n    {\"prune_ratio\": " + num(v.prune_ratio) +
               ", \"removed_weights\": " + std::to_string(v.removed_weights) +
               ", \"predicted_prune_kld\": " + num(v.predicted_prune_kld) +
               ", \"predicted_kld\": " + (met ? num(v.predicted_kld) : "null") +
               ", \"file_bytes\": " + (met ? std::to_string(v.file_bytes) : "null") +
               ", \"measured_kld\": " + (met ? num(v.measured.kld) : "null") +
               ", \"measured_top1\": " + (met ? num(v.measured.top1) : "null") + "}";
    }
    out += "\n  ],\n  \"precision\": " + quote(precision) + ",\n  \"tensors\": [\n";
    for (size_t i = 0; i < b.tensors.size(); i++) {
        const BudgetTensor& bt = b.tensors[i];
        const BudgetCandidate& c = bt.candidates[static_cast<size_t>(bt.chosen)];
        std::string candidates;
        for (const BudgetCandidate& o : bt.candidates)
            candidates += std::string(candidates.empty() ? "" : ", ") +
                          "{\"dtype\": " + quote(std::string(dtype_name(o.dtype))) +
                          ", \"bytes\": " + std::to_string(o.bytes) + ", \"kld\": " + num(o.kld) +
                          (o.kld_in_file >= 0 ? ", \"kld_in_file\": " + num(o.kld_in_file) : "") + "}";
        std::string errors;
        for (const TensorReport& t : r.tensors)
            if (t.name == bt.name)
                errors = ", \"rms_error_rtn\": " + num(t.rms_error_rtn) +
                         ", \"rms_error_calibrated\": " + num(t.rms_error_calibrated) +
                         ", \"output_error_calibrated\": " + num(t.output_error_calibrated);
        out += "    {\"name\": " + quote(bt.name) + ", \"shape\": " + shape_text(bt.shape) +
               ", \"dtype\": " + quote(std::string(dtype_name(c.dtype))) + ", \"bytes\": " + std::to_string(c.bytes) +
               ", \"kld\": " + num(c.kld) + (c.kld_in_file >= 0 ? ", \"kld_in_file\": " + num(c.kld_in_file) : "") +
               errors + ", \"candidates\": [" + candidates + "]}" + (i + 1 < b.tensors.size() ? ",\n" : "\n");
    }
    return out + "  ]";
}

void append(std::string& out, const char* format, auto... args) {
    char buf[256];
    std::snprintf(buf, sizeof buf, format, args...);
    out += buf;
}

}  // namespace

PrunePlan removed_units(const ConversionReport& r) {
    PrunePlan all = r.masked;
    for (const PrunePlan* p : {&r.prune, &r.budget.prune}) {
        all.groups.insert(all.groups.end(), p->groups.begin(), p->groups.end());
        if (!p->vocab_keep_rows.empty()) all.vocab_keep_rows = p->vocab_keep_rows;
        all.removed_weights += p->removed_weights;
    }
    return all;
}

std::string report_json(const ConversionReport& r) {
    std::string out = "{";
    const PrunePlan removed = removed_units(r);
    if (!removed.groups.empty() || !removed.vocab_keep_rows.empty())
        out += "\n  \"pruning\": " + prune_report_json(removed) + ",";
    out += r.budgeted ? budget_members(r) : tensors_members(r);
    return out + "\n}\n";
}

std::string prune_report_json(const PrunePlan& plan) {
    std::string out = "{\"removed_weights\": " + std::to_string(plan.removed_weights) + ", \"groups\": [";
    for (size_t i = 0; i < plan.groups.size(); i++) {
        const GroupPlan& gp = plan.groups[i];
        const UnitGroup& g = gp.group;
        out += std::string(i ? ", " : "") + "\n    {\"name\": " + quote(g.name()) +
               ", \"kind\": " + quote(unit_kind_name(g.kind)) + ", \"layer\": " + std::to_string(g.layer) +
               ", \"expert\": " + std::to_string(g.expert) + ", \"units\": " + std::to_string(g.units) +
               ", \"kept\": " + std::to_string(gp.keep.size()) + ", \"tensors\": [";
        const std::vector<std::string> names = group_tensors(g);
        for (size_t j = 0; j < names.size(); j++) out += std::string(j ? ", " : "") + quote(names[j]);
        out += "], \"keep\": [";
        for (size_t j = 0; j < gp.keep.size(); j++) out += std::string(j ? "," : "") + std::to_string(gp.keep[j]);
        out += "]}";
    }
    out += "]";
    if (!plan.vocab_keep_rows.empty()) out += ", \"vocab_rows_kept\": " + std::to_string(plan.vocab_keep_rows.size());
    return out + "}";
}

std::string summary_text(const ConversionReport& r, const std::string& written) {
    std::string out;
    if (!r.masked.groups.empty())
        append(out, "prune masks: %zu unit groups lose their zeroed neurons, %lld weights\n", r.masked.groups.size(),
               static_cast<long long>(r.masked.removed_weights));
    if (r.pruned) {
        append(out, "pruned %lld weights (%s importance%s):", static_cast<long long>(r.prune.removed_weights),
               importance_name(r.importance), r.by_sensitivity ? ", per-group sensitivity" : "");
        for (const GroupPlan& g : r.prune.groups)
            append(out, " %s %zu/%d", g.group.name().c_str(), g.keep.size(), g.group.units);
        if (!r.prune.vocab_keep_rows.empty())
            out += " vocabulary rows " + std::to_string(r.prune.vocab_keep_rows.size());
        out += "\n";
    }
    out += written + ": " + std::to_string(r.layers) + " layers, " + std::to_string(r.parameters) + " parameters, " +
           r.storage + (r.calibrated ? " calibrated" : "") +
           (r.vocab_trimmed ? ", vocabulary trimmed to " + std::to_string(r.vocab_rows) + " rows" : "") + ", " +
           std::to_string(r.file_bytes) + " bytes\n";
    if (r.budgeted)
        append(out,
               "target %ju bytes: KL divergence %.6f nats from FP32, top-1 agreement %.2f%% on %lld calibration "
               "tokens (predicted KL %.6f%s)\n",
               static_cast<uintmax_t>(r.target_bytes), r.budget.measured.kld, 100.0 * r.budget.measured.top1,
               static_cast<long long>(r.budget.score_tokens), r.budget.predicted_kld,
               r.budget.refined ? ", after re-measuring around the first choice" : "");
    if (r.budget_prunes) {
        out += "pruning levels tried (of the --prune-scope weights; measured KL):";
        for (const BudgetVariant& v : r.budget.variants) {
            if (v.file_bytes)
                append(out, " %.0f%% %.6f", 100.0 * v.prune_ratio, v.measured.kld);
            else
                append(out, " %.0f%% -", 100.0 * v.prune_ratio);
        }
        append(out, "; chosen %.0f%%\n", 100.0 * r.budget.prune_ratio);
    }
    return out;
}

}  // namespace itera
