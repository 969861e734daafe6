// itera-bench: how fast a model loads, prefills and decodes on this CPU.
//
//   load_ms         open + verify (checksum) + view the weights, median of --repeat loads
//   decode_tok_s    batch 1, one thread: greedy decode (eval + argmax) from a 1-token prompt;
//                   1 / the median time of one token (every token is timed)
//   sample_us       one draw of itera-run's default sampler (temperature 0.8, top-k 40, top-p
//                   0.95) from the model's logits, median of 1000: what sampled generation adds
//                   to a decode step
//   prefill_ms_128  a 128-token prompt to the last position's logits ("a sample"), one thread
//   batch_tok_s     --batch sequences decoded in lockstep with --threads threads (median step)
//   peak_rss_kb     the process's peak resident memory (getrusage)
// GFLOP/s count the multiply-adds of the matrix products a token needs (2 FLOP each; the MoE
// counts its top_k experts), against one core's FP32 FMA peak on the widest vectors the kernels
// use, measured at start (bench/fma_peak.h; override with --peak-gflops).
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench/fma_peak.h"
#include "common/cli_parse.h"
#include "common/error.h"
#include "kernels_cpu/dense_ops.h"
#include "runtime/batch.h"
#include "runtime/builtin_model.h"
#include "runtime/context.h"
#include "runtime/devices.h"
#include "runtime/model.h"
#include "runtime/sampler.h"
#include "version.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
    std::string model_path, device = "cpu", kernels = "native";
    int32_t threads = 1, batch = 64, tokens = 512, repeat = 7, prompt = 128;
    double peak_gflops = 0;
    bool json = false;
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

std::unique_ptr<itera::Model> load(const Args& args) {
    auto model = args.model_path.empty()
                     ? itera::load_model(itera::ItlFile::from_memory(itera_builtin_model, itera_builtin_model_size))
                     : itera::load_model_file(args.model_path);
    model->gemm = std::make_shared<itera::GemmDispatch>(itera::parse_gemm_provider(args.kernels));
    return model;
}

// Multiply-adds of the matrix products for one token (the head included).
double macs_per_token(const itera::ModelConfig& c) {
    double macs = static_cast<double>(c.vocab_size) * c.hidden;
    for (const itera::LayerConfig& l : c.layers) {
        const double Di = l.inner, N = l.state, H = c.hidden;
        macs += 2 * Di * H + Di * Di + N * Di + Di * N + H * Di + Di * (l.conv_kernel);
        if (l.kind == itera::ChannelKind::none || l.ffn_widths.empty()) continue;
        double width = 0;
        for (int32_t w : l.ffn_widths) width += w;
        width /= static_cast<double>(l.ffn_widths.size());
        const double experts = l.kind == itera::ChannelKind::moe ? l.top_k : 1;
        macs += experts * 2 * width * H;
        if (l.kind == itera::ChannelKind::moe) macs += static_cast<double>(l.ffn_widths.size()) * H;
    }
    return macs;
}

// Deterministic prompt ids the model knows (spread over its vocabulary rows).
std::vector<int32_t> prompt_ids(const itera::Model& m, int32_t n) {
    std::vector<int32_t> ids;
    uint32_t state = 12345;
    for (int32_t i = 0; i < n; i++) {
        state = state * 1664525u + 1013904223u;
        ids.push_back(m.id_of(static_cast<int32_t>((state >> 8) % static_cast<uint32_t>(m.vocab_rows()))));
    }
    return ids;
}

// Seconds per decode step (median of `steps`) of sequences 0 .. n-1 of `batch`; a sequence starts
// over before it would reach max_seq_length, so no step slides its window.
double median_step_seconds(itera::Batch& batch, int32_t n, const itera::Model& m, int32_t steps) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    std::vector<itera::Batch::Feed> feeds(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; i++) feeds[static_cast<size_t>(i)] = {i, &ids[static_cast<size_t>(i)], 1};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    std::vector<double> times;
    const int32_t warmup = 3;
    for (int32_t i = 0; i < n; i++) batch.reset(i);
    for (int32_t s = 0; s < warmup + steps; s++) {
        if (batch.position(0) + 1 >= m.config.max_seq_length)
            for (int32_t i = 0; i < n; i++) batch.reset(i);
        for (int32_t& id : ids) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            id = m.id_of(static_cast<int32_t>((seed >> 33) % static_cast<uint64_t>(m.vocab_rows())));
        }
        const auto t0 = Clock::now();
        batch.run(feeds.data(), n);
        if (s >= warmup) times.push_back(seconds_since(t0));
    }
    return median(times);
}

// --device cuda: decode latency at batch 1 (logits copied to the host, with and without CUDA
// graphs) and throughput at batch 1 .. 4096 (logits left on the device), through the library's
// backend interface (runtime/devices.h); median step times (docs/cuda.md).
int cuda_report(const Args& args, const itera::Model& m) {
    const int32_t steps = std::min(args.tokens, 100);
    itera::BackendOptions o;
    o.device = itera::Device::cuda;
    itera::Batch one(m, itera::make_backend(m, o));
    const std::string gpu = one.backend().name();
    const double latency_us = 1e6 * median_step_seconds(one, 1, m, steps);
    o.cuda_graphs = false;
    itera::Batch plain(m, itera::make_backend(m, o));
    const double latency_us_no_graph = 1e6 * median_step_seconds(plain, 1, m, steps);
    struct Point {
        int32_t batch;
        double ms_per_step, tok_s;
    };
    std::vector<Point> points;
    o.cuda_graphs = true;
    o.logits_on_host = false;
    o.slots = 4096;
    itera::Batch wide(m, itera::make_backend(m, o));
    for (int32_t n = 1; n <= 4096; n *= 4) {
        const double s = median_step_seconds(wide, n, m, steps);
        points.push_back({n, 1e3 * s, n / s});
    }
    const char* name = args.model_path.empty() ? "builtin" : args.model_path.c_str();
    if (args.json) {
        std::printf(
            "{\"model\": \"%s\", \"device\": \"cuda\", \"gpu\": \"%s\", \"latency_us_batch1\": %.2f, "
            "\"latency_us_batch1_no_graph\": %.2f, \"throughput\": [",
            name, gpu.c_str(), latency_us, latency_us_no_graph);
        for (size_t i = 0; i < points.size(); i++)
            std::printf("%s{\"batch\": %d, \"ms_per_step\": %.4f, \"tok_s\": %.1f}", i ? ", " : "", points[i].batch,
                        points[i].ms_per_step, points[i].tok_s);
        std::printf("]}\n");
        return 0;
    }
    std::printf("model          %s on %s\n", name, gpu.c_str());
    std::printf(
        "latency        %.1f us per token (batch 1, CUDA graph, logits copied to the host; %.1f us with plain "
        "launches)\n",
        latency_us, latency_us_no_graph);
    for (const Point& p : points)
        std::printf("batch %-8d %.3f ms per step, %.0f tok/s (logits left on the device)\n", p.batch, p.ms_per_step,
                    p.tok_s);
    return 0;
}

int run(int argc, char** argv) {
    Args args;
    CLI::App app{"itera-bench: load, prefill and decode speed of an Itera model (.itl)"};
    app.set_version_flag("--version", "itera-bench " ITERA_VERSION);
    app.add_option("-m,--model", args.model_path, "model file (.itl); default: the built-in model")
        ->check(itera::non_empty());
    app.add_option("-t,--threads", args.threads, "threads for the batch measurement")->check(CLI::Range(1, 256));
    app.add_option("-b,--batch", args.batch, "sequences decoded in lockstep for batch_tok_s")
        ->check(CLI::Range(1, 65536));
    app.add_option("-n,--tokens", args.tokens, "tokens decoded per measurement")->check(CLI::Range(1, 1 << 24));
    app.add_option("--prompt", args.prompt, "prompt length of the prefill measurement")->check(CLI::Range(1, 1 << 16));
    app.add_option("-r,--repeat", args.repeat, "repetitions; medians are reported")->check(CLI::Range(1, 1000));
    app.add_option("--peak-gflops", args.peak_gflops, "one core's FMA peak, GFLOP/s (default: measured at start)")
        ->check(itera::number_in(0.001, 1e6));
    app.add_option("--kernels", args.kernels, "products over many rows: native, onednn or auto (the faster per shape)")
        ->check(CLI::IsMember({"native", "onednn", "auto"}));
    app.add_flag("--json", args.json, "print one JSON object");
    app.add_option("--device", args.device,
                   "cpu (default) or cuda: GPU latency at batch 1 and throughput at batch 1..4096")
        ->check(CLI::IsMember({"cpu", "cuda"}));
    if (auto status = itera::parse_command_line(app, argc, argv, "itera-bench")) return *status;

    itera::kernel_path();
    std::vector<double> load_s;
    std::unique_ptr<itera::Model> model;
    for (int32_t r = 0; r < args.repeat; r++) {
        const auto t0 = Clock::now();
        model = load(args);
        load_s.push_back(seconds_since(t0));
    }
    const itera::Model& m = *model;
    if (args.device == "cuda") return cuda_report(args, m);
    const int32_t V = m.vocab_rows(), P = m.config.max_seq_length;

    // Decode: batch 1, one thread.
    itera::Context ctx(m);
    std::vector<double> decode_tok_s;
    const std::vector<int32_t> ids = prompt_ids(m, std::max(args.prompt, 1));
    // Each token is timed on its own and the median taken: on a shared machine a time slice lost
    // to another process then spoils a few samples, not the result.
    for (int32_t r = 0; r < args.repeat; r++) {
        ctx.reset();
        int32_t token = ids[0];
        for (int32_t i = 0; i < args.tokens; i++) {
            if (ctx.position() == P) ctx.reset();  // stay inside the window: the recurrent cost
            const auto t0 = Clock::now();
            token = m.id_of(itera::argmax(ctx.eval(token), V));
            decode_tok_s.push_back(1.0 / seconds_since(t0));
        }
    }

    // Sampling: the last decoded logits, drawn from many times.
    std::vector<double> sample_s;
    itera::Sampler sampler(itera::SamplerParams{});
    int64_t drawn = 0;
    for (int32_t i = 0; i < 1000; i++) {
        const auto t0 = Clock::now();
        drawn += sampler.sample(ctx.logits(), V);
        sample_s.push_back(seconds_since(t0));
    }
    if (drawn < 0) return 1;  // keeps the draws

    // Prefill: a prompt of --prompt tokens (at most max_seq_length) to its last logits.
    const int32_t prompt = std::min(args.prompt, P);
    std::vector<double> prefill_s;
    for (int32_t r = 0; r < std::max(args.repeat, 20); r++) {
        ctx.reset();
        const auto t0 = Clock::now();
        ctx.eval_tokens(ids.data(), prompt, true);
        prefill_s.push_back(seconds_since(t0));
    }

    // Batch: --batch sequences in lockstep.
    itera::Batch batch(m, args.batch, args.threads);
    std::vector<double> batch_tok_s;
    std::vector<int32_t> tokens(static_cast<size_t>(args.batch));
    const int32_t steps = std::max(1, std::min(args.tokens, P));
    for (int32_t r = 0; r < args.repeat; r++) {
        for (int32_t i = 0; i < args.batch; i++) {
            batch.reset(i);
            tokens[static_cast<size_t>(i)] = ids[static_cast<size_t>(i) % ids.size()];
        }
        for (int32_t s = 0; s < steps; s++) {
            const auto t0 = Clock::now();
            batch.eval(tokens.data());
            for (int32_t i = 0; i < args.batch; i++)
                tokens[static_cast<size_t>(i)] = m.id_of(itera::argmax(batch.logits(i), V));
            batch_tok_s.push_back(args.batch / seconds_since(t0));
        }
    }

    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    const double flop = 2 * macs_per_token(m.config);
    const bool wide = std::string(itera::kernel_path_name()) == "avx512";
    const double peak = args.peak_gflops > 0 ? args.peak_gflops : measured_fma_peak_gflops(wide);
    const double decode = median(decode_tok_s), prefill_ms = median(prefill_s) * 1e3, batch_rate = median(batch_tok_s);
    const double decode_gflops = decode * flop * 1e-9, batch_gflops = batch_rate * flop * 1e-9;
    const double prefill_tok_s = prompt / (prefill_ms * 1e-3);
    if (args.json) {
        std::printf(
            "{\"model\": \"%s\", \"kernels\": \"%s\", \"gemm\": \"%s\", \"threads\": %d, \"batch\": %d, \"load_ms\": "
            "%.4f, "
            "\"decode_tok_s\": %.1f, \"sample_us\": %.3f, \"prefill_tokens\": %d, \"prefill_ms_128\": %.5f, "
            "\"prefill_tok_s\": %.1f, "
            "\"batch_tok_s\": %.1f, \"peak_rss_kb\": %ld, \"mflop_per_token\": %.4f, \"decode_gflops\": %.3f, "
            "\"batch_gflops\": %.3f, \"peak_gflops_per_core\": %.1f, \"state_bytes\": %zu}\n",
            args.model_path.empty() ? "builtin" : args.model_path.c_str(), itera::kernel_path_name(),
            args.kernels.c_str(), args.threads, args.batch, median(load_s) * 1e3, decode, median(sample_s) * 1e6,
            prompt, prefill_ms, prefill_tok_s, batch_rate, usage.ru_maxrss, flop * 1e-6, decode_gflops, batch_gflops,
            peak, ctx.state_bytes());
        return 0;
    }
    std::printf("model          %s (%s kernels, %s products over many rows)\n",
                args.model_path.empty() ? "built-in" : args.model_path.c_str(), itera::kernel_path_name(),
                args.kernels.c_str());
    std::printf("load           %.3f ms\n", median(load_s) * 1e3);
    std::printf("decode         %.0f tok/s (batch 1, 1 thread, %d tokens)  %.2f GFLOP/s = %.1f%% of %.0f peak\n",
                decode, args.tokens, decode_gflops, 100 * decode_gflops / peak, peak);
    std::printf("sampling       %.3f us per draw (temperature 0.8, top-k 40, top-p 0.95, %d logits)\n",
                median(sample_s) * 1e6, V);
    std::printf("prefill        %.4f ms for %d tokens (%.0f tok/s)\n", prefill_ms, prompt, prefill_tok_s);
    std::printf("batch          %.0f tok/s (%d sequences, %d threads)  %.2f GFLOP/s = %.1f%% of %.0f x %d peak\n",
                batch_rate, args.batch, args.threads, batch_gflops, 100 * batch_gflops / (peak * args.threads), peak,
                args.threads);
    std::printf("work           %.4f MFLOP per token; state %zu bytes per sequence\n", flop * 1e-6, ctx.state_bytes());
    std::printf("peak RSS       %ld kB\n", usage.ru_maxrss);
    if (args.kernels == "auto") std::printf("auto choices:\n%s", m.gemm->describe().c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) { return itera::run_reporting_errors(run, argc, argv); }
