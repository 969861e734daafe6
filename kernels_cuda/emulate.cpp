// The kernel body of forward.h on host threads, decomposed as on the device: teams of `lanes`
// threads (warps of 32 there) share each output row, their reductions meet at a per-team barrier,
// and sync() is a block-wide std::barrier. Threads interleave freely between barriers, so a
// missing sync() shows up as a wrong or varying result, and lanes of a team that disagree on how
// many reductions they take hang, as they would misbehave on the device.
#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "kernels_cuda/executor.h"

namespace itera::cuda {

namespace {

struct Team {
    explicit Team(int lanes) : barrier(lanes), f(static_cast<size_t>(lanes)), n(static_cast<size_t>(lanes)) {}
    std::barrier<> barrier;
    std::vector<float> f;
    std::vector<int32_t> n;
};

struct HostGroup {
    int tid = 0, nthreads = 1, team = 0, teams = 1, lane = 0, lanes = 1;
    std::barrier<>* block = nullptr;
    Team* mates = nullptr;

    void sync() { block->arrive_and_wait(); }
    // Every lane gets the same value: the lanes' values combined in lane order.
    template <class T, class F>
    T reduce(T v, std::vector<T>& slots, F combine) {
        if (lanes == 1) return v;
        slots[static_cast<size_t>(lane)] = v;
        mates->barrier.arrive_and_wait();
        T r = slots[0];
        for (int i = 1; i < lanes; i++) r = combine(r, slots[static_cast<size_t>(i)]);
        mates->barrier.arrive_and_wait();  // all have read before the slots are reused
        return r;
    }
    float team_sum(float v) {
        return reduce(v, mates->f, [](float a, float b) { return a + b; });
    }
    int32_t team_sum_int(int32_t v) {
        return reduce(v, mates->n, [](int32_t a, int32_t b) { return a + b; });
    }
    float team_max(float v) {
        return reduce(v, mates->f, [](float a, float b) { return fmaxf(a, b); });
    }
};

struct AlignedFree {
    void operator()(unsigned char* p) const { ::operator delete (p, std::align_val_t{64}); }
};

class HostExecutor final : public Executor {
public:
    HostExecutor(int32_t threads, int32_t lanes, const Limits& limits)
        : lanes_(lanes < 1 ? 1 : lanes), teams_(threads < lanes_ ? 1 : threads / lanes_), limits_(limits) {}

    std::string name() const override {
        return "host emulation (" + std::to_string(teams_) + " teams of " + std::to_string(lanes_) + " threads)";
    }
    Limits limits() const override { return limits_; }
    void* alloc(size_t bytes) override {
        auto* p = static_cast<unsigned char*>(::operator new (bytes ? bytes : 1, std::align_val_t{64}));
        blocks_.emplace_back(p);
        std::memset(p, 0xff, bytes);  // like cudaMalloc, no zeros to rely on
        return p;
    }
    void* alloc_host(size_t bytes) override { return alloc(bytes); }
    void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void zero(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }

    void forward(const ForwardArgs& args, const TileShape& shape, const Copy (&in)[2], const Copy& out) override {
        for (const Copy& c : in)
            if (c.bytes) std::memcpy(c.dst, c.src, c.bytes);
        // Uninitialised shared memory on the device; here all bytes 0xff (NaN as floats), so reading
        // a value no phase wrote shows in the logits.
        std::vector<unsigned char> shared;
        if (args.global_scratch == nullptr) shared.assign(static_cast<size_t>(args.scratch.bytes), 0xff);
        const int threads = teams_ * lanes_;
        std::barrier<> block(threads);
        std::vector<std::unique_ptr<Team>> teams;
        for (int t = 0; t < teams_; t++) teams.push_back(std::make_unique<Team>(lanes_));
        auto body = [&](int tid) {
            HostGroup g;
            g.tid = tid;
            g.nthreads = threads;
            g.team = tid / lanes_;
            g.teams = teams_;
            g.lane = tid % lanes_;
            g.lanes = lanes_;
            g.block = &block;
            g.mates = teams[static_cast<size_t>(g.team)].get();
            for (int32_t tile = 0; tile < shape.tiles; tile++) {
                unsigned char* base =
                    args.global_scratch ? args.global_scratch + tile * args.scratch.bytes : shared.data();
                forward_tile(g, args, tile, base);
            }
            if (args.head_rows > 0) {  // the head launch, after every tile
                g.sync();
                for (int32_t b = 0; b < head_blocks(args.model); b++) head_block(g, args, b);
            }
        };
        std::vector<std::thread> pool;
        for (int t = 1; t < threads; t++) pool.emplace_back(body, t);
        body(0);
        for (std::thread& t : pool) t.join();
        if (out.bytes) std::memcpy(out.dst, out.src, out.bytes);
    }

private:
    int32_t lanes_, teams_;
    Limits limits_;
    std::vector<std::unique_ptr<unsigned char, AlignedFree>> blocks_;
};

}  // namespace

std::unique_ptr<Executor> make_host_executor(int32_t threads, int32_t lanes, const Limits& limits) {
    return std::make_unique<HostExecutor>(threads, lanes, limits);
}

}  // namespace itera::cuda
