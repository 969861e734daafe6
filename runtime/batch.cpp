#include "runtime/batch.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>

#include "common/error.h"

namespace itera {

Batch::Batch(const Model& model, int32_t sequences, int32_t threads)
    : model_(model), layout_(model.config), n_(sequences), threads_(std::clamp(threads, 1, std::max(sequences, 1))) {
    if (sequences < 1 || sequences > (1 << 20))
        throw Error("batch size must be 1..1048576, got " + std::to_string(sequences));
    if (threads < 1 || threads > 1024) throw Error("threads must be 1..1024, got " + std::to_string(threads));
    const size_t n = static_cast<size_t>(n_);
    conv_.assign(n * layout_.conv, 0.0f);
    ssm_.assign(n * layout_.ssm, 0.0f);
    windows_.resize(n);
    for (auto& w : windows_) w.reserve(static_cast<size_t>(model.config.max_seq_length));
    for (int32_t t = 0; t <= threads_; t++) range_begin_.push_back(static_cast<int32_t>(int64_t{n_} * t / threads_));
    for (int32_t t = 0; t < threads_; t++) {
        auto w = std::make_unique<Worker>(model);
        const size_t m = static_cast<size_t>(range_begin_[t + 1] - range_begin_[t]);
        w->tokens.resize(m);
        w->positions.resize(m);
        w->states.resize(m);
        w->logits.resize(m);
        workers_.push_back(std::move(w));
    }
    for (int32_t t = 1; t < threads_; t++) pool_.emplace_back([this, t] { worker_loop(t); });
}

Batch::~Batch() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    start_.notify_all();
    for (std::thread& t : pool_) t.join();
}

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

void Batch::worker_loop(int32_t worker) {
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
        run_range(worker, current_tokens_);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::lock_guard<std::mutex> lock(mutex_);
            done_.notify_one();
        }
    }
}

void Batch::eval(const int32_t* tokens) {
    for (int32_t i = 0; i < n_; i++)
        if (model_.row_of(tokens[i]) < 0)
            throw Error("sequence " + std::to_string(i) + ": token id " + std::to_string(tokens[i]) +
                        " is not in the model's vocabulary");
    if (threads_ == 1) {
        run_range(0, tokens);
        return;
    }
    current_tokens_ = tokens;
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    {
        std::lock_guard<std::mutex> lock(mutex_);  // a worker about to sleep sees the new generation
        generation_.fetch_add(1, std::memory_order_release);
    }
    start_.notify_all();
    run_range(0, tokens);
    const auto finished = [&] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!spin_until(finished)) {
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, finished);
    }
}

// Sequences still inside their window advance together, one row each; a sequence whose window is
// full slides it and re-runs it from zero state (upstream semantics), as Context does.
void Batch::run_range(int32_t worker, const int32_t* tokens) {
    Worker& w = *workers_[static_cast<size_t>(worker)];
    const int32_t begin = range_begin_[worker], end = range_begin_[worker + 1];
    const size_t P = static_cast<size_t>(model_.config.max_seq_length);
    int32_t rows = 0;
    size_t slid = 0;
    for (int32_t i = begin; i < end; i++)
        if (windows_[static_cast<size_t>(i)].size() >= P) slid++;
    w.slid_logits.resize(slid * static_cast<size_t>(model_.config.vocab_size));
    std::vector<int32_t>& row_of_seq = w.row_of_seq;
    row_of_seq.assign(static_cast<size_t>(end - begin), -1);
    for (int32_t i = begin; i < end; i++) {
        std::vector<int32_t>& window = windows_[static_cast<size_t>(i)];
        if (window.size() >= P) continue;
        window.push_back(tokens[i]);
        w.tokens[static_cast<size_t>(rows)] = tokens[i];
        w.positions[static_cast<size_t>(rows)] = static_cast<int32_t>(window.size()) - 1;
        w.states[static_cast<size_t>(rows)] = {conv_.data() + static_cast<size_t>(i) * layout_.conv,
                                               ssm_.data() + static_cast<size_t>(i) * layout_.ssm};
        row_of_seq[static_cast<size_t>(i - begin)] = rows++;
    }
    if (rows > 0) w.forward.run(w.tokens.data(), w.positions.data(), w.states.data(), rows, 0);
    size_t k = 0;
    for (int32_t i = begin; i < end; i++) {
        const int32_t row = row_of_seq[static_cast<size_t>(i - begin)];
        w.logits[static_cast<size_t>(i - begin)] = row >= 0 ? w.forward.logits(row) : nullptr;
    }
    if (slid == 0) return;
    // Rare: stash the lockstep logits (the window re-runs reuse the forward's buffers), then re-run
    // each full window.
    std::vector<float>& lockstep = w.stash;
    lockstep.assign(w.forward.logits(0), w.forward.logits(0) + static_cast<size_t>(rows) * model_.config.vocab_size);
    for (int32_t i = begin; i < end; i++) {
        const int32_t row = row_of_seq[static_cast<size_t>(i - begin)];
        const size_t V = static_cast<size_t>(model_.config.vocab_size);
        if (row >= 0) {
            w.logits[static_cast<size_t>(i - begin)] = lockstep.data() + static_cast<size_t>(row) * V;
            continue;
        }
        std::vector<int32_t>& window = windows_[static_cast<size_t>(i)];
        std::rotate(window.begin(), window.begin() + 1, window.end());
        window.back() = tokens[i];
        float* conv = conv_.data() + static_cast<size_t>(i) * layout_.conv;
        float* ssm = ssm_.data() + static_cast<size_t>(i) * layout_.ssm;
        std::fill(conv, conv + layout_.conv, 0.0f);
        std::fill(ssm, ssm + layout_.ssm, 0.0f);
        w.forward.run_sequence(window.data(), 0, static_cast<int32_t>(P), {conv, ssm}, 1);
        float* out = w.slid_logits.data() + k * V;
        std::copy(w.forward.logits(0), w.forward.logits(0) + V, out);
        w.logits[static_cast<size_t>(i - begin)] = out;
        k++;
    }
}

const float* Batch::logits(int32_t i) const {
    for (size_t t = 0; t < workers_.size(); t++)
        if (i < range_begin_[t + 1]) return workers_[t]->logits[static_cast<size_t>(i - range_begin_[t])];
    return nullptr;
}

void Batch::reset(int32_t i) {
    windows_[static_cast<size_t>(i)].clear();
    std::fill(conv_.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(i) * layout_.conv),
              conv_.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(i + 1) * layout_.conv), 0.0f);
    std::fill(ssm_.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(i) * layout_.ssm),
              ssm_.begin() + static_cast<ptrdiff_t>(static_cast<size_t>(i + 1) * layout_.ssm), 0.0f);
}

}  // namespace itera
