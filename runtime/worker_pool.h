// A fixed set of threads that run one job on every worker and wait for all of them: the CPU
// backend splits a run's spans over them. Workers spin briefly between jobs, then sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace itera {

class WorkerPool {
public:
    explicit WorkerPool(int32_t workers);  // workers - 1 threads: the caller of run() is worker 0
    ~WorkerPool();
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    int32_t size() const { return static_cast<int32_t>(threads_.size()) + 1; }
    // job(w) for w = 0 .. size() - 1, worker 0 on the calling thread; returns when all are done.
    // One run at a time.
    void run(const std::function<void(int32_t)>& job);

private:
    void loop(int32_t worker);

    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable start_, done_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int32_t> pending_{0};
    std::atomic<bool> stop_{false};
    const std::function<void(int32_t)>* job_ = nullptr;  // written before generation_ is raised
};

}  // namespace itera
