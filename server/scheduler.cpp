#include "server/scheduler.h"

#include "server/stop_strings.h"

namespace itera::server {

namespace {

itera_batch_params batch_params(const SchedulerOptions& o) {
    itera_batch_params p = itera_batch_default_params();
    p.n_threads = o.threads;
    p.device = o.device;
    return p;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

Scheduler::Scheduler(const ServedModel& model, const SchedulerOptions& options, Metrics& metrics)
    : model_(model),
      options_(options),
      metrics_(metrics),
      batch_(model.model, options.parallel, batch_params(options)),
      slots_(static_cast<size_t>(options.parallel)) {
    feeds_.reserve(slots_.size());
    thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() { stop(); }

std::shared_ptr<Job> Scheduler::submit(CompletionRequest request) {
    auto job = std::make_shared<Job>(std::move(request));
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_ || active_ + static_cast<int32_t>(queue_.size()) >= options_.parallel + options_.queue)
            return nullptr;
        queue_.push_back(job);
        metrics_.set_queue_depth(static_cast<int64_t>(queue_.size()));
    }
    wake_.notify_one();
    return job;
}

void Scheduler::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_one();
    if (thread_.joinable()) thread_.join();
}

void Scheduler::run() {
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return stopping_ || !queue_.empty() || active_ > 0; });
            if (stopping_) break;
            admit();
        }
        step();
    }
    const ApiError gone(503, "shutting_down", "the server is shutting down");
    for (Slot& s : slots_)
        if (s.job) s.job->channel.fail(gone);
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& job : queue_) job->channel.fail(gone);
    queue_.clear();
}

void Scheduler::admit() {
    size_t seq = 0;
    while (!queue_.empty()) {
        while (seq < slots_.size() && slots_[seq].job) seq++;
        if (seq == slots_.size()) break;
        std::shared_ptr<Job> job = std::move(queue_.front());
        queue_.pop_front();
        if (job->channel.cancelled()) {  // the client left while it waited
            metrics_.count_cancelled();
            continue;
        }
        if (job->request.max_tokens == 0) {  // nothing to generate: no slot needed
            job->channel.finish("length", 0);
            continue;
        }
        Slot& s = slots_[seq];
        s.job = std::move(job);
        s.sampler.emplace(s.job->request.sampling);
        s.feed = s.job->request.prompt;
        s.text.clear();
        s.sent = 0;
        s.generated = 0;
        active_++;
    }
    metrics_.set_queue_depth(static_cast<int64_t>(queue_.size()));
    metrics_.set_active(active_);
}

void Scheduler::step() {
    feeds_.clear();
    int64_t prompt_tokens = 0;
    for (size_t seq = 0; seq < slots_.size(); seq++) {
        Slot& s = slots_[seq];
        if (!s.job) continue;
        if (s.job->channel.cancelled()) {
            metrics_.count_cancelled();
            release(static_cast<int32_t>(seq));
            continue;
        }
        if (s.generated == 0) prompt_tokens += static_cast<int64_t>(s.feed.size());
        feeds_.push_back({static_cast<int32_t>(seq), s.feed.data(), static_cast<int32_t>(s.feed.size())});
    }
    if (feeds_.empty()) return;
    const auto start = std::chrono::steady_clock::now();
    if (itera_batch_run(batch_.get(), feeds_.data(), static_cast<int32_t>(feeds_.size())) != ITERA_OK) {
        // Every id was checked when the request was parsed: this is a bug or a device failure.
        const ApiError error(500, "internal_error", std::string("batch run failed: ") + itera_last_error());
        for (const itera_batch_feed& f : feeds_) {
            slots_[static_cast<size_t>(f.seq)].job->channel.fail(error);
            release(f.seq);
        }
        return;
    }
    metrics_.observe_step(seconds_since(start), static_cast<int32_t>(feeds_.size()));
    metrics_.add_prompt_tokens(prompt_tokens);
    int64_t generated = 0;
    for (const itera_batch_feed& f : feeds_) {
        const int32_t before = slots_[static_cast<size_t>(f.seq)].generated;
        next_token(f.seq);
        generated += slots_[static_cast<size_t>(f.seq)].generated - before;
    }
    metrics_.add_completion_tokens(generated);
}

// Samples the token after the slot's last feed and passes it on: as itera-run's loop, <EOS> ends
// the request unfed and unsent, and the last allowed token is sent but not fed.
void Scheduler::next_token(int32_t seq) {
    Slot& s = slots_[static_cast<size_t>(seq)];
    Channel& channel = s.job->channel;
    int32_t token = 0;
    if (itera_sampler_sample(s.sampler->get(), itera_batch_logits(batch_.get(), seq), model_.vocab_size, &token) !=
        ITERA_OK) {
        channel.fail(ApiError(500, "internal_error", std::string("sampling failed: ") + itera_last_error()));
        release(seq);
        return;
    }
    if (s.generated == 0) metrics_.observe_first_token(seconds_since(s.job->queued));
    if (token == model_.eos) {
        channel.send(std::string_view(s.text).substr(s.sent));
        channel.finish("stop", s.generated);
        release(seq);
        return;
    }
    s.generated++;
    const std::vector<std::string>& stops = s.job->request.stop;
    const size_t from = s.sent;
    s.text += model_.pieces[static_cast<size_t>(token)];
    if (const size_t at = find_stop(s.text, from, stops); at != std::string::npos) {
        channel.send(std::string_view(s.text).substr(s.sent, at - s.sent));
        channel.finish("stop", s.generated);
        release(seq);
        return;
    }
    if (s.generated == s.job->request.max_tokens) {
        channel.send(std::string_view(s.text).substr(s.sent));
        channel.finish("length", s.generated);
        release(seq);
        return;
    }
    const size_t ready = stops.empty() ? s.text.size() : releasable(s.text, stops);
    channel.send(std::string_view(s.text).substr(s.sent, ready - s.sent));
    s.sent = ready;
    s.feed.assign(1, token);
}

void Scheduler::release(int32_t seq) {
    Slot& s = slots_[static_cast<size_t>(seq)];
    s.job.reset();
    s.sampler.reset();
    batch_.reset(seq);
    std::lock_guard<std::mutex> lock(mutex_);
    active_--;
    metrics_.set_active(active_);
}

}  // namespace itera::server
