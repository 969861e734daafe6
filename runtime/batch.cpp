#include "runtime/batch.h"

#include <algorithm>
#include <string>

#include "common/error.h"
#include "runtime/cpu_backend.h"

namespace itera {

namespace {

BackendOptions cpu_options(int32_t sequences, int32_t threads) {
    BackendOptions o;
    o.slots = sequences;
    o.threads = threads;
    return o;
}

}  // namespace

Batch::Batch(const Model& model, int32_t sequences, int32_t threads)
    : Batch(model, make_cpu_backend(model, cpu_options(sequences, threads))) {}

Batch::Batch(const Model& model, std::unique_ptr<Backend> backend)
    : model_(model),
      backend_(std::move(backend)),
      windows_(static_cast<size_t>(backend_->slots()), Window(model.config.max_seq_length)),
      spans_(windows_.size()),
      span_of_(windows_.size(), -1),
      fed_in_(windows_.size(), 0) {}

void Batch::check_ids(int32_t seq, const int32_t* ids, int32_t n) const {
    for (int32_t i = 0; i < n; i++)
        if (model_.row_of(ids[i]) < 0)
            throw Error("sequence " + std::to_string(seq) + ": token id " + std::to_string(ids[i]) +
                        " is not in the model's vocabulary");
}

void Batch::eval(const int32_t* tokens) {
    const int32_t n = size();
    for (int32_t i = 0; i < n; i++) check_ids(i, tokens + i, 1);
    for (int32_t i = 0; i < n; i++) {
        spans_[static_cast<size_t>(i)] = windows_[static_cast<size_t>(i)].advance(tokens + i, 1, LogitRows::last);
        spans_[static_cast<size_t>(i)].slot = i;
        span_of_[static_cast<size_t>(i)] = i;
    }
    backend_->run(spans_.data(), n);
}

void Batch::run(const Feed* feeds, int32_t n) {
    if (n < 0 || n > size()) throw Error("a batch run takes 0.." + std::to_string(size()) + " feeds");
    runs_++;
    for (int32_t f = 0; f < n; f++) {
        const Feed& feed = feeds[f];
        if (feed.seq < 0 || feed.seq >= size())
            throw Error("sequence " + std::to_string(feed.seq) + " is out of range (the batch has " +
                        std::to_string(size()) + ")");
        if (feed.n < 1 || feed.ids == nullptr)
            throw Error("sequence " + std::to_string(feed.seq) + ": a feed needs at least one token");
        uint64_t& fed = fed_in_[static_cast<size_t>(feed.seq)];
        if (fed == runs_) throw Error("sequence " + std::to_string(feed.seq) + " is fed twice in one run");
        fed = runs_;
        check_ids(feed.seq, feed.ids, feed.n);
    }
    std::fill(span_of_.begin(), span_of_.end(), -1);
    for (int32_t f = 0; f < n; f++) {
        const size_t seq = static_cast<size_t>(feeds[f].seq);
        spans_[static_cast<size_t>(f)] = windows_[seq].advance(feeds[f].ids, feeds[f].n, LogitRows::last);
        spans_[static_cast<size_t>(f)].slot = feeds[f].seq;
        span_of_[seq] = f;
    }
    backend_->run(spans_.data(), n);
}

const float* Batch::logits(int32_t i) const {
    if (i < 0 || i >= size() || span_of_[static_cast<size_t>(i)] < 0) return nullptr;
    return backend_->logits(span_of_[static_cast<size_t>(i)]);
}

void Batch::reset(int32_t i) {
    windows_[static_cast<size_t>(i)].clear();
    span_of_[static_cast<size_t>(i)] = -1;
}

}  // namespace itera
