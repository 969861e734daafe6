#include "runtime/cuda_backend.h"

#include <algorithm>

namespace itera {

void build_host_model(const Model& model, cuda::HostModel* out) {
    for (const TensorView& t : model.file->tensors())
        if (!cuda::kernels_read(t.dtype))
            throw Error("tensor '" + t.name + "' is stored as " + std::string(dtype_name(t.dtype)) +
                        ", which the CUDA backend does not read (fp32, fp16, q8, q4 and nf4 only)");
    const ModelConfig& cfg = model.config;
    cuda::HostModel& hm = *out;
    hm = cuda::HostModel{};
    cuda::FwdModel& m = hm.model;
    m.hidden = cfg.hidden;
    m.vocab = cfg.vocab_size;
    m.max_seq = cfg.max_seq_length;
    m.n_layers = static_cast<int32_t>(cfg.layers.size());
    m.eps = cfg.norm_eps;
    m.embedding = model.embedding;
    m.position = model.position;
    m.final_norm_w = model.final_norm_w;
    m.final_norm_b = model.final_norm_b;
    m.lm_head = model.lm_head;
    cuda::ModelDims& d = hm.dims;
    d.hidden = cfg.hidden;
    int64_t state = 0;
    for (size_t i = 0; i < cfg.layers.size(); i++) {
        const LayerConfig& lc = cfg.layers[i];
        const LayerWeights& lw = model.layers[i];
        cuda::FwdLayer l;
        l.inner = lc.inner;
        l.state = lc.state;
        l.conv_kernel = lc.conv_kernel;
        l.kind = static_cast<int32_t>(lc.kind);
        l.top_k = lc.top_k;
        l.n_experts = static_cast<int32_t>(lw.experts.size());
        l.first_expert = static_cast<int32_t>(hm.experts.size());
        // The saved state's layout (Backend::read_state): all layers' conv histories, then all
        // layers' SSM states.
        l.conv_off = state;
        state += static_cast<int64_t>(lc.inner) * (lc.conv_kernel - 1);
        const SsmWeights& s = lw.ssm;
        l.norm_w = s.norm_w;
        l.norm_b = s.norm_b;
        l.in_proj = s.in_proj;
        l.conv_w = s.conv_w;
        l.conv_b = s.conv_b;
        l.a_log = s.a_log;
        l.b = s.b;
        l.c = s.c;
        l.d = s.d;
        l.delta_w = s.delta_w;
        l.delta_b = s.delta_b;
        l.out_proj = s.out_proj;
        l.mix_norm_w = lw.mix_norm_w;
        l.mix_norm_b = lw.mix_norm_b;
        l.router = lw.router;
        for (const FfnWeights& f : lw.experts) {
            hm.experts.push_back({f.w1, f.w2});
            d.ffn = std::max(d.ffn, f.w1.rows);
        }
        d.inner = std::max(d.inner, lc.inner);
        d.state = std::max(d.state, lc.state);
        d.experts = std::max(d.experts, l.n_experts);
        d.top_k = std::max(d.top_k, lc.top_k);
        hm.layers.push_back(l);
    }
    for (cuda::FwdLayer& l : hm.layers) {
        l.ssm_off = state;
        state += l.state;
    }
    m.state_floats = state;
    cuda::finish_host_model(&hm);
}

namespace {

class CudaBackend final : public Backend {
public:
    CudaBackend(const Model& model, const cuda::HostModel& host, const cuda::RunnerOptions& options)
        : model_(model), runner_(host, options), segments_(static_cast<size_t>(options.max_seqs)) {}

    Device device() const override { return Device::cuda; }
    std::string name() const override { return runner_.device_name(); }
    int32_t slots() const override { return static_cast<int32_t>(segments_.size()); }

    void run(const Span* spans, int32_t n) override {
        size_t total = 0;
        for (int32_t i = 0; i < n; i++) total += static_cast<size_t>(spans[i].n);
        rows_.resize(total);
        size_t at = 0;
        for (int32_t i = 0; i < n; i++) {
            const Span& s = spans[i];
            cuda::Segment& g = segments_[static_cast<size_t>(i)];
            for (int32_t t = 0; t < s.n; t++) rows_[at + static_cast<size_t>(t)] = model_.row_of(s.ids[t]);
            g.slot = s.slot;
            g.rows = rows_.data() + at;
            g.n = s.n;
            g.pos0 = s.pos0;
            g.reset = s.fresh;
            g.logits = s.logits == LogitRows::none  ? cuda::Logits::none
                       : s.logits == LogitRows::all ? cuda::Logits::all
                                                    : cuda::Logits::last;
            at += static_cast<size_t>(s.n);
        }
        runner_.run(segments_.data(), static_cast<size_t>(n));
    }

    const float* logits(int32_t span) const override { return runner_.logits(static_cast<size_t>(span)); }

    size_t state_floats() const override { return static_cast<size_t>(runner_.state_floats()); }
    void read_state(int32_t slot, float* out) const override { runner_.read_state(slot, out); }
    void write_state(int32_t slot, const float* in) override { runner_.write_state(slot, in); }

    void set_observer(ActivationObserver*) override {
        throw Error("activation statistics are collected on the cpu backend only");
    }

private:
    const Model& model_;
    cuda::Runner runner_;
    std::vector<cuda::Segment> segments_;  // per span of a run
    std::vector<int32_t> rows_;            // the spans' embedding rows
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const Model& model, const cuda::RunnerOptions& options) {
    if (options.max_seqs < 1 || options.max_seqs > (1 << 20))
        throw Error("sequences must be 1..1048576, got " + std::to_string(options.max_seqs));
    cuda::HostModel host;
    build_host_model(model, &host);
    return std::make_unique<CudaBackend>(model, host, options);
}

std::unique_ptr<Backend> make_cuda_backend(const Model& model, const BackendOptions& options) {
    cuda::RunnerOptions o;
    o.max_seqs = options.slots;
    o.graphs = options.cuda_graphs;
    o.copy_logits = options.logits_on_host;
    return make_cuda_backend(model, o);
}

}  // namespace itera
