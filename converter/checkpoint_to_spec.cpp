#include "converter/checkpoint_to_spec.h"

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "converter/prune.h"
#include "format/tensor_names.h"

namespace itera {

namespace {

using pt::Tensor;
using pt::Value;

class StateDict {
public:
    explicit StateDict(const pt::Checkpoint& c) : c_(c) {}
    const Tensor* find(const std::string& name) const {
        auto it = c_.tensors.find(name);
        return it == c_.tensors.end() ? nullptr : &it->second;
    }
    const Tensor& get(const std::string& name) const {
        const Tensor* t = find(name);
        if (!t) throw Error("checkpoint is missing tensor '" + name + "' (not an Itera-Lite layout?)");
        return *t;
    }
    int64_t dim(const std::string& name, size_t axis, size_t rank) const {
        const Tensor& t = get(name);
        if (t.shape.size() != rank)
            throw Error("tensor '" + name + "' has shape " + shape_text(t.shape) + ", expected rank " +
                        std::to_string(rank));
        return t.shape[axis];
    }

private:
    const pt::Checkpoint& c_;
};

int32_t checked_size(int64_t v, const std::string& what) {
    if (v < 0 || v > (int64_t{1} << 30)) throw Error(what + " " + std::to_string(v) + " is out of range");
    return static_cast<int32_t>(v);
}

// The value of an integer config field, from --config first, then the checkpoint's config.
const Value* config_field(const pt::Checkpoint& ck, const CheckpointOptions& o, const std::string& key) {
    if (o.config_file) {
        if (const Value* v = o.config_file->get(key)) return v;
    }
    if (ck.has_config) return ck.config.get(key);
    return nullptr;
}

int64_t as_int(const Value& v, const std::string& key) {
    if (v.kind == Value::Kind::integer) return v.i;  // not a boolean: `true` is no layer count
    throw Error("config field '" + key + "' must be an integer");
}

// Config fields the shapes already determine must agree with them.
void check_field(const pt::Checkpoint& ck, const CheckpointOptions& o, const std::string& key, int64_t actual) {
    const Value* v = config_field(ck, o, key);
    if (v && as_int(*v, key) != actual)
        throw Error("config says " + key + " = " + std::to_string(as_int(*v, key)) + " but the weights have " +
                    std::to_string(actual));
}

ModelConfig infer_config(const pt::Checkpoint& ck, const StateDict& sd, const CheckpointOptions& o) {
    ModelConfig cfg;
    cfg.vocab_size = checked_size(sd.dim(kEmbeddingName, 0, 2), "vocabulary size");
    cfg.hidden = checked_size(sd.dim(kEmbeddingName, 1, 2), "hidden size");
    cfg.max_seq_length = checked_size(sd.dim(kPositionName, 0, 2), "max_seq_length");
    int layers = 0;
    while (sd.find(ssm_names(layers).in_proj)) layers++;
    if (layers == 0) throw Error("checkpoint has no 'layers.0.ssm.in_proj.weight': not an Itera-Lite layout");
    int64_t top_k = 2;
    if (const Value* v = config_field(ck, o, "top_k_experts")) top_k = as_int(*v, "top_k_experts");
    if (o.top_k > 0) top_k = o.top_k;
    for (int l = 0; l < layers; l++) {
        const SsmNames ssm = ssm_names(l);
        LayerConfig lc;
        lc.inner = checked_size(sd.dim(ssm.conv_w, 0, 3), "SSM inner width");
        lc.conv_kernel = checked_size(sd.dim(ssm.conv_w, 2, 3), "conv kernel");
        lc.state = checked_size(sd.dim(ssm.a_log, 0, 1), "SSM state size");
        if (sd.find(router_name(l))) {
            const int32_t experts = checked_size(sd.dim(router_name(l), 0, 2), "expert count");
            if (experts == 0) {
                if (!o.moe_empty_identity)
                    throw Error("layer " + std::to_string(l) +
                                " is a MoE layer with 0 experts (its expert weights were lost); use "
                                "--moe-empty identity to run it as the identity");
                lc.kind = ChannelKind::none;
            } else {
                lc.kind = ChannelKind::moe;
                for (int e = 0; e < experts; e++)
                    lc.ffn_widths.push_back(checked_size(sd.dim(expert_names(l, e).w1, 0, 2), "expert width"));
                if (top_k < 1 || top_k > experts)
                    throw Error("top-k " + std::to_string(top_k) + " is not between 1 and layer " + std::to_string(l) +
                                "'s " + std::to_string(experts) + " experts");
                lc.top_k = static_cast<int32_t>(top_k);
            }
        } else {
            lc.kind = ChannelKind::ffn;
            lc.ffn_widths.push_back(checked_size(sd.dim(ffn_names(l).w1, 0, 2), "FFN width"));
        }
        cfg.layers.push_back(lc);
    }
    check_field(ck, o, "vocab_size", cfg.vocab_size);
    check_field(ck, o, "hidden_size", cfg.hidden);
    check_field(ck, o, "num_layers", layers);
    check_field(ck, o, "max_seq_length", cfg.max_seq_length);
    // Tied when lm_head is absent or is the embedding's own storage (or identical values).
    const Tensor* head = sd.find(kLmHeadName);
    const Tensor& emb = sd.get(kEmbeddingName);
    cfg.tied_head =
        !head || (head->shape == emb.shape && ((!head->storage_key.empty() && head->storage_key == emb.storage_key &&
                                                head->storage_offset == emb.storage_offset) ||
                                               head->values == emb.values));
    return cfg;
}

// Names whose presence in a checkpoint is expected but which inference does not use.
bool ignorable(const std::string& name, const ModelConfig& cfg) {
    const std::string suffix = "router.expert_counts";  // EMA of routing counts (training only)
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
        return true;
    if (name == kLmHeadName && cfg.tied_head) return true;
    for (size_t l = 0; l < cfg.layers.size(); l++)  // the norm of an expert-less MoE layer
        if (cfg.layers[l].kind == ChannelKind::none && name.rfind(moe_prefix(static_cast<int>(l)), 0) == 0) return true;
    return false;
}

// As the pickled config (converter/pt/checkpoint.cpp): nesting is bounded, so a hostile file
// cannot exhaust the stack.
constexpr int kMaxJsonDepth = 100;

Value from_json(const nlohmann::json& j, const std::string& what, int depth) {
    if (depth > kMaxJsonDepth) throw Error(what + " nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    Value v;
    if (j.is_null()) return v;
    if (j.is_boolean()) {
        v.kind = Value::Kind::boolean;
        v.b = j.get<bool>();
    } else if (j.is_number_integer() || j.is_number_unsigned()) {
        if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
            throw Error(what + ": the integer " + std::to_string(j.get<uint64_t>()) + " is out of range");
        v.kind = Value::Kind::integer;
        v.i = j.get<int64_t>();
    } else if (j.is_number_float()) {
        v.kind = Value::Kind::real;
        v.f = j.get<double>();
    } else if (j.is_string()) {
        v.kind = Value::Kind::string;
        v.s = j.get<std::string>();
    } else if (j.is_array()) {
        v.kind = Value::Kind::list;
        for (const auto& x : j) v.items.push_back(from_json(x, what, depth + 1));
    } else {
        v.kind = Value::Kind::dict;
        for (auto it = j.begin(); it != j.end(); ++it)
            v.entries.emplace_back(it.key(), from_json(it.value(), what, depth + 1));
    }
    return v;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool has_prune_masks(const pt::Checkpoint& ck) {
    for (const std::string& name : ck.order)
        if (ends_with(name, "_mask") || ends_with(name, "_orig")) return true;
    return false;
}

// torch.nn.utils.prune replaces parameter `<name>` by `<name>_orig` and a buffer `<name>_mask`;
// the forward multiplies them. The folded tensor owns its values: a head tied to `_orig` reads
// the unmasked weights, so it is not the folded embedding.
pt::Checkpoint fold_prune_masks(const pt::Checkpoint& ck) {
    pt::Checkpoint out;
    out.has_config = ck.has_config;
    out.config = ck.config;
    for (const std::string& name : ck.order) {
        const Tensor& t = ck.tensors.at(name);
        if (ends_with(name, "_mask")) {
            if (!ck.tensors.count(name.substr(0, name.size() - 5) + "_orig"))
                throw Error("checkpoint has prune mask '" + name + "' without its '_orig' tensor");
            continue;
        }
        if (!ends_with(name, "_orig")) {
            out.tensors[name] = t;
            out.order.push_back(name);
            continue;
        }
        const std::string base = name.substr(0, name.size() - 5);
        const auto mask = ck.tensors.find(base + "_mask");
        if (mask == ck.tensors.end())
            throw Error("checkpoint has '" + name + "' without its prune mask '" + base + "_mask'");
        if (ck.tensors.count(base))
            throw Error("checkpoint has both '" + base + "' and its pruned form '" + name + "'");
        if (mask->second.shape != t.shape)
            throw Error("prune mask '" + base + "_mask' has shape " + shape_text(mask->second.shape) + ", its weight " +
                        shape_text(t.shape));
        Tensor folded;
        folded.dtype = t.dtype;
        folded.shape = t.shape;
        folded.values = t.values;
        for (size_t i = 0; i < folded.values.size(); i++) folded.values[i] *= mask->second.values[i];
        out.tensors[base] = std::move(folded);
        out.order.push_back(base);
    }
    return out;
}

ModelSpec convert_state_dict(const pt::Checkpoint& checkpoint, const CheckpointOptions& options) {
    const StateDict sd(checkpoint);
    ModelSpec spec;
    spec.config = infer_config(checkpoint, sd, options);
    validate_config(spec.config);
    std::set<std::string> used;
    for (const ExpectedTensor& e : expected_tensors(spec.config)) {
        const Tensor& t = sd.get(e.name);
        if (t.shape != e.shape)
            throw Error("tensor '" + e.name + "' has shape " + shape_text(t.shape) + ", expected " +
                        shape_text(e.shape));
        SpecTensor out;
        out.name = e.name;
        out.shape = e.shape;
        out.values = t.values;
        spec.tensors.push_back(std::move(out));
        used.insert(e.name);
    }
    for (const std::string& name : checkpoint.order)
        if (!used.count(name) && !ignorable(name, spec.config))
            throw Error("unexpected tensor '" + name + "' in checkpoint (not part of an Itera-Lite model)");
    return spec;
}

}  // namespace

Value json_to_value(const std::string& json_text, const std::string& what) {
    nlohmann::json j = nlohmann::json::parse(json_text, nullptr, false);
    if (j.is_discarded()) throw Error(what + " is not valid JSON");
    if (!j.is_object()) throw Error(what + " must be a JSON object");
    return from_json(j, what, 0);
}

namespace {

// A NaN or an infinity in a weight makes every logit NaN: refused here, whatever dtype follows.
void check_finite(const ModelSpec& spec) {
    for (const SpecTensor& t : spec.tensors)
        for (size_t i = 0; i < t.values.size(); i++)
            if (!std::isfinite(t.values[i]))
                throw Error("tensor '" + t.name + "': element " + std::to_string(i) + " is " +
                            (std::isnan(t.values[i]) ? "NaN" : "infinite"));
}

}  // namespace

ModelSpec checkpoint_to_spec(const pt::Checkpoint& checkpoint, const CheckpointOptions& options) {
    const bool masked = has_prune_masks(checkpoint);
    ModelSpec spec =
        masked ? convert_state_dict(fold_prune_masks(checkpoint), options) : convert_state_dict(checkpoint, options);
    check_finite(spec);
    if (!masked) return spec;
    const PrunePlan plan = zero_unit_plan(spec);
    apply_pruning(spec, plan);
    if (options.masked_units) *options.masked_units = plan;
    return spec;
}

}  // namespace itera
