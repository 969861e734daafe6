#include "converter/precision.h"

#include <fnmatch.h>

#include "common/error.h"
#include "converter/quantize_spec.h"
#include "format/tensor_names.h"

namespace itera {

std::vector<PrecisionRule> parse_precision(const std::string& text) {
    std::vector<PrecisionRule> rules;
    size_t start = 0;
    while (start <= text.size()) {
        size_t end = text.find(',', start);
        if (end == std::string::npos) end = text.size();
        const std::string rule = text.substr(start, end - start);
        const size_t eq = rule.rfind('=');
        PrecisionRule r;
        if (eq == std::string::npos || eq == 0 || !parse_dtype(rule.substr(eq + 1), &r.dtype))
            throw Error("--precision expects GLOB=dtype[,GLOB=dtype...] with dtype fp32|fp16|q8|q4|nf4|q3|q2, got '" +
                        rule + "'");
        r.pattern = rule.substr(0, eq);
        rules.push_back(r);
        start = end + 1;
    }
    return rules;
}

bool precision_matches(const std::string& pattern, const std::string& name) {
    if (fnmatch(pattern.c_str(), name.c_str(), 0) == 0) return true;
    for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1))
        if (fnmatch(pattern.c_str(), name.substr(0, dot).c_str(), 0) == 0) return true;
    return false;
}

std::map<std::string, DType> resolve_precision(const std::vector<PrecisionRule>& rules,
                                               const std::vector<SpecTensor>& tensors) {
    std::map<std::string, DType> out;
    for (const PrecisionRule& r : rules) {
        const std::string rule = r.pattern + "=" + std::string(dtype_name(r.dtype));
        const SpecTensor* refused = nullptr;  // the first match that cannot hold the dtype
        size_t set = 0;
        for (const SpecTensor& t : tensors) {
            if (!precision_matches(r.pattern, t.name)) continue;
            if (is_quantized(r.dtype) && read_elementwise(t.name, t.shape.size())) {
                if (!refused) refused = &t;
                continue;
            }
            out[t.name] = r.dtype;
            set++;
        }
        if (set > 0) continue;
        if (refused)
            throw Error("--precision rule '" + rule + "': tensor '" + refused->name +
                        "' is read element-wise and can only be stored as fp32 or fp16");
        bool tied = true;
        for (const SpecTensor& t : tensors) tied = tied && t.name != kLmHeadName;
        throw Error("--precision rule '" + rule + "' matches no tensor" +
                    (tied && precision_matches(r.pattern, kLmHeadName) ? " (the head is tied: it is embedding.weight)"
                                                                       : " (itera-run info lists the names)"));
    }
    return out;
}

}  // namespace itera
