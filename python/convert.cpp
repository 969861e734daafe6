// itera._itera.convert: one itera_convert() call (converter/include/itera_convert.h) on checkpoint
// bytes, the .itl file written as itera-convert writes it. itera.convert (python/itera/_convert.py)
// checks and spells out the arguments and turns a state dict into checkpoint bytes first.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>

#include "itera_convert.h"
#include "python/binding.h"

namespace itera_py {

using namespace nb::literals;

namespace {

// itera_convert_last_error(): libitera_convert keeps its own message, apart from itera_last_error().
void check_convert(int rc) {
    if (rc != ITERA_OK) throw LibraryError(rc, itera_convert_last_error());
}

// A string the C API reads up to its NUL: one inside it would cut it short.
const char* c_string(const std::string& s, const char* name) {
    if (s.find('\0') != std::string::npos)
        throw nb::value_error((std::string(name) + " contains a NUL character").c_str());
    return s.c_str();
}

const char* c_string(const std::optional<std::string>& s, const char* name) { return s ? c_string(*s, name) : nullptr; }

std::vector<const char*> c_strings(const std::vector<std::string>& v, const char* name) {
    std::vector<const char*> out;
    for (const std::string& s : v) out.push_back(c_string(s, name));
    return out;
}

struct ConversionFree {
    void operator()(itera_conversion* c) const { itera_conversion_free(c); }
};

// (the --report JSON, the summary lines) of converting `checkpoint` into the file `output`.
std::pair<std::string, std::string> convert(
    nb::bytes checkpoint, nb::bytes output_path, const std::optional<std::string>& tokenizer_json,
    const std::optional<std::string>& config_json, int32_t top_k, const std::optional<std::string>& quant,
    const std::vector<std::string>& keep, const std::vector<std::string>& precision,
    const std::optional<std::string>& calib_text, int64_t calib_tokens, int64_t score_tokens, uint64_t target_size,
    double prune_ratio, const std::optional<std::string>& prune_scope,
    const std::optional<std::string>& prune_importance, bool prune_uniform, bool trim_vocab,
    const std::optional<std::string>& layout, bool moe_empty_identity, const std::string& source_name,
    const std::string& options_text) {
    const std::string output(output_path.c_str(), output_path.size());  // os.fsencode()'d
    if (output.empty() || output.find('\0') != std::string::npos)
        throw nb::value_error("output must be a non-empty path without NUL characters");
    itera_convert_params p = itera_convert_default_params();
    p.tokenizer_json = c_string(tokenizer_json, "the tokenizer JSON");
    p.config_json = c_string(config_json, "the config JSON");
    p.top_k = top_k;
    p.quant = c_string(quant, "quant");
    const std::vector<const char*> keep_c = c_strings(keep, "a keep rule");
    const std::vector<const char*> precision_c = c_strings(precision, "a precision map");
    p.keep = keep_c.data();
    p.n_keep = static_cast<int32_t>(keep_c.size());
    p.precision = precision_c.data();
    p.n_precision = static_cast<int32_t>(precision_c.size());
    p.calib_text = c_string(calib_text, "the calibration text");
    p.calib_tokens = calib_tokens;
    p.score_tokens = score_tokens;
    p.target_size = target_size;
    p.prune_ratio = prune_ratio;
    p.prune_scope = c_string(prune_scope, "prune_scope");
    p.prune_importance = c_string(prune_importance, "prune_importance");
    p.prune_uniform = prune_uniform ? 1 : 0;
    p.trim_vocab = trim_vocab ? 1 : 0;
    p.layout = c_string(layout, "layout");
    p.moe_empty_identity = moe_empty_identity ? 1 : 0;
    p.source_name = c_string(source_name, "source_name");
    p.options_text = c_string(options_text, "the options text");
    const void* data = checkpoint.c_str();  // immutable, and referenced by the caller throughout
    const size_t size = checkpoint.size();
    nb::gil_scoped_release released;
    itera_conversion* raw = nullptr;
    check_convert(itera_convert(data, size, &p, &raw));
    std::unique_ptr<itera_conversion, ConversionFree> conversion(raw);
    check_convert(itera_conversion_write(conversion.get(), output.c_str()));
    return {itera_conversion_report(conversion.get()), itera_conversion_summary(conversion.get())};
}

}  // namespace

void bind_convert(nb::module_& m) {
    m.def("convert", &convert, "checkpoint"_a, "output"_a, nb::kw_only(), "tokenizer_json"_a, "config_json"_a,
          "top_k"_a, "quant"_a, "keep"_a, "precision"_a, "calib_text"_a, "calib_tokens"_a, "score_tokens"_a,
          "target_size"_a, "prune_ratio"_a, "prune_scope"_a, "prune_importance"_a, "prune_uniform"_a, "trim_vocab"_a,
          "layout"_a, "moe_empty_identity"_a, "source_name"_a, "options_text"_a,
          R"(itera_convert() on the bytes of a torch.save checkpoint, the .itl file written to `output`
(os.fsencode of a path, written to a temporary file next to it and renamed over it, as itera-convert
does); returns (the --report JSON, the summary lines). The fields are itera_convert_params'; use
itera.convert, which takes the CLI's options as Python values. The GIL is released throughout.)");
}

}  // namespace itera_py
