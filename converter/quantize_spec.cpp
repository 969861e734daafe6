#include "converter/quantize_spec.h"

#include <fnmatch.h>

#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "converter/quant/gptq.h"
#include "format/dtype.h"
#include "format/half.h"

namespace itera {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

double relative_rms(const std::vector<float>& w, const std::vector<float>& q) {
    double num = 0, den = 0;
    for (size_t i = 0; i < w.size(); i++) {
        num += (double{w[i]} - q[i]) * (double{w[i]} - q[i]);
        den += double{w[i]} * w[i];
    }
    return den > 0 ? std::sqrt(num / den) : 0.0;
}

// trace(W H W^T), the energy of the layer's output on the calibration inputs.
double output_energy(const std::vector<float>& w, int64_t rows, int64_t cols, const double* h) {
    const std::vector<float> zero(w.size(), 0.0f);
    return weighted_error(w.data(), zero.data(), rows, cols, h);
}

}  // namespace

bool read_elementwise(const std::string& name, size_t rank) {
    return rank < 2 || ends_with(name, "conv1d.weight") || ends_with(name, "ssm.C");
}

void trim_vocabulary(ModelSpec& spec) {
    if (!spec.has_tokenizer || !spec.config.vocab_ids.empty()) return;
    const int32_t kept = static_cast<int32_t>(spec.tokenizer.tokens.size());  // ids 0..kept-1 are producible
    const int32_t vocab = spec.config.vocab_size;
    if (kept >= vocab) return;
    const int64_t H = spec.config.hidden;
    for (SpecTensor& t : spec.tensors) {
        if (t.name != "embedding.weight" && t.name != "lm_head.weight") continue;
        t.shape[0] = kept;
        t.values.resize(static_cast<size_t>(kept * H));
    }
    for (int32_t id = 0; id < kept; id++) spec.config.vocab_ids.push_back(id);
    spec.config.vocab_size = kept;
}

DType choose_dtype(const std::string& name, size_t rank, const QuantOptions& options) {
    const bool elementwise = read_elementwise(name, rank);
    DType dtype = options.base;
    if (rank < 2) {
        dtype = DType::f32;  // LayerNorms, biases, A_log, D: small and sensitive
    } else if (elementwise && options.base != DType::f32) {
        dtype = DType::f16;  // conv weights, C
    } else if (ends_with(name, "ssm.B") && is_quantized(options.base) && options.base != DType::q8_0) {
        // B [state, inner] is small; at 8 bits its error is unmeasurable (docs/quantization.md)
        // while 4 bits or fewer would be its only lossy step: q8, not fp16, keeps the files small.
        dtype = DType::q8_0;
    }
    if (const auto it = options.dtypes.find(name); it != options.dtypes.end()) dtype = it->second;
    for (const auto& [glob, wanted] : options.keep)
        if (fnmatch(glob.c_str(), name.c_str(), 0) == 0) dtype = wanted;
    if (elementwise && is_quantized(dtype))
        throw Error("tensor '" + name + "' is read element-wise and can only be stored as fp32 or fp16, not " +
                    std::string(dtype_name(dtype)));
    return dtype;
}

std::vector<TensorReport> quantize_spec(ModelSpec& spec, const QuantOptions& options,
                                        const std::map<std::string, ActivationStats>* stats) {
    std::vector<TensorReport> report;
    for (SpecTensor& t : spec.tensors) {
        t.dtype = choose_dtype(t.name, t.shape.size(), options);
        TensorReport r;
        r.name = t.name;
        r.shape = t.shape;
        r.dtype = t.dtype;
        r.bytes = tensor_bytes(t.dtype, t.shape);
        if (t.dtype == DType::f16) {
            for (size_t i = 0; i < t.values.size(); i++)
                if (!(std::fabs(t.values[i]) < 65520.0f))  // rounds to infinity (fp16's largest is 65504)
                    throw Error("tensor '" + t.name + "': element " + std::to_string(i) + " = " +
                                std::to_string(t.values[i]) +
                                " is beyond fp16's range (65504): keep it fp32 "
                                "(--keep '" +
                                t.name + "=fp32')");
            std::vector<float> rounded(t.values.size());
            for (size_t i = 0; i < rounded.size(); i++) rounded[i] = fp16_to_fp32(fp32_to_fp16(t.values[i]));
            r.rms_error_rtn = relative_rms(t.values, rounded);
        }
        if (is_quantized(t.dtype)) {
            const int64_t cols = t.shape.back();
            const int64_t rows = static_cast<int64_t>(t.values.size()) / cols;
            const QuantResult rtn = quantize_rtn(t.values.data(), rows, cols, t.dtype);
            r.rms_error_rtn = relative_rms(t.values, rtn.dequantized);
            t.packed = rtn.packed;
            const ActivationStats* st = nullptr;
            if (stats) {
                const auto it = stats->find(t.name);
                if (it != stats->end() && it->second.cols == cols && it->second.tokens > 0) st = &it->second;
            }
            if (st) {
                const double* h = st->xtx.data();
                const QuantResult cal = quantize_gptq(t.values.data(), rows, cols, t.dtype, h, st->tokens, {});
                const double energy = output_energy(t.values, rows, cols, h);
                r.rms_error_calibrated = relative_rms(t.values, cal.dequantized);
                r.output_error_rtn = weighted_error(t.values.data(), rtn.dequantized.data(), rows, cols, h) / energy;
                r.output_error_calibrated =
                    weighted_error(t.values.data(), cal.dequantized.data(), rows, cols, h) / energy;
                t.packed = cal.packed;
            }
        }
        report.push_back(std::move(r));
    }
    return report;
}

void choose_layouts(ModelSpec& spec, Layout layout) {
    for (SpecTensor& t : spec.tensors) {
        const bool lookup_only =
            t.name == "position_embedding.weight" || (t.name == "embedding.weight" && !spec.config.tied_head);
        const bool multiplied = !lookup_only && !read_elementwise(t.name, t.shape.size());
        t.layout = multiplied && layout_allows(layout, t.dtype, t.shape) ? layout : Layout::row_major;
    }
}

std::string report_json(const std::vector<TensorReport>& report, size_t file_bytes) {
    std::string out = "{\n  \"file_bytes\": " + std::to_string(file_bytes) + ",\n  \"tensors\": [\n";
    char buf[512];
    for (size_t i = 0; i < report.size(); i++) {
        const TensorReport& r = report[i];
        std::string shape = "[";
        for (size_t d = 0; d < r.shape.size(); d++) shape += (d ? ", " : "") + std::to_string(r.shape[d]);
        shape += "]";
        auto num = [](double v) {
            char b[32];
            std::snprintf(b, sizeof b, "%.6g", v);
            return v < 0 ? std::string("null") : std::string(b);
        };
        std::snprintf(buf, sizeof buf,
                      "    {\"name\": \"%s\", \"shape\": %s, \"dtype\": \"%s\", \"bytes\": %zu, \"rms_error_rtn\": %s, "
                      "\"rms_error_calibrated\": %s, \"output_error_rtn\": %s, \"output_error_calibrated\": %s}%s\n",
                      r.name.c_str(), shape.c_str(), std::string(dtype_name(r.dtype)).c_str(), r.bytes,
                      num(r.rms_error_rtn).c_str(), num(r.rms_error_calibrated).c_str(),
                      num(r.output_error_rtn).c_str(), num(r.output_error_calibrated).c_str(),
                      i + 1 < report.size() ? "," : "");
        out += buf;
    }
    return out + "  ]\n}\n";
}

}  // namespace itera
