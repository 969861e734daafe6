// Continuous batching: one thread owns an itera_batch of --parallel slots. Each step it admits
// waiting requests into free slots, runs every active slot in one itera_batch_run (a new prompt's
// prefill beside the others' next token), samples each slot's next token with the request's own
// sampler, hands the text to the request's channel, and frees the slots whose request finished,
// met a stop string or whose client left. Every sequence gives exactly what it would alone, and a
// request's seed is its own: outputs do not depend on what runs beside them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "itera.hpp"
#include "server/channel.h"
#include "server/metrics.h"
#include "server/request.h"
#include "server/served_model.h"

namespace itera::server {

struct SchedulerOptions {
    int32_t parallel = 64;  // slots: sequences decoded together
    int32_t queue = 256;    // requests that may wait for a slot, beyond those
    int32_t threads = 1;    // the batch's CPU threads
    int device = ITERA_DEVICE_CPU;
};

// One request inside the scheduler.
struct Job {
    explicit Job(CompletionRequest r) : request(std::move(r)), channel(request.stream) {}
    const CompletionRequest request;
    Channel channel;
    const std::chrono::steady_clock::time_point queued = std::chrono::steady_clock::now();
};

class Scheduler {
public:
    // Creates the batch on the device (throws itera::api::Exception when it cannot) and starts the
    // thread. `model` and `metrics` must outlive the scheduler.
    Scheduler(const ServedModel& model, const SchedulerOptions& options, Metrics& metrics);
    ~Scheduler();  // stop()
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    // Queues a request; nullptr when --parallel + --queue requests are in already, or when stopping.
    std::shared_ptr<Job> submit(CompletionRequest request);
    // Ends the thread; requests still queued or running fail with 503.
    void stop();

    int device() const { return batch_.device(); }  // ITERA_DEVICE_CPU or _CUDA
    const SchedulerOptions& options() const { return options_; }

private:
    struct Slot {
        std::shared_ptr<Job> job;  // none: the slot is free
        std::optional<itera::api::Sampler> sampler;
        std::vector<int32_t> feed;  // what the next step feeds: the prompt, then the last token
        std::string text;           // generated so far (stop strings are looked for in it)
        size_t sent = 0;            // bytes of `text` handed to the channel
        int32_t generated = 0;
    };

    void run();
    void admit();  // under mutex_
    void step();
    void next_token(int32_t seq);
    void release(int32_t seq);

    const ServedModel& model_;
    const SchedulerOptions options_;
    Metrics& metrics_;
    itera::api::Batch batch_;
    std::vector<Slot> slots_;  // the scheduler thread's alone
    std::vector<itera_batch_feed> feeds_;

    std::mutex mutex_;  // the fields below
    std::condition_variable wake_;
    std::deque<std::shared_ptr<Job>> queue_;
    int32_t active_ = 0;  // slots holding a job
    bool stopping_ = false;
    std::thread thread_;
};

}  // namespace itera::server
