// --precision: a map from tensor-name globs to storage types, e.g.
//   'embedding=q8,layers.*.ssm.*=fp16,layers.*.moe.*=q4'
// Rules are applied in order, so later rules win. A pattern is an fnmatch glob (`*` crosses dots)
// over the names stored in the file; it matches a tensor when it matches the whole name or a
// prefix of it that ends before a dot (`embedding` matches `embedding.weight`, `layers.1.moe`
// every tensor of that block). A rule sets its dtype on every tensor it matches that can hold
// it: fp32 and fp16 fit any tensor, block formats only matrices read through matrix products or
// row lookups. A rule that changes no tensor is an error, so a typo never goes unnoticed.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "format/model_spec.h"

namespace itera {

struct PrecisionRule {
    std::string pattern;
    DType dtype = DType::f32;
};

// Parses 'GLOB=dtype,GLOB=dtype,...'. Throws itera::Error naming the bad rule.
std::vector<PrecisionRule> parse_precision(const std::string& text);

// Whether `pattern` matches `name` itself or one of its dot-separated prefixes.
bool precision_matches(const std::string& pattern, const std::string& name);

// The dtype the rules give each tensor they set (tensors no rule sets are absent). Throws
// itera::Error for a rule that matches no tensor, or only tensors that cannot hold its dtype.
std::map<std::string, DType> resolve_precision(const std::vector<PrecisionRule>& rules,
                                               const std::vector<SpecTensor>& tensors);

}  // namespace itera
