// The device side: forward.h's body as a CUDA kernel (one thread block per tile, a warp per team),
// then, for launches with few logits rows, the LM head as a second kernel over many blocks; and the
// Executor that allocates, copies and launches on device 0, each launch shape captured
// once as a CUDA graph (copies in, kernel, copy out) and replayed.
#include <cuda_runtime.h>

#include <map>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels_cuda/executor.h"
#include "kernels_cuda/forward.h"

namespace itera::cuda {

namespace {

constexpr int kThreads = 512;  // 16 warps: a warp per output row of a product, a thread per channel elsewhere
constexpr int kWarp = 32;

struct DeviceGroup {
    int tid, nthreads, team, teams, lane, lanes;

    __device__ DeviceGroup()
        : tid(static_cast<int>(threadIdx.x)),
          nthreads(static_cast<int>(blockDim.x)),
          team(static_cast<int>(threadIdx.x) / kWarp),
          teams(static_cast<int>(blockDim.x) / kWarp),
          lane(static_cast<int>(threadIdx.x) % kWarp),
          lanes(kWarp) {}

    __device__ void sync() const { __syncthreads(); }
    __device__ float team_sum(float v) const {
        for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }
    __device__ int32_t team_sum_int(int32_t v) const {
        for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }
    __device__ float team_max(float v) const {
        for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }
};

__global__ void __launch_bounds__(kThreads) forward_kernel(const ForwardArgs args) {
    extern __shared__ __align__(16) unsigned char shared_scratch[];
    DeviceGroup g;
    unsigned char* base = args.global_scratch
                              ? args.global_scratch + static_cast<int64_t>(blockIdx.x) * args.scratch.bytes
                              : shared_scratch;
    forward_tile(g, args, static_cast<int32_t>(blockIdx.x), base);
}

__global__ void __launch_bounds__(kThreads) head_kernel(const ForwardArgs args) {
    DeviceGroup g;
    head_block(g, args, static_cast<int32_t>(blockIdx.x));
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess)
        throw Error(std::string("CUDA ") + what + ": " + cudaGetErrorString(e) + " (error " +
                    std::to_string(static_cast<int>(e)) + ")");
}

// Why device 0 cannot run forward_kernel, or "" when it can.
std::string device_problem(cudaDeviceProp* prop) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e) + " (error " +
               std::to_string(static_cast<int>(e)) + ")";
    if (count == 0) return "cudaGetDeviceCount found no device";
    if ((e = cudaSetDevice(0)) != cudaSuccess || (e = cudaGetDeviceProperties(prop, 0)) != cudaSuccess)
        return std::string("device 0: ") + cudaGetErrorString(e);
    cudaFuncAttributes attr;
    if ((e = cudaFuncGetAttributes(&attr, forward_kernel)) != cudaSuccess)
        return std::string(prop->name) + " (compute capability " + std::to_string(prop->major) + "." +
               std::to_string(prop->minor) + "): " + cudaGetErrorString(e) +
               " (this build has kernels for sm_80 and sm_90, and PTX for compute_90)";
    if (attr.maxThreadsPerBlock < kThreads)
        return "forward kernel allows " + std::to_string(attr.maxThreadsPerBlock) + " threads per block, needs " +
               std::to_string(kThreads);
    return "";
}

class DeviceExecutor final : public Executor {
public:
    DeviceExecutor(const cudaDeviceProp& prop, bool graphs) : prop_(prop), graphs_(graphs) {
        check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    }

    ~DeviceExecutor() override {
        for (auto& [key, exec] : cache_) cudaGraphExecDestroy(exec);
        for (void* p : device_) cudaFree(p);
        for (void* p : host_) cudaFreeHost(p);
        cudaStreamDestroy(stream_);
    }

    std::string name() const override {
        return std::string(prop_.name) + " (compute capability " + std::to_string(prop_.major) + "." +
               std::to_string(prop_.minor) + ", " + std::to_string(prop_.multiProcessorCount) + " SMs)";
    }

    Limits limits() const override {
        return {prop_.multiProcessorCount, static_cast<int64_t>(prop_.sharedMemPerBlockOptin)};
    }

    void* alloc(size_t bytes) override {
        void* p = nullptr;
        check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
        device_.push_back(p);
        return p;
    }

    void* alloc_host(size_t bytes) override {
        void* p = nullptr;
        check(cudaMallocHost(&p, bytes ? bytes : 1), "cudaMallocHost");
        host_.push_back(p);
        return p;
    }

    // On the executor's stream and waited for: a non-blocking stream does not order itself after
    // the legacy default stream that plain cudaMemcpy / cudaMemset would use.
    void upload(void* dst, const void* src, size_t bytes) override {
        check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
        check(cudaStreamSynchronize(stream_), "upload");
    }

    void download(void* dst, const void* src, size_t bytes) override {
        check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
        check(cudaStreamSynchronize(stream_), "download");
    }

    void zero(void* dst, size_t bytes) override {
        check(cudaMemsetAsync(dst, 0, bytes, stream_), "cudaMemsetAsync");
        check(cudaStreamSynchronize(stream_), "zero");
    }

    void forward(const ForwardArgs& args, const TileShape& shape, const Copy (&in)[2], const Copy& out) override {
        const size_t smem = args.global_scratch ? 0 : static_cast<size_t>(args.scratch.bytes);
        if (smem > smem_set_) {
            check(cudaFuncSetAttribute(forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)),
                  "cudaFuncSetAttribute");
            smem_set_ = smem;
        }
        if (!graphs_) {
            check(enqueue(args, shape, in, out, smem), "launch");
        } else {
            check(cudaGraphLaunch(graph_for(args, shape, in, out, smem), stream_), "cudaGraphLaunch");
        }
        check(cudaStreamSynchronize(stream_), "forward");
    }

private:
    // Copies in, kernel, copy out on the stream; the first error (nothing throws: this also runs
    // while the stream is being captured).
    cudaError_t enqueue(const ForwardArgs& args, const TileShape& shape, const Copy (&in)[2], const Copy& out,
                        size_t smem) {
        for (const Copy& c : in)
            if (c.bytes)
                if (cudaError_t e = cudaMemcpyAsync(c.dst, c.src, c.bytes, cudaMemcpyHostToDevice, stream_);
                    e != cudaSuccess)
                    return e;
        forward_kernel<<<shape.tiles, kThreads, smem, stream_>>>(args);
        if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
        if (args.head_rows > 0) {
            head_kernel<<<head_blocks(args.model), kThreads, 0, stream_>>>(args);
            if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
        }
        if (out.bytes) return cudaMemcpyAsync(out.dst, out.src, out.bytes, cudaMemcpyDeviceToHost, stream_);
        return cudaSuccess;
    }

    // The graph of this launch shape. Everything but the shape is fixed for the executor's
    // lifetime (the buffers), so the key is the shape and the copy sizes.
    cudaGraphExec_t graph_for(const ForwardArgs& args, const TileShape& shape, const Copy (&in)[2], const Copy& out,
                              size_t smem) {
        const std::vector<int64_t> key = {args.n_jobs,
                                          args.seqs_per_tile,
                                          args.chunk,
                                          shape.tiles,
                                          static_cast<int64_t>(smem),
                                          static_cast<int64_t>(in[0].bytes),
                                          static_cast<int64_t>(in[1].bytes),
                                          static_cast<int64_t>(out.bytes),
                                          args.head_rows,
                                          reinterpret_cast<int64_t>(args.jobs),
                                          reinterpret_cast<int64_t>(args.logits)};
        auto it = cache_.find(key);
        if (it != cache_.end()) return it->second;
        if (cache_.size() >= 64) {  // many shapes (ppl windows of every length): start over
            for (auto& [k, exec] : cache_) cudaGraphExecDestroy(exec);
            cache_.clear();
        }
        cudaGraph_t graph = nullptr;
        check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
        const cudaError_t launched = enqueue(args, shape, in, out, smem);
        const cudaError_t captured = cudaStreamEndCapture(stream_, &graph);
        if (launched != cudaSuccess || captured != cudaSuccess) {
            if (graph) cudaGraphDestroy(graph);
            check(launched, "launch (graph capture)");
            check(captured, "cudaStreamEndCapture");
        }
        cudaGraphExec_t exec = nullptr;
        const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
        cudaGraphDestroy(graph);
        check(made, "cudaGraphInstantiate");
        cache_.emplace(key, exec);
        return exec;
    }

    cudaDeviceProp prop_;
    bool graphs_;
    cudaStream_t stream_ = nullptr;
    size_t smem_set_ = 48 * 1024;  // usable without opting in
    std::vector<void*> device_, host_;
    std::map<std::vector<int64_t>, cudaGraphExec_t> cache_;
};

}  // namespace

bool built_with_cuda() { return true; }

std::unique_ptr<Executor> make_device_executor(bool graphs, std::string* why) {
    cudaDeviceProp prop{};
    const std::string problem = device_problem(&prop);
    if (!problem.empty()) {
        *why = problem;
        return nullptr;
    }
    try {
        return std::make_unique<DeviceExecutor>(prop, graphs);
    } catch (const Error& e) {
        *why = e.what();
        return nullptr;
    }
}

}  // namespace itera::cuda
