#include "runtime/worker_pool.h"

#include <immintrin.h>

#include <chrono>

namespace itera {

namespace {

// Spins (with pause) until done() or about kSpinMicros have passed; true when done() held. The
// lockstep steps of a batch come back to back, and waking a sleeping thread costs tens of
// microseconds on a virtual machine (measured: 2 threads decoded 64 sequences of the micro model
// only 1.15x faster than 1 while every step slept and woke); a short spin keeps the pool awake
// between steps and still lets it sleep when the caller stops feeding it.
constexpr int64_t kSpinMicros = 200;

template <class Done>
bool spin_until(Done done) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (done()) return true;
            _mm_pause();
        }
        if (std::chrono::steady_clock::now() > until) return done();
    }
}

}  // namespace

WorkerPool::WorkerPool(int32_t workers) {
    for (int32_t w = 1; w < workers; w++) threads_.emplace_back([this, w] { loop(w); });
}

WorkerPool::~WorkerPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    start_.notify_all();
    for (std::thread& t : threads_) t.join();
}

void WorkerPool::loop(int32_t worker) {
    uint64_t seen = 0;
    for (;;) {
        const auto ready = [&] {
            return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
        };
        if (!spin_until(ready)) {
            std::unique_lock<std::mutex> lock(mutex_);
            start_.wait(lock, ready);
        }
        if (stop_.load(std::memory_order_acquire)) return;
        seen = generation_.load(std::memory_order_acquire);
        (*job_)(worker);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::lock_guard<std::mutex> lock(mutex_);
            done_.notify_one();
        }
    }
}

void WorkerPool::run(const std::function<void(int32_t)>& job) {
    if (threads_.empty()) {
        job(0);
        return;
    }
    job_ = &job;
    pending_.store(static_cast<int32_t>(threads_.size()), std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lock(mutex_);  // a worker about to sleep sees the new generation
        generation_.fetch_add(1, std::memory_order_release);
    }
    start_.notify_all();
    job(0);
    const auto finished = [&] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!spin_until(finished)) {
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, finished);
    }
}

}  // namespace itera
