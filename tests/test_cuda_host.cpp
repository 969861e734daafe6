// The CUDA backend's host-side logic, on the CPU (no GPU needed): the __host__ __device__ math
// and block-format dots against kernels_cpu, the scratch layout and tile plans, the feed -> job
// planner against Context's window semantics, and the kernel body itself (kernels_cuda/forward.h)
// run on host threads through the whole Backend against runtime/context.cpp.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "common/error.h"
#include "converter/quantize_spec.h"
#include "format/half.h"
#include "format/itl_file.h"
#include "format/quant_blocks.h"
#include "format/tensor_names.h"
#include "kernels_cpu/ref_ops.h"
#include "kernels_cuda/forward.h"
#include "kernels_cuda/plan.h"
#include "kernels_cuda/runner.h"
#include "runtime/batch.h"
#include "runtime/context.h"
#include "runtime/cuda_backend.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "runtime/window.h"
#include "tests/model_fixtures.h"
#include "tests/reference_context.h"

using namespace itera;
using namespace itera::cuda;

namespace {

// A thread group of one thread with one lane: the kernel helpers run their loops whole.
struct OneThread {
    int tid = 0, nthreads = 1, team = 0, teams = 1, lane = 0, lanes = 1;
    void sync() {}
    float team_sum(float v) const { return v; }
    int32_t team_sum_int(int32_t v) const { return v; }
    float team_max(float v) const { return v; }
};

using test::model_from;
using test::random_spec;

// test::small_config (hidden 12, max_seq_length 6, an SSM + FFN and an SSM + MoE layer of 3
// experts of different widths) and a third SSM layer whose channel block is the identity. 150
// vocabulary rows: launches with up to 16 logits rows run the head as its own launch of 3 blocks
// (64, 64 and 22 rows), longer prefills in the tiles.
ModelConfig small_config() {
    ModelConfig c = test::small_config();
    c.vocab_size = 150;
    c.layers.push_back({14, 2, 1, ChannelKind::none, 0, {}});
    return c;
}

// The shipped model's widths (hidden 96, inner 192, state 16, K 4, 4 experts of 128, top-2) with
// a smaller vocabulary: rows span several activation blocks and odd nf4 half blocks.
ModelConfig wide_config() { return test::shipped_widths(200, 20); }

std::vector<float> row(const float* p, int32_t n) { return {p, p + n}; }

using test::max_abs_diff;
using test::worse;

float max_abs(const std::vector<float>& a) {
    float m = 0.0f;
    for (float v : a) m = std::max(m, std::fabs(v));
    return m;
}

// threads in teams of `lanes`: with lanes > 1 every product row, LayerNorm and quantized block
// is split over the lanes and reduced as a warp does on the device.
RunnerOptions emulated(int32_t seqs, int32_t threads = 3, int64_t smem = 96 * 1024, int32_t lanes = 1) {
    RunnerOptions o;
    o.max_seqs = seqs;
    o.emulate = true;
    o.emulate_threads = threads;
    o.emulate_lanes = lanes;
    o.emulate_smem_bytes = smem;
    return o;
}

// A context / batch on the emulated CUDA backend, through the runtime's backend interface.
Context gpu_context(const Model& model, const RunnerOptions& o) { return Context(model, make_cuda_backend(model, o)); }

// Logits bound for the emulated kernels against the CPU, relative to the logits' size: FP32
// summation order only. The block formats compute the CPU's integers, but an activation within
// rounding distance of a q8 boundary may round the other way, and the state carries that step
// on: the bound is tests/test_cuda_device.cpp's (docs/cuda.md; 3.1e-3 seen here on one q4 batch).
float bound(DType t) { return t == DType::f32 || t == DType::f16 ? 2e-5f : 5e-2f; }
// Against the reference forward (FP32 inputs to every product), block formats are held to
// tests/test_forward.cpp's reference_tolerance: the device, like the CPU, rounds inputs to q8.
float reference_bound(DType t) { return t == DType::f32 || t == DType::f16 ? 2e-5f : 0.1f; }

}  // namespace

TEST_CASE("cuda: shared math equals the CPU reference") {
    int mismatches = 0;
    for (float v = -30.0f; v <= 30.0f; v += 0.0371f) {
        mismatches += cuda::silu(v) != ref::silu(v);
        mismatches += cuda::gelu(v) != ref::gelu(v);
        mismatches += cuda::softplus(v) != ref::softplus(v);
    }
    CHECK(mismatches == 0);
    int half_mismatches = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const float a = half_to_float(static_cast<uint16_t>(h)), b = fp16_to_fp32(static_cast<uint16_t>(h));
        half_mismatches += std::memcmp(&a, &b, 4) != 0;
    }
    CHECK(half_mismatches == 0);
    // dp4a, and the nf4 table lookup through byte permutations, for every code in every byte.
    std::mt19937 rng(3);
    int dp4a_bad = 0;
    for (int i = 0; i < 10000; i++) {
        const int32_t a = static_cast<int32_t>(rng()), b = static_cast<int32_t>(rng());
        int32_t want = 7;
        for (int k = 0; k < 4; k++) want += static_cast<int8_t>(a >> (8 * k)) * static_cast<int8_t>(b >> (8 * k));
        dp4a_bad += dp4a(a, b, 7) != want;
    }
    CHECK(dp4a_bad == 0);
    int nf4_bad = 0;
    for (uint32_t codes = 0; codes < 65536; codes++) {
        const uint32_t packed =
            (codes & 0xf) | ((codes >> 4 & 0xf) << 8) | ((codes >> 8 & 0xf) << 16) | ((codes >> 12 & 0xf) << 24);
        const int32_t got = nf4_levels(packed);
        for (int k = 0; k < 4; k++) nf4_bad += static_cast<int8_t>(got >> (8 * k)) != kNf4I8[(codes >> (4 * k)) & 0xf];
    }
    CHECK(nf4_bad == 0);
    // q3_0 / q2_0 codes unpacked to int8 words: n - 4 and 2n - 3 of every element of random blocks,
    // the codes read as kernels_cpu/quant_dot_scalar.cpp reads them.
    int q3_bad = 0, q2_bad = 0;
    for (int i = 0; i < 2000; i++) {
        uint8_t blk[18];
        for (uint8_t& b : blk) b = static_cast<uint8_t>(rng());
        for (int e = 0; e < 32; e++) {
            const int j = e % 8, k = e / 8;
            const int n = ((blk[2 + j] >> (2 * k)) & 3) | (((blk[10 + k] >> j) & 1) << 2);
            q3_bad += static_cast<int8_t>(q3_word(blk, e / 4) >> (8 * (e % 4))) != n - 4;
        }
        for (int e = 0; e < 64; e++) {
            const int n = (blk[2 + e % 16] >> (2 * (e / 16))) & 3;
            q2_bad += static_cast<int8_t>(q2_word(blk, e / 32, (e % 32) / 4) >> (8 * (e % 4))) != 2 * n - 3;
        }
    }
    CHECK(q3_bad == 0);
    CHECK(q2_bad == 0);
    for (DType t : {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0})
        for (int32_t cols : {1, 31, 32, 33, 64, 96, 100})
            CHECK(row_bytes(t, cols) == static_cast<int64_t>(dtype_row_bytes(t, cols)));
    MESSAGE(
        "silu, gelu, softplus bit-equal to ref:: on 1617 points; fp16 decode on all 65536 codes; dp4a; nf4 "
        "levels on all 65536 nibble quads; q3 / q2 int8 codes of 2000 random blocks; row bytes");
}

TEST_CASE("cuda: activation quantization and block dots give the CPU's integers") {
    std::mt19937 rng(11);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int32_t R = 3;
    for (int32_t cols : {32, 37, 40, 96, 100, 160}) {  // 37: fp32 / fp16 one element at a time
        // Input rows, one with a tiny block, and the CPU's quantization of each.
        std::vector<float> x(static_cast<size_t>(R * cols));
        for (float& v : x) v = normal(rng);
        for (int32_t c = 0; c < std::min(cols, 32); c++) x[static_cast<size_t>(cols + c)] = 1e-39f;
        const int32_t nb = act_blocks(cols);
        std::vector<ActQ8> cpu(static_cast<size_t>(R * nb)), gpu(static_cast<size_t>(R * nb));
        for (int32_t r = 0; r < R; r++)
            quantize_activation(KernelPath::scalar, x.data() + r * cols, cols, cpu.data() + r * nb);
        OneThread g;
        quantize_rows(g, x.data(), cols, cols, (1u << R) - 1, gpu.data(), nb);
        bool same = true;
        for (size_t i = 0; i < cpu.size(); i++)
            same = same && cpu[i].d == gpu[i].d && cpu[i].sum == gpu[i].sum && std::memcmp(cpu[i].q, gpu[i].q, 32) == 0;
        CHECK_MESSAGE(same, "cols " << cols);
        for (DType t : {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0}) {
            const int32_t rows = 5;
            std::vector<float> values(static_cast<size_t>(rows * cols));
            for (float& v : values) v = normal(rng);
            // The rows as the writer encodes them.
            std::vector<uint8_t> bytes(static_cast<size_t>(rows) * dtype_row_bytes(t, cols));
            for (int32_t r = 0; r < rows; r++)
                quantize_row(t, values.data() + static_cast<size_t>(r * cols), cols,
                             bytes.data() + static_cast<size_t>(r) * dtype_row_bytes(t, cols));
            const Weight w{t, rows, cols, bytes.data()};
            std::vector<float> want(static_cast<size_t>(rows));
            std::vector<float> deq(static_cast<size_t>(cols));
            // The CPU's rows: want[r * rows + o].
            std::vector<float> want_all(static_cast<size_t>(R * rows));
            for (int32_t r = 0; r < R; r++) {
                if (is_quantized(t))
                    matvec_quant(KernelPath::scalar, w, cpu.data() + r * nb, want.data());
                else
                    ref::matvec(w, x.data() + r * cols, want.data());
                std::copy(want.begin(), want.end(), want_all.begin() + r * rows);
            }
            const auto rel = [&](float got, int32_t r, int32_t o) {
                const float v = want_all[static_cast<size_t>(r * rows + o)];
                return std::fabs(got - v) / (1.0f + std::fabs(v));
            };
            const int64_t rb = static_cast<int64_t>(dtype_row_bytes(t, cols));
            // One input row (dot_outs), a weight row split over 1, 3 and 32 lanes, 1 and 4 rows at once.
            for (int32_t lanes : {1, 3, 32}) {
                float worst = 0.0f;
                for (int32_t r = 0; r < R; r++)
                    for (int32_t o = 0; o < rows; o++) {
                        float one = 0.0f, four[4] = {};
                        for (int lane = 0; lane < lanes; lane++) {
                            float acc[1] = {};
                            dot_outs<1>(t, bytes.data() + o * rb, rb, cols, x.data() + r * cols, gpu.data() + r * nb,
                                        lane, lanes, acc);
                            one += acc[0];
                            if (o + 4 <= rows) {
                                float acc4[4] = {};
                                dot_outs<4>(t, bytes.data() + o * rb, rb, cols, x.data() + r * cols,
                                            gpu.data() + r * nb, lane, lanes, acc4);
                                for (int k = 0; k < 4; k++) four[k] += acc4[k];
                            }
                        }
                        worst = worse(worst, rel(one, r, o));
                        if (o + 4 <= rows)
                            for (int k = 0; k < 4; k++) worst = worse(worst, rel(four[k], r, o + k));
                    }
                CHECK_MESSAGE(worst < 1e-5f, dtype_name(t) << " cols " << cols << " lanes " << lanes << ": " << worst);
            }
            // A batch tile (dot_full): every input row at once, each weight row whole.
            float worst_full = 0.0f;
            for (int32_t o = 0; o < rows; o++) {
                float acc[kMaxRows] = {};
                dot_full<kMaxRows>(t, bytes.data() + o * rb, cols, x.data(), cols, gpu.data(), nb, (1u << R) - 1, acc);
                for (int32_t r = 0; r < R; r++) worst_full = worse(worst_full, rel(acc[r], r, o));
            }
            CHECK_MESSAGE(worst_full < 1e-5f, dtype_name(t) << " cols " << cols << " dot_full: " << worst_full);
            // load_element dequantizes as ref::load_row does.
            bool rows_same = true;
            for (int32_t r = 0; r < rows; r++) {
                ref::load_row(w, r, deq.data());
                for (int32_t c = 0; c < cols; c++)
                    rows_same = rows_same && load_element(w, r, c) == deq[static_cast<size_t>(c)];
            }
            CHECK_MESSAGE(rows_same, dtype_name(t) << " cols " << cols);
        }
    }
    // Non-finite input: d = NaN and q = 0, as the CPU.
    std::vector<float> bad(40, 1.0f);
    bad[5] = INFINITY;
    ActQ8 out[2];
    OneThread g;
    quantize_rows(g, bad.data(), 40, 40, 1u, out, 2);
    CHECK(std::isnan(out[0].d));
    CHECK(out[0].sum == 0);
    CHECK(out[1].d == doctest::Approx(1.0f / 127.0f));
    MESSAGE(
        "ActQ8 blocks bit-equal to quantize_activation; fp32/fp16/q8/q4/nf4/q3/q2 row dots (split over 1, 3 and 32 "
        "lanes, 1 and 4 rows at once; and whole rows against 3 inputs at once) within 1e-5 (relative) of the CPU "
        "kernels; load_element equals ref::load_row");
}

TEST_CASE("cuda: scratch layout and tile shapes") {
    const ModelDims d{96, 192, 16, 128, 4, 2};
    const Scratch s = make_scratch(d, 16);
    const int32_t regions[][2] = {{s.x, 4 * 16 * s.sx}, {s.a, 4 * 16 * s.sa},        {s.uz, 4 * 16 * s.suz},
                                  {s.v, 4 * 16 * s.sv}, {s.st, 4 * 16 * s.sst},      {s.bv, 4 * 16 * s.sst},
                                  {s.dt, 4 * 16},       {s.rw, 4 * 16 * s.sk},       {s.ri, 4 * 16 * s.sk},
                                  {s.lrow, 4 * 16},     {s.act0, 40 * 16 * s.sact0}, {s.act1, 40 * 16 * s.sact1}};
    int64_t end = 0;
    for (const auto& r : regions) {
        CHECK(r[0] % 16 == 0);
        CHECK(r[0] >= end);  // in order, no overlap
        end = r[0] + r[1];
    }
    CHECK(end <= s.bytes);
    CHECK(s.sa >= 192);
    CHECK(s.suz >= 128 + 96);
    CHECK(s.suz >= 2 * 192);
    CHECK(s.sact0 == 6);
    bool global = true;
    CHECK(tile_rows(d, {132, 227 * 1024}, &global) == 16);
    CHECK(!global);
    const int32_t small = tile_rows(d, {132, s.bytes / 3}, &global);
    CHECK((small == 4 && !global));
    CHECK(tile_rows(d, {132, 100}, &global) == kMaxRows);
    CHECK(global);
    // Decode: one token per job, small batches spread over the SMs, large ones fill tiles.
    TileShape t = tile_shape(16, 132, 1, 1);
    CHECK((t.seqs == 1 && t.chunk == 1 && t.tiles == 1));
    t = tile_shape(16, 132, 4096, 1);
    CHECK((t.seqs == 16 && t.chunk == 1 && t.tiles == 256));
    t = tile_shape(16, 132, 200, 1);
    CHECK((t.seqs == 2 && t.tiles == 100));
    // Prefill: chunks of the longest job.
    t = tile_shape(16, 132, 1, 100);
    CHECK((t.seqs == 1 && t.chunk == 16 && t.tiles == 1));
    t = tile_shape(16, 2, 8, 3);
    CHECK((t.seqs == 4 && t.chunk == 3 && t.tiles == 2));
    MESSAGE("scratch regions aligned and disjoint (" << s.bytes << " bytes for 16 rows of the shipped widths)");
}

TEST_CASE("cuda: a run's segments are split into launches within their capacities") {
    const std::vector<int32_t> rows(3, 1);
    std::vector<Segment> segs(5);
    for (size_t i = 0; i < segs.size(); i++) segs[i] = {static_cast<int32_t>(i), rows.data(), 3, 0, false, Logits::all};
    const auto parts = split_launches(segs.data(), segs.size(), {4, 7, 100});
    REQUIRE(parts.size() == 3);
    CHECK((parts[0] == std::pair<size_t, size_t>{0, 2} && parts[1] == std::pair<size_t, size_t>{2, 4} &&
           parts[2] == std::pair<size_t, size_t>{4, 5}));
    CHECK(split_launches(segs.data(), segs.size(), {2, 100, 6}).size() == 3);
    CHECK_THROWS_AS(split_launches(segs.data(), segs.size(), {2, 2, 6}), Error);
    segs[1].logits = Logits::none;
    segs[2].logits = Logits::last;
    CHECK((logits_rows(segs[0]) == 3 && logits_rows(segs[1]) == 0 && logits_rows(segs[2]) == 1));
    // The plan of a run: the same launches with tile shapes and the head choice, valid for any run
    // of the same shape (tokens and logits rows per segment), whatever its slots, rows and positions.
    const StepPlan plan = plan_step(segs.data(), segs.size(), {4, 7, 100}, 16, 2, 150);
    REQUIRE(plan.launches.size() == 3);
    const LaunchPlan& l0 = plan.launches[0];
    CHECK((l0.begin == 0 && l0.end == 2 && l0.tokens == 6 && l0.logits_rows == 3 && l0.head));
    CHECK((l0.shape.seqs == 1 && l0.shape.chunk == 3 && l0.shape.tiles == 2));
    CHECK((plan.launches[2].logits_rows == 3 && plan.launches[2].tokens == 3));
    CHECK(!plan_step(segs.data(), 1, {4, 7, 100}, 16, 2, 64).launches[0].head);  // one head block: in the tiles
    std::vector<Segment> same = segs;
    for (Segment& g : same) {
        g.slot += 10;
        g.pos0 = 2;
        g.reset = true;
    }
    CHECK(plan_fits(plan, same.data(), same.size()));
    CHECK(!plan_fits(plan, same.data(), same.size() - 1));
    same[3].n = 2;
    CHECK(!plan_fits(plan, same.data(), same.size()));
    same[3].n = 3;
    same[0].logits = Logits::last;
    CHECK(!plan_fits(plan, same.data(), same.size()));
    MESSAGE(
        "5 segments of 3 tokens: launches of at most 7 tokens, 2 jobs or 6 logits rows; a too-big one refused; "
        "the plan fits runs of the same shape only");
}

TEST_CASE("cuda: a run's launches are planned once per shape and replanned when it changes") {
    const auto model = model_from(random_spec(small_config(), DType::q4_0, 7));
    HostModel hm;
    build_host_model(*model, &hm);
    const int32_t V = model->vocab_rows();
    // a decodes two sequences step after step (one shape); b runs a third sequence's prefill
    // between its steps, so each of its steps is planned afresh. Same sums in the same order
    // (one lane per team): the reused plan gives b's logits bit for bit.
    Runner a(hm, emulated(3)), b(hm, emulated(3));
    const std::vector<int32_t> p0 = {3, 17, 5}, p1 = {8}, other = {4, 9}, ids = {22, 0, 9, 11};
    const Segment prefill[2] = {{0, p0.data(), 3, 0, true, Logits::last}, {1, p1.data(), 1, 0, true, Logits::all}};
    a.run(prefill, 2);
    b.run(prefill, 2);
    bool same = true;
    for (int32_t step = 0; step < 3; step++) {
        const Segment decode[2] = {{0, &ids[static_cast<size_t>(step)], 1, 3 + step, false, Logits::last},
                                   {1, &ids[static_cast<size_t>(step) + 1], 1, 1 + step, false, Logits::last}};
        const Segment third{2, other.data(), 2, 0, true, Logits::all};
        a.run(decode, 2);
        b.run(&third, 1);
        b.run(decode, 2);
        for (size_t i = 0; i < 2; i++) {
            REQUIRE((a.logits(i) != nullptr && b.logits(i) != nullptr));
            same = same && std::memcmp(a.logits(i), b.logits(i), sizeof(float) * static_cast<size_t>(V)) == 0;
        }
    }
    CHECK(same);
    CHECK(a.plans_made() == 2);          // the prefill's, then one for every decode step
    CHECK(b.plans_made() == 1 + 2 * 3);  // every change of shape replans
    MESSAGE("3 decode steps of 2 sequences: " << a.plans_made() << " plans (prefill + decode) vs " << b.plans_made()
                                              << " with the shape changing between steps; the same logits bits");
}

TEST_CASE("cuda: the host model mirrors the loaded model") {
    const auto model = model_from(random_spec(small_config(), DType::q4_0, 5));
    HostModel hm;
    build_host_model(*model, &hm);
    Context ctx(*model);
    CHECK(static_cast<size_t>(hm.model.state_floats) * sizeof(float) == ctx.state_bytes());
    CHECK((hm.layers[0].conv_off == 0 && static_cast<size_t>(hm.layers[0].ssm_off) == StateLayout(model->config).conv));
    CHECK((hm.dims.hidden == 12 && hm.dims.inner == 14 && hm.dims.state == 4 && hm.dims.ffn == 7 &&
           hm.dims.experts == 3 && hm.dims.top_k == 2));
    CHECK(hm.layers.size() == 3);
    CHECK(hm.experts.size() == 4);
    CHECK(hm.layers[1].first_expert == 1);
    const auto* lo = static_cast<const uint8_t*>(model->embedding.data);
    CHECK((lo >= hm.span && lo < hm.span + hm.span_bytes));
    std::vector<uint8_t> copy(hm.span_bytes);
    const uint8_t* old = static_cast<const uint8_t*>(hm.layers[1].router.data);
    relocate_weights(&hm, copy.data());
    CHECK(static_cast<const uint8_t*>(hm.layers[1].router.data) == copy.data() + (old - hm.span));
}

TEST_CASE(
    "cuda: emulated kernels match Context and the reference forward (decode, prefill, batches, windows, every dtype)") {
    for (DType t : {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4, DType::q3_0, DType::q2_0}) {
        const auto model = model_from(random_spec(small_config(), t, 17));
        const int32_t V = model->vocab_rows();
        // One sequence token by token, well past max_seq_length 6: every step's logits; teams of 4.
        Context one = gpu_context(*model, emulated(1, 8, 96 * 1024, 4));
        Context ctx(*model);
        test::ReferenceContext reference(*model);
        const std::vector<int32_t> seq = {3, 17, 5, 22, 0, 9, 11, 4, 8, 8, 1};
        float worst = 0.0f, worst_ref = 0.0f;
        for (int32_t id : seq) {
            const std::vector<float> want = row(ctx.eval(id), V);
            const std::vector<float> got = row(one.eval(id), V);
            const std::vector<float>& truth = reference.eval(id);
            worst = worse(worst, max_abs_diff(got, want) / (1.0f + max_abs(want)));
            worst_ref = worse(worst_ref, max_abs_diff(got, truth) / (1.0f + max_abs(truth)));
        }
        CHECK_MESSAGE(worst <= bound(t), dtype_name(t) << " decode: " << worst);
        CHECK_MESSAGE(worst_ref <= reference_bound(t), dtype_name(t)
                                                           << " decode vs the reference forward: " << worst_ref);
        CHECK(one.position() == 6);
        // Prefill with a logits row per token, rows = 4 forces chunks of 4 carrying the state
        // between them; then the same again after reset().
        const int64_t four_rows = make_scratch({12, 14, 4, 7, 3, 2}, 4).bytes;
        Context pre = gpu_context(*model, emulated(1, 2, four_rows));
        const int32_t P = model->config.max_seq_length;
        std::vector<float> want;
        {
            Context fresh(*model);
            for (int32_t i = 0; i < P; i++) {
                const std::vector<float> r = row(fresh.eval(seq[static_cast<size_t>(i)]), V);
                want.insert(want.end(), r.begin(), r.end());
            }
        }
        for (int pass = 0; pass < 2; pass++) {
            const std::vector<float> got = row(pre.eval_all(seq.data(), P), V * P);
            CHECK_MESSAGE(max_abs_diff(got, want) / (1.0f + max_abs(want)) <= bound(t),
                          dtype_name(t) << " prefill pass " << pass);
            pre.reset();
        }
        // A prompt past the window: one slid window from zero state, as token by token.
        const std::vector<float> slid = row(pre.eval_tokens(seq.data(), static_cast<int32_t>(seq.size())), V);
        CHECK_MESSAGE(max_abs_diff(slid, row(ctx.logits(), V)) / (1.0f + max_abs(slid)) <= bound(t),
                      dtype_name(t) << " prompt past the window");
        // One team of 32 lanes, a warp as the device has it (slow here: a barrier per reduction).
        Context warp = gpu_context(*model, emulated(1, 32, 96 * 1024, 32));
        const std::vector<float> first4(want.begin(), want.begin() + 4 * V);
        CHECK_MESSAGE(
            max_abs_diff(row(warp.eval_all(seq.data(), 4), 4 * V), first4) / (1.0f + max_abs(first4)) <= bound(t),
            dtype_name(t) << " 32 lanes");
        // A batch: five sequences at different points, fed together (prefill, decode and slides in
        // one run), against five contexts.
        Batch batch(*model, make_cuda_backend(*model, emulated(5, 8, 96 * 1024, 4)));
        std::vector<Context> ctxs;
        for (int s = 0; s < 5; s++) ctxs.emplace_back(*model);
        std::mt19937 rng(static_cast<uint32_t>(t) + 1);
        float batch_worst = 0.0f;
        for (int round = 0; round < 4; round++) {
            std::vector<std::vector<int32_t>> ids(5);
            std::vector<Batch::Feed> feeds;
            for (int32_t s = 0; s < 5; s++) {
                const int32_t n = 1 + static_cast<int32_t>(rng() % (s == 0 ? 1 : 4));
                for (int32_t i = 0; i < n; i++) ids[static_cast<size_t>(s)].push_back(static_cast<int32_t>(rng() % 23));
                feeds.push_back({s, ids[static_cast<size_t>(s)].data(), n});
            }
            batch.run(feeds.data(), static_cast<int32_t>(feeds.size()));
            for (int32_t s = 0; s < 5; s++) {
                const auto& v = ids[static_cast<size_t>(s)];
                const std::vector<float> w =
                    row(ctxs[static_cast<size_t>(s)].eval_tokens(v.data(), static_cast<int32_t>(v.size())), V);
                batch_worst = worse(batch_worst, max_abs_diff(row(batch.logits(s), V), w) / (1.0f + max_abs(w)));
                CHECK(batch.position(s) == ctxs[static_cast<size_t>(s)].position());
            }
        }
        CHECK_MESSAGE(batch_worst <= bound(t), dtype_name(t) << " batch: " << batch_worst);
        MESSAGE(dtype_name(t) << ": max |logit diff| / (1 + max |logit|) vs Context: decode " << worst << ", batch "
                              << batch_worst << "; decode vs the reference forward " << worst_ref);
    }
}

TEST_CASE("cuda: emulated kernels at the shipped widths; thread counts and scratch placement agree") {
    for (DType t : {DType::f32, DType::q8_0, DType::nf4, DType::q3_0, DType::q2_0}) {  // nf4, q2: half blocks
        const auto model = model_from(random_spec(wide_config(), t, 29));
        const int32_t V = model->vocab_rows();
        const std::vector<int32_t> prompt = {5, 100, 42, 7, 199, 0, 13, 64, 3, 77, 150, 2, 9, 11, 180, 33, 21, 8};
        Context ctx(*model);
        std::vector<float> want;
        for (int32_t id : prompt) {
            const std::vector<float> r = row(ctx.eval(id), V);
            want.insert(want.end(), r.begin(), r.end());
        }
        std::vector<float> first;
        struct Run {
            int32_t threads, lanes;
            int64_t smem;
        };
        for (const Run& r : {Run{1, 1, 1 << 20}, Run{5, 1, 1 << 20}, Run{3, 1, 0}, Run{8, 4, 1 << 20}}) {
            Context b = gpu_context(*model, emulated(1, r.threads, r.smem, r.lanes));
            const int32_t n = static_cast<int32_t>(prompt.size());
            const std::vector<float> got = row(b.eval_all(prompt.data(), n), V * n);
            const float diff = max_abs_diff(got, want) / (1.0f + max_abs(want));
            CHECK_MESSAGE(diff <= bound(t), dtype_name(t)
                                                << " threads " << r.threads << " lanes " << r.lanes << ": " << diff);
            if (first.empty()) first = got;
            if (r.lanes == 1)  // one lane per team: the same sums in the same order, whatever the threads
                CHECK_MESSAGE(std::memcmp(first.data(), got.data(), 4 * first.size()) == 0,
                              dtype_name(t) << " threads " << r.threads << " smem " << r.smem);
            if (t == DType::f32) {  // identical greedy ids
                int same = 0;
                for (size_t p = 0; p < prompt.size(); p++)
                    same += argmax(got.data() + p * V, V) == argmax(want.data() + p * V, V);
                CHECK(same == static_cast<int>(prompt.size()));
            }
        }
    }
    MESSAGE(
        "18-token prefill of a hidden-96 model (fp32, q8, nf4, q3, q2): 1 and 5 threads, shared and global scratch "
        "give the same bits; teams of 4 lanes within the bound");
}

TEST_CASE("cuda: a rows16 model goes up as row_major: the same bits as its row_major twin") {
    for (DType dtype : {DType::f32, DType::f16, DType::q4_0, DType::q8_0}) {
        const ModelSpec spec = random_spec(wide_config(), dtype, 31);
        ModelSpec spec16 = spec;
        choose_layouts(spec16, Layout::rows16);
        const auto plain = model_from(spec), inter = model_from(spec16);
        HostModel hm;
        build_host_model(*inter, &hm);
        const std::vector<uint8_t> up = row_major_span(&hm);
        REQUIRE(up.size() == hm.span_bytes);
        HostModel hp;
        build_host_model(*plain, &hp);
        CHECK(std::memcmp(up.data(), hp.span, hp.span_bytes) == 0);  // the row_major file's bytes exactly
        HostModel none;
        build_host_model(*plain, &none);
        CHECK(row_major_span(&none).empty());  // nothing to reorder: the mapping goes up as it is
        const int32_t V = plain->vocab_rows();
        const std::vector<int32_t> prompt = {5, 100, 42, 7, 199, 0, 13, 64};
        Context a = gpu_context(*plain, emulated(1, 4, 1 << 20, 1)),
                b = gpu_context(*inter, emulated(1, 4, 1 << 20, 1));
        CHECK(row(a.eval_all(prompt.data(), 8), V * 8) == row(b.eval_all(prompt.data(), 8), V * 8));
        MESSAGE("rows16 " << dtype_name(dtype)
                          << " model: the uploaded span equals the row_major file's, and 8 emulated "
                             "positions give its logits bit for bit");
    }
}

TEST_CASE("cuda: state save and restore through the backend; bad input and the no-device error") {
    const auto model = model_from(random_spec(small_config(), DType::f32, 3));
    const int32_t V = model->vocab_rows();
    // The saved state is the same bytes on both backends, and restores across them.
    Context gpu = gpu_context(*model, emulated(1));
    Context cpu(*model);
    const std::vector<int32_t> ids = {4, 9, 1};
    gpu.eval_tokens(ids.data(), 3);
    cpu.eval_tokens(ids.data(), 3);
    std::vector<uint8_t> a(gpu.saved_size()), b(cpu.saved_size());
    REQUIRE(a.size() == b.size());
    gpu.save(a.data());
    cpu.save(b.data());
    Context back(*model);
    back.restore(a.data(), a.size());
    Context there = gpu_context(*model, emulated(1));
    there.restore(b.data(), b.size());
    const std::vector<float> want = row(cpu.eval(7), V);
    CHECK(max_abs_diff(row(back.eval(7), V), want) / (1.0f + max_abs(want)) <= bound(DType::f32));
    CHECK(max_abs_diff(row(there.eval(7), V), want) / (1.0f + max_abs(want)) <= bound(DType::f32));
    // Bad input is refused before anything runs.
    Batch b2(*model, make_cuda_backend(*model, emulated(2)));
    const int32_t bad = 150, good = 1;
    const Batch::Feed bad_feed{0, &bad, 1}, out_of_range{2, &good, 1};
    CHECK_THROWS_WITH_AS(b2.run(&bad_feed, 1), doctest::Contains("not in the model's vocabulary"), Error);
    CHECK_THROWS_WITH_AS(b2.run(&out_of_range, 1), doctest::Contains("out of range"), Error);
    CHECK(b2.position(0) == 0);  // nothing ran
    // Every dtype a .itl file holds is read (q3 and q2 in the test above); a weight of a dtype the
    // kernels do not know (a value a later format could add) is refused before anything is uploaded.
    HostModel unknown;
    build_host_model(*model, &unknown);
    unknown.layers[1].router.dtype = static_cast<DType>(7);
    CHECK_THROWS_WITH_AS(Runner(unknown, emulated(1)), doctest::Contains("the CUDA kernels read"), Error);
    std::string why;
    if (!available(&why) && !emulated_by_environment()) {
        CHECK(!why.empty());
        CHECK_THROWS_WITH_AS(make_cuda_backend(*model, BackendOptions{}), ("no CUDA device: " + why).c_str(),
                             DeviceUnavailable);
        MESSAGE("no CUDA device here: " << why);
    }
    MESSAGE("saved states equal on the CPU and the emulated GPU and restore across them; bad feeds refused");
}
