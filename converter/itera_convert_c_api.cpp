// The C entry point of the converter (converter/include/itera_convert.h) over converter/convert.h.
// Every entry point runs its body in guarded() (runtime/c_api_errors.h).
#include <cmath>
#include <string>
#include <vector>

#include "common/error.h"
#include "converter/convert.h"
#include "format/itl_file.h"
#include "itera_convert.h"
#include "runtime/c_api_errors.h"

struct itera_conversion {
    std::vector<uint8_t> itl;
    std::string report, summary;
};

namespace {

std::string quoted(const char* s) { return std::string("'") + s + "'"; }

// The C fields as the library's options; throws itera::Error for a value it cannot take.
itera::ConvertOptions options_of(const itera_convert_params& p) {
    itera::ConvertOptions o;
    if (p.tokenizer_json) o.tokenizer_json = p.tokenizer_json;
    if (p.config_json) o.config_json = p.config_json;
    o.top_k = p.top_k;
    if (p.quant) {
        o.quant.emplace();
        if (!itera::parse_dtype(p.quant, &*o.quant))
            throw itera::Error("quant must be fp32, fp16, q8, q4, nf4, q3 or q2, got " + quoted(p.quant));
    }
    if (p.n_keep < 0 || p.n_precision < 0) throw itera::Error("n_keep and n_precision must not be negative");
    if ((p.n_keep > 0 && !p.keep) || (p.n_precision > 0 && !p.precision))
        throw itera::Error("keep and precision must not be NULL when their counts are positive");
    for (int32_t i = 0; i < p.n_keep; i++) {
        if (!p.keep[i]) throw itera::Error("keep[" + std::to_string(i) + "] is NULL");
        o.keep.push_back(p.keep[i]);
    }
    for (int32_t i = 0; i < p.n_precision; i++) {
        if (!p.precision[i]) throw itera::Error("precision[" + std::to_string(i) + "] is NULL");
        o.precision.push_back(p.precision[i]);
    }
    if (p.calib_text) o.calib_text = p.calib_text;
    o.calib_tokens = p.calib_tokens;
    o.score_tokens = p.score_tokens;
    o.target_size = p.target_size;
    if (!(p.prune_ratio >= 0.0 && p.prune_ratio <= 0.95))  // NaN too
        throw itera::Error("prune_ratio must be in [0, 0.95] (0: no pruning), got " + std::to_string(p.prune_ratio));
    if (p.prune_ratio > 0) o.prune_ratio = p.prune_ratio;
    if (p.prune_scope) o.prune_scope = p.prune_scope;
    if (p.prune_importance) {
        const std::string name = p.prune_importance;
        if (name == "magnitude")
            o.prune_importance = itera::Importance::magnitude;
        else if (name == "activation")
            o.prune_importance = itera::Importance::activation;
        else if (name == "taylor")
            o.prune_importance = itera::Importance::taylor;
        else
            throw itera::Error("prune_importance must be magnitude, activation or taylor, got " +
                               quoted(p.prune_importance));
    }
    o.prune_uniform = p.prune_uniform != 0;
    o.trim_vocab = p.trim_vocab != 0;
    if (p.layout && !itera::parse_layout(p.layout, &o.layout))
        throw itera::Error("layout must be rows16 or row_major, got " + quoted(p.layout));
    o.moe_empty_identity = p.moe_empty_identity != 0;
    if (p.source_name) o.source_name = p.source_name;
    if (p.options_text) o.options_text = p.options_text;
    return o;
}

}  // namespace

extern "C" {

itera_convert_params itera_convert_default_params(void) {
    itera_convert_params p{};
    p.calib_tokens = 16384;
    p.score_tokens = 2048;
    p.trim_vocab = 1;
    return p;
}

int itera_convert(const void* checkpoint, size_t size, const itera_convert_params* params, itera_conversion** out) {
    if (out) *out = nullptr;
    if (!checkpoint || !out)
        return fail(ITERA_ERR_INVALID_ARGUMENT, "itera_convert: checkpoint and out must not be NULL");
    const itera_convert_params p = params ? *params : itera_convert_default_params();
    itera::ConvertOptions options;
    const int checked = guarded(ITERA_ERR_INVALID_ARGUMENT, [&] {
        options = options_of(p);
        itera::check_options(options);
        return ITERA_OK;
    });
    if (checked != ITERA_OK) return checked;
    return guarded(ITERA_ERR_FORMAT, [&] {
        itera::Conversion c = itera::convert(static_cast<const uint8_t*>(checkpoint), size, options);
        auto result = std::make_unique<itera_conversion>();
        result->report = itera::report_json(c.report);
        result->summary = itera::summary_text(c.report, "converted");
        result->itl = std::move(c.itl);
        *out = result.release();
        return ITERA_OK;
    });
}

void itera_conversion_free(itera_conversion* conversion) { delete conversion; }

const uint8_t* itera_conversion_data(const itera_conversion* conversion, size_t* size) {
    if (size) *size = conversion ? conversion->itl.size() : 0;
    return conversion ? conversion->itl.data() : nullptr;
}

const char* itera_conversion_report(const itera_conversion* conversion) {
    return conversion ? conversion->report.c_str() : "";
}

const char* itera_conversion_summary(const itera_conversion* conversion) {
    return conversion ? conversion->summary.c_str() : "";
}

int itera_conversion_write(const itera_conversion* conversion, const char* path) {
    if (!conversion || !path || !*path)
        return fail(ITERA_ERR_INVALID_ARGUMENT,
                    "itera_conversion_write: conversion and path must not be NULL or empty");
    return guarded(ITERA_ERR_IO, [&] {
        itera::write_itl_bytes(conversion->itl, path);
        return ITERA_OK;
    });
}

const char* itera_convert_last_error(void) { return last_error; }

}  // extern "C"
