// The CUDA backend on a GPU against the CPU reference (runtime/context.cpp) on the same inputs:
// logits within a bound per dtype, identical greedy ids in FP32, and the device against the same
// kernel code run on host threads. Without a device it prints "no CUDA device: <why>" and exits
// 77, which meson counts as a skip.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "format/itl_file.h"
#include "format/tensor_names.h"
#include "kernels_cuda/runner.h"
#include "runtime/batch.h"
#include "runtime/builtin_model.h"
#include "runtime/context.h"
#include "runtime/cuda_backend.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "tests/model_fixtures.h"

using namespace itera;

namespace {

using test::model_from;
using test::random_spec;

// The shipped model's widths, a 3000-word vocabulary, max_seq_length 24 (so windows slide soon).
ModelConfig shipped_like() { return test::shipped_widths(3000, 24); }

// Relative to the logits' size. The device differs from the CPU by summation order, FMA
// contraction and expf/erff (2 ulp). Block formats quantize each product's input to int8: where a
// value lies within that rounding of a q8 boundary, device and CPU round it apart and the step
// moves by a q8 step of that activation, which the recurrent state carries on (and which can
// change an expert's top-k). On an H100 most rows stayed within 1e-6 and the worst moved 1.1e-2;
// the CPU's own scalar, AVX2 and AVX-512 paths part the same way (docs/cuda.md). A wrong scale,
// nibble order or race moves logits by far more than 5e-2.
float bound(DType t) { return t == DType::f32 || t == DType::f16 ? 1e-4f : 5e-2f; }

using test::worse;

// NaN when any difference is NaN (std::max would skip it), so a NaN fails every bound.
float rel_diff(const float* a, const float* b, int32_t n) {
    float d = 0.0f, m = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        const float e = std::fabs(a[i] - b[i]);
        if (!(e <= d)) d = e;
        m = std::max(m, std::fabs(b[i]));
    }
    return d / (1.0f + m);
}

// The worst row of a comparison, and how many rows stayed within FP32 rounding (1e-4).
struct Tally {
    float worst = 0.0f;
    int rows = 0, close = 0;
    void add(float d) {
        worst = worse(worst, d);
        rows++;
        close += d <= 1e-4f;
    }
    std::string str() const {
        char b[96];
        std::snprintf(b, sizeof b, "%.3g (%d/%d rows within 1e-4)", worst, close, rows);
        return b;
    }
};

}  // namespace

TEST_CASE("device logits match the CPU per dtype: decode past the window, prefill, a batch of 64") {
    for (DType t : {DType::f32, DType::f16, DType::q8_0, DType::q4_0, DType::nf4}) {
        const auto model = model_from(random_spec(shipped_like(), t, 41));
        const int32_t V = model->vocab_rows();
        std::mt19937 rng(7);
        std::vector<int32_t> ids(60);
        for (int32_t& id : ids) id = static_cast<int32_t>(rng() % 3000);
        // Decode, 60 tokens (windows of 24 slide from token 25 on).
        BackendOptions on_gpu;
        on_gpu.device = Device::cuda;
        Context gpu(*model, make_cuda_backend(*model, on_gpu));
        Context cpu(*model);
        Tally decode;
        for (int32_t id : ids) {
            const float* want = cpu.eval(id);
            decode.add(rel_diff(gpu.eval(id), want, V));
        }
        CHECK_MESSAGE(decode.worst <= bound(t), dtype_name(t));
        // Prefill of 24 tokens with every position's logits, against the CPU and the emulation.
        cuda::RunnerOptions emu;
        emu.emulate = true;
        Context host(*model, make_cuda_backend(*model, emu));
        Context pre(*model, make_cuda_backend(*model, on_gpu));
        Context fresh(*model);
        const int32_t P = model->config.max_seq_length;
        const float* pre_all = pre.eval_all(ids.data(), P);
        const float* host_all = host.eval_all(ids.data(), P);
        Tally prefill, vs_host;
        for (int32_t p = 0; p < P; p++) {
            const float* want = fresh.eval(ids[static_cast<size_t>(p)]);
            prefill.add(rel_diff(pre_all + static_cast<size_t>(p) * V, want, V));
            vs_host.add(rel_diff(pre_all + static_cast<size_t>(p) * V, host_all + static_cast<size_t>(p) * V, V));
        }
        CHECK_MESSAGE(prefill.worst <= bound(t), dtype_name(t));
        CHECK_MESSAGE(vs_host.worst <= bound(t), dtype_name(t));
        // 64 sequences, three rounds of 1..5 tokens each.
        BackendOptions o = on_gpu;
        o.slots = 64;
        Batch batch(*model, make_cuda_backend(*model, o));
        std::vector<Context> ctxs;
        for (int s = 0; s < 64; s++) ctxs.emplace_back(*model);
        Tally batched;
        for (int round = 0; round < 3; round++) {
            std::vector<std::vector<int32_t>> feed_ids(64);
            std::vector<Batch::Feed> feeds;
            for (int32_t s = 0; s < 64; s++) {
                auto& f = feed_ids[static_cast<size_t>(s)];
                for (uint32_t i = 0, n = 1 + rng() % 5; i < n; i++) f.push_back(static_cast<int32_t>(rng() % 3000));
                feeds.push_back({s, f.data(), static_cast<int32_t>(f.size())});
            }
            batch.run(feeds.data(), static_cast<int32_t>(feeds.size()));
            for (int32_t s = 0; s < 64; s++) {
                const auto& f = feed_ids[static_cast<size_t>(s)];
                const float* want = ctxs[static_cast<size_t>(s)].eval_tokens(f.data(), static_cast<int32_t>(f.size()));
                batched.add(rel_diff(batch.logits(s), want, V));
            }
        }
        CHECK_MESSAGE(batched.worst <= bound(t), dtype_name(t));
        std::printf(
            "%-5s max |d logit| / (1 + max |logit|): decode %s, prefill %s, batch-64 %s, device vs host "
            "emulation %s (bound %.0e)\n",
            std::string(dtype_name(t)).c_str(), decode.str().c_str(), prefill.str().c_str(), batched.str().c_str(),
            vs_host.str().c_str(), bound(t));
    }
}

TEST_CASE("built-in model, FP32: 150 greedy tokens identical to the CPU, graphs on and off") {
    const auto model = load_model(ItlFile::from_memory(itera_builtin_model, itera_builtin_model_size));
    const int32_t V = model->vocab_rows();
    const std::vector<int32_t> prompt = model->tokenizer.encode("and god said");
    for (bool graphs : {true, false}) {
        BackendOptions o;
        o.device = Device::cuda;
        o.cuda_graphs = graphs;
        Context gpu(*model, make_cuda_backend(*model, o));
        Context cpu(*model);
        const float* c = cpu.eval_tokens(prompt.data(), static_cast<int32_t>(prompt.size()));
        const float* g = gpu.eval_tokens(prompt.data(), static_cast<int32_t>(prompt.size()));
        int same = 0;
        float worst = 0.0f;
        for (int i = 0; i < 150; i++) {  // past max_seq_length 128
            worst = worse(worst, rel_diff(g, c, V));
            const int32_t a = model->id_of(argmax(g, V)), b = model->id_of(argmax(c, V));
            same += a == b;
            g = gpu.eval(b);
            c = cpu.eval(b);
        }
        CHECK(same == 150);
        CHECK(worst <= bound(DType::f32));
        std::printf("built-in model, graphs %s: %d/150 greedy ids equal, max |d logit| / (1 + max |logit|) %.3g\n",
                    graphs ? "on" : "off", same, worst);
    }
}

int main(int argc, char** argv) {
    std::string why;
    if (!cuda::available(&why)) {
        std::printf("no CUDA device: %s\n", why.c_str());
        return 77;
    }
    doctest::Context context(argc, argv);
    return context.run();
}
