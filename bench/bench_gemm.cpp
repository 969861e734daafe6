// The batched products (kernels_cpu/gemm.h) on the Itera-Lite shapes: gemm_native against the
// oneDNN provider (kernels_cpu/onednn_gemm.h), single thread, for fp32, fp16, q8_0 and q4_0 weights at
// batch 1, 8, 64 and 128. Each time is the median over repeats of a timed loop of calls (about
// 50 us); the table is markdown, for docs/bench.md.
//
// With --model FILE.itl it also measures the error of both paths on the model's real block-format
// weights (q8_0, q4_0, nf4, q3_0, q2_0) and real activations: the model reads a text (--text FILE,
// else seeded random tokens) token by token, the input rows of every such product are kept, and
// each path's product is compared with the exact one (dequantized weight, FP32 input, double sums);
// for the LM head also the KL divergence of the softmax and the top-1 agreement.
//
// Usage: bench_gemm [--repeats N] [--model FILE.itl [--text FILE] [--tokens N]]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/median_ns.h"
#include "common/error.h"
#include "common/file_io.h"
#include "format/dtype.h"
#include "format/quant_blocks.h"
#include "kernels_cpu/gemm.h"
#include "kernels_cpu/gemm_provider.h"
#include "kernels_cpu/onednn_gemm.h"
#include "kernels_cpu/quant_ops.h"
#include "kernels_cpu/ref_ops.h"
#include "runtime/context.h"
#include "runtime/model.h"

using namespace itera;

namespace {

volatile float g_sink;

using bench::median_ns;

std::vector<uint8_t> make_weight(DType dtype, const std::vector<float>& w, int32_t rows, int32_t cols) {
    const size_t row_bytes = dtype_row_bytes(dtype, cols);
    std::vector<uint8_t> bytes(row_bytes * static_cast<size_t>(rows));
    for (int32_t r = 0; r < rows; r++)
        quantize_row(dtype, w.data() + static_cast<size_t>(r) * cols, cols, bytes.data() + r * row_bytes);
    return bytes;
}

struct Shape {
    const char* model;
    const char* name;
    int32_t rows, cols;
};

void timing(int repeats) {
    const Shape shapes[] = {
        {"micro", "in_proj", 256, 64}, {"micro", "delta_proj", 128, 128}, {"micro", "out_proj", 64, 128},
        {"micro", "ffn.w1", 128, 64},  {"micro", "ffn.w2", 64, 128},      {"micro", "lm_head", 2000, 64},
        {"micro", "lm_head", 184, 64}, {"kjv", "in_proj", 384, 96},       {"kjv", "delta_proj", 192, 192},
        {"kjv", "out_proj", 96, 192},  {"kjv", "ffn.w1", 128, 96},        {"kjv", "ffn.w2", 96, 128},
        {"kjv", "lm_head", 3000, 96},
    };
    const int32_t batches[] = {1, 8, 64, 128};
    std::printf(
        "%s; native kernel path %s; median of %d repeats.\n"
        "GFLOP/s = 2 * batch * rows * cols / time (time = median of timed loops of calls); first call = the\n"
        "oneDNN provider's first call of the weight at batch 1 (primitive, weight copy, oneDNN's own set-up)\n\n",
        onednn_info().c_str(), kernel_path_name(), repeats);
    std::printf("| model | weight | rows x cols | dtype");
    for (int32_t b : batches) std::printf(" | b=%d native | b=%d onednn", b, b);
    std::printf(" | first call us | oneDNN implementation |\n|---|---|---|---");
    for (size_t i = 0; i < 2 * std::size(batches) + 2; i++) std::printf("|---");
    std::printf("|\n");
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (const Shape& s : shapes) {
        std::vector<float> w(static_cast<size_t>(s.rows) * s.cols), x(static_cast<size_t>(128) * s.cols);
        for (float& f : w) f = dist(rng);
        for (float& f : x) f = dist(rng);
        std::vector<float> y(static_cast<size_t>(128) * s.rows);
        for (DType dtype : {DType::f32, DType::f16, DType::q8_0, DType::q4_0}) {
            const std::vector<uint8_t> bytes = make_weight(dtype, w, s.rows, s.cols);
            const Weight wt = {dtype, s.rows, s.cols, bytes.data()};
            OnednnGemm onednn;  // fresh: its first call makes the primitive and the weight copy
            const auto t0 = std::chrono::steady_clock::now();
            onednn.run(wt, x.data(), 1, y.data());
            const double first_us =
                std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
            std::printf("| %s | %s | %dx%d | %s", s.model, s.name, s.rows, s.cols,
                        std::string(dtype_name(dtype)).c_str());
            for (int32_t batch : batches) {
                const double flop = 2.0 * batch * s.rows * s.cols;
                const double t_native = median_ns(
                    [&] {
                        gemm_native(wt, x.data(), batch, y.data());
                        g_sink = y[0];
                    },
                    repeats);
                const double t_onednn = median_ns(
                    [&] {
                        onednn.run(wt, x.data(), batch, y.data());
                        g_sink = y[0];
                    },
                    repeats);
                // the faster one in bold: what --kernels auto would pick, timing noise aside
                const char* bn = t_native <= t_onednn ? "**" : "";
                const char* bo = t_native <= t_onednn ? "" : "**";
                std::printf(" | %s%.1f%s | %s%.1f%s", bn, flop / t_native, bn, bo, flop / t_onednn, bo);
            }
            std::printf(" | %.0f | %s |\n", first_us, onednn.implementation(wt, 128).c_str());
        }
    }
}

// ---- accuracy of the two paths for block formats on a real model ----

// Keeps up to `limit` input rows of every block-format product.
struct Capture : ActivationObserver {
    size_t limit = 128;
    std::map<const void*, std::pair<Weight, std::vector<float>>> inputs;
    void observe(const Weight& w, const float* x) override {
        if (!is_quantized(w.dtype)) return;
        auto& [weight, rows] = inputs[w.data];
        weight = w;
        if (rows.size() < limit * static_cast<size_t>(w.cols)) rows.insert(rows.end(), x, x + w.cols);
    }
};

std::map<const void*, std::string> weight_names(const Model& m) {
    std::map<const void*, std::string> names;
    names[m.lm_head.data] = "lm_head";
    for (size_t l = 0; l < m.layers.size(); l++) {
        const LayerWeights& L = m.layers[l];
        const std::string p = "layers." + std::to_string(l) + ".";
        names[L.ssm.in_proj.data] = p + "in_proj";
        names[L.ssm.b.data] = p + "B";
        names[L.ssm.delta_w.data] = p + "delta_proj";
        names[L.ssm.out_proj.data] = p + "out_proj";
        names[L.router.data] = p + "router";
        for (size_t e = 0; e < L.experts.size(); e++) {
            const std::string q = L.experts.size() == 1 ? p + "ffn." : p + "expert" + std::to_string(e) + ".";
            names[L.experts[e].w1.data] = q + "w1";
            names[L.experts[e].w2.data] = q + "w2";
        }
    }
    return names;
}

struct Errors {
    double rel_rms = 0.0, rel_max = 0.0, kld = 0.0, top1 = 0.0;
};

// y [T, rows] against exact [T, rows]; KL(softmax(exact) || softmax(y)) averaged over the T rows.
Errors compare(const std::vector<double>& exact, const std::vector<float>& y, int32_t T, int32_t rows) {
    Errors e;
    double sq = 0.0, sq_ref = 0.0, max_dy = 0.0, max_ref = 0.0;
    for (size_t i = 0; i < exact.size(); i++) {
        const double d = y[i] - exact[i];
        sq += d * d;
        sq_ref += exact[i] * exact[i];
        max_dy = std::max(max_dy, std::fabs(d));
        max_ref = std::max(max_ref, std::fabs(exact[i]));
    }
    e.rel_rms = std::sqrt(sq / sq_ref);
    e.rel_max = max_dy / max_ref;
    for (int32_t t = 0; t < T; t++) {
        const double* p = exact.data() + static_cast<size_t>(t) * rows;
        const float* q = y.data() + static_cast<size_t>(t) * rows;
        const double mp = *std::max_element(p, p + rows);
        const double mq = *std::max_element(q, q + rows);
        double zp = 0.0, zq = 0.0;
        for (int32_t r = 0; r < rows; r++) {
            zp += std::exp(p[r] - mp);
            zq += std::exp(q[r] - mq);
        }
        double kl = 0.0;
        for (int32_t r = 0; r < rows; r++) {
            const double lp = p[r] - mp - std::log(zp), lq = q[r] - mq - std::log(zq);
            kl += std::exp(lp) * (lp - lq);
        }
        e.kld += kl / T;
        e.top1 += (std::max_element(p, p + rows) - p == std::max_element(q, q + rows) - q) ? 1.0 / T : 0.0;
    }
    return e;
}

void accuracy(const std::string& model_path, const std::string& text_path, int32_t n_tokens) {
    const std::unique_ptr<Model> model = load_model_file(model_path);
    std::vector<int32_t> tokens;
    if (!text_path.empty()) {
        if (!model->has_tokenizer) throw Error("--text needs a model with a tokenizer");
        tokens = model->tokenizer.encode(read_file_text(text_path, 256u << 20));
    } else {
        std::mt19937 rng(7);
        for (int32_t i = 0; i < n_tokens; i++)
            tokens.push_back(model->id_of(static_cast<int32_t>(rng() % model->vocab_rows())));
    }
    tokens.resize(
        std::min<size_t>(tokens.size(), static_cast<size_t>(std::min(n_tokens, model->config.max_seq_length))));
    if (tokens.empty()) throw Error("no tokens to run");

    Capture capture;
    Context ctx(*model);
    ctx.set_observer(&capture);
    for (int32_t t : tokens) ctx.eval(t, true);
    const std::map<const void*, std::string> names = weight_names(*model);

    std::printf(
        "\n%s, %zu tokens (%s): error of each path (block formats) against the exact product of the stored\n"
        "weights (dequantized, FP32 input, double sums). rel RMS = ||dy|| / ||y||, rel max = max |dy| / max |y|;\n"
        "lm_head: KL(softmax(exact) || softmax(path)) in nats, mean over tokens, and top-1 agreement.\n\n",
        model_path.c_str(), tokens.size(), text_path.empty() ? "seeded random tokens" : text_path.c_str());
    std::printf(
        "| weight | dtype rows x cols | native rel RMS | onednn rel RMS | native rel max | onednn rel max | "
        "native KLD | onednn KLD | top-1 native / onednn |\n|---|---|---|---|---|---|---|---|---|\n");
    OnednnGemm onednn;
    for (const auto& [ptr, captured] : capture.inputs) {
        const Weight& w = captured.first;
        const std::vector<float>& x = captured.second;
        const int32_t T = static_cast<int32_t>(x.size() / static_cast<size_t>(w.cols));
        std::vector<float> wf(static_cast<size_t>(w.rows) * w.cols);
        for (int32_t r = 0; r < w.rows; r++) ref::load_row(w, r, wf.data() + static_cast<size_t>(r) * w.cols);
        std::vector<double> exact(static_cast<size_t>(T) * w.rows);
        for (int32_t t = 0; t < T; t++)
            for (int32_t r = 0; r < w.rows; r++) {
                double s = 0.0;
                for (int32_t c = 0; c < w.cols; c++)
                    s += static_cast<double>(wf[static_cast<size_t>(r) * w.cols + c]) *
                         x[static_cast<size_t>(t) * w.cols + c];
                exact[static_cast<size_t>(t) * w.rows + r] = s;
            }
        std::vector<float> y_native(exact.size()), y_onednn(exact.size());
        gemm_native(w, x.data(), T, y_native.data());
        onednn.run(w, x.data(), T, y_onednn.data());
        const Errors n = compare(exact, y_native, T, w.rows), o = compare(exact, y_onednn, T, w.rows);
        const auto it = names.find(ptr);
        const std::string name = it == names.end() ? "?" : it->second;
        std::printf("| %s | %s %dx%d | %.2e | %.2e | %.2e | %.2e |", name.c_str(),
                    std::string(dtype_name(w.dtype)).c_str(), w.rows, w.cols, n.rel_rms, o.rel_rms, n.rel_max,
                    o.rel_max);
        if (name == "lm_head")
            std::printf(" %.2e | %.2e | %.1f%% / %.1f%% |\n", n.kld, o.kld, 100.0 * n.top1, 100.0 * o.top1);
        else
            std::printf(" | | |\n");
    }
    std::printf("\noneDNN weight copies: %zu bytes\n", onednn.cached_bytes());
}

int run(int argc, char** argv) {
    int repeats = 21;
    int32_t n_tokens = 128;
    std::string model_path, text_path;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        if (i + 1 >= argc) throw Error("usage: bench_gemm [--repeats N] [--model FILE.itl [--text FILE] [--tokens N]]");
        if (a == "--repeats")
            repeats = std::max(1, std::atoi(argv[++i]));
        else if (a == "--model")
            model_path = argv[++i];
        else if (a == "--text")
            text_path = argv[++i];
        else if (a == "--tokens")
            n_tokens = std::max(1, std::atoi(argv[++i]));
        else
            throw Error("unknown option " + a);
    }
    if (model_path.empty()) {
        timing(repeats);
    } else {
        accuracy(model_path, text_path, n_tokens);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
