#include "runtime/model.h"

#include <cmath>
#include <map>
#include <set>

#include "common/error.h"
#include "format/tensor_names.h"
#include "kernels_cpu/ref_ops.h"

namespace itera {

namespace {

// Views every tensor the config implies, checking its shape, and refuses any tensor left over.
class WeightTable {
public:
    explicit WeightTable(const ItlFile& file) {
        // Every tensor the config implies must be in the file. Check a lower bound (12 per layer,
        // 2 per expert) before naming them all: a few KB of metadata can describe 1024 layers of
        // 1024 experts, millions of names the file does not hold.
        size_t implied = 0;
        for (const LayerConfig& l : file.config().layers) implied += 12 + 2 * l.ffn_widths.size();
        if (implied > file.tensors().size())
            throw Error("model file holds " + std::to_string(file.tensors().size()) + " tensors, its config implies " +
                        std::to_string(implied) + " or more");
        for (const ExpectedTensor& t : expected_tensors(file.config())) expected_[t.name] = t.shape;
        for (const TensorView& t : file.tensors()) {
            if (!expected_.count(t.name))
                throw Error("unexpected tensor '" + t.name + "' in model file (not implied by its config)");
            views_[t.name] = &t;
        }
    }

    // Marks tensors read as whole rows, which may use block formats.
    Weight rows(const std::string& name) {
        row_access_.insert(name);
        return get(name);
    }

    Weight get(const std::string& name) const {
        auto it = views_.find(name);
        if (it == views_.end()) throw Error("model file is missing tensor '" + name + "'");
        const TensorView& t = *it->second;
        const std::vector<int64_t>& want = expected_.at(name);
        if (t.shape != want)
            throw Error("tensor '" + name + "' has shape " + shape_text(t.shape) + ", config implies " +
                        shape_text(want));
        // Only matrices read row by row (products, embedding lookups) may be in a block format;
        // the kernels read everything else element by element.
        if (is_quantized(t.dtype) && !row_access_.count(name))
            throw Error("tensor '" + name + "' is stored as " + std::string(dtype_name(t.dtype)) +
                        " but is read element-wise (fp32 or fp16 only)");
        Weight w;
        w.dtype = t.dtype;
        w.layout = t.layout;
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
    std::set<std::string> row_access_;
};

void derive_ssm_tables(const LayerConfig& lc, SsmWeights& s) {
    const int32_t Di = lc.inner, N = lc.state, K = lc.conv_kernel;
    auto table = [](const Weight& w) {
        std::vector<float> out(static_cast<size_t>(w.rows) * static_cast<size_t>(w.cols));
        for (size_t i = 0; i < out.size(); i++) out[i] = ref::element(w, static_cast<int64_t>(i));
        return out;
    };
    s.neg_a = table(s.a_log);
    for (float& v : s.neg_a) v = -std::exp(v);
    s.conv_bias = table(s.conv_b);
    s.d_skip = table(s.d);
    s.delta_bias = table(s.delta_b);
    s.c_t.resize(static_cast<size_t>(N) * static_cast<size_t>(Di));
    for (int32_t i = 0; i < Di; i++)
        for (int32_t n = 0; n < N; n++)
            s.c_t[static_cast<size_t>(n) * Di + i] = ref::element(s.c, static_cast<int64_t>(i) * N + n);
    s.conv_t.resize(static_cast<size_t>(K) * static_cast<size_t>(Di));
    for (int32_t i = 0; i < Di; i++)
        for (int32_t k = 0; k < K; k++)
            s.conv_t[static_cast<size_t>(k) * Di + i] = ref::element(s.conv_w, static_cast<int64_t>(i) * K + k);
}

}  // namespace

std::unique_ptr<Model> load_model(std::unique_ptr<ItlFile> file) {
    auto model = std::make_unique<Model>();
    model->config = file->config();
    const ModelConfig& cfg = model->config;
    WeightTable w(*file);
    model->embedding = w.rows(kEmbeddingName);
    model->position = w.rows(kPositionName);
    model->final_norm_w = w.get(kFinalNormWeightName);
    model->final_norm_b = w.get(kFinalNormBiasName);
    model->lm_head = cfg.tied_head ? model->embedding : w.rows(kLmHeadName);
    for (size_t l = 0; l < cfg.layers.size(); l++) {
        const LayerConfig& lc = cfg.layers[l];
        const int li = static_cast<int>(l);
        const SsmNames n = ssm_names(li);
        LayerWeights layer;
        SsmWeights& s = layer.ssm;
        s.norm_w = w.get(n.norm_w);
        s.norm_b = w.get(n.norm_b);
        s.in_proj = w.rows(n.in_proj);
        s.conv_w = w.get(n.conv_w);
        s.conv_b = w.get(n.conv_b);
        s.a_log = w.get(n.a_log);
        s.b = w.rows(n.b);
        s.c = w.get(n.c);
        s.d = w.get(n.d);
        s.delta_w = w.rows(n.delta_w);
        s.delta_b = w.get(n.delta_b);
        s.out_proj = w.rows(n.out_proj);
        derive_ssm_tables(lc, s);
        if (lc.kind != ChannelKind::none) {
            const NormNames norm = mix_norm_names(li, lc.kind);
            layer.mix_norm_w = w.get(norm.w);
            layer.mix_norm_b = w.get(norm.b);
        }
        if (lc.kind == ChannelKind::ffn) {
            const FfnNames f = ffn_names(li);
            layer.experts.push_back({w.rows(f.w1), w.rows(f.w2)});
        } else if (lc.kind == ChannelKind::moe) {
            layer.router = w.rows(router_name(li));
            for (size_t e = 0; e < lc.ffn_widths.size(); e++) {
                const FfnNames x = expert_names(li, static_cast<int>(e));
                layer.experts.push_back({w.rows(x.w1), w.rows(x.w2)});
            }
        }
        model->layers.push_back(std::move(layer));
    }
    if (cfg.vocab_ids.empty()) {
        for (int32_t r = 0; r < cfg.vocab_size; r++) model->row_of_id.push_back(r);
    } else {
        model->row_of_id.assign(static_cast<size_t>(cfg.vocab_ids.back()) + 1, -1);
        for (int32_t r = 0; r < cfg.vocab_size; r++) model->row_of_id[static_cast<size_t>(cfg.vocab_ids[r])] = r;
    }
    model->has_tokenizer = file->has_tokenizer();
    if (model->has_tokenizer) {
        model->tokenizer = Tokenizer(file->tokenizer());
        if (model->tokenizer.size() > model->id_limit())
            throw Error("tokenizer has " + std::to_string(model->tokenizer.size()) +
                        " tokens but the model knows ids below " + std::to_string(model->id_limit()) + " only");
    }
    model->file = std::move(file);
    return model;
}

std::unique_ptr<Model> load_model_file(const std::string& path) { return load_model(ItlFile::open(path)); }

}  // namespace itera
