// itera.hpp: a thin, header-only C++17 wrapper over the C API (itera.h) in namespace itera::api.
// (The runtime's own C++ classes live in namespace itera and are not installed; this wrapper
// uses only the C API, so it works against the installed shared or static library.)
//
//   itera::api::Model    owns an itera_model; immutable, shareable between threads
//   itera::api::Context  owns an itera_context; one thread at a time; the Model must outlive it
//   itera::api::Sampler  owns an itera_sampler
//   itera::api::Batch    owns an itera_batch; one thread at a time; the Model must outlive it
//
// Each class is move-only and frees its handle in its destructor. Every failing call throws
// itera::api::Exception carrying the ITERA_ERR_* code and the itera_last_error() message.
#ifndef ITERA_HPP
#define ITERA_HPP

#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "itera.h"

namespace itera {
namespace api {

class Exception : public std::runtime_error {
public:
    Exception(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
    int code() const noexcept { return code_; }

private:
    int code_;
};

inline void check(int code) {
    if (code != ITERA_OK) throw Exception(code, itera_last_error());
}

namespace detail {
struct FreeModel {
    void operator()(itera_model* m) const noexcept { itera_model_free(m); }
};
struct FreeContext {
    void operator()(itera_context* c) const noexcept { itera_context_free(c); }
};
struct FreeBatch {
    void operator()(itera_batch* b) const { itera_batch_free(b); }
};
struct FreeSampler {
    void operator()(itera_sampler* s) const noexcept { itera_sampler_free(s); }
};
}  // namespace detail

class Model {
public:
    static Model load_file(const std::string& path, const itera_model_params& params = itera_model_default_params()) {
        itera_model* m = nullptr;
        check(itera_model_load_file(path.c_str(), &params, &m));
        return Model(m);
    }
    // Buffer lifetime as itera_model_load_memory: keep `data` alive unless params.copy_buffer is 1.
    static Model load_memory(const void* data, size_t size,
                             const itera_model_params& params = itera_model_default_params()) {
        itera_model* m = nullptr;
        check(itera_model_load_memory(data, size, &params, &m));
        return Model(m);
    }

    int32_t vocab_size() const { return itera_model_vocab_size(get()); }
    int32_t hidden() const { return itera_model_hidden(get()); }
    int32_t max_seq_length() const { return itera_model_max_seq_length(get()); }
    int32_t n_layers() const { return itera_model_n_layers(get()); }
    bool has_tokenizer() const { return itera_model_has_tokenizer(get()) != 0; }
    int32_t eos() const { return itera_model_eos(get()); }
    uint64_t fingerprint() const { return itera_model_fingerprint(get()); }

    std::vector<int32_t> tokenize(const std::string& text, int flags = 0) const {
        int32_t n = 0;
        const int rc = itera_tokenize(get(), text.c_str(), nullptr, 0, &n, flags);
        if (rc == ITERA_OK) return {};
        if (rc != ITERA_ERR_BUFFER_TOO_SMALL) check(rc);
        std::vector<int32_t> ids(static_cast<size_t>(n));
        check(itera_tokenize(get(), text.c_str(), ids.data(), n, &n, flags));
        return ids;
    }
    std::string detokenize(const std::vector<int32_t>& ids) const {
        return text([&](char* buf, size_t cap, size_t* len) {
            return itera_detokenize(get(), ids.data(), static_cast<int32_t>(ids.size()), buf, cap, len);
        });
    }
    std::string piece(int32_t id, bool first = false) const {
        return text(
            [&](char* buf, size_t cap, size_t* len) { return itera_token_piece(get(), id, first, buf, cap, len); });
    }

    const itera_model* get() const noexcept { return model_.get(); }

private:
    explicit Model(itera_model* m) : model_(m) {}

    // Asks for the length, then fills a string of that size (its NUL included).
    template <class Fill>
    static std::string text(Fill fill) {
        size_t len = 0;
        const int rc = fill(nullptr, 0, &len);
        if (rc != ITERA_ERR_BUFFER_TOO_SMALL) check(rc);
        std::string s(len, '\0');
        check(fill(&s[0], len + 1, &len));
        return s;
    }

    std::unique_ptr<itera_model, detail::FreeModel> model_;
};

class Sampler {
public:
    explicit Sampler(const itera_sampler_params& params = itera_sampler_default_params()) {
        itera_sampler* s = nullptr;
        check(itera_sampler_new(&params, &s));
        sampler_.reset(s);
    }
    int32_t sample(const float* logits, int32_t n) {
        int32_t token = 0;
        check(itera_sampler_sample(sampler_.get(), logits, n, &token));
        return token;
    }
    itera_sampler* get() const noexcept { return sampler_.get(); }

private:
    std::unique_ptr<itera_sampler, detail::FreeSampler> sampler_;
};

class Context {
public:
    explicit Context(const Model& model, const itera_context_params& params = itera_context_default_params()) {
        itera_context* c = nullptr;
        check(itera_context_new(model.get(), &params, &c));
        ctx_.reset(c);
    }

    // Logits [vocab_size] predicting the next token (nullptr when want_logits is false), valid
    // until the next call that changes this context.
    const float* eval(int32_t token, bool want_logits = true) {
        const float* logits = nullptr;
        check(itera_eval(get(), token, want_logits ? &logits : nullptr));
        return logits;
    }
    const float* eval(const std::vector<int32_t>& tokens, bool want_logits = true) {
        const float* logits = nullptr;
        check(itera_eval_tokens(get(), tokens.data(), static_cast<int32_t>(tokens.size()),
                                want_logits ? &logits : nullptr));
        return logits;
    }
    const float* logits() const { return itera_context_logits(get()); }
    int32_t position() const { return itera_context_position(get()); }
    int device() const { return itera_context_device(get()); }  // ITERA_DEVICE_CPU or _CUDA
    void reset() { check(itera_context_reset(get())); }

    std::vector<uint8_t> save() const {
        std::vector<uint8_t> state(itera_context_state_size(get()));
        size_t written = 0;
        check(itera_context_save(get(), state.data(), state.size(), &written));
        return state;
    }
    void restore(const void* data, size_t size) { check(itera_context_restore(get(), data, size)); }
    void restore(const std::vector<uint8_t>& state) { restore(state.data(), state.size()); }

    // itera_generate with a C++ callable on_token(int32_t token, std::string_view piece) that
    // returns void, or bool: true stops. An exception it throws stops generation and is rethrown
    // here. Returns the number of tokens passed to on_token.
    template <class OnToken>
    int32_t generate(const std::vector<int32_t>& prompt, int32_t n_predict, const itera_sampler_params& sampling,
                     OnToken&& on_token) {
        struct Call {
            OnToken& on_token;
            std::exception_ptr error;
        } call{on_token, nullptr};
        auto trampoline = [](int32_t token, const char* piece, void* user) -> int {
            Call& c = *static_cast<Call*>(user);
            try {
                const std::string_view text = piece ? std::string_view(piece) : std::string_view();
                if constexpr (std::is_void_v<std::invoke_result_t<OnToken&, int32_t, std::string_view>>) {
                    c.on_token(token, text);
                    return 0;
                } else {
                    return c.on_token(token, text) ? 1 : 0;
                }
            } catch (...) {
                c.error = std::current_exception();
                return 1;
            }
        };
        int32_t generated = 0;
        const int rc = itera_generate(get(), prompt.data(), static_cast<int32_t>(prompt.size()), n_predict, &sampling,
                                      trampoline, &call, &generated);
        if (call.error) std::rethrow_exception(call.error);
        check(rc);
        return generated;
    }

    itera_context* get() const noexcept { return ctx_.get(); }

private:
    std::unique_ptr<itera_context, detail::FreeContext> ctx_;
};

// Many sequences decoded in lockstep (itera_batch_*).
class Batch {
public:
    Batch(const Model& model, int32_t sequences, const itera_batch_params& params = itera_batch_default_params()) {
        itera_batch* b = nullptr;
        check(itera_batch_new(model.get(), sequences, &params, &b));
        batch_.reset(b);
    }
    int32_t size() const { return itera_batch_size(get()); }
    int device() const { return itera_batch_device(get()); }  // ITERA_DEVICE_CPU or _CUDA
    // One token per sequence: tokens.size() must equal size().
    void eval(const std::vector<int32_t>& tokens) {
        if (tokens.size() != static_cast<size_t>(size()))
            throw Exception(ITERA_ERR_INVALID_ARGUMENT, "Batch::eval: one token per sequence");
        check(itera_batch_eval(get(), tokens.data()));
    }
    // Some sequences, any number of tokens each (itera_batch_run).
    void run(const std::vector<itera_batch_feed>& feeds) {
        check(itera_batch_run(get(), feeds.data(), static_cast<int32_t>(feeds.size())));
    }
    const float* logits(int32_t i) const { return itera_batch_logits(get(), i); }
    int32_t position(int32_t i) const { return itera_batch_position(get(), i); }
    void reset(int32_t i) { check(itera_batch_reset(get(), i)); }
    itera_batch* get() const { return batch_.get(); }

private:
    std::unique_ptr<itera_batch, detail::FreeBatch> batch_;
};

}  // namespace api
}  // namespace itera

#endif  // ITERA_HPP
