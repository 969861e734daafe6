#include "server/channel.h"

namespace itera::server {

void Channel::send(std::string_view text) {
    if (text.empty()) return;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        text_ += text;
        ends_.push_back(text_.size());
    }
    if (wake_on_text_) changed_.notify_one();
}

void Channel::finish(const char* reason, int32_t completion_tokens) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        done_ = true;
        finish_reason_ = reason;
        completion_tokens_ = completion_tokens;
    }
    changed_.notify_one();
}

void Channel::fail(const ApiError& error) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        done_ = true;
        error_ = error;
    }
    changed_.notify_one();
}

Channel::Update Channel::receive(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait_for(lock, timeout, [&] { return done_ || (wake_on_text_ && !text_.empty()); });
    Update u;
    u.text.swap(text_);
    u.ends.swap(ends_);
    u.done = done_;
    u.finish_reason = finish_reason_;
    u.completion_tokens = completion_tokens_;
    u.error = error_;
    return u;
}

}  // namespace itera::server
