// One sequence's window: the tokens fed since its state was last zero, and upstream's rule past
// max_seq_length P (research/upstream.md 2.3): every new token keeps the last P tokens and re-runs
// them from zero state at positions 0..P-1, because the position embedding has only P rows. Up to P
// tokens a span continues the recurrent state at the next position (O(1) per token).
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/backend.h"

namespace itera {

class Window {
public:
    explicit Window(int32_t max_seq) : max_(max_seq) { tokens_.reserve(static_cast<size_t>(max_seq)); }

    // Appends ids[0, n) (n >= 1) and returns the span that brings the state up to date: the new
    // tokens from the next position, or, when they do not fit, the whole slid window from zero state
    // (feeding them one at a time would end in the same state: each slide starts from zero). Its ids
    // point into the window, valid until the next change. The span's slot is left 0. Logits for
    // every token need the tokens to fit (itera::Error otherwise, nothing changed).
    Span advance(const int32_t* ids, int32_t n, LogitRows logits);
    // Empty, and the next span starts from zero state.
    void clear() {
        tokens_.clear();
        fresh_ = true;
    }
    // Replaces the tokens (a restored state, which the caller writes to the slot itself).
    void assign(const int32_t* ids, size_t n) {
        tokens_.assign(ids, ids + n);
        fresh_ = false;
    }
    int32_t size() const { return static_cast<int32_t>(tokens_.size()); }
    int32_t room() const { return max_ - size(); }  // tokens that still fit without sliding
    const std::vector<int32_t>& tokens() const { return tokens_; }
    // The slot's state is still to be zeroed (by the next span): its stored values mean nothing.
    bool fresh() const { return fresh_; }

private:
    int32_t max_;
    std::vector<int32_t> tokens_;  // never more than max_
    bool fresh_ = true;
};

}  // namespace itera
