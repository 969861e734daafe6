#include "runtime/model_info.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "format/tensor_names.h"
#include "kernels_cpu/quant_ops.h"

namespace itera {

namespace {

// A JSON string: the source path and the provenance are the caller's and the file's bytes.
std::string quote(const std::string& s) {
    return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::vector<Part> file_parts(const Model& model) {
    const ModelConfig& c = model.config;
    const ItlFile& f = *model.file;
    std::vector<Part> parts;
    auto part_of = [&](const std::string& name, const std::string& shape) -> Part& {
        for (Part& p : parts)
            if (p.name == name) return p;
        parts.push_back({name, shape, "", 0, 0});
        return parts.back();
    };
    const char* kinds[] = {"ffn", "moe", "none"};
    // Matrices listed by their short name (experts collapsed when they agree), vectors counted.
    std::map<std::string, std::vector<std::pair<std::string, std::string>>> matrices;
    std::map<std::string, std::map<std::string, int>> vectors;
    for (const TensorView& t : f.tensors()) {
        const std::string& n = t.name;
        std::string name = n, shape = shape_text(t.shape), rest = n;
        if (n == "embedding.weight") {
            name = "embedding";
            if (c.tied_head) shape += ", tied head";
        } else if (n == "position_embedding.weight") {
            name = "position";
        } else if (n.rfind("layers.", 0) == 0) {
            const size_t dot = n.find('.', 7);
            const int layer = std::stoi(n.substr(7, dot - 7));
            const LayerConfig& lc = c.layers[static_cast<size_t>(layer)];
            const bool ssm = n.compare(dot + 1, 4, "ssm.") == 0;
            name = "layers." + std::to_string(layer) + "." + (ssm ? "ssm" : kinds[static_cast<int>(lc.kind)]);
            rest = n.substr(dot + 5);  // after "ssm." or "moe."
            if (ssm) {
                shape = "inner " + std::to_string(lc.inner) + " state " + std::to_string(lc.state) + " conv " +
                        std::to_string(lc.conv_kernel);
            } else if (lc.kind == ChannelKind::ffn) {
                shape = "width " + std::to_string(lc.ffn_widths[0]);
            } else {
                shape = std::to_string(lc.ffn_widths.size()) + " experts top-" + std::to_string(lc.top_k) + " width";
                const bool same = std::equal(lc.ffn_widths.begin() + 1, lc.ffn_widths.end(), lc.ffn_widths.begin());
                for (size_t e = 0; e < (same ? 1 : lc.ffn_widths.size()); e++)
                    shape += (e ? "/" : " ") + std::to_string(lc.ffn_widths[e]);
            }
            for (const char* inner : {"ssm.", "layer.", "ffn."})
                if (rest.rfind(inner, 0) == 0) rest = rest.substr(std::strlen(inner));
            if (rest.rfind("experts.", 0) == 0) rest = "experts.*" + rest.substr(rest.find('.', 8));
        } else {
            name = "head";
            shape = c.tied_head ? "final norm (tied head)" : "final norm, lm_head";
        }
        if (rest.size() > 7 && rest.compare(rest.size() - 7, 7, ".weight") == 0) rest.resize(rest.size() - 7);
        Part& p = part_of(name, shape);
        p.params += t.elements();
        p.bytes += t.bytes;
        const std::string dtype(dtype_name(t.dtype));
        if (t.shape.size() < 2) {
            vectors[name][dtype]++;
            continue;
        }
        auto& list = matrices[name];
        if (std::find(list.begin(), list.end(), std::make_pair(rest, dtype)) == list.end())
            list.emplace_back(rest, dtype);
    }
    for (Part& p : parts) {
        for (const auto& [short_name, dtype] : matrices[p.name])
            p.dtypes += (p.dtypes.empty() ? "" : ", ") + short_name + " " + dtype;
        std::string v;
        for (const auto& [dtype, count] : vectors[p.name])
            v += (v.empty() ? "" : ", ") + std::to_string(count) + " " + dtype;
        if (!v.empty()) p.dtypes += (p.dtypes.empty() ? "vectors " : ", vectors ") + v;
    }
    return parts;
}

TensorTotals tensor_totals(const Model& model) {
    TensorTotals t;
    for (const TensorView& v : model.file->tensors()) {
        t.params += v.elements();
        t.bytes += v.bytes;
    }
    t.bits_per_weight = 8.0 * static_cast<double>(t.bytes) / static_cast<double>(t.params);
    return t;
}

std::string model_info_json(const Model& model, const std::string& source) {
    const ModelConfig& c = model.config;
    const ItlFile& f = *model.file;
    const TensorTotals totals = tensor_totals(model);
    const char* kinds[] = {"ffn", "moe", "none"};
    std::string out =
        "{\"file\": " + quote(source) + ", \"file_bytes\": " + std::to_string(f.file_size()) +
        ", \"format_version\": " + std::to_string(f.format_version()) +
        ", \"vocab_size\": " + std::to_string(c.vocab_size) + ", \"hidden\": " + std::to_string(c.hidden) +
        ", \"max_seq_length\": " + std::to_string(c.max_seq_length) +
        ", \"vocab_trimmed\": " + (c.vocab_ids.empty() ? "false" : "true") + ", \"kernels\": \"" + kernel_path_name() +
        "\"" + ", \"tied_head\": " + (c.tied_head ? "true" : "false") + ", \"layers\": [";
    for (size_t l = 0; l < c.layers.size(); l++) {
        const auto& lc = c.layers[l];
        out += std::string(l ? ", " : "") + "{\"inner\": " + std::to_string(lc.inner) +
               ", \"state\": " + std::to_string(lc.state) + ", \"conv_kernel\": " + std::to_string(lc.conv_kernel) +
               ", \"kind\": \"" + kinds[static_cast<int>(lc.kind)] + "\", \"top_k\": " + std::to_string(lc.top_k) +
               ", \"ffn_widths\": [";
        for (size_t i = 0; i < lc.ffn_widths.size(); i++) out += (i ? ", " : "") + std::to_string(lc.ffn_widths[i]);
        out += "]}";
    }
    out += "], \"parts\": [";
    const std::vector<Part> parts = file_parts(model);
    uint64_t part_bytes = 0;
    for (size_t i = 0; i < parts.size(); i++) {
        const Part& p = parts[i];
        char share[32];
        std::snprintf(share, sizeof share, "%.6f", static_cast<double>(p.bytes) / static_cast<double>(f.file_size()));
        out += std::string(i ? ", " : "") + "{\"name\": \"" + p.name + "\", \"shape\": \"" + p.shape +
               "\", \"dtypes\": \"" + p.dtypes + "\", \"parameters\": " + std::to_string(p.params) +
               ", \"bytes\": " + std::to_string(p.bytes) + ", \"share\": " + share + "}";
        part_bytes += p.bytes;
    }
    out += "], \"other_bytes\": " + std::to_string(f.file_size() - part_bytes) + ", \"tensors\": [";
    for (size_t i = 0; i < f.tensors().size(); i++) {
        const auto& t = f.tensors()[i];
        out += std::string(i ? ", " : "") + "{\"name\": \"" + t.name + "\", \"shape\": " + shape_text(t.shape) +
               ", \"dtype\": \"" + std::string(dtype_name(t.dtype)) + "\", \"layout\": \"" +
               std::string(layout_name(t.layout)) + "\", \"bytes\": " + std::to_string(t.bytes) + "}";
    }
    char tail[160];
    std::snprintf(tail, sizeof tail, "], \"parameters\": %lld, \"tensor_bytes\": %ju, \"bits_per_weight\": %.4f, ",
                  static_cast<long long>(totals.params), static_cast<uintmax_t>(totals.bytes), totals.bits_per_weight);
    out += tail;
    out += "\"tokenizer_tokens\": " + std::to_string(model.has_tokenizer ? model.tokenizer.size() : 0) +
           ", \"source_sha256\": " + quote(f.provenance().source_sha256) + "}";
    return out;
}

}  // namespace itera
