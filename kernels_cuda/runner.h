// The CUDA backend's host side over plain weight descriptors (plan.h HostModel): the weights
// uploaded once to device memory as they lie in the file, the per-sequence state (conv history
// and SSM state of every layer) kept on the device, and one kernel launch per step running the
// whole model for a batch of segments, replayed as a CUDA graph (docs/cuda.md).
//
// This layer knows embedding rows and state slots, not token ids or windows: runtime/cuda_backend.cpp
// adapts a loaded model to it behind the runtime's backend interface (runtime/backend.h).
// Plain C++: no CUDA header; without the toolkit available() says "built without CUDA support".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels_cuda/plan.h"

namespace itera::cuda {

// Whether device 0 can run the kernels; otherwise *why says why (no driver, no device, a GPU
// older than compute capability 8.0, or a build without CUDA support: built_with_cuda()).
bool available(std::string* why);

// ITERA_CUDA_EMULATE=1: every runner runs the kernels on host threads, to test this path without a
// GPU (0 or unset: no). Throws itera::Error for another value.
bool emulated_by_environment();

struct RunnerOptions {
    int32_t max_seqs = 1;     // state slots 0 .. max_seqs - 1
    bool graphs = true;       // replay each launch shape as a CUDA graph
    bool copy_logits = true;  // false: logits stay on the device (throughput benchmarks)
    // Tests only: run the kernel code on host threads instead of the device, with these limits
    // (the environment variable ITERA_CUDA_EMULATE=1 sets it for every runner).
    bool emulate = false;
    int32_t emulate_threads = 4;  // in teams of emulate_lanes, the role of a warp's lanes
    int32_t emulate_lanes = 1;
    int32_t emulate_sm_count = 4;
    int64_t emulate_smem_bytes = 96 * 1024;
};

class Runner {
public:
    // Uploads the weights the descriptors point to. Throws DeviceUnavailable "no CUDA device: <why>"
    // (common/error.h) when there is none, itera::Error for a weight the kernels do not read
    // (plan.h kernels_read).
    Runner(const HostModel& model, const RunnerOptions& options = {});
    ~Runner();
    Runner(const Runner&) = delete;
    Runner& operator=(const Runner&) = delete;

    // Runs the segments, each on a different slot (the caller's duty: two on one slot would race),
    // in as few launches as the capacities allow. Throws itera::Error for a slot out of range or a
    // bad segment, before running anything.
    void run(const Segment* segments, size_t n);
    // The logits of segment i of the last run: [rows][vocab] (plan.h logits_rows), or nullptr when
    // it asked for none or copy_logits is off.
    const float* logits(size_t segment) const;

    // A slot's state, state_floats() values in FwdLayer's layout: every layer's conv history
    // [inner, K-1] (oldest first), then every layer's SSM state [state].
    int64_t state_floats() const;
    void read_state(int32_t slot, float* out) const;
    void write_state(int32_t slot, const float* in);
    std::string device_name() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace itera::cuda
