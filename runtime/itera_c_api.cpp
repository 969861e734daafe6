// The C API (runtime/include/itera.h) over the C++ runtime. Every entry point runs its body in
// guarded() (runtime/c_api_errors.h).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file_io.h"
#include "format/itl_file.h"
#include "itera.h"
#include "runtime/batch.h"
#include "runtime/c_api_errors.h"
#include "runtime/c_api_objects.h"
#include "runtime/context.h"
#include "runtime/devices.h"
#include "runtime/evaluate.h"
#include "runtime/model.h"
#include "runtime/model_info.h"
#include "runtime/sampler.h"

namespace {

int null_argument(const char* function, const char* names) {
    return failf(ITERA_ERR_INVALID_ARGUMENT, "%s: %s must not be NULL", function, names);
}

itera::LoadOptions load_options(const itera_model_params* params) {
    itera::LoadOptions options;
    options.verify_checksum = params ? params->verify_checksum != 0 : true;
    return options;
}

// Token ids the model can evaluate (all of [0, vocab_size) unless its vocabulary was trimmed).
int check_token(const itera::Model& model, int32_t token) {
    if (model.row_of(token) < 0)
        return failf(ITERA_ERR_INVALID_ARGUMENT, "token id %d is not in the model's vocabulary", token);
    return ITERA_OK;
}

// Token ids that have text: [0, vocab_size).
int check_text_token(const itera::Model& model, int32_t token) {
    if (token < 0 || token >= model.id_limit())
        return failf(ITERA_ERR_INVALID_ARGUMENT, "token id %d is outside the vocabulary [0, %d)", token,
                     model.id_limit());
    return ITERA_OK;
}

int device_of(int device, itera::Device* out) {
    switch (device) {
        case ITERA_DEVICE_CPU:
            *out = itera::Device::cpu;
            return ITERA_OK;
        case ITERA_DEVICE_CUDA:
            *out = itera::Device::cuda;
            return ITERA_OK;
        case ITERA_DEVICE_AUTO:
            *out = itera::Device::automatic;
            return ITERA_OK;
    }
    return failf(ITERA_ERR_INVALID_ARGUMENT, "unknown device %d (ITERA_DEVICE_CPU, _CUDA or _AUTO)", device);
}

int device_code(const itera::Backend& backend) {
    return backend.device() == itera::Device::cuda ? ITERA_DEVICE_CUDA : ITERA_DEVICE_CPU;
}

int no_tokenizer() { return fail(ITERA_ERR_NO_TOKENIZER, "the model has no tokenizer: use token ids"); }

// Copies `s` and its NUL to `text` when it fits; *len_out gets its length either way.
int write_text(const std::string& s, char* text, size_t capacity, size_t* len_out) {
    *len_out = s.size();
    if (capacity < s.size() + 1)
        return failf(ITERA_ERR_BUFFER_TOO_SMALL, "text needs %zu bytes, the buffer has %zu", s.size() + 1, capacity);
    std::memcpy(text, s.c_str(), s.size() + 1);
    return ITERA_OK;
}

bool has_nan(const float* logits, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        if (std::isnan(logits[i])) return true;
    return false;
}

int sampler_params(const itera_sampler_params* p, itera::SamplerParams* out) {
    const itera_sampler_params params = p ? *p : itera_sampler_default_params();
    if (!std::isfinite(params.temperature))
        return fail(ITERA_ERR_INVALID_ARGUMENT, "sampler temperature must be finite");
    if (params.top_k < 0) return fail(ITERA_ERR_INVALID_ARGUMENT, "sampler top_k must be >= 0");
    if (!(params.top_p >= 0.0f && params.top_p <= 1.0f))
        return fail(ITERA_ERR_INVALID_ARGUMENT, "sampler top_p must be in [0, 1]");
    out->greedy = params.greedy != 0;
    out->temperature = params.temperature;
    out->top_k = params.top_k;
    out->top_p = params.top_p;
    out->seed = params.seed;
    return ITERA_OK;
}

}  // namespace

extern "C" {

// ---- errors ----

const char* itera_last_error(void) { return last_error; }

const char* itera_error_name(int code) {
    switch (code) {
        case ITERA_OK:
            return "ITERA_OK";
        case ITERA_ERR_INVALID_ARGUMENT:
            return "ITERA_ERR_INVALID_ARGUMENT";
        case ITERA_ERR_IO:
            return "ITERA_ERR_IO";
        case ITERA_ERR_FORMAT:
            return "ITERA_ERR_FORMAT";
        case ITERA_ERR_UNKNOWN_TOKEN:
            return "ITERA_ERR_UNKNOWN_TOKEN";
        case ITERA_ERR_OUT_OF_MEMORY:
            return "ITERA_ERR_OUT_OF_MEMORY";
        case ITERA_ERR_INTERNAL:
            return "ITERA_ERR_INTERNAL";
        case ITERA_ERR_BUFFER_TOO_SMALL:
            return "ITERA_ERR_BUFFER_TOO_SMALL";
        case ITERA_ERR_MODEL_MISMATCH:
            return "ITERA_ERR_MODEL_MISMATCH";
        case ITERA_ERR_NO_TOKENIZER:
            return "ITERA_ERR_NO_TOKENIZER";
        case ITERA_ERR_NO_DEVICE:
            return "ITERA_ERR_NO_DEVICE";
        case ITERA_ERR_NO_CUDA:
            return "ITERA_ERR_NO_CUDA";
    }
    return "ITERA_ERR_UNKNOWN_CODE";
}

const char* itera_version(void) { return ITERA_VERSION_STRING; }

// ---- devices ----

int itera_device_available(int device) {
    itera::Device d = itera::Device::cpu;
    if (const int rc = device_of(device, &d)) return rc;
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        std::string why;
        bool not_built = false;
        if (itera::device_available(d, &why, &not_built)) return ITERA_OK;
        return fail(not_built ? ITERA_ERR_NO_CUDA : ITERA_ERR_NO_DEVICE, ("no CUDA device: " + why).c_str());
    });
}

const char* itera_device_name(int device) {
    switch (device) {
        case ITERA_DEVICE_CPU:
            return itera::device_name(itera::Device::cpu);
        case ITERA_DEVICE_CUDA:
            return itera::device_name(itera::Device::cuda);
        case ITERA_DEVICE_AUTO:
            return itera::device_name(itera::Device::automatic);
    }
    return nullptr;
}

// ---- model ----

itera_model_params itera_model_default_params(void) {
    itera_model_params p;
    p.verify_checksum = 1;
    p.copy_buffer = 0;
    return p;
}

int itera_model_load_file(const char* path, const itera_model_params* params, itera_model** out) {
    if (!path || !out) return null_argument("itera_model_load_file", "path and out");
    *out = nullptr;
    // Opening is tried here first so that a missing, unreadable or non-regular file is an IO
    // error; anything the reader refuses after that is the file's content.
    if (const int io = guarded(ITERA_ERR_IO, [&]() -> int {
            ::close(itera::open_regular_file(path).fd);
            return ITERA_OK;
        }))
        return io;
    return guarded(ITERA_ERR_FORMAT, [&]() -> int {
        auto m = std::make_unique<itera_model>();
        m->model = itera::load_model(itera::ItlFile::open(path, load_options(params)));
        m->path = path;
        *out = m.release();
        return ITERA_OK;
    });
}

int itera_model_load_memory(const void* data, size_t size, const itera_model_params* params, itera_model** out) {
    if (!data || !out) return null_argument("itera_model_load_memory", "data and out");
    *out = nullptr;
    return guarded(ITERA_ERR_FORMAT, [&]() -> int {
        auto m = std::make_unique<itera_model>();
        if (params && params->copy_buffer) {
            // 64-byte aligned, so the reader uses the copy in place instead of copying again.
            const size_t rounded = (size + 63) / 64 * 64;
            m->copy.reset(static_cast<uint8_t*>(std::aligned_alloc(64, rounded ? rounded : 64)));
            if (!m->copy) throw std::bad_alloc();
            std::memcpy(m->copy.get(), data, size);
            data = m->copy.get();
        }
        m->model = itera::load_model(itera::ItlFile::from_memory(data, size, load_options(params)));
        *out = m.release();
        return ITERA_OK;
    });
}

void itera_model_free(itera_model* model) { delete model; }

int32_t itera_model_vocab_size(const itera_model* m) { return m ? m->model->id_limit() : 0; }
int32_t itera_model_hidden(const itera_model* m) { return m ? m->model->config.hidden : 0; }
int32_t itera_model_max_seq_length(const itera_model* m) { return m ? m->model->config.max_seq_length : 0; }
int32_t itera_model_n_layers(const itera_model* m) { return m ? static_cast<int32_t>(m->model->layers.size()) : 0; }
int itera_model_has_tokenizer(const itera_model* m) { return m && m->model->has_tokenizer ? 1 : 0; }
int32_t itera_model_eos(const itera_model* m) { return m && m->model->has_tokenizer ? m->model->tokenizer.eos() : -1; }
uint64_t itera_model_fingerprint(const itera_model* m) { return m ? m->model->file->checksum() : 0; }

int itera_model_info(const itera_model* model, char* text, size_t capacity, size_t* len_out) {
    if (!model || !len_out || (capacity > 0 && !text))
        return null_argument("itera_model_info", "model, len_out and text (when capacity > 0)");
    return guarded(ITERA_ERR_INTERNAL, [&] {
        return write_text(itera::model_info_json(*model->model, model->path), text, capacity, len_out);
    });
}

// ---- tokenizer ----

int itera_tokenize(const itera_model* model, const char* text, int32_t* ids, int32_t capacity, int32_t* n_out,
                   int flags) {
    if (!model || !text || !n_out) return null_argument("itera_tokenize", "model, text and n_out");
    if (capacity < 0 || (capacity > 0 && !ids))
        return fail(ITERA_ERR_INVALID_ARGUMENT,
                    "itera_tokenize: capacity must be >= 0, and ids not NULL when it is > 0");
    if (flags & ~ITERA_TOKENIZE_ALLOW_UNKNOWN)
        return failf(ITERA_ERR_INVALID_ARGUMENT, "itera_tokenize: unknown flags %d", flags);
    if (!model->model->has_tokenizer) return no_tokenizer();
    // The tokenizer throws only for a piece it cannot map (no <UNK> in its vocabulary).
    return guarded(ITERA_ERR_UNKNOWN_TOKEN, [&]() -> int {
        std::vector<std::string> unknown;
        const std::vector<int32_t> tokens = model->model->tokenizer.encode(text, &unknown);
        if (!unknown.empty() && !(flags & ITERA_TOKENIZE_ALLOW_UNKNOWN))
            return failf(ITERA_ERR_UNKNOWN_TOKEN, "'%s' is not in the model's vocabulary", unknown[0].c_str());
        if (tokens.size() > static_cast<size_t>(INT32_MAX))
            return fail(ITERA_ERR_INVALID_ARGUMENT, "itera_tokenize: text has more than INT32_MAX tokens");
        *n_out = static_cast<int32_t>(tokens.size());
        if (*n_out > capacity)
            return failf(ITERA_ERR_BUFFER_TOO_SMALL, "text has %d tokens, capacity is %d", *n_out, capacity);
        std::copy(tokens.begin(), tokens.end(), ids);
        return ITERA_OK;
    });
}

int itera_detokenize(const itera_model* model, const int32_t* ids, int32_t n, char* text, size_t capacity,
                     size_t* len_out) {
    if (!model || !len_out || (n > 0 && !ids) || (capacity > 0 && !text))
        return null_argument("itera_detokenize", "model, len_out, ids (when n > 0) and text (when capacity > 0)");
    if (n < 0) return fail(ITERA_ERR_INVALID_ARGUMENT, "itera_detokenize: n must be >= 0");
    if (!model->model->has_tokenizer) return no_tokenizer();
    for (int32_t i = 0; i < n; i++)
        if (const int rc = check_text_token(*model->model, ids[i])) return rc;
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        return write_text(model->model->tokenizer.decode(std::vector<int32_t>(ids, ids + n)), text, capacity, len_out);
    });
}

int itera_token_piece(const itera_model* model, int32_t id, int first, char* text, size_t capacity, size_t* len_out) {
    if (!model || !len_out || (capacity > 0 && !text))
        return null_argument("itera_token_piece", "model, len_out and text (when capacity > 0)");
    if (!model->model->has_tokenizer) return no_tokenizer();
    if (const int rc = check_text_token(*model->model, id)) return rc;
    return guarded(ITERA_ERR_INTERNAL,
                   [&] { return write_text(model->model->tokenizer.piece(id, first != 0), text, capacity, len_out); });
}

// ---- context ----

itera_context_params itera_context_default_params(void) {
    itera_context_params p;
    p.device = ITERA_DEVICE_CPU;
    return p;
}

int itera_context_new(const itera_model* model, const itera_context_params* params, itera_context** out) {
    if (!model || !out) return null_argument("itera_context_new", "model and out");
    *out = nullptr;
    itera::BackendOptions options;
    if (const int rc = device_of(params ? params->device : ITERA_DEVICE_CPU, &options.device)) return rc;
    // An error here is a model the device cannot run (q3 / q2 weights on the GPU).
    return guarded(ITERA_ERR_FORMAT, [&]() -> int {
        *out = new itera_context(*model->model, itera::make_backend(*model->model, options));
        return ITERA_OK;
    });
}

void itera_context_free(itera_context* ctx) { delete ctx; }

int itera_context_device(const itera_context* ctx) { return ctx ? device_code(ctx->ctx.backend()) : -1; }

int itera_context_reset(itera_context* ctx) {
    if (!ctx) return null_argument("itera_context_reset", "ctx");
    ctx->ctx.reset();
    ctx->update_logits();
    return ITERA_OK;
}

int32_t itera_context_position(const itera_context* ctx) { return ctx ? ctx->ctx.position() : 0; }

const float* itera_context_logits(const itera_context* ctx) { return ctx ? ctx->logits : nullptr; }

int itera_eval(itera_context* ctx, int32_t token, const float** logits_out) {
    if (!ctx) return null_argument("itera_eval", "ctx");
    if (const int rc = check_token(ctx->ctx.model(), token)) return rc;
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        ctx->ctx.eval(token, logits_out != nullptr);
        ctx->update_logits();
        if (logits_out) *logits_out = ctx->logits;
        return ITERA_OK;
    });
}

int itera_eval_tokens(itera_context* ctx, const int32_t* tokens, int32_t n, const float** logits_out) {
    if (n < 1) return fail(ITERA_ERR_INVALID_ARGUMENT, "itera_eval_tokens: n must be >= 1");
    if (!ctx || !tokens) return null_argument("itera_eval_tokens", "ctx and tokens");
    for (int32_t i = 0; i < n; i++)
        if (const int rc = check_token(ctx->ctx.model(), tokens[i])) return rc;
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        ctx->ctx.eval_tokens(tokens, n, logits_out != nullptr);
        ctx->update_logits();
        if (logits_out) *logits_out = ctx->logits;
        return ITERA_OK;
    });
}

size_t itera_context_state_size(const itera_context* ctx) { return ctx ? ctx->ctx.saved_size() : 0; }

int itera_context_save(const itera_context* ctx, void* buffer, size_t capacity, size_t* written) {
    if (!ctx || !written || (capacity > 0 && !buffer))
        return null_argument("itera_context_save", "ctx, written and buffer (when capacity > 0)");
    *written = ctx->ctx.saved_size();
    if (*written > capacity)
        return failf(ITERA_ERR_BUFFER_TOO_SMALL, "the state needs %zu bytes, the buffer has %zu", *written, capacity);
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        ctx->ctx.save(static_cast<uint8_t*>(buffer));
        return ITERA_OK;
    });
}

int itera_context_restore(itera_context* ctx, const void* buffer, size_t size) {
    if (!ctx || !buffer) return null_argument("itera_context_restore", "ctx and buffer");
    const auto* data = static_cast<const uint8_t*>(buffer);
    return guarded(ITERA_ERR_FORMAT, [&]() -> int {
        const uint64_t fingerprint = itera::saved_state_fingerprint(data, size);
        const uint64_t mine = ctx->ctx.model().file->checksum();
        if (fingerprint != mine)
            return failf(ITERA_ERR_MODEL_MISMATCH,
                         "the state was saved from a different model (fingerprint %llu, this model %llu)",
                         static_cast<unsigned long long>(fingerprint), static_cast<unsigned long long>(mine));
        const itera::Model& model = ctx->ctx.model();
        if (model.id_limit() != model.vocab_rows())  // update_logits() then allocates nothing
            ctx->by_id.reserve(static_cast<size_t>(model.id_limit()));
        ctx->ctx.restore(data, size);
        ctx->update_logits();
        return ITERA_OK;
    });
}

// ---- sampling ----

itera_sampler_params itera_sampler_default_params(void) {
    const itera::SamplerParams d;
    itera_sampler_params p;
    p.greedy = d.greedy ? 1 : 0;
    p.temperature = d.temperature;
    p.top_k = d.top_k;
    p.top_p = d.top_p;
    p.seed = d.seed;
    return p;
}

int itera_sampler_new(const itera_sampler_params* params, itera_sampler** out) {
    if (!out) return null_argument("itera_sampler_new", "out");
    *out = nullptr;
    itera::SamplerParams sp;
    if (const int rc = sampler_params(params, &sp)) return rc;
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        *out = new itera_sampler(sp);
        return ITERA_OK;
    });
}

void itera_sampler_free(itera_sampler* sampler) { delete sampler; }

int itera_sampler_sample(itera_sampler* sampler, const float* logits, int32_t n, int32_t* token_out) {
    if (!sampler || !logits || !token_out)
        return null_argument("itera_sampler_sample", "sampler, logits and token_out");
    if (n < 1) return fail(ITERA_ERR_INVALID_ARGUMENT, "itera_sampler_sample: n must be >= 1");
    // NaN breaks the ordering the sampler sorts by.
    if (has_nan(logits, n)) return fail(ITERA_ERR_INVALID_ARGUMENT, "itera_sampler_sample: the logits hold a NaN");
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        *token_out = sampler->sampler.sample(logits, n);
        return ITERA_OK;
    });
}

// ---- generation ----

int itera_generate(itera_context* ctx, const int32_t* prompt, int32_t n_prompt, int32_t n_predict,
                   const itera_sampler_params* sampling, itera_token_callback callback, void* user_data,
                   int32_t* n_generated) {
    if (n_generated) *n_generated = 0;
    if (!ctx || (n_prompt > 0 && !prompt)) return null_argument("itera_generate", "ctx and prompt (when n_prompt > 0)");
    if (n_prompt < 0 || n_predict < 0)
        return fail(ITERA_ERR_INVALID_ARGUMENT, "itera_generate: n_prompt and n_predict must be >= 0");
    itera::SamplerParams sp;
    if (const int rc = sampler_params(sampling, &sp)) return rc;
    const itera::Model& model = ctx->ctx.model();
    for (int32_t i = 0; i < n_prompt; i++)
        if (const int rc = check_token(model, prompt[i])) return rc;
    if (n_prompt == 0 && !ctx->logits)
        return fail(ITERA_ERR_INVALID_ARGUMENT,
                    "itera_generate: empty prompt and the context has no logits to continue from");
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        if (n_prompt > 0) ctx->ctx.eval_tokens(prompt, n_prompt);
        ctx->update_logits();
        itera::Sampler sampler(sp);
        const int32_t vocab = model.id_limit();
        const int32_t eos = model.has_tokenizer ? model.tokenizer.eos() : -1;
        for (int32_t i = 0; i < n_predict; i++) {
            if (has_nan(ctx->logits, vocab))
                return fail(ITERA_ERR_FORMAT, "the model computed NaN logits (are its weights corrupt?)");
            const int32_t next = sampler.sample(ctx->logits, vocab);
            if (next == eos) break;
            ctx->ctx.eval(next);
            ctx->update_logits();
            if (n_generated) *n_generated = i + 1;
            if (!callback) continue;
            const std::string piece = model.has_tokenizer ? model.tokenizer.piece(next, false) : std::string();
            if (callback(next, model.has_tokenizer ? piece.c_str() : nullptr, user_data)) break;
        }
        return ITERA_OK;
    });
}

}  // extern "C"

// ---- batch ----

itera_batch_params itera_batch_default_params(void) {
    itera_batch_params p;
    p.n_threads = 1;
    p.device = ITERA_DEVICE_CPU;
    return p;
}

int itera_batch_new(const itera_model* model, int32_t n_sequences, const itera_batch_params* params,
                    itera_batch** out) {
    if (!model || !out) return null_argument("itera_batch_new", "model and out");
    *out = nullptr;
    const itera_batch_params p = params ? *params : itera_batch_default_params();
    if (n_sequences < 1 || n_sequences > (1 << 20) || p.n_threads < 1 || p.n_threads > 1024)
        return fail(ITERA_ERR_INVALID_ARGUMENT,
                    "itera_batch_new: n_sequences must be 1..1048576 and n_threads 1..1024");
    itera::BackendOptions options;
    if (const int rc = device_of(p.device, &options.device)) return rc;
    options.slots = n_sequences;
    options.threads = p.n_threads;
    return guarded(ITERA_ERR_FORMAT, [&]() -> int {
        *out = new itera_batch(*model->model, itera::make_backend(*model->model, options));
        return ITERA_OK;
    });
}

void itera_batch_free(itera_batch* batch) { delete batch; }

int itera_batch_device(const itera_batch* batch) { return batch ? device_code(batch->batch.backend()) : -1; }

int itera_batch_eval(itera_batch* batch, const int32_t* tokens) {
    if (!batch || !tokens) return null_argument("itera_batch_eval", "batch and tokens");
    const int32_t n = batch->batch.size();
    for (int32_t i = 0; i < n; i++)
        if (const int rc = check_token(batch->batch.model(), tokens[i])) return rc;
    return guarded(ITERA_ERR_INTERNAL, [&]() -> int {
        batch->batch.eval(tokens);
        batch->update_logits();
        return ITERA_OK;
    });
}

int itera_batch_run(itera_batch* batch, const itera_batch_feed* feeds, int32_t n_feeds) {
    if (!batch || (n_feeds > 0 && !feeds))
        return null_argument("itera_batch_run", "batch and feeds (when n_feeds > 0)");
    if (n_feeds < 0 || n_feeds > batch->batch.size())
        return failf(ITERA_ERR_INVALID_ARGUMENT, "itera_batch_run: n_feeds must be 0..%d", batch->batch.size());
    // itera_batch_feed and Batch::Feed have the same members; the batch checks them all first.
    std::vector<itera::Batch::Feed> list(static_cast<size_t>(n_feeds));
    for (int32_t f = 0; f < n_feeds; f++)
        list[static_cast<size_t>(f)] = {feeds[f].seq, feeds[f].tokens, feeds[f].n_tokens};
    return guarded(ITERA_ERR_INVALID_ARGUMENT, [&]() -> int {
        batch->batch.run(list.data(), n_feeds);
        batch->update_logits();
        return ITERA_OK;
    });
}

const float* itera_batch_logits(const itera_batch* batch, int32_t i) {
    if (!batch || i < 0 || i >= batch->batch.size()) return nullptr;
    const float* rows = batch->batch.logits(i);
    const itera::Model& model = batch->batch.model();
    if (!rows || model.id_limit() == model.vocab_rows()) return rows;
    return batch->by_id.data() + static_cast<size_t>(i) * static_cast<size_t>(model.id_limit());
}

int32_t itera_batch_position(const itera_batch* batch, int32_t i) {
    return batch && i >= 0 && i < batch->batch.size() ? batch->batch.position(i) : 0;
}

int itera_batch_reset(itera_batch* batch, int32_t i) {
    if (!batch) return null_argument("itera_batch_reset", "batch");
    if (i < 0 || i >= batch->batch.size())
        return failf(ITERA_ERR_INVALID_ARGUMENT, "itera_batch_reset: sequence %d is out of range", i);
    batch->batch.reset(i);
    return ITERA_OK;
}

int32_t itera_batch_size(const itera_batch* batch) { return batch ? batch->batch.size() : 0; }

// ---- evaluation ----

itera_perplexity_params itera_perplexity_default_params(void) {
    itera_perplexity_params p;
    p.window = 0;
    p.reference = nullptr;
    p.device = ITERA_DEVICE_CPU;
    return p;
}

int itera_perplexity(const itera_model* model, const char* text, const itera_perplexity_params* params,
                     itera_perplexity_result* out) {
    if (!model || !text || !out) return null_argument("itera_perplexity", "model, text and out");
    const itera_perplexity_params p = params ? *params : itera_perplexity_default_params();
    const itera::Model& m = *model->model;
    itera::BackendOptions options;
    if (const int rc = device_of(p.device, &options.device)) return rc;
    const int32_t window = p.window == 0 ? m.config.max_seq_length : p.window;
    if (window < 1 || window > m.config.max_seq_length ||
        (p.reference && window > p.reference->model->config.max_seq_length))
        return failf(ITERA_ERR_INVALID_ARGUMENT, "itera_perplexity: window %d is outside [1, max_seq_length]",
                     p.window);
    if (!m.has_tokenizer) return no_tokenizer();
    if (p.reference)
        for (int32_t r = 0; r < m.vocab_rows(); r++)
            if (p.reference->model->row_of(m.id_of(r)) < 0)
                return failf(ITERA_ERR_INVALID_ARGUMENT, "token id %d is not in the reference's vocabulary",
                             m.id_of(r));
    return guarded(ITERA_ERR_FORMAT, [&]() -> int {
        const std::vector<int32_t> ids = m.tokenizer.encode(text);  // unknown words are <UNK>, as ppl counts them
        if (ids.size() < 2)
            return failf(ITERA_ERR_INVALID_ARGUMENT, "itera_perplexity: the text has %zu tokens, 2 are needed",
                         ids.size());
        itera::Context ctx(m, itera::make_backend(m, options));
        std::unique_ptr<itera::Context> ref;
        if (p.reference)
            ref = std::make_unique<itera::Context>(*p.reference->model,
                                                   itera::make_backend(*p.reference->model, options));
        const itera::Perplexity r = itera::perplexity(ctx, ids, window, ref.get());
        out->perplexity = r.ppl;
        out->tokens = static_cast<int64_t>(r.tokens);
        out->scored = static_cast<int64_t>(r.scored);
        out->unk_fraction = r.unk_fraction;
        out->kld = r.has_reference ? r.vs_reference.kld : NAN;
        out->top1 = r.has_reference ? r.vs_reference.top1 : NAN;
        return ITERA_OK;
    });
}
