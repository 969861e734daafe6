// Which kernels serve the batched products of kernels_cpu/gemm.h (`--kernels native|onednn|auto`):
//   native  gemm_native, the project's own kernels.
//   onednn  OnednnGemm (kernels_cpu/onednn_gemm.h). Weights it has no path for (q4_0, nf4, ...) go
//           to gemm_native instead, and choices() / describe() list them.
//   auto    per shape, the faster of the two on this machine: the first call of a shape (dtype,
//           layout, rows, cols, batch rounded up to a power of two) times both providers (one warm-up, then
//           the median of 5 runs each, interleaved) and every later call of that shape uses the
//           winner. The decision is a timing on a possibly busy machine, so two runs of a program
//           may decide differently; the providers agree only within rounding (FP32) or within the
//           int8 error of the oneDNN q8_0 path (docs/bench.md).
//
// Shapes, not weights, are decided: every layer's in_proj shares one decision.
// Thread-safe: one GemmDispatch serves all threads of a model (it owns the oneDNN weight copies, so
// sharing it also shares them). It must not outlive the weights it has seen.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "kernels_cpu/onednn_gemm.h"
#include "kernels_cpu/weight.h"

namespace itera {

enum class GemmProvider { native, onednn, automatic };

// "native" | "onednn" | "auto"; anything else throws itera::Error.
GemmProvider parse_gemm_provider(std::string_view name);
const char* gemm_provider_name(GemmProvider provider);  // the names above

// One decided shape.
struct GemmChoice {
    std::string label;  // the label of the first call of this shape ("" when none was given)
    DType dtype = DType::f32;
    Layout layout = Layout::row_major;
    int32_t rows = 0, cols = 0;
    int32_t batch_lo = 0, batch_hi = 0;  // the batches that share the decision
    GemmProvider used = GemmProvider::native;
    double native_us = 0.0, onednn_us = 0.0;  // auto: the medians it compared
    std::string note;                         // the oneDNN implementation, or why it was not used
};

class GemmDispatch {
public:
    explicit GemmDispatch(GemmProvider provider);
    ~GemmDispatch();
    GemmDispatch(const GemmDispatch&) = delete;
    GemmDispatch& operator=(const GemmDispatch&) = delete;

    GemmProvider provider() const { return provider_; }
    // gemm_native's contract (kernels_cpu/gemm.h). `label` names the weight in choices().
    void run(const Weight& w, const float* x, int32_t batch, float* y, const char* label = nullptr);

    std::vector<GemmChoice> choices() const;
    // One line per decided shape, e.g.
    //   "in_proj fp32 256x64 batch 65..128: onednn 1.9 us vs native 2.4 us -> onednn (brg:avx512_core)"
    std::string describe() const;

private:
    struct Key {
        DType dtype;
        Layout layout;
        int32_t rows, cols, batch_hi;
        auto operator<=>(const Key&) const = default;
    };
    GemmChoice decide(const Weight& w, const float* x, int32_t batch, float* y, const char* label);

    GemmProvider provider_;
    std::unique_ptr<OnednnGemm> onednn_;  // onednn and auto only
    mutable std::mutex mutex_;            // guards choices_
    std::map<Key, GemmChoice> choices_;
};

}  // namespace itera
