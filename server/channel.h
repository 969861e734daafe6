// What the scheduler hands one request's HTTP handler: the text as it is generated, then the end
// (a finish reason and the token count) or an error; and, the other way, that the client left.
// The scheduler thread writes, the handler's thread reads.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/api_error.h"

namespace itera::server {

class Channel {
public:
    // A streaming handler is woken for every piece of text; another only at the end.
    explicit Channel(bool wake_on_text) : wake_on_text_(wake_on_text) {}

    // Scheduler side.
    void send(std::string_view text);
    void finish(const char* reason, int32_t completion_tokens);  // "stop" or "length"
    void fail(const ApiError& error);

    // Handler side. Waits until there is text (when woken on text), the end, or `timeout`, and
    // takes the text sent since the last call.
    struct Update {
        std::string text;
        std::vector<size_t> ends;   // where each send()'s text ends in `text` (a stream's events)
        bool done = false;          // finished or failed: nothing follows
        std::string finish_reason;  // when finished
        int32_t completion_tokens = 0;
        std::optional<ApiError> error;  // when failed
    };
    Update receive(std::chrono::milliseconds timeout);
    // The client left: the scheduler frees the request's slot at its next step.
    void cancel() { cancelled_.store(true, std::memory_order_relaxed); }
    bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

private:
    const bool wake_on_text_;
    std::mutex mutex_;
    std::condition_variable changed_;
    std::string text_;  // sent, not yet received
    std::vector<size_t> ends_;
    bool done_ = false;
    std::string finish_reason_;
    int32_t completion_tokens_ = 0;
    std::optional<ApiError> error_;
    std::atomic<bool> cancelled_{false};
};

}  // namespace itera::server
