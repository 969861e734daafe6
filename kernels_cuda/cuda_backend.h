// The CUDA backend (docs/cuda.md): the .itl weights uploaded once to device memory as they lie in
// the file, the per-sequence state (conv history and SSM state of every layer) kept on the device,
// and one kernel launch per step running the whole model for a batch of sequences, replayed as a
// CUDA graph. It computes what runtime/context.cpp computes, window semantics included.
//
// Plain C++: this header includes no CUDA header, and the project builds and runs on the CPU
// without the toolkit; then available() says "built without CUDA support".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace itera {
struct Model;
}

namespace itera::cuda {

// Whether device 0 can run the kernels; otherwise *why says why (no driver, no device, a GPU
// older than compute capability 8.0, or a build without CUDA support).
bool available(std::string* why);

enum class Logits { none, last, all };

// Tokens for one sequence, each fed as Context::eval would: logits for none of them, for the
// last one, or a row per token.
struct Feed {
    int32_t seq = 0;
    const int32_t* ids = nullptr;  // checkpoint token ids
    int32_t n = 0;
    Logits logits = Logits::last;
};

struct BackendOptions {
    int32_t max_seqs = 1;     // sequences (state slots) 0 .. max_seqs - 1
    bool graphs = true;       // replay each launch shape as a CUDA graph
    bool copy_logits = true;  // false: logits stay on the device (throughput benchmarks)
    // Tests only: run the kernel code on host threads instead of the device, with these limits
    // (the environment variable ITERA_CUDA_EMULATE=1 sets it for every backend).
    bool emulate = false;
    int32_t emulate_threads = 4;  // in teams of emulate_lanes, the role of a warp's lanes
    int32_t emulate_lanes = 1;
    int32_t emulate_sm_count = 4;
    int64_t emulate_smem_bytes = 96 * 1024;
};

class Backend {
public:
    // Uploads the model. Throws itera::Error "no CUDA device: <why>" when there is none, and for
    // a model with weights the kernels do not read (q3, q2).
    Backend(const Model& model, const BackendOptions& options = {});
    ~Backend();
    Backend(const Backend&) = delete;
    Backend& operator=(const Backend&) = delete;

    // Runs the feeds (one launch per wave; a sequence may appear in several feeds, which then
    // run in order). Throws itera::Error for a bad sequence index or token id, before running.
    void run(const std::vector<Feed>& feeds);
    // The logits of feed i of the last run(): [rows][vocab_rows] (one row per token for
    // Logits::all), or nullptr when it asked for none or copy_logits is off.
    const float* logits(size_t feed) const;
    // One token per sequence 0 .. n-1 (a decode step); returns [n][vocab_rows] or nullptr.
    const float* step(const int32_t* ids, int32_t n, bool want_logits = true);

    void reset(int32_t seq);
    int32_t position(int32_t seq) const;
    std::string device_name() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// itera-bench --device cuda: decode latency at batch 1 and decode throughput per batch size.
struct BenchPoint {
    int32_t batch = 0;
    double ms_per_step = 0.0;   // median over the timed steps
    double tokens_per_s = 0.0;  // batch / median step time
};
struct BenchResult {
    std::string device;
    double latency_us = 0.0;             // batch 1, logits copied to the host, CUDA graphs (median)
    double latency_us_no_graph = 0.0;    // the same with plain launches
    std::vector<BenchPoint> throughput;  // logits left on the device, CUDA graphs
};
// Throws itera::Error "no CUDA device: ..." without one. steps: timed decode steps per point
// (at least 1, each sequence reset before it reaches max_seq_length).
BenchResult bench(const Model& model, const std::vector<int32_t>& batches, int32_t steps);

}  // namespace itera::cuda
