// The CUDA backend's host side: uploads the weights, splits a run's segments into launches
// (kernels_cuda/plan.h) and launches them through an Executor (the device, or host threads in
// the tests).
#include "kernels_cuda/runner.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "kernels_cuda/executor.h"

namespace itera::cuda {

bool available(std::string* why) {
    std::string reason;
    const bool ok = make_device_executor(false, &reason) != nullptr;
    if (why) *why = reason;
    return ok;
}

bool emulated_by_environment() {
    const char* emulate = std::getenv("ITERA_CUDA_EMULATE");
    if (!emulate || !*emulate || std::strcmp(emulate, "0") == 0) return false;
    if (std::strcmp(emulate, "1") == 0) return true;
    throw Error(std::string("ITERA_CUDA_EMULATE=") + emulate + ": expected 1 (emulate) or 0");
}

namespace {

void check_weights(HostModel& hm) {
    bool ok = true;
    auto check = [&](const Weight& w) { ok = ok && (w.data == nullptr || kernels_read(w.dtype)); };
    const FwdModel& m = hm.model;
    for (const Weight* w : {&m.embedding, &m.position, &m.final_norm_w, &m.final_norm_b, &m.lm_head}) check(*w);
    for (const FwdLayer& l : hm.layers)
        for (const Weight* w : {&l.norm_w, &l.norm_b, &l.in_proj, &l.conv_w, &l.conv_b, &l.a_log, &l.b, &l.c, &l.d,
                                &l.delta_w, &l.delta_b, &l.out_proj, &l.mix_norm_w, &l.mix_norm_b, &l.router})
            check(*w);
    for (const FwdExpert& e : hm.experts) {
        check(e.w1);
        check(e.w2);
    }
    if (!ok) throw Error("the CUDA kernels read fp32, fp16, q8, q4 and nf4 weights only");
}

}  // namespace

struct Runner::Impl {
    RunnerOptions options;
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
    std::vector<std::vector<float>> results;  // per segment of the last run

    Impl(const HostModel& model, const RunnerOptions& o) : options(o), host(model) {
        if (options.max_seqs < 1 || options.max_seqs > (1 << 20))
            throw Error("CUDA backend: max_seqs must be 1.." + std::to_string(1 << 20));
        options.emulate = options.emulate || emulated_by_environment();
        finish_host_model(&host);  // the copy's own vectors
        check_weights(host);
        std::string why;
        exec = options.emulate ? make_host_executor(options.emulate_threads, options.emulate_lanes,
                                                    {options.emulate_sm_count, options.emulate_smem_bytes})
                               : make_device_executor(options.graphs, &why);
        if (!exec) throw DeviceUnavailable("no CUDA device: " + why, !built_with_cuda());
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
        const int64_t P = fwd.max_seq, seqs_n = options.max_seqs;
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
    }

    void check_slot(int32_t slot) const {
        if (slot < 0 || slot >= options.max_seqs)
            throw Error("sequence " + std::to_string(slot) + " is out of range (this backend holds " +
                        std::to_string(options.max_seqs) + ")");
    }

    float* slot_state(int32_t slot) const {
        return state + static_cast<size_t>(slot) * static_cast<size_t>(fwd.state_floats);
    }

    void launch(const Segment* segments, size_t begin, size_t end) {
        int32_t n_tokens = 0, rows = 0, max_tokens = 0;
        for (size_t i = begin; i < end; i++) {
            const Segment& s = segments[i];
            Job& j = jobs_host[i - begin];
            j = Job{};
            j.token_off = n_tokens;
            j.n_tokens = s.n;
            j.pos0 = s.pos0;
            j.slot = s.slot;
            j.reset = s.reset ? 1 : 0;
            j.logits_all = s.logits == Logits::all ? 1 : 0;
            if (logits_rows(s) > 0) {
                j.logits_off = rows;
                rows += logits_rows(s);
            }
            std::memcpy(tokens_host + n_tokens, s.rows, sizeof(int32_t) * static_cast<size_t>(s.n));
            n_tokens += s.n;
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
            const Job& j = jobs_host[i - begin];
            if (j.logits_off < 0) continue;
            std::memcpy(results[i].data(), logits_host + static_cast<size_t>(j.logits_off) * V,
                        sizeof(float) * V * static_cast<size_t>(logits_rows(segments[i])));
        }
    }

    void run(const Segment* segments, size_t n) {
        for (size_t i = 0; i < n; i++) {
            const Segment& s = segments[i];
            check_slot(s.slot);
            if (s.n < 1 || s.rows == nullptr || s.pos0 < 0 || s.pos0 + s.n > fwd.max_seq)
                throw Error("CUDA backend: bad segment");
            for (int32_t t = 0; t < s.n; t++)
                if (s.rows[t] < 0 || s.rows[t] >= fwd.vocab) throw Error("CUDA backend: embedding row out of range");
        }
        results.resize(n);
        for (size_t i = 0; i < n; i++)
            results[i].resize(options.copy_logits ? static_cast<size_t>(logits_rows(segments[i])) * fwd.vocab : 0);
        for (const auto& [begin, end] : split_launches(segments, n, caps)) launch(segments, begin, end);
    }
};

Runner::Runner(const HostModel& model, const RunnerOptions& options) : impl_(std::make_unique<Impl>(model, options)) {}

Runner::~Runner() = default;

void Runner::run(const Segment* segments, size_t n) { impl_->run(segments, n); }

const float* Runner::logits(size_t segment) const {
    if (segment >= impl_->results.size() || impl_->results[segment].empty()) return nullptr;
    return impl_->results[segment].data();
}

int64_t Runner::state_floats() const { return impl_->fwd.state_floats; }

void Runner::read_state(int32_t slot, float* out) const {
    impl_->check_slot(slot);
    impl_->exec->download(out, impl_->slot_state(slot), sizeof(float) * static_cast<size_t>(state_floats()));
}

void Runner::write_state(int32_t slot, const float* in) {
    impl_->check_slot(slot);
    impl_->exec->upload(impl_->slot_state(slot), in, sizeof(float) * static_cast<size_t>(state_floats()));
}

std::string Runner::device_name() const { return impl_->exec->name(); }

}  // namespace itera::cuda
