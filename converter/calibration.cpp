#include "converter/calibration.h"

#include <unordered_map>

#include "common/error.h"
#include "converter/measure.h"
#include "runtime/context.h"
#include "runtime/evaluate.h"

namespace itera {

namespace {

// Accumulates x x^T per weight, recognising weights by where their bytes live in the file.
class StatsObserver : public ActivationObserver {
public:
    StatsObserver(const ItlFile& file, std::map<std::string, ActivationStats>* out) : out_(out) {
        for (const TensorView& t : file.tensors()) name_of_[t.data] = t.name;
    }

    void observe(const Weight& w, const float* x) override {
        const auto it = name_of_.find(w.data);
        if (it == name_of_.end()) return;
        ActivationStats& s = (*out_)[it->second];
        const size_t n = static_cast<size_t>(w.cols);
        if (s.xtx.empty()) {
            s.cols = w.cols;
            s.xtx.assign(n * n, 0.0);
        }
        for (size_t i = 0; i < n; i++) {
            const double xi = x[i];
            if (xi == 0.0) continue;
            double* row = s.xtx.data() + i * n;
            for (size_t j = 0; j < n; j++) row[j] += xi * x[j];
        }
        s.tokens++;
    }

private:
    std::unordered_map<const void*, std::string> name_of_;
    std::map<std::string, ActivationStats>* out_;
};

}  // namespace

std::map<std::string, ActivationStats> collect_activation_stats(const ModelSpec& spec, const std::string& text,
                                                                int64_t max_tokens) {
    if (!spec.has_tokenizer) throw Error("--calib needs a tokenizer (--tokenizer TOK.json)");
    const SpecModel fp32 = load_spec(fp32_copy(spec));
    std::vector<int32_t> ids = fp32.model->tokenizer.encode(text);
    if (ids.empty()) throw Error("calibration text has no tokens");
    if (static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(static_cast<size_t>(max_tokens));

    std::map<std::string, ActivationStats> stats;
    StatsObserver observer(*fp32.model->file, &stats);
    Context ctx(*fp32.model);
    ctx.set_observer(&observer);
    run_windows(ctx, ids.data(), ids.size(), fp32.model->config.max_seq_length, [](size_t, int32_t, const float*) {});
    return stats;
}

}  // namespace itera
