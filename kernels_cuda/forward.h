// The whole-model forward of one thread block, written once for the device and the host.
//
// A block (a "tile") carries up to kMaxRows tokens through every layer together: S sequences
// times a chunk of Tc consecutive tokens of each (S * Tc <= rows). Decoding a batch is S sequences
// x 1 token; a prompt (prefill) is 1 sequence x Tc tokens, chunk after chunk, each layer's conv
// history and SSM state carried from one chunk to the next in the sequence's state slot. All
// activations of the tile live in one scratch area (the block's shared memory): per layer the
// fused SSM step (conv, SiLU, step size, scan, C/D, gate) keeps its chunk of states there and
// never writes the state history out; the MoE step routes each token (router product, top-k,
// softmax over the chosen logits) and runs each expert once over the tokens routed to it,
// adding the experts in ascending index as the CPU does.
//
// The body is a template over the thread group G, which supplies:
//   tid, nthreads          every thread of the block
//   team, teams, lane, lanes   a team (a warp on the device) cooperates on one output row
//   sync()                 block barrier
//   team_sum(float), team_sum_int(int), team_max(float)   reductions within a team
// The device runs it with G = a CUDA block (kernels_cuda/device.cu); the tests run the very same
// code on host threads (kernels_cuda/emulate.cpp) against runtime/context.cpp. Every loop with a
// sync() or a team reduction inside has the same trip count on every thread (or lane).
#pragma once

#include <cstdint>

#include "kernels_cpu/quant_ops.h"
#include "kernels_cpu/weight.h"
#include "kernels_cuda/hd.h"
#include "kernels_cuda/weights.h"

namespace itera::cuda {

constexpr int32_t kMaxRows = 16;    // tokens a tile carries at once (a row mask is a uint32_t)
constexpr int32_t kOneRowOuts = 4;  // weight rows a team reads at once when a product has one row

struct FwdLayer {
    int32_t inner = 0, state = 0, conv_kernel = 0;
    int32_t kind = 0;  // ChannelKind: 0 ffn, 1 moe, 2 none
    int32_t top_k = 0, n_experts = 0, first_expert = 0;
    int64_t conv_off = 0, ssm_off = 0;  // floats into a sequence's state
    Weight norm_w, norm_b, in_proj, conv_w, conv_b, a_log, b, c, d, delta_w, delta_b, out_proj;
    Weight mix_norm_w, mix_norm_b, router;
};

struct FwdExpert {
    Weight w1, w2;
};

// runtime/model.h's Model as plain structs of pointers the kernel can read.
struct FwdModel {
    int32_t hidden = 0, vocab = 0, max_seq = 0, n_layers = 0;
    float eps = 1e-5f;
    int64_t state_floats = 0;  // conv history + SSM state of one sequence, all layers
    Weight embedding, position, final_norm_w, final_norm_b, lm_head;
    const FwdLayer* layers = nullptr;
    const FwdExpert* experts = nullptr;
};

// n_tokens consecutive tokens of one sequence, from position pos0, on the state in `slot`.
struct Job {
    int32_t token_off = 0;  // first of its tokens in ForwardArgs::tokens (embedding rows)
    int32_t n_tokens = 0;
    int32_t pos0 = 0;
    int32_t slot = 0;
    int32_t reset = 0;        // zero the slot's state first
    int32_t logits_off = -1;  // its first logits row, or -1: no logits
    int32_t logits_all = 0;   // 1: a logits row per token, 0: the last token's only
};

// Where each activation of a tile lives: byte offsets from the tile's scratch base, and row
// strides in elements. kernels_cuda/plan.cpp computes it; every offset is 16-byte aligned.
struct Scratch {
    int32_t rows = 0;
    int64_t bytes = 0;
    int32_t x = 0, a = 0, uz = 0, v = 0, st = 0, bv = 0, dt = 0, rw = 0, ri = 0, lrow = 0, act0 = 0, act1 = 0;
    int32_t sx = 0;     // x: the residual stream [hidden]
    int32_t sa = 0;     // a: LayerNorm output, delta, block outputs [max(hidden, inner)]
    int32_t suz = 0;    // uz: in_proj output u|z, router logits, expert hidden|output
                        //     [max(2 inner, ffn + hidden, experts)]
    int32_t sv = 0;     // v: conv + SiLU output, then the gated SSM output y [inner]
    int32_t sst = 0;    // st: SSM state after each token, bv: B v [state]
    int32_t sk = 0;     // rw / ri: routing weights and expert indices [top_k]
    int32_t sact0 = 0;  // act0: ActQ8 blocks of a / v [act_blocks(max(hidden, inner))]
    int32_t sact1 = 0;  // act1: ActQ8 blocks of an expert's hidden [act_blocks(ffn)]
};

struct ForwardArgs {
    FwdModel model;
    Scratch scratch;
    const Job* jobs = nullptr;
    int32_t n_jobs = 0;
    int32_t seqs_per_tile = 1;                // S
    int32_t chunk = 1;                        // Tc
    const int32_t* tokens = nullptr;          // embedding rows
    float* state = nullptr;                   // [slots][model.state_floats]
    float* logits = nullptr;                  // [rows][model.vocab]
    unsigned char* global_scratch = nullptr;  // null: shared memory; else scratch.bytes per tile
    // The LM head in a second launch over many blocks (head_block), for launches with at most
    // kMaxRows logits rows: the tiles leave each logits row's final LayerNorm output (and its q8
    // blocks) in head_in / head_q at the row's index. head_rows = 0: the tiles compute the head.
    int32_t head_rows = 0;
    float* head_in = nullptr;  // [kMaxRows][model.hidden]
    ActQ8* head_q = nullptr;   // [kMaxRows][act_blocks(model.hidden)]
};

constexpr int32_t kHeadRowsPerBlock = 64;  // vocabulary rows per block of the head launch

// Blocks of the head launch.
ITERA_HD inline int32_t head_blocks(const FwdModel& m) { return (m.vocab + kHeadRowsPerBlock - 1) / kHeadRowsPerBlock; }

// The tile's scratch, typed.
struct Tile {
    float *x, *a, *uz, *v, *st, *bv, *dt, *rw;
    int32_t *ri, *lrow;
    ActQ8 *act0, *act1;
};

ITERA_HD inline Tile tile_at(const Scratch& s, unsigned char* base) {
    Tile t;
    t.x = reinterpret_cast<float*>(base + s.x);
    t.a = reinterpret_cast<float*>(base + s.a);
    t.uz = reinterpret_cast<float*>(base + s.uz);
    t.v = reinterpret_cast<float*>(base + s.v);
    t.st = reinterpret_cast<float*>(base + s.st);
    t.bv = reinterpret_cast<float*>(base + s.bv);
    t.dt = reinterpret_cast<float*>(base + s.dt);
    t.rw = reinterpret_cast<float*>(base + s.rw);
    t.ri = reinterpret_cast<int32_t*>(base + s.ri);
    t.lrow = reinterpret_cast<int32_t*>(base + s.lrow);
    t.act0 = reinterpret_cast<ActQ8*>(base + s.act0);
    t.act1 = reinterpret_cast<ActQ8*>(base + s.act1);
    return t;
}

ITERA_HD inline bool has_row(uint32_t mask, int32_t r) { return (mask >> r) & 1u; }

// y[r, o] = W[o, :] . in_r for the rows r in mask. One row: a team (warp) per kOneRowOuts output
// rows, lanes splitting each row; several: a thread per output row (dot_full). x / xq are the
// float and quantized inputs (xq only read for block formats). The result goes to
// y + yrow(r) * ys + o, where yrow(r) = r, or yrow[r] when yrow is given (the logits rows).
template <class G>
ITERA_HD void gemm(G& g, const Weight& w, const float* x, int32_t xs, const ActQ8* xq, int32_t xqs, uint32_t mask,
                   float* y, int64_t ys, const int32_t* yrow) {
    const int64_t rb = row_bytes(w.dtype, w.cols);
    if ((mask & (mask - 1)) == 0) {  // one row (a decode step): kOneRowOuts weight rows per team at a time
        if (mask == 0) return;
        int32_t r = 0;
        while (!has_row(mask, r)) r++;
        float* yr = y + (yrow ? yrow[r] : r) * ys;
        const uint8_t* base = static_cast<const uint8_t*>(w.data);
        const int32_t full = w.rows / kOneRowOuts * kOneRowOuts;
        for (int32_t o = g.team * kOneRowOuts; o < full; o += g.teams * kOneRowOuts) {
            float acc[kOneRowOuts] = {};
            dot_outs<kOneRowOuts>(w.dtype, base + o * rb, rb, w.cols, x + r * xs, xq + r * xqs, g.lane, g.lanes, acc);
            ITERA_UNROLL
            for (int k = 0; k < kOneRowOuts; k++) {
                const float sum = g.team_sum(acc[k]);
                if (g.lane == 0) yr[o + k] = sum;
            }
        }
        for (int32_t o = full + g.team; o < w.rows; o += g.teams) {  // the last rows % kOneRowOuts
            float acc[1] = {};
            dot_outs<1>(w.dtype, base + o * rb, rb, w.cols, x + r * xs, xq + r * xqs, g.lane, g.lanes, acc);
            const float sum = g.team_sum(acc[0]);
            if (g.lane == 0) yr[o] = sum;
        }
        return;
    }
    // Several rows (a batch tile): a thread per output row, each of its dot products whole.
    const uint8_t* base = static_cast<const uint8_t*>(w.data);
    for (int32_t o = g.tid; o < w.rows; o += g.nthreads) {
        float acc[kMaxRows];
        ITERA_UNROLL
        for (int r = 0; r < kMaxRows; r++) acc[r] = 0.0f;
        dot_full<kMaxRows>(w.dtype, base + o * rb, w.cols, x, xs, xq, xqs, mask, acc);
        ITERA_UNROLL
        for (int r = 0; r < kMaxRows; r++)
            if (has_row(mask, r)) y[(yrow ? yrow[r] : r) * ys + o] = acc[r];
    }
}

// ActQ8 blocks of the first n values of each row in mask (kernels_cpu quantize_activation, the
// same integers): a team per (row, block), a lane per element.
template <class G>
ITERA_HD void quantize_rows(G& g, const float* x, int32_t xs, int32_t n, uint32_t mask, ActQ8* out, int32_t os) {
    const int32_t nb = (n + kActBlock - 1) / kActBlock;
    for (int32_t item = g.team; item < kMaxRows * nb; item += g.teams) {
        const int32_t r = item / nb, b = item % nb;
        if (!has_row(mask, r)) continue;
        const float* row = x + r * xs;
        ActQ8& o = out[r * os + b];
        float amax = 0.0f, bad = 0.0f;
        for (int i = g.lane; i < kActBlock; i += g.lanes) {
            const int32_t c = b * kActBlock + i;
            const float v = c < n ? row[c] : 0.0f;
            if (!is_finite(v)) bad = 1.0f;
            amax = fmaxf(amax, fabsf(v));
        }
        amax = g.team_max(amax);
        if (g.team_max(bad) != 0.0f) {  // inf or NaN: q = 0, d = NaN, as the CPU does
            for (int i = g.lane; i < kActBlock; i += g.lanes) o.q[i] = 0;
            if (g.lane == 0) {
                o.d = bits_to_float(0x7fc00000u);
                o.sum = 0;
            }
            continue;
        }
        const float d = amax / 127.0f;
        const float id = d >= 1.17549435e-38f ? 1.0f / d : 0.0f;  // FLT_MIN: 1/d would overflow
        int32_t sum = 0;
        for (int i = g.lane; i < kActBlock; i += g.lanes) {
            const int32_t c = b * kActBlock + i;
            const int32_t q = static_cast<int32_t>(rintf((c < n ? row[c] : 0.0f) * id));
            o.q[i] = static_cast<int8_t>(q);
            sum += q;
        }
        sum = g.team_sum_int(sum);
        if (g.lane == 0) {
            o.d = d;
            o.sum = sum;
        }
    }
}

// out_r = LayerNorm(x_r) over n values for the rows in mask: a team per row.
template <class G>
ITERA_HD void layer_norm_rows(G& g, const float* x, int32_t xs, const Weight& gamma, const Weight& beta, float eps,
                              int32_t n, uint32_t mask, float* out, int32_t os) {
    for (int32_t r = g.team; r < kMaxRows; r += g.teams) {
        if (!has_row(mask, r)) continue;
        const float* row = x + r * xs;
        float s = 0.0f;
        for (int32_t i = g.lane; i < n; i += g.lanes) s += row[i];
        const float mean = g.team_sum(s) / static_cast<float>(n);
        float q = 0.0f;
        for (int32_t i = g.lane; i < n; i += g.lanes) q += (row[i] - mean) * (row[i] - mean);
        const float var = g.team_sum(q) / static_cast<float>(n);
        const float inv = 1.0f / sqrtf(var + eps);
        for (int32_t i = g.lane; i < n; i += g.lanes)
            out[r * os + i] = (row[i] - mean) * inv * element(gamma, i) + element(beta, i);
    }
}

// The tile's current chunk: which rows hold a token, and of which job.
struct Chunk {
    const Job* jobs;  // the tile's first job
    int32_t ns;       // jobs in the tile
    int32_t tc;       // tokens per job in a chunk
    int32_t c0;       // the chunk's first token index within each job
    uint32_t mask;    // rows holding a token
};

// The fused SSM block of one layer: x += out_proj(gate(scan(conv(in_proj(LN(x)))))).
template <class G>
ITERA_HD ITERA_PHASE void ssm_block(G& g, const ForwardArgs& a, const FwdLayer& L, const Tile& t, const Chunk& ch) {
    const Scratch& sc = a.scratch;
    const FwdModel& m = a.model;
    const int32_t H = m.hidden, Di = L.inner, N = L.state, K = L.conv_kernel;
    const uint32_t mask = ch.mask;
    layer_norm_rows(g, t.x, sc.sx, L.norm_w, L.norm_b, m.eps, H, mask, t.a, sc.sa);
    g.sync();
    if (is_block(L.in_proj.dtype)) {
        quantize_rows(g, t.a, sc.sa, H, mask, t.act0, sc.sact0);
        g.sync();
    }
    gemm(g, L.in_proj, t.a, sc.sa, t.act0, sc.sact0, mask, t.uz, sc.suz, nullptr);  // u = uz[0, Di), z = uz[Di, 2Di)
    g.sync();
    // Causal depthwise conv + SiLU: a thread per (sequence, channel), through the chunk in order.
    for (int32_t i = g.tid; i < ch.ns * Di; i += g.nthreads) {
        const int32_t s = i / Di, d = i % Di;
        const Job& job = ch.jobs[s];
        float* past =
            a.state + static_cast<int64_t>(job.slot) * m.state_floats + L.conv_off + static_cast<int64_t>(d) * (K - 1);
        const int64_t w0 = static_cast<int64_t>(d) * K;
        for (int32_t k = 0; k < ch.tc && ch.c0 + k < job.n_tokens; k++) {
            const int32_t r = s * ch.tc + k;
            const float u = t.uz[r * sc.suz + d];
            float sum = element(L.conv_b, d);
            for (int32_t j = 0; j < K - 1; j++) sum += element(L.conv_w, w0 + j) * past[j];
            sum += element(L.conv_w, w0 + K - 1) * u;
            for (int32_t j = 0; j + 1 < K - 1; j++) past[j] = past[j + 1];
            if (K > 1) past[K - 2] = u;
            t.v[r * sc.sv + d] = silu(sum);
        }
    }
    g.sync();
    if (is_block(L.delta_w.dtype) || is_block(L.b.dtype)) {
        quantize_rows(g, t.v, sc.sv, Di, mask, t.act0, sc.sact0);
        g.sync();
    }
    gemm(g, L.delta_w, t.v, sc.sv, t.act0, sc.sact0, mask, t.a, sc.sa, nullptr);  // delta (bias below)
    gemm(g, L.b, t.v, sc.sv, t.act0, sc.sact0, mask, t.bv, sc.sst, nullptr);      // B v
    g.sync();
    // Step size: dt = mean_i softplus(delta_i + bias_i), a team per row.
    for (int32_t r = g.team; r < kMaxRows; r += g.teams) {
        if (!has_row(mask, r)) continue;
        float s = 0.0f;
        for (int32_t i = g.lane; i < Di; i += g.lanes) s += softplus(t.a[r * sc.sa + i] + element(L.delta_b, i));
        s = g.team_sum(s);
        if (g.lane == 0) t.dt[r] = s / static_cast<float>(Di);
    }
    g.sync();
    // Scan: a thread per (sequence, state channel) carries s through the chunk; st keeps the
    // chunk's states for C s below.
    for (int32_t i = g.tid; i < ch.ns * N; i += g.nthreads) {
        const int32_t s = i / N, n = i % N;
        const Job& job = ch.jobs[s];
        float* sp = a.state + static_cast<int64_t>(job.slot) * m.state_floats + L.ssm_off + n;
        const float an = -expf(element(L.a_log, n));
        float state = *sp;
        for (int32_t k = 0; k < ch.tc && ch.c0 + k < job.n_tokens; k++) {
            const int32_t r = s * ch.tc + k;
            const float dt = t.dt[r];
            state = expf(dt * an) * state + dt * t.bv[r * sc.sst + n];
            t.st[r * sc.sst + n] = state;
        }
        *sp = state;
    }
    g.sync();
    // y = C s + D v, gated by SiLU(z); y replaces v.
    for (int32_t i = g.tid; i < kMaxRows * Di; i += g.nthreads) {
        const int32_t r = i / Di, d = i % Di;
        if (!has_row(mask, r)) continue;
        float sum = 0.0f;
        for (int32_t n = 0; n < N; n++) sum += element(L.c, static_cast<int64_t>(d) * N + n) * t.st[r * sc.sst + n];
        const float y = sum + element(L.d, d) * t.v[r * sc.sv + d];
        t.v[r * sc.sv + d] = y * silu(t.uz[r * sc.suz + Di + d]);
    }
    g.sync();
    if (is_block(L.out_proj.dtype)) {
        quantize_rows(g, t.v, sc.sv, Di, mask, t.act0, sc.sact0);
        g.sync();
    }
    gemm(g, L.out_proj, t.v, sc.sv, t.act0, sc.sact0, mask, t.a, sc.sa, nullptr);
    g.sync();
    for (int32_t i = g.tid; i < kMaxRows * H; i += g.nthreads) {
        const int32_t r = i / H, h = i % H;
        if (has_row(mask, r)) t.x[r * sc.sx + h] += t.a[r * sc.sa + h];
    }
    g.sync();
}

// One FFN expert over the rows in emask: x_r += weight_r * w2 GELU(w1 a_r); the weight is 1 for a
// dense FFN (expert < 0), else the row's routing weight of `expert`. a / act0 hold LN(x).
template <class G>
ITERA_HD ITERA_PHASE void expert_rows(G& g, const ForwardArgs& a, const FwdLayer& L, const FwdExpert& e, int32_t expert,
                                      const Tile& t, uint32_t emask) {
    const Scratch& sc = a.scratch;
    const int32_t H = a.model.hidden, F = e.w1.rows;
    gemm(g, e.w1, t.a, sc.sa, t.act0, sc.sact0, emask, t.uz, sc.suz, nullptr);  // hidden: uz[0, F)
    g.sync();
    for (int32_t i = g.tid; i < kMaxRows * F; i += g.nthreads) {
        const int32_t r = i / F, f = i % F;
        if (has_row(emask, r)) t.uz[r * sc.suz + f] = gelu(t.uz[r * sc.suz + f]);
    }
    g.sync();
    if (is_block(e.w2.dtype)) {
        quantize_rows(g, t.uz, sc.suz, F, emask, t.act1, sc.sact1);
        g.sync();
    }
    gemm(g, e.w2, t.uz, sc.suz, t.act1, sc.sact1, emask, t.uz + F, sc.suz, nullptr);  // output: uz[F, F + H)
    g.sync();
    for (int32_t i = g.tid; i < kMaxRows * H; i += g.nthreads) {
        const int32_t r = i / H, h = i % H;
        if (!has_row(emask, r)) continue;
        float w = 1.0f;
        if (expert >= 0)
            for (int32_t j = 0; j < L.top_k; j++)
                if (t.ri[r * sc.sk + j] == expert) w = t.rw[r * sc.sk + j];
        t.x[r * sc.sx + h] += w * t.uz[r * sc.suz + F + h];
    }
    g.sync();
}

// The channel block of one layer: a dense FFN, or the MoE with tokens grouped by expert.
template <class G>
ITERA_HD ITERA_PHASE void channel_block(G& g, const ForwardArgs& a, const FwdLayer& L, const Tile& t, uint32_t mask) {
    if (L.kind == 2) return;  // none: the identity
    const Scratch& sc = a.scratch;
    const FwdModel& m = a.model;
    const int32_t H = m.hidden;
    const FwdExpert* experts = m.experts + L.first_expert;
    layer_norm_rows(g, t.x, sc.sx, L.mix_norm_w, L.mix_norm_b, m.eps, H, mask, t.a, sc.sa);
    g.sync();
    bool quantized = L.kind == 1 && is_block(L.router.dtype);
    for (int32_t e = 0; e < L.n_experts; e++) quantized = quantized || is_block(experts[e].w1.dtype);
    if (quantized) {
        quantize_rows(g, t.a, sc.sa, H, mask, t.act0, sc.sact0);
        g.sync();
    }
    if (L.kind == 0) {
        expert_rows(g, a, L, experts[0], -1, t, mask);
        return;
    }
    const int32_t E = L.n_experts, k = L.top_k;
    gemm(g, L.router, t.a, sc.sa, t.act0, sc.sact0, mask, t.uz, sc.suz, nullptr);
    g.sync();
    // Top-k and the softmax over the chosen logits: a thread per row.
    for (int32_t r = g.tid; r < kMaxRows; r += g.nthreads)
        if (has_row(mask, r)) ref::top_k_softmax(t.uz + r * sc.suz, E, k, t.ri + r * sc.sk, t.rw + r * sc.sk);
    g.sync();
    // Experts in ascending index, each over the rows routed to it (every thread computes the same
    // masks, so the syncs inside stay uniform).
    for (int32_t e = 0; e < E; e++) {
        uint32_t emask = 0;
        for (int32_t r = 0; r < kMaxRows; r++) {
            if (!has_row(mask, r)) continue;
            for (int32_t j = 0; j < k; j++)
                if (t.ri[r * sc.sk + j] == e) emask |= 1u << r;
        }
        if (emask) expert_rows(g, a, L, experts[e], e, t, emask);
    }
}

// The logits row of a job's token k, or -1.
ITERA_HD inline int32_t logits_row(const Job& job, int32_t k) {
    if (job.logits_off < 0) return -1;
    if (job.logits_all) return job.logits_off + k;
    return k + 1 == job.n_tokens ? job.logits_off : -1;
}

// Runs tile `tile` (jobs [tile * S, tile * S + S)) through the model, chunk by chunk.
template <class G>
ITERA_HD ITERA_PHASE void forward_tile(G& g, const ForwardArgs& a, int32_t tile, unsigned char* base) {
    const FwdModel& m = a.model;
    const Scratch& sc = a.scratch;
    const Tile t = tile_at(sc, base);
    Chunk ch;
    ch.jobs = a.jobs + static_cast<int64_t>(tile) * a.seqs_per_tile;
    ch.ns = a.n_jobs - tile * a.seqs_per_tile < a.seqs_per_tile ? a.n_jobs - tile * a.seqs_per_tile : a.seqs_per_tile;
    ch.tc = a.chunk;
    int32_t max_tokens = 0;
    for (int32_t s = 0; s < ch.ns; s++)
        if (ch.jobs[s].n_tokens > max_tokens) max_tokens = ch.jobs[s].n_tokens;
    const int64_t sf = m.state_floats;
    for (int64_t i = g.tid; i < ch.ns * sf; i += g.nthreads) {
        const Job& job = ch.jobs[i / sf];
        if (job.reset) a.state[static_cast<int64_t>(job.slot) * sf + i % sf] = 0.0f;
    }
    g.sync();
    const int32_t H = m.hidden;
    for (ch.c0 = 0; ch.c0 < max_tokens; ch.c0 += ch.tc) {
        uint32_t mask = 0, lmask = 0;
        for (int32_t r = 0; r < ch.ns * ch.tc; r++) {
            const Job& job = ch.jobs[r / ch.tc];
            const int32_t k = ch.c0 + r % ch.tc;
            if (k >= job.n_tokens) continue;
            mask |= 1u << r;
            if (logits_row(job, k) >= 0) lmask |= 1u << r;
        }
        ch.mask = mask;
        // x = embedding[token] + position[pos]
        for (int32_t i = g.tid; i < kMaxRows * H; i += g.nthreads) {
            const int32_t r = i / H, h = i % H;
            if (!has_row(mask, r)) continue;
            const Job& job = ch.jobs[r / ch.tc];
            const int32_t k = ch.c0 + r % ch.tc;
            t.x[r * sc.sx + h] =
                load_element(m.embedding, a.tokens[job.token_off + k], h) + load_element(m.position, job.pos0 + k, h);
            if (h == 0) t.lrow[r] = logits_row(job, k);
        }
        g.sync();
        for (int32_t l = 0; l < m.n_layers; l++) {
            ssm_block(g, a, m.layers[l], t, ch);
            channel_block(g, a, m.layers[l], t, mask);
        }
        if (lmask) {
            layer_norm_rows(g, t.x, sc.sx, m.final_norm_w, m.final_norm_b, m.eps, H, lmask, t.a, sc.sa);
            g.sync();
            if (is_block(m.lm_head.dtype)) {
                quantize_rows(g, t.a, sc.sa, H, lmask, t.act0, sc.sact0);
                g.sync();
            }
            if (a.head_rows > 0) {
                const int32_t nb = (H + kActBlock - 1) / kActBlock;
                const bool q8 = is_block(m.lm_head.dtype);
                for (int32_t i = g.tid; i < kMaxRows * H; i += g.nthreads) {
                    const int32_t r = i / H, h = i % H;
                    if (!has_row(lmask, r)) continue;
                    a.head_in[t.lrow[r] * H + h] = t.a[r * sc.sa + h];
                    if (q8 && h < nb) a.head_q[t.lrow[r] * nb + h] = t.act0[r * sc.sact0 + h];
                }
            } else {
                gemm(g, m.lm_head, t.a, sc.sa, t.act0, sc.sact0, lmask, a.logits, m.vocab, t.lrow);
            }
        }
        g.sync();  // the next chunk rewrites the scratch
    }
}

// Block `block` of the head launch: vocabulary rows [block * kHeadRowsPerBlock, ...) of every
// logits row, from head_in / head_q (ForwardArgs).
template <class G>
ITERA_HD void head_block(G& g, const ForwardArgs& a, int32_t block) {
    const FwdModel& m = a.model;
    const int32_t o0 = block * kHeadRowsPerBlock;
    const int32_t rows = m.vocab - o0 < kHeadRowsPerBlock ? m.vocab - o0 : kHeadRowsPerBlock;
    if (rows <= 0) return;
    Weight part = m.lm_head;
    part.rows = rows;
    part.data = static_cast<const uint8_t*>(m.lm_head.data) + o0 * row_bytes(m.lm_head.dtype, m.lm_head.cols);
    const int32_t nb = (m.hidden + kActBlock - 1) / kActBlock;
    const uint32_t mask = a.head_rows >= 32 ? 0xffffffffu : (1u << a.head_rows) - 1u;
    gemm(g, part, a.head_in, m.hidden, a.head_q, nb, mask, a.logits + o0, m.vocab, nullptr);
}

}  // namespace itera::cuda
