#include "runtime/window.h"

#include <algorithm>
#include <string>

#include "common/error.h"

namespace itera {

Span Window::advance(const int32_t* ids, int32_t n, LogitRows logits) {
    if (logits == LogitRows::all && n > room())  // a slid window has the last token's logits only
        throw Error(std::to_string(n) + " tokens after " + std::to_string(size()) + " exceed max_seq_length " +
                    std::to_string(max_));
    Span span;
    span.n = n;
    span.logits = logits;
    if (n <= room()) {
        span.pos0 = size();
        span.fresh = fresh_;
        tokens_.insert(tokens_.end(), ids, ids + n);
        span.ids = tokens_.data() + span.pos0;
    } else {
        // Keep the last max_ tokens of (window, ids), without growing past max_.
        const int32_t from_window = std::max(0, max_ - n);
        tokens_.erase(tokens_.begin(), tokens_.end() - from_window);
        const int32_t take = max_ - from_window;
        tokens_.insert(tokens_.end(), ids + n - take, ids + n);
        span.ids = tokens_.data();
        span.n = max_;
        span.pos0 = 0;
        span.fresh = true;
    }
    fresh_ = false;
    return span;
}

}  // namespace itera
