#include "runtime/model.h"

#include <map>

#include "common/error.h"
#include "format/tensor_names.h"

namespace itera {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// Views every tensor the config implies, checking its shape, and refuses any tensor left over.
class WeightTable {
public:
    explicit WeightTable(const ItlFile& file) {
        for (const ExpectedTensor& t : expected_tensors(file.config())) expected_[t.name] = t.shape;
        for (const TensorView& t : file.tensors()) {
            if (!expected_.count(t.name))
                throw Error("unexpected tensor '" + t.name + "' in model file (not implied by its config)");
            views_[t.name] = &t;
        }
    }

    Weight get(const std::string& name) const {
        auto it = views_.find(name);
        if (it == views_.end()) throw Error("model file is missing tensor '" + name + "'");
        const TensorView& t = *it->second;
        const std::vector<int64_t>& want = expected_.at(name);
        if (t.shape != want)
            throw Error("tensor '" + name + "' has shape " + shape_text(t.shape) + ", config implies " +
                        shape_text(want));
        Weight w;
        w.dtype = t.dtype;
        w.data = t.data;
        if (t.shape.size() == 1) {
            w.rows = 1;
            w.cols = static_cast<int32_t>(t.shape[0]);
        } else {
            w.rows = static_cast<int32_t>(t.shape[0]);
            w.cols = static_cast<int32_t>(t.elements() / t.shape[0]);
        }
        return w;
    }

private:
    std::map<std::string, std::vector<int64_t>> expected_;
    std::map<std::string, const TensorView*> views_;
};

}  // namespace

std::unique_ptr<Model> load_model(std::unique_ptr<ItlFile> file) {
    auto model = std::make_unique<Model>();
    model->config = file->config();
    const ModelConfig& cfg = model->config;
    const WeightTable w(*file);
    model->embedding = w.get("embedding.weight");
    model->position = w.get("position_embedding.weight");
    model->final_norm_w = w.get("norm.weight");
    model->final_norm_b = w.get("norm.bias");
    model->lm_head = cfg.tied_head ? model->embedding : w.get("lm_head.weight");
    for (size_t l = 0; l < cfg.layers.size(); l++) {
        const LayerConfig& lc = cfg.layers[l];
        const std::string p = layer_prefix(static_cast<int>(l));
        LayerWeights layer;
        SsmWeights& s = layer.ssm;
        s.norm_w = w.get(p + "ssm.norm.weight");
        s.norm_b = w.get(p + "ssm.norm.bias");
        s.in_proj = w.get(p + "ssm.in_proj.weight");
        s.conv_w = w.get(p + "ssm.conv1d.weight");
        s.conv_b = w.get(p + "ssm.conv1d.bias");
        s.a_log = w.get(p + "ssm.ssm.A_log");
        s.b = w.get(p + "ssm.ssm.B");
        s.c = w.get(p + "ssm.ssm.C");
        s.d = w.get(p + "ssm.ssm.D");
        s.delta_w = w.get(p + "ssm.ssm.delta_proj.weight");
        s.delta_b = w.get(p + "ssm.ssm.delta_proj.bias");
        s.out_proj = w.get(p + "ssm.out_proj.weight");
        if (lc.kind == ChannelKind::ffn) {
            layer.mix_norm_w = w.get(p + "moe.norm.weight");
            layer.mix_norm_b = w.get(p + "moe.norm.bias");
            layer.experts.push_back({w.get(p + "moe.ffn.w1.weight"), w.get(p + "moe.ffn.w2.weight")});
        } else if (lc.kind == ChannelKind::moe) {
            const std::string m = moe_prefix(static_cast<int>(l));
            layer.mix_norm_w = w.get(m + "norm.weight");
            layer.mix_norm_b = w.get(m + "norm.bias");
            layer.router = w.get(m + "router.gate.weight");
            for (size_t e = 0; e < lc.ffn_widths.size(); e++) {
                const std::string x = expert_prefix(static_cast<int>(l), static_cast<int>(e));
                layer.experts.push_back({w.get(x + "w1.weight"), w.get(x + "w2.weight")});
            }
        }
        model->layers.push_back(std::move(layer));
    }
    model->has_tokenizer = file->has_tokenizer();
    if (model->has_tokenizer) {
        model->tokenizer = Tokenizer(file->tokenizer());
        if (model->tokenizer.size() > cfg.vocab_size)
            throw Error("tokenizer has " + std::to_string(model->tokenizer.size()) +
                        " tokens but the model's vocabulary is " + std::to_string(cfg.vocab_size));
    }
    model->file = std::move(file);
    return model;
}

std::unique_ptr<Model> load_model_file(const std::string& path) { return load_model(ItlFile::open(path)); }

}  // namespace itera
