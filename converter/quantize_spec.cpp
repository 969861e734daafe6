#include "converter/quantize_spec.h"

#include <fnmatch.h>

#include <cmath>

#include "common/error.h"
#include "converter/quant/gptq.h"
#include "format/dtype.h"
#include "format/half.h"
#include "format/tensor_names.h"

namespace itera {

namespace {

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
    return rank < 2 || is_conv_weight_name(name) || is_ssm_c_name(name);
}

DType choose_dtype(const std::string& name, size_t rank, const QuantOptions& options) {
    const bool elementwise = read_elementwise(name, rank);
    DType dtype = options.base;
    if (rank < 2) {
        dtype = DType::f32;  // LayerNorms, biases, A_log, D: small and sensitive
    } else if (elementwise && options.base != DType::f32) {
        dtype = DType::f16;  // conv weights, C
    } else if (is_ssm_b_name(name) && is_quantized(options.base) && options.base != DType::q8_0) {
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
        const bool lookup_only = t.name == kPositionName || (t.name == kEmbeddingName && !spec.config.tied_head);
        const bool multiplied = !lookup_only && !read_elementwise(t.name, t.shape.size());
        t.layout = multiplied && layout_allows(layout, t.dtype, t.shape) ? layout : Layout::row_major;
    }
}

}  // namespace itera
