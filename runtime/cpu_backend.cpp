#include "runtime/cpu_backend.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernels_cpu/quant_ops.h"
#include "runtime/worker_pool.h"

namespace itera {

namespace {

class CpuBackend final : public Backend {
public:
    CpuBackend(const Model& model, const BackendOptions& options)
        : model_(model), layout_(model.config), slots_(options.slots), pool_(std::min(options.threads, options.slots)) {
        const size_t n = static_cast<size_t>(slots_);
        conv_.assign(n * layout_.conv, 0.0f);
        ssm_.assign(n * layout_.ssm, 0.0f);
        positions_.resize(static_cast<size_t>(model.config.max_seq_length));
        std::iota(positions_.begin(), positions_.end(), 0);
        for (int32_t w = 0; w < pool_.size(); w++) workers_.push_back(std::make_unique<Worker>(model));
        logits_.resize(n);
    }

    Device device() const override { return Device::cpu; }
    std::string name() const override {
        return std::string("cpu (") + kernel_path_name() + " kernels, " + std::to_string(pool_.size()) +
               (pool_.size() == 1 ? " thread)" : " threads)");
    }
    int32_t slots() const override { return slots_; }

    void run(const Span* spans, int32_t n) override {
        const int32_t workers = std::min(pool_.size(), n);
        if (workers <= 1) {
            run_range(*workers_[0], spans, 0, n);
            return;
        }
        // Contiguous ranges of spans, one per worker (the idle ones get empty ranges).
        pool_.run([&](int32_t w) {
            const int32_t begin = static_cast<int32_t>(int64_t{n} * w / workers);
            const int32_t end = w < workers ? static_cast<int32_t>(int64_t{n} * (w + 1) / workers) : begin;
            if (begin < end) run_range(*workers_[static_cast<size_t>(w)], spans, begin, end);
        });
    }

    const float* logits(int32_t span) const override { return logits_[static_cast<size_t>(span)]; }

    size_t state_floats() const override { return layout_.conv + layout_.ssm; }

    // Forward keeps each layer's conv history time-major [K-1, inner]; the saved layout is [inner, K-1].
    void read_state(int32_t slot, float* out) const override {
        const float* conv = conv_.data() + static_cast<size_t>(slot) * layout_.conv;
        for (size_t l = 0; l < model_.config.layers.size(); l++) {
            const size_t inner = static_cast<size_t>(model_.config.layers[l].inner);
            const size_t taps = static_cast<size_t>(model_.config.layers[l].conv_kernel - 1);
            for (size_t d = 0; d < inner; d++)
                for (size_t j = 0; j < taps; j++) *out++ = conv[layout_.conv_off[l] + j * inner + d];
        }
        const float* ssm = ssm_.data() + static_cast<size_t>(slot) * layout_.ssm;
        std::copy(ssm, ssm + layout_.ssm, out);
    }

    void write_state(int32_t slot, const float* in) override {
        float* conv = conv_.data() + static_cast<size_t>(slot) * layout_.conv;
        for (size_t l = 0; l < model_.config.layers.size(); l++) {
            const size_t inner = static_cast<size_t>(model_.config.layers[l].inner);
            const size_t taps = static_cast<size_t>(model_.config.layers[l].conv_kernel - 1);
            for (size_t d = 0; d < inner; d++)
                for (size_t j = 0; j < taps; j++) conv[layout_.conv_off[l] + j * inner + d] = *in++;
        }
        std::copy(in, in + layout_.ssm, ssm_.data() + static_cast<size_t>(slot) * layout_.ssm);
    }

    void set_observer(ActivationObserver* observer) override {
        for (auto& w : workers_) w->forward.set_observer(observer);
    }

private:
    struct Worker {
        explicit Worker(const Model& model) : forward(model) {}
        Forward forward;
        std::vector<int32_t> tokens, positions;  // the one-token spans, as rows
        std::vector<SequenceState> states;
        std::vector<int32_t> row_span;  // the span of each of those rows
        std::vector<float> kept;        // logits of longer spans that a later forward would overwrite
    };

    SequenceState state_of(int32_t slot) {
        return {conv_.data() + static_cast<size_t>(slot) * layout_.conv,
                ssm_.data() + static_cast<size_t>(slot) * layout_.ssm};
    }

    void run_range(Worker& w, const Span* spans, int32_t begin, int32_t end) {
        const size_t V = static_cast<size_t>(model_.config.vocab_size);
        w.tokens.clear();
        w.positions.clear();
        w.states.clear();
        w.row_span.clear();
        bool row_logits = false;
        size_t longer = 0, kept_floats = 0;  // spans of more than one token, and their logits
        for (int32_t i = begin; i < end; i++) {
            const Span& s = spans[i];
            if (s.fresh) {
                const SequenceState st = state_of(s.slot);
                std::fill(st.conv, st.conv + layout_.conv, 0.0f);
                std::fill(st.ssm, st.ssm + layout_.ssm, 0.0f);
            }
            if (s.n == 1) {
                w.tokens.push_back(s.ids[0]);
                w.positions.push_back(s.pos0);
                w.states.push_back(state_of(s.slot));
                w.row_span.push_back(i);
                row_logits = row_logits || s.logits != LogitRows::none;
            } else {
                longer++;
                kept_floats += rows_of(s) * V;
            }
        }
        // Longer spans first, each alone; the last forward call's logits stay in its buffer, the
        // others' are kept.
        const bool rows_last = !w.tokens.empty();
        w.kept.resize(kept_floats);
        size_t kept_at = 0;
        for (int32_t i = begin; i < end; i++) {
            const Span& s = spans[i];
            if (s.n == 1) continue;
            longer--;
            w.states.resize(w.tokens.size());  // the rows' states, then this span's
            w.states.insert(w.states.end(), static_cast<size_t>(s.n), state_of(s.slot));
            const int32_t rows = static_cast<int32_t>(rows_of(s));
            w.forward.run(s.ids, positions_.data() + s.pos0, w.states.data() + w.tokens.size(), s.n, s.n - rows);
            const float* out = rows > 0 ? w.forward.logits(0) : nullptr;
            if (out && (longer > 0 || rows_last)) {
                float* keep = w.kept.data() + kept_at;
                std::memcpy(keep, out, sizeof(float) * static_cast<size_t>(rows) * V);
                kept_at += static_cast<size_t>(rows) * V;
                out = keep;
            }
            logits_[static_cast<size_t>(i)] = out;
        }
        if (!rows_last) return;
        const int32_t rows = static_cast<int32_t>(w.tokens.size());
        w.forward.run(w.tokens.data(), w.positions.data(), w.states.data(), rows, row_logits ? 0 : rows);
        for (int32_t r = 0; r < rows; r++) {
            const int32_t i = w.row_span[static_cast<size_t>(r)];
            logits_[static_cast<size_t>(i)] = spans[i].logits == LogitRows::none ? nullptr : w.forward.logits(r);
        }
    }

    static size_t rows_of(const Span& s) {
        return s.logits == LogitRows::none ? 0 : s.logits == LogitRows::all ? static_cast<size_t>(s.n) : 1;
    }

    const Model& model_;
    StateLayout layout_;
    int32_t slots_;
    std::vector<float> conv_, ssm_;     // [slots, layout_.conv], [slots, layout_.ssm]
    std::vector<int32_t> positions_;    // 0, 1, ..., max_seq_length - 1
    std::vector<const float*> logits_;  // per span of the last run
    WorkerPool pool_;
    std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const Model& model, const BackendOptions& options) {
    if (options.slots < 1 || options.slots > (1 << 20))
        throw Error("sequences must be 1..1048576, got " + std::to_string(options.slots));
    if (options.threads < 1 || options.threads > 1024)
        throw Error("threads must be 1..1024, got " + std::to_string(options.threads));
    return std::make_unique<CpuBackend>(model, options);
}

}  // namespace itera
