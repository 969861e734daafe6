#include "server/metrics.h"

#include <cstdio>

namespace itera::server {

namespace {

void line(std::string& out, const char* format, auto... values) {
    char buf[256];
    std::snprintf(buf, sizeof buf, format, values...);
    out += buf;
}

void counter(std::string& out, const char* name, const char* help, int64_t value, const char* type = "counter") {
    line(out, "# HELP %s %s\n# TYPE %s %s\n%s %lld\n", name, help, name, type, name, static_cast<long long>(value));
}

}  // namespace

void Metrics::count_response(int status) {
    std::lock_guard<std::mutex> lock(mutex_);
    responses_[status]++;
}

void Metrics::observe_step(double seconds, int32_t sequences) {
    steps_++;
    stepped_sequences_ += sequences;
    std::lock_guard<std::mutex> lock(mutex_);
    step_.observe(seconds);
}

void Metrics::observe_first_token(double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    first_token_.observe(seconds);
}

void Metrics::Histogram::observe(double x) {
    size_t b = 0;
    while (b < le.size() && x > le[b]) b++;
    counts[b]++;
    sum += x;
}

void Metrics::Histogram::print(std::string& out, const char* name, const char* help) const {
    line(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cumulative = 0;
    for (size_t b = 0; b < counts.size(); b++) {
        cumulative += counts[b];
        if (b < le.size())
            line(out, "%s_bucket{le=\"%g\"} %llu\n", name, le[b], static_cast<unsigned long long>(cumulative));
        else
            line(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, static_cast<unsigned long long>(cumulative));
    }
    line(out, "%s_sum %.9g\n%s_count %llu\n", name, sum, name, static_cast<unsigned long long>(cumulative));
}

std::string Metrics::prometheus(int32_t parallel) const {
    std::string out;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        out += "# HELP itera_requests_total HTTP responses sent, by status\n# TYPE itera_requests_total counter\n";
        for (const auto& [status, n] : responses_)
            line(out, "itera_requests_total{status=\"%d\"} %llu\n", status, static_cast<unsigned long long>(n));
        step_.print(out, "itera_step_seconds", "time of one scheduler step (one batch run over every active sequence)");
        first_token_.print(out, "itera_time_to_first_token_seconds",
                           "from a request queued to its first token sampled");
    }
    counter(out, "itera_prompt_tokens_total", "prompt tokens fed", prompt_tokens_);
    counter(out, "itera_completion_tokens_total", "tokens generated", completion_tokens_);
    counter(out, "itera_requests_cancelled_total", "requests whose client left before the end", cancelled_);
    counter(out, "itera_requests_refused_total", "requests answered 503 because the queue was full", refused_);
    counter(out, "itera_steps_total", "scheduler steps", steps_);
    counter(out, "itera_step_sequences_total", "sequences fed by those steps (divided by steps: the mean batch)",
            stepped_sequences_);
    counter(out, "itera_queue_depth", "requests waiting for a slot", queue_depth_, "gauge");
    counter(out, "itera_active_sequences", "requests holding a slot", active_, "gauge");
    counter(out, "itera_parallel_slots", "slots of the batch (--parallel)", parallel, "gauge");
    return out;
}

}  // namespace itera::server
