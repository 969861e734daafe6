// Where the forward runs: on the CUDA device (kernels_cuda/device.cu), or, for the tests, on host
// threads that run the very same kernel body (kernels_cuda/emulate.cpp). kernels_cuda/backend.cpp
// drives either through this interface. Plain C++: no CUDA header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels_cuda/forward.h"

namespace itera::cuda {

struct Limits {
    int32_t sm_count = 1;
    int64_t smem_bytes = 0;  // dynamic shared memory a block may use (the opt-in maximum)
};

// A launch: shape.tiles blocks, each running S jobs in chunks of Tc tokens (plan.h tile_shape).
struct TileShape {
    int32_t seqs = 1;   // S: jobs per tile
    int32_t chunk = 1;  // Tc: tokens of each job per chunk
    int32_t tiles = 0;  // thread blocks
};

struct Copy {
    void* dst = nullptr;
    const void* src = nullptr;
    size_t bytes = 0;
};

class Executor {
public:
    virtual ~Executor() = default;
    virtual std::string name() const = 0;
    virtual Limits limits() const = 0;
    // Memory the forward reads and writes, and host staging memory for the copies in and out
    // (page-locked on the device). Both live as long as the executor; allocation failure throws.
    virtual void* alloc(size_t bytes) = 0;
    virtual void* alloc_host(size_t bytes) = 0;
    virtual void upload(void* dst, const void* src, size_t bytes) = 0;
    virtual void download(void* dst, const void* src, size_t bytes) = 0;  // forward memory -> host memory
    virtual void zero(void* dst, size_t bytes) = 0;
    // Copies in[0] and in[1] (staging -> forward memory), runs `args` on shape.tiles blocks, then
    // copies `out` (forward memory -> staging; bytes may be 0). Returns when everything is done.
    virtual void forward(const ForwardArgs& args, const TileShape& shape, const Copy (&in)[2], const Copy& out) = 0;
};

// Whether this build has the device code (nvcc was found); without it make_device_executor always
// says "built without CUDA support".
bool built_with_cuda();

// The CUDA device 0, or nullptr with *why set (no driver or device, or built without CUDA).
// graphs: capture each launch shape once as a CUDA graph and replay it.
std::unique_ptr<Executor> make_device_executor(bool graphs, std::string* why);

// Host threads in teams of `lanes` (a warp's role); limits as given (to exercise every tile plan).
std::unique_ptr<Executor> make_host_executor(int32_t threads, int32_t lanes, const Limits& limits);

}  // namespace itera::cuda
