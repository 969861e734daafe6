#include "kernels_cpu/gemm_provider.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "common/error.h"
#include "format/dtype.h"
#include "kernels_cpu/gemm.h"

namespace itera {

namespace {

constexpr int kTimedRuns = 5;

// The smallest power of two >= batch: batches 5..8 share a decision.
int32_t batch_bucket(int32_t batch) {
    int32_t hi = 1;
    while (hi < batch && hi < (1 << 30)) hi *= 2;
    return hi;
}

template <class F>
double time_us(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

GemmProvider parse_gemm_provider(std::string_view name) {
    if (name == "native") return GemmProvider::native;
    if (name == "onednn") return GemmProvider::onednn;
    if (name == "auto") return GemmProvider::automatic;
    throw Error("unknown kernels '" + std::string(name) + "' (expected native, onednn or auto)");
}

const char* gemm_provider_name(GemmProvider provider) {
    switch (provider) {
        case GemmProvider::native:
            return "native";
        case GemmProvider::onednn:
            return "onednn";
        case GemmProvider::automatic:
            return "auto";
    }
    return "?";
}

GemmDispatch::GemmDispatch(GemmProvider provider) : provider_(provider) {
    if (provider != GemmProvider::native) onednn_ = std::make_unique<OnednnGemm>();
}

GemmDispatch::~GemmDispatch() = default;

// Runs the first call of a shape (writing y) and says what its later calls use.
GemmChoice GemmDispatch::decide(const Weight& w, const float* x, int32_t batch, float* y, const char* label) {
    GemmChoice c;
    c.label = label ? label : "";
    c.dtype = w.dtype;
    c.layout = w.layout;
    c.rows = w.rows;
    c.cols = w.cols;
    c.batch_hi = batch_bucket(batch);
    c.batch_lo = c.batch_hi / 2 + 1;
    c.used = GemmProvider::native;
    if (!OnednnGemm::handles(w)) {
        c.note = "no oneDNN path for " + std::string(dtype_name(w.dtype));
        gemm_native(w, x, batch, y);
        return c;
    }
    try {
        onednn_->run(w, x, batch, y);  // creates the primitive (and the weight copy)
        c.note = onednn_->implementation(w, batch);
    } catch (const Error& e) {
        c.note = std::string("oneDNN failed: ") + e.what();
        gemm_native(w, x, batch, y);
        return c;
    }
    if (provider_ == GemmProvider::onednn) {
        c.used = GemmProvider::onednn;
        return c;
    }
    gemm_native(w, x, batch, y);  // warm-up
    std::vector<double> t_native, t_onednn;
    for (int i = 0; i < kTimedRuns; i++) {
        t_native.push_back(time_us([&] { gemm_native(w, x, batch, y); }));
        t_onednn.push_back(time_us([&] { onednn_->run(w, x, batch, y); }));
    }
    c.native_us = median(t_native);
    c.onednn_us = median(t_onednn);
    c.used = c.onednn_us < c.native_us ? GemmProvider::onednn : GemmProvider::native;
    if (c.used == GemmProvider::native) gemm_native(w, x, batch, y);  // y from the provider that stays
    return c;
}

void GemmDispatch::run(const Weight& w, const float* x, int32_t batch, float* y, const char* label) {
    if (provider_ == GemmProvider::native || batch <= 0) {
        gemm_native(w, x, batch, y);
        return;
    }
    const Key key{w.dtype, w.layout, w.rows, w.cols, batch_bucket(batch)};
    GemmProvider used;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        const auto it = choices_.find(key);
        if (it == choices_.end()) {
            used = GemmProvider::automatic;  // not decided yet
        } else {
            used = it->second.used;
        }
    }
    if (used == GemmProvider::automatic) {
        // Decided outside the lock; two threads meeting a new shape at once both decide, the first wins.
        GemmChoice c = decide(w, x, batch, y, label);
        std::lock_guard<std::mutex> lock(mutex_);
        choices_.emplace(key, std::move(c));
        return;
    }
    if (used == GemmProvider::onednn) {
        onednn_->run(w, x, batch, y);
    } else {
        gemm_native(w, x, batch, y);
    }
}

std::vector<GemmChoice> GemmDispatch::choices() const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<GemmChoice> out;
    for (const auto& [key, c] : choices_) out.push_back(c);
    return out;
}

std::string GemmDispatch::describe() const {
    std::string s = std::string("gemm kernels: ") + gemm_provider_name(provider_);
    if (onednn_) s += " (" + onednn_info() + ")";
    s += "\n";
    for (const GemmChoice& c : choices()) {
        char line[512];
        const std::string batches = c.batch_lo == c.batch_hi
                                        ? std::to_string(c.batch_hi)
                                        : std::to_string(c.batch_lo) + ".." + std::to_string(c.batch_hi);
        std::snprintf(line, sizeof(line), "  %s%s%s%s %dx%d batch %s: ", c.label.c_str(), c.label.empty() ? "" : " ",
                      std::string(dtype_name(c.dtype)).c_str(), c.layout == Layout::rows16 ? " rows16" : "", c.rows,
                      c.cols, batches.c_str());
        s += line;
        if (c.native_us > 0.0 || c.onednn_us > 0.0) {
            std::snprintf(line, sizeof(line), "onednn %.2f us vs native %.2f us -> ", c.onednn_us, c.native_us);
            s += line;
        }
        s += std::string(gemm_provider_name(c.used)) + " (" + c.note + ")\n";
    }
    return s;
}

}  // namespace itera
