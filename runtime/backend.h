// Where a model's forward runs. A backend holds the recurrent state of a fixed number of sequences
// (its slots) on one device and runs spans of tokens on them; Context (one sequence) and Batch
// (many) are built on one, and keep the windows (runtime/window.h). The CPU backend
// (runtime/cpu_backend.h) runs Forward; the CUDA backend (runtime/cuda_backend.h) adapts the model
// to kernels_cuda/. make_backend (runtime/devices.h) picks one by device.
#pragma once

#include <cstdint>
#include <string>

#include "common/error.h"
#include "runtime/forward.h"

namespace itera {

enum class Device { cpu, cuda, automatic };  // automatic: the GPU when it can run the model, else the CPU

const char* device_name(Device device);  // "cpu", "cuda", "auto"
// "cpu", "cuda" or "auto"; throws itera::Error otherwise.
Device parse_device(const std::string& name);

enum class LogitRows : int32_t { none, last, all };

// Tokens ids[0, n) of one sequence at positions pos0 .. pos0 + n - 1 (<= max_seq_length), on the
// state of `slot`, zeroed first when `fresh`. Ids are checkpoint token ids the caller has checked
// against the model's vocabulary.
struct Span {
    int32_t slot = 0;
    const int32_t* ids = nullptr;
    int32_t n = 0;
    int32_t pos0 = 0;
    bool fresh = false;
    LogitRows logits = LogitRows::last;
};

struct BackendOptions {
    Device device = Device::cpu;
    int32_t slots = 1;
    int32_t threads = 1;         // cpu: threads over a run's spans (never inside one product), 1..1024
    bool cuda_graphs = true;     // cuda: replay each launch shape as a CUDA graph
    bool logits_on_host = true;  // cuda: false leaves logits on the device (throughput benchmarks)
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual Device device() const = 0;  // cpu or cuda
    // What runs it: "cpu (avx512 kernels)", the GPU's name, or the host emulation's.
    virtual std::string name() const = 0;
    virtual int32_t slots() const = 0;

    // Runs the spans, each on a different slot, as if one after the other. Afterwards logits(i) is
    // span i's logits, [rows][vocab rows] (1 row for last, n for all), valid until the next run,
    // or nullptr when it asked for none.
    virtual void run(const Span* spans, int32_t n) = 0;
    virtual const float* logits(int32_t span) const = 0;

    // A slot's recurrent state in the saved layout: every layer's conv history [inner, K-1]
    // (oldest first), then every layer's SSM state [state]; state_floats() values.
    virtual size_t state_floats() const = 0;
    virtual void read_state(int32_t slot, float* out) const = 0;
    virtual void write_state(int32_t slot, const float* in) = 0;

    // Sees the input of every matrix product (calibration). The CPU backend only; others throw.
    virtual void set_observer(ActivationObserver* observer) = 0;
};

}  // namespace itera
