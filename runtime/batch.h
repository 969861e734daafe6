// Many independent sequences decoded in lockstep: each eval() feeds one token to every sequence
// and runs them through the model as one block of rows (a GEMM per weight instead of one GEMV per
// sequence). With threads > 1 the sequences are split into contiguous ranges, one per thread;
// threads never split a single matrix product.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/forward.h"
#include "runtime/model.h"

namespace itera {

class Batch {
public:
    Batch(const Model& model, int32_t sequences, int32_t threads);
    ~Batch();
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;

    int32_t size() const { return n_; }
    const Model& model() const { return model_; }
    // Feeds tokens[i] (a checkpoint token id) to sequence i, for every sequence; afterwards
    // logits(i) predicts the token after it. Past max_seq_length a sequence slides its window as
    // Context does. Throws itera::Error (changing nothing) for a token outside the vocabulary.
    void eval(const int32_t* tokens);
    const float* logits(int32_t i) const;
    // Clears one sequence (zero state, empty window).
    void reset(int32_t i);
    int32_t position(int32_t i) const { return static_cast<int32_t>(windows_[static_cast<size_t>(i)].size()); }
    // Recurrent state per sequence, bytes (conv history + SSM state of every layer).
    size_t state_bytes() const { return (layout_.conv + layout_.ssm) * sizeof(float); }

private:
    struct Worker {
        explicit Worker(const Model& model) : forward(model) {}
        Forward forward;
        std::vector<int32_t> tokens, positions;
        std::vector<SequenceState> states;
        std::vector<const float*> logits;  // per sequence of its range
        std::vector<int32_t> row_of_seq;   // per sequence of its range: its lockstep row or -1
        std::vector<float> slid_logits;    // logits of sequences whose window slid
        std::vector<float> stash;          // the lockstep rows' logits when some window slid
    };
    void run_range(int32_t worker, const int32_t* tokens);
    void worker_loop(int32_t worker);

    const Model& model_;
    StateLayout layout_;
    int32_t n_ = 0, threads_ = 1;
    std::vector<float> conv_, ssm_;  // [n, layout_.conv], [n, layout_.ssm]
    std::vector<std::vector<int32_t>> windows_;
    std::vector<std::unique_ptr<Worker>> workers_;
    std::vector<int32_t> range_begin_;  // worker w owns sequences [range_begin_[w], range_begin_[w + 1])

    // The pool: workers 1.. wait for a new generation (spinning briefly, then asleep), run their
    // range, count down; eval waits for the count to reach zero the same way.
    std::vector<std::thread> pool_;
    std::mutex mutex_;
    std::condition_variable start_, done_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int32_t> pending_{0};
    std::atomic<bool> stop_{false};
    const int32_t* current_tokens_ = nullptr;  // written before generation_ is raised
};

}  // namespace itera
