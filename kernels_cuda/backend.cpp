// The CUDA backend's host side: uploads the model, turns feeds into jobs (kernels_cuda/plan.h)
// and launches them through an Executor (the device, or host threads in the tests).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "kernels_cuda/cuda_backend.h"
#include "kernels_cuda/executor.h"
#include "kernels_cuda/plan.h"
#include "runtime/model.h"

namespace itera::cuda {

bool available(std::string* why) {
    std::string reason;
    const bool ok = make_device_executor(false, &reason) != nullptr;
    if (why) *why = reason;
    return ok;
}

struct Backend::Impl {
    const Model& model;
    BackendOptions options;
    std::unique_ptr<Executor> exec;
    HostModel host;
    FwdModel fwd;  // device pointers
    Scratch scratch;
    bool global_scratch = false;
    Limits limits;
    LaunchCaps caps;
    float* state = nullptr;
    Job* jobs = nullptr;
    int32_t* tokens = nullptr;
    float* logits = nullptr;
    unsigned char* tile_scratch = nullptr;  // global scratch, when shared memory is too small
    float* head_in = nullptr;               // the head launch's inputs (ForwardArgs)
    ActQ8* head_q = nullptr;
    Job* jobs_host = nullptr;
    int32_t* tokens_host = nullptr;
    float* logits_host = nullptr;
    std::vector<SequenceWindow> seqs;
    std::vector<std::vector<float>> results;  // per feed of the last run
    std::vector<float> step_logits;

    Impl(const Model& m, const BackendOptions& o) : model(m), options(o) {
        if (options.max_seqs < 1 || options.max_seqs > (1 << 20))
            throw Error("CUDA backend: max_seqs must be 1.." + std::to_string(1 << 20));
        // ITERA_CUDA_EMULATE=1: the kernels on host threads, to test this path without a GPU.
        const char* emulate = std::getenv("ITERA_CUDA_EMULATE");
        if (emulate && *emulate) {
            if (std::strcmp(emulate, "1") == 0)
                options.emulate = true;
            else if (std::strcmp(emulate, "0") != 0)
                throw Error(std::string("ITERA_CUDA_EMULATE=") + emulate + ": expected 1 (emulate) or 0");
        }
        std::string why;
        exec = options.emulate ? make_host_executor(options.emulate_threads, options.emulate_lanes,
                                                    {options.emulate_sm_count, options.emulate_smem_bytes})
                               : make_device_executor(options.graphs, &why);
        if (!exec) throw Error("no CUDA device: " + why);
        build_host_model(model, &host);
        // The weights as they lie in the file: one copy of the span that holds them all (rows16
        // tensors reordered to row_major on the way).
        const std::vector<uint8_t> reordered = row_major_span(&host);
        auto* span = static_cast<uint8_t*>(exec->alloc(host.span_bytes));
        exec->upload(span, reordered.empty() ? host.span : reordered.data(), host.span_bytes);
        relocate_weights(&host, span);
        fwd = host.model;
        auto* layers = static_cast<FwdLayer*>(exec->alloc(sizeof(FwdLayer) * host.layers.size()));
        exec->upload(layers, host.layers.data(), sizeof(FwdLayer) * host.layers.size());
        fwd.layers = layers;
        auto* experts =
            static_cast<FwdExpert*>(exec->alloc(sizeof(FwdExpert) * std::max<size_t>(host.experts.size(), 1)));
        exec->upload(experts, host.experts.data(), sizeof(FwdExpert) * host.experts.size());
        fwd.experts = experts;

        limits = exec->limits();
        scratch = make_scratch(host.dims, tile_rows(host.dims, limits, &global_scratch));
        const int64_t P = model.config.max_seq_length, seqs_n = options.max_seqs;
        caps.jobs = options.max_seqs;
        caps.tokens = static_cast<int32_t>(std::max(P, std::min(seqs_n * P, int64_t{1} << 20)));
        caps.logits_rows = static_cast<int32_t>(std::max(P, seqs_n));
        const size_t state_bytes = sizeof(float) * static_cast<size_t>(fwd.state_floats) * static_cast<size_t>(seqs_n);
        state = static_cast<float*>(exec->alloc(state_bytes));
        exec->zero(state, state_bytes);
        const size_t logits_bytes =
            sizeof(float) * static_cast<size_t>(caps.logits_rows) * static_cast<size_t>(fwd.vocab);
        jobs = static_cast<Job*>(exec->alloc(sizeof(Job) * static_cast<size_t>(caps.jobs)));
        tokens = static_cast<int32_t*>(exec->alloc(sizeof(int32_t) * static_cast<size_t>(caps.tokens)));
        logits = static_cast<float*>(exec->alloc(logits_bytes));
        jobs_host = static_cast<Job*>(exec->alloc_host(sizeof(Job) * static_cast<size_t>(caps.jobs)));
        tokens_host = static_cast<int32_t*>(exec->alloc_host(sizeof(int32_t) * static_cast<size_t>(caps.tokens)));
        if (options.copy_logits) logits_host = static_cast<float*>(exec->alloc_host(logits_bytes));
        if (global_scratch)  // at most one tile per job
            tile_scratch = static_cast<unsigned char*>(
                exec->alloc(static_cast<size_t>(scratch.bytes) * static_cast<size_t>(caps.jobs)));
        head_in = static_cast<float*>(exec->alloc(sizeof(float) * kMaxRows * static_cast<size_t>(fwd.hidden)));
        head_q = static_cast<ActQ8*>(
            exec->alloc(sizeof(ActQ8) * kMaxRows * static_cast<size_t>((fwd.hidden + kActBlock - 1) / kActBlock)));
        seqs.resize(static_cast<size_t>(options.max_seqs));
    }

    void check_seq(int32_t seq) const {
        if (seq < 0 || seq >= options.max_seqs)
            throw Error("sequence " + std::to_string(seq) + " is out of range (this backend holds " +
                        std::to_string(options.max_seqs) + ")");
    }

    void launch(const std::vector<PlannedJob>& wave, size_t begin, size_t end) {
        int32_t n_tokens = 0, rows = 0, max_tokens = 0;
        for (size_t i = begin; i < end; i++) {
            const PlannedJob& p = wave[i];
            Job& j = jobs_host[i - begin];
            j = Job{};
            j.token_off = n_tokens;
            j.n_tokens = static_cast<int32_t>(p.ids.size());
            j.pos0 = p.pos0;
            j.slot = p.seq;
            j.reset = p.reset ? 1 : 0;
            j.logits_all = p.logits_all ? 1 : 0;
            if (p.logits_row >= 0) {
                j.logits_off = rows;
                rows += p.logits_all ? j.n_tokens : 1;
            }
            for (int32_t id : p.ids) tokens_host[n_tokens++] = model.row_of(id);
            max_tokens = std::max(max_tokens, j.n_tokens);
        }
        ForwardArgs args;
        args.model = fwd;
        args.scratch = scratch;
        args.jobs = jobs;
        args.n_jobs = static_cast<int32_t>(end - begin);
        args.tokens = tokens;
        args.state = state;
        args.logits = logits;
        args.global_scratch = tile_scratch;
        if (rows > 0 && rows <= kMaxRows && fwd.vocab > kHeadRowsPerBlock) {
            args.head_rows = rows;
            args.head_in = head_in;
            args.head_q = head_q;
        }
        const TileShape shape = tile_shape(scratch.rows, limits.sm_count, args.n_jobs, max_tokens);
        args.seqs_per_tile = shape.seqs;
        args.chunk = shape.chunk;
        const Copy in[2] = {{jobs, jobs_host, sizeof(Job) * static_cast<size_t>(args.n_jobs)},
                            {tokens, tokens_host, sizeof(int32_t) * static_cast<size_t>(n_tokens)}};
        Copy out;
        const size_t V = static_cast<size_t>(fwd.vocab);
        if (options.copy_logits && rows > 0) out = {logits_host, logits, sizeof(float) * V * static_cast<size_t>(rows)};
        exec->forward(args, shape, in, out);
        if (out.bytes == 0) return;
        for (size_t i = begin; i < end; i++) {
            const PlannedJob& p = wave[i];
            const Job& j = jobs_host[i - begin];
            if (p.logits_row < 0) continue;
            const size_t n = p.logits_all ? static_cast<size_t>(j.n_tokens) : 1;
            std::memcpy(results[static_cast<size_t>(p.feed)].data() + static_cast<size_t>(p.logits_row) * V,
                        logits_host + static_cast<size_t>(j.logits_off) * V, sizeof(float) * V * n);
        }
    }

    void run(const std::vector<Feed>& feeds) {
        for (const Feed& f : feeds) {
            check_seq(f.seq);
            if (f.n < 0 || (f.n > 0 && f.ids == nullptr)) throw Error("CUDA backend: bad feed");
            for (int32_t i = 0; i < f.n; i++)
                if (model.row_of(f.ids[i]) < 0)
                    throw Error("token id " + std::to_string(f.ids[i]) + " is not in the model's vocabulary");
        }
        results.assign(feeds.size(), {});
        if (options.copy_logits)
            for (size_t i = 0; i < feeds.size(); i++)
                results[i].resize(static_cast<size_t>(feed_logits_rows(feeds[i])) * static_cast<size_t>(fwd.vocab));
        const auto waves = plan_waves(&seqs, feeds, model.config.max_seq_length);
        for (const auto& wave : waves)
            for (const auto& [begin, end] : split_wave(wave, caps)) launch(wave, begin, end);
    }
};

Backend::Backend(const Model& model, const BackendOptions& options) : impl_(std::make_unique<Impl>(model, options)) {}

Backend::~Backend() = default;

void Backend::run(const std::vector<Feed>& feeds) { impl_->run(feeds); }

const float* Backend::logits(size_t feed) const {
    if (feed >= impl_->results.size() || impl_->results[feed].empty()) return nullptr;
    return impl_->results[feed].data();
}

const float* Backend::step(const int32_t* ids, int32_t n, bool want_logits) {
    std::vector<Feed> feeds(static_cast<size_t>(std::max(n, 0)));
    for (int32_t s = 0; s < n; s++)
        feeds[static_cast<size_t>(s)] = {s, ids + s, 1, want_logits ? Logits::last : Logits::none};
    run(feeds);
    if (!want_logits || !impl_->options.copy_logits) return nullptr;
    const size_t V = static_cast<size_t>(impl_->fwd.vocab);
    impl_->step_logits.resize(static_cast<size_t>(n) * V);
    for (size_t s = 0; s < feeds.size(); s++)
        std::memcpy(impl_->step_logits.data() + s * V, impl_->results[s].data(), sizeof(float) * V);
    return impl_->step_logits.data();
}

void Backend::reset(int32_t seq) {
    impl_->check_seq(seq);
    SequenceWindow& w = impl_->seqs[static_cast<size_t>(seq)];
    w.tokens.clear();
    w.zero_pending = true;
}

int32_t Backend::position(int32_t seq) const {
    impl_->check_seq(seq);
    return static_cast<int32_t>(impl_->seqs[static_cast<size_t>(seq)].tokens.size());
}

std::string Backend::device_name() const { return impl_->exec->name(); }

// ---- bench ----

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Seconds per decode step (median of `steps`) for `batch` sequences; a sequence is reset before
// it would reach max_seq_length, so no step slides its window.
double time_steps(Backend& b, const Model& model, int32_t batch, int32_t steps) {
    std::vector<int32_t> ids(static_cast<size_t>(batch));
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    std::vector<double> times;
    const int32_t warmup = 3;
    for (int32_t s = 0; s < warmup + steps; s++) {
        if (b.position(0) + 1 >= model.config.max_seq_length)
            for (int32_t q = 0; q < batch; q++) b.reset(q);
        for (int32_t& id : ids) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            id = model.id_of(static_cast<int32_t>((seed >> 33) % static_cast<uint64_t>(model.vocab_rows())));
        }
        const auto t0 = Clock::now();
        b.step(ids.data(), batch, true);
        const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
        if (s >= warmup) times.push_back(dt);
    }
    return median(times);
}

}  // namespace

BenchResult bench(const Model& model, const std::vector<int32_t>& batches, int32_t steps) {
    steps = std::max(steps, 1);
    BenchResult r;
    {
        BackendOptions o;
        Backend b(model, o);
        r.device = b.device_name();
        r.latency_us = 1e6 * time_steps(b, model, 1, steps);
    }
    {
        BackendOptions o;
        o.graphs = false;
        Backend b(model, o);
        r.latency_us_no_graph = 1e6 * time_steps(b, model, 1, steps);
    }
    if (batches.empty()) return r;
    BackendOptions o;
    o.max_seqs = *std::max_element(batches.begin(), batches.end());
    o.copy_logits = false;
    Backend b(model, o);
    for (int32_t batch : batches) {
        if (batch < 1) throw Error("bench: batch sizes must be positive");
        for (int32_t q = 0; q < batch; q++) b.reset(q);
        BenchPoint p;
        p.batch = batch;
        const double s = time_steps(b, model, batch, steps);
        p.ms_per_step = 1e3 * s;
        p.tokens_per_s = batch / s;
        r.throughput.push_back(p);
    }
    return r;
}

}  // namespace itera::cuda
