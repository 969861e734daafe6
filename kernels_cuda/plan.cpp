#include "kernels_cuda/plan.h"

#include <algorithm>
#include <string>

#include "common/error.h"
#include "format/quant_blocks.h"

namespace itera::cuda {

namespace {

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

bool kernels_read(DType t) { return t == DType::f32 || t == DType::f16 || is_block(t); }

void finish_host_model(HostModel* hm) {
    hm->model.layers = hm->layers.data();
    hm->model.experts = hm->experts.data();
    const uint8_t* lo = nullptr;
    const uint8_t* hi = nullptr;
    for_each_weight(hm, [&](const Weight& w) {
        if (w.data == nullptr) return;  // a layer without router / channel norm
        const auto* p = static_cast<const uint8_t*>(w.data);
        const uint8_t* end = p + static_cast<size_t>(w.rows) * static_cast<size_t>(row_bytes(w.dtype, w.cols));
        lo = lo == nullptr || p < lo ? p : lo;
        hi = hi == nullptr || end > hi ? end : hi;
    });
    hm->span = lo;
    hm->span_bytes = static_cast<size_t>(hi - lo);
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

int32_t logits_rows(const Segment& s) {
    if (s.n <= 0 || s.logits == Logits::none) return 0;
    return s.logits == Logits::all ? s.n : 1;
}

std::vector<std::pair<size_t, size_t>> split_launches(const Segment* segments, size_t n, const LaunchCaps& caps) {
    std::vector<std::pair<size_t, size_t>> out;
    size_t begin = 0;
    int64_t jobs = 0, tokens = 0, rows = 0;
    for (size_t i = 0; i < n; i++) {
        const int64_t t = segments[i].n, r = logits_rows(segments[i]);
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
    if (begin < n) out.emplace_back(begin, n);
    return out;
}

}  // namespace itera::cuda
