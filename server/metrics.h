// The server's counters for GET /metrics, in Prometheus' text format: responses by status, tokens
// in and out, requests whose client left, queue depth, active sequences, and histograms of the
// scheduler's step time and of the time to first token. Written from any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace itera::server {

class Metrics {
public:
    void count_response(int status);
    void add_prompt_tokens(int64_t n) { prompt_tokens_ += n; }
    void add_completion_tokens(int64_t n) { completion_tokens_ += n; }
    void count_cancelled() { cancelled_++; }
    void count_refused() { refused_++; }  // 503: the queue was full
    void set_queue_depth(int64_t n) { queue_depth_ = n; }
    void set_active(int64_t n) { active_ = n; }
    void observe_step(double seconds, int32_t sequences);
    void observe_first_token(double seconds);

    std::string prometheus(int32_t parallel) const;

private:
    struct Histogram {
        explicit Histogram(std::vector<double> bounds) : le(std::move(bounds)), counts(le.size() + 1, 0) {}
        void observe(double x);
        void print(std::string& out, const char* name, const char* help) const;
        std::vector<double> le;        // upper bounds, ascending; +Inf after them
        std::vector<uint64_t> counts;  // per bucket (not cumulative)
        double sum = 0;
    };

    std::atomic<int64_t> prompt_tokens_{0}, completion_tokens_{0}, cancelled_{0}, refused_{0}, steps_{0},
        stepped_sequences_{0}, queue_depth_{0}, active_{0};
    mutable std::mutex mutex_;  // the maps and histograms below
    std::map<int, uint64_t> responses_;
    Histogram step_{{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 1.0}};
    Histogram first_token_{{1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 10.0}};
};

}  // namespace itera::server
