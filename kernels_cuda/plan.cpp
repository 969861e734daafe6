#include "kernels_cuda/plan.h"

#include <algorithm>
#include <string>

#include "common/error.h"
#include "format/quant_blocks.h"

namespace itera::cuda {

namespace {

bool kernels_read(DType t) { return t == DType::f32 || t == DType::f16 || is_block(t); }

template <class F>
void for_each_weight(HostModel* hm, F f) {
    FwdModel& m = hm->model;
    for (Weight* w : {&m.embedding, &m.position, &m.final_norm_w, &m.final_norm_b, &m.lm_head}) f(*w);
    for (FwdLayer& l : hm->layers)
        for (Weight* w : {&l.norm_w, &l.norm_b, &l.in_proj, &l.conv_w, &l.conv_b, &l.a_log, &l.b, &l.c, &l.d,
                          &l.delta_w, &l.delta_b, &l.out_proj, &l.mix_norm_w, &l.mix_norm_b, &l.router})
            f(*w);
    for (FwdExpert& e : hm->experts) {
        f(e.w1);
        f(e.w2);
    }
}

}  // namespace

void build_host_model(const Model& model, HostModel* out) {
    for (const TensorView& t : model.file->tensors())
        if (!kernels_read(t.dtype))
            throw Error("tensor '" + t.name + "' is stored as " + std::string(dtype_name(t.dtype)) +
                        ", which the CUDA backend does not read (fp32, fp16, q8, q4 and nf4 only)");
    const ModelConfig& cfg = model.config;
    HostModel& hm = *out;
    hm = HostModel{};
    FwdModel& m = hm.model;
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
    ModelDims& d = hm.dims;
    d.hidden = cfg.hidden;
    int64_t state = 0;
    for (size_t i = 0; i < cfg.layers.size(); i++) {
        const LayerConfig& lc = cfg.layers[i];
        const LayerWeights& lw = model.layers[i];
        FwdLayer l;
        l.inner = lc.inner;
        l.state = lc.state;
        l.conv_kernel = lc.conv_kernel;
        l.kind = static_cast<int32_t>(lc.kind);
        l.top_k = lc.top_k;
        l.n_experts = static_cast<int32_t>(lw.experts.size());
        l.first_expert = static_cast<int32_t>(hm.experts.size());
        // Context's layout: all layers' conv histories, then all layers' SSM states.
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
    for (FwdLayer& l : hm.layers) {
        l.ssm_off = state;
        state += l.state;
    }
    m.state_floats = state;
    m.layers = hm.layers.data();
    m.experts = hm.experts.data();
    const uint8_t* lo = nullptr;
    const uint8_t* hi = nullptr;
    for_each_weight(&hm, [&](const Weight& w) {
        if (w.data == nullptr) return;  // a layer without router / channel norm
        const auto* p = static_cast<const uint8_t*>(w.data);
        const uint8_t* end = p + static_cast<size_t>(w.rows) * static_cast<size_t>(row_bytes(w.dtype, w.cols));
        lo = lo == nullptr || p < lo ? p : lo;
        hi = hi == nullptr || end > hi ? end : hi;
    });
    hm.span = lo;
    hm.span_bytes = static_cast<size_t>(hi - lo);
}

std::vector<uint8_t> row_major_span(HostModel* hm) {
    std::vector<uint8_t> copy;
    for_each_weight(hm, [&](Weight& w) {
        if (w.data == nullptr || w.layout == Layout::row_major) return;
        if (copy.empty()) copy.assign(hm->span, hm->span + hm->span_bytes);
        const auto* from = static_cast<const uint8_t*>(w.data);
        uint8_t* to = copy.data() + (from - hm->span);
        const int64_t rb = row_bytes(w.dtype, w.cols);
        for (int32_t r = 0; r < w.rows; r++) row_from_rows16(w.dtype, from, w.rows, w.cols, r, to + r * rb);
        w.layout = Layout::row_major;  // what the copy holds
    });
    return copy;
}

void relocate_weights(HostModel* hm, const uint8_t* to) {
    const uint8_t* from = hm->span;
    for_each_weight(hm, [&](Weight& w) {
        if (w.data != nullptr) w.data = to + (static_cast<const uint8_t*>(w.data) - from);
    });
}

Scratch make_scratch(const ModelDims& d, int32_t rows) {
    Scratch s;
    s.rows = rows;
    s.sx = d.hidden;
    s.sa = std::max(d.hidden, d.inner);
    s.suz = std::max({2 * d.inner, d.ffn + d.hidden, d.experts});
    s.sv = d.inner;
    s.sst = d.state;
    s.sk = std::max(d.top_k, 1);
    s.sact0 = act_blocks(std::max(d.hidden, d.inner));
    s.sact1 = act_blocks(std::max(d.ffn, 1));
    int64_t at = 0;
    auto take = [&](int64_t bytes) {
        const int64_t off = at;
        at += (bytes + 15) / 16 * 16;
        return static_cast<int32_t>(off);
    };
    const int64_t r = rows;
    s.x = take(4 * r * s.sx);
    s.a = take(4 * r * s.sa);
    s.uz = take(4 * r * s.suz);
    s.v = take(4 * r * s.sv);
    s.st = take(4 * r * s.sst);
    s.bv = take(4 * r * s.sst);
    s.dt = take(4 * r);
    s.rw = take(4 * r * s.sk);
    s.ri = take(4 * r * s.sk);
    s.lrow = take(4 * r);
    s.act0 = take(static_cast<int64_t>(sizeof(ActQ8)) * r * s.sact0);
    s.act1 = take(static_cast<int64_t>(sizeof(ActQ8)) * r * s.sact1);
    s.bytes = at;
    return s;
}

int32_t tile_rows(const ModelDims& dims, const Limits& limits, bool* global) {
    *global = false;
    for (int32_t rows = kMaxRows; rows >= 1; rows /= 2)
        if (make_scratch(dims, rows).bytes <= limits.smem_bytes) return rows;
    *global = true;
    return kMaxRows;
}

TileShape tile_shape(int32_t rows, int32_t sm_count, int32_t n_jobs, int32_t max_tokens) {
    TileShape t;
    t.chunk = std::clamp(max_tokens, 1, rows);
    t.seqs = std::max(1, rows / t.chunk);
    const int32_t spread = (n_jobs + std::max(sm_count, 1) - 1) / std::max(sm_count, 1);
    t.seqs = std::clamp(spread, 1, t.seqs);
    t.tiles = (n_jobs + t.seqs - 1) / t.seqs;
    return t;
}

int32_t feed_logits_rows(const Feed& feed) {
    if (feed.n <= 0 || feed.logits == Logits::none) return 0;
    return feed.logits == Logits::all ? feed.n : 1;
}

std::vector<std::vector<PlannedJob>> plan_waves(std::vector<SequenceWindow>* seqs, const std::vector<Feed>& feeds,
                                                int32_t max_seq) {
    std::vector<std::vector<PlannedJob>> waves;
    std::vector<size_t> next(seqs->size(), 0);  // each sequence's next wave
    for (size_t f = 0; f < feeds.size(); f++) {
        const Feed& feed = feeds[f];
        SequenceWindow& w = (*seqs)[static_cast<size_t>(feed.seq)];
        std::vector<PlannedJob> jobs;
        const int32_t fit = std::min(feed.n, max_seq - static_cast<int32_t>(w.tokens.size()));
        if (fit > 0) {
            PlannedJob j;
            j.seq = feed.seq;
            j.feed = static_cast<int32_t>(f);
            j.pos0 = static_cast<int32_t>(w.tokens.size());
            j.reset = w.zero_pending;
            j.ids.assign(feed.ids, feed.ids + fit);
            j.logits_all = feed.logits == Logits::all;
            if (j.logits_all || (feed.logits == Logits::last && fit == feed.n)) j.logits_row = 0;
            w.tokens.insert(w.tokens.end(), feed.ids, feed.ids + fit);
            w.zero_pending = false;
            jobs.push_back(std::move(j));
        }
        for (int32_t i = std::max(fit, 0); i < feed.n; i++) {
            // Slide: keep the last max_seq tokens and re-run them from zero state.
            w.tokens.erase(w.tokens.begin());
            w.tokens.push_back(feed.ids[i]);
            w.zero_pending = false;
            PlannedJob j;
            j.seq = feed.seq;
            j.feed = static_cast<int32_t>(f);
            j.reset = true;
            j.ids = w.tokens;
            if (feed.logits == Logits::all) j.logits_row = i;
            if (feed.logits == Logits::last && i + 1 == feed.n) j.logits_row = 0;
            jobs.push_back(std::move(j));
        }
        // A job without logits whose state a later reset discards does not need to run.
        bool reset_later = false;
        std::vector<PlannedJob> kept;
        for (size_t i = jobs.size(); i-- > 0;) {
            const bool reset = jobs[i].reset;
            if (jobs[i].logits_row >= 0 || !reset_later) kept.push_back(std::move(jobs[i]));
            reset_later = reset_later || reset;
        }
        for (size_t i = kept.size(); i-- > 0;) {
            size_t& wave = next[static_cast<size_t>(feed.seq)];
            if (waves.size() <= wave) waves.resize(wave + 1);
            waves[wave++].push_back(std::move(kept[i]));
        }
    }
    return waves;
}

std::vector<std::pair<size_t, size_t>> split_wave(const std::vector<PlannedJob>& wave, const LaunchCaps& caps) {
    std::vector<std::pair<size_t, size_t>> out;
    size_t begin = 0;
    int64_t jobs = 0, tokens = 0, rows = 0;
    for (size_t i = 0; i < wave.size(); i++) {
        const int64_t t = static_cast<int64_t>(wave[i].ids.size());
        const int64_t r = wave[i].logits_row < 0 ? 0 : (wave[i].logits_all ? t : 1);
        if (t > caps.tokens || r > caps.logits_rows) throw Error("internal: a CUDA job exceeds the launch capacity");
        if (i > begin && (jobs + 1 > caps.jobs || tokens + t > caps.tokens || rows + r > caps.logits_rows)) {
            out.emplace_back(begin, i);
            begin = i;
            jobs = tokens = rows = 0;
        }
        jobs++;
        tokens += t;
        rows += r;
    }
    if (begin < wave.size()) out.emplace_back(begin, wave.size());
    return out;
}

}  // namespace itera::cuda
