// Generation: itera.Generator streams text pieces (or token ids) as they are sampled, the way
// itera_generate does (sample from the context's logits, stop at <EOS>, feed the token, pass it
// on), one token per step so that Python sees each as it comes; complete() runs the same steps to
// the end without returning to Python. generate / generate_ids / complete are added here to both
// Model (a fresh context) and Context (continuing it).
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>

#include "python/binding.h"

namespace itera_py {

using namespace nb::literals;

namespace {

class Generator {
public:
    Generator(std::shared_ptr<ContextCore> ctx, nb::object owner, std::vector<int32_t> prompt, GenerateOptions options,
              bool text)
        : ctx_(std::move(ctx)),
          owner_(std::move(owner)),
          prompt_(std::move(prompt)),
          options_(std::move(options)),
          text_(text) {
        check(itera_sampler_new(&options_.sampling, &sampler_));
        eos_ = itera_model_eos(ctx_->model->model);
        vocab_ = itera_model_vocab_size(ctx_->model->model);
    }
    Generator(const Generator&) = delete;
    Generator& operator=(const Generator&) = delete;
    ~Generator() { itera_sampler_free(sampler_); }

    // The next piece of text (text mode) or token id; false when generation is over. Runs without
    // the GIL: the context's mutex keeps other threads off the context meanwhile.
    bool advance(std::string* piece, int32_t* token) {
        try {
            while (true) {
                if (finished_) {
                    if (pending_.empty()) return false;
                    piece->swap(pending_);
                    pending_.clear();
                    return true;
                }
                std::string next;
                const int32_t t = step(&next);
                if (t < 0) {
                    if (!owner_.is_valid()) ctx_.reset();  // a context of its own: freed now
                    continue;
                }
                if (!text_) {
                    *token = t;
                    return true;
                }
                pending_ += next;
                if (release_text(piece)) return true;
            }
        } catch (...) {
            finish("error");
            if (!owner_.is_valid()) ctx_.reset();
            throw;
        }
    }

    void close() {
        finish("closed");
        pending_.clear();
        if (!owner_.is_valid()) ctx_.reset();
    }

    std::mutex busy;  // one __next__ at a time, as a Python generator ("already executing")
    std::vector<int32_t> tokens;
    std::string stop_reason;
    bool text() const { return text_; }

private:
    // One token: feeds the prompt first; returns the token fed and passed on (its piece in *piece
    // in text mode), or -1 after setting finished_.
    int32_t step(std::string* piece) {
        std::lock_guard<std::mutex> lock(ctx_->mutex);
        itera_context* ctx = ctx_->ctx;
        if (!started_) {
            started_ = true;
            const float* logits = nullptr;
            if (!prompt_.empty())
                check(itera_eval_tokens(ctx, prompt_.data(), static_cast<int32_t>(prompt_.size()), &logits));
        }
        if (static_cast<int64_t>(tokens.size()) >= options_.max_tokens) return finish("length");
        const float* logits = itera_context_logits(ctx);
        if (!logits)
            throw LibraryError(ITERA_ERR_INVALID_ARGUMENT,
                               "the context has no logits to continue from (give a prompt, or it was reset)");
        int32_t t = 0;
        // The sampling parameters were checked when the generator was made: a refusal is a NaN.
        if (itera_sampler_sample(sampler_, logits, vocab_, &t) == ITERA_ERR_INVALID_ARGUMENT)
            throw LibraryError(ITERA_ERR_FORMAT, "the model computed NaN logits (are its weights corrupt?)");
        if (t == eos_) return finish("eos");
        check(itera_eval(ctx, t, &logits));
        tokens.push_back(t);
        if (text_) {
            size_t len = 0;
            int rc = itera_token_piece(ctx_->model->model, t, 0, buffer_.data(), buffer_.size(), &len);
            if (rc == ITERA_ERR_BUFFER_TOO_SMALL) {
                buffer_.resize(len + 1);
                rc = itera_token_piece(ctx_->model->model, t, 0, buffer_.data(), buffer_.size(), &len);
            }
            check(rc);
            piece->assign(buffer_.data(), len);
        }
        return t;
    }

    int32_t finish(const char* reason) {
        if (!finished_) stop_reason = reason;
        finished_ = true;
        return -1;
    }

    // Moves the text that cannot be part of a stop string from pending_ to *out; ends generation
    // at the first stop string (which is not passed on). False when nothing can be released yet.
    bool release_text(std::string* out) {
        size_t cut = std::string::npos;
        for (const std::string& s : options_.stop) cut = std::min(cut, pending_.find(s));
        if (cut != std::string::npos) {
            pending_.resize(cut);
            finish("stop");
            return false;  // advance() passes pending_ on as the last piece
        }
        // Held back: the longest end of pending_ that begins a stop string.
        size_t hold = 0;
        for (const std::string& s : options_.stop)
            for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; k--)
                if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
                    hold = k;
                    break;
                }
        if (pending_.size() == hold) return false;
        out->assign(pending_, 0, pending_.size() - hold);
        pending_.erase(0, pending_.size() - hold);
        return true;
    }

    std::shared_ptr<ContextCore> ctx_;
    nb::object owner_;  // the Context continued (none: a context of the generator's own)
    std::vector<int32_t> prompt_;
    GenerateOptions options_;
    bool text_;
    itera_sampler* sampler_ = nullptr;
    int32_t eos_ = -1, vocab_ = 0;
    bool started_ = false, finished_ = false;
    std::string pending_;  // text sampled but not passed on yet (it may begin a stop string)
    std::vector<char> buffer_ = std::vector<char>(256);
};

nb::object next_item(Generator& g) {
    if (!g.busy.try_lock()) throw std::runtime_error("generator already executing");
    std::lock_guard<std::mutex> lock(g.busy, std::adopt_lock);
    std::string piece;
    int32_t token = 0;
    bool more;
    {
        nb::gil_scoped_release released;
        more = g.advance(&piece, &token);
    }
    if (!more) throw nb::stop_iteration();
    return g.text() ? nb::object(decode_text(piece)) : nb::object(nb::int_(token));
}

struct Target {  // where a generation runs
    std::shared_ptr<ContextCore> ctx;
    nb::object owner;
};

// device: None, or for a Model "cpu", "cuda" or "auto" (a Context's was chosen when it was made).
Target target_of(nb::handle self, nb::handle device) {
    if (nb::isinstance<Context>(self)) {
        if (!device.is_none()) throw nb::type_error("a Context's device is chosen when it is made (Model.context)");
        return {nb::cast<Context&>(self).core, nb::borrow(self)};
    }
    const int d = device.is_none() ? ITERA_DEVICE_CPU : parse_device(nb::cast<std::string>(device));
    return {std::make_shared<ContextCore>(nb::cast<Model&>(self).open(), d), nb::object()};
}

std::vector<int32_t> checked_prompt(const Target& t, nb::handle prompt, bool allow_unknown, bool text) {
    const ModelCore& model = *t.ctx->model;
    if (text && !itera_model_has_tokenizer(model.model))
        throw LibraryError(ITERA_ERR_NO_TOKENIZER,
                           "the model has no tokenizer: use generate_ids() with a prompt of token ids");
    std::vector<int32_t> ids = prompt.is_none() ? std::vector<int32_t>() : prompt_ids(model, prompt, allow_unknown);
    if (ids.empty() && !t.owner.is_valid()) throw nb::value_error("empty prompt");
    return ids;
}

nb::object start(nb::handle self, nb::handle prompt, const GenerateOptions& options, bool allow_unknown,
                 nb::handle device, bool text) {
    Target t = target_of(self, device);
    std::vector<int32_t> ids = checked_prompt(t, prompt, allow_unknown, text);
    return nb::cast(new Generator(std::move(t.ctx), std::move(t.owner), std::move(ids), options, text),
                    nb::rv_policy::take_ownership);
}

constexpr const char* kGenerateDoc = R"(Streams the text generated after `prompt`, one piece per token as it is sampled.

prompt: text (tokenized; a word the vocabulary lacks raises itera.UnknownTokenError unless
allow_unknown) or token ids. On a Context, the prompt is fed after what the context holds, and
None (or empty) continues from its logits. Each step samples with temperature, then top_k, then
top_p (greedy=True, or temperature 0, takes the most likely token), stops at <EOS> (not passed on)
or after max_tokens, feeds the token and yields the text it adds (" word" for a word-level
model). seed makes sampling reproducible (None: a random seed). stop: a string or strings;
generation ends at the first of them in the text, which is not passed on (pieces that could begin
one are held back until they cannot). The prompt is fed at the first next(). device (Model only):
"cpu" (None), "cuda" or "auto", a context of the generator's own. The GIL is released while the
model runs.)";

constexpr const char* kGenerateIdsDoc =
    R"(As generate(), yielding the generated token ids instead of text (no stop strings).
Works for models without a tokenizer, with a prompt of token ids.)";

constexpr const char* kCompleteDoc =
    R"(The text generate() would stream, joined: runs to the end without returning to Python.)";

}  // namespace

void bind_generate(nb::module_& m) {
    nb::class_<Generator>(m, "Generator",
                          "The iterator generate() and generate_ids() return. close() ends it early; stop_reason says "
                          "why it ended: \"eos\", \"length\", \"stop\", \"closed\" or \"error\" (None while running).")
        .def(
            "__iter__", [](nb::handle self) { return nb::borrow(self); }, nb::sig("def __iter__(self) -> Generator"))
        .def("__next__", next_item, nb::sig("def __next__(self) -> typing.Any"))
        .def(
            "close",
            [](Generator& g) {
                if (!g.busy.try_lock()) throw std::runtime_error("generator already executing");
                std::lock_guard<std::mutex> lock(g.busy, std::adopt_lock);
                g.close();
            },
            "Ends the generation (a context of its own is freed).")
        .def_prop_ro(
            "tokens", [](const Generator& g) { return g.tokens; }, "The token ids generated so far.")
        .def_prop_ro(
            "stop_reason",
            [](const Generator& g) -> nb::object {
                return g.stop_reason.empty() ? nb::object(nb::none()) : nb::object(nb::str(g.stop_reason.c_str()));
            },
            nb::sig("def stop_reason(self) -> str | None"));

    for (nb::handle cls : {nb::type<Model>(), nb::type<Context>()}) {
        nb::setattr(
            cls, "generate",
            nb::cpp_function(
                [](nb::handle self, nb::handle prompt, nb::handle max_tokens, double temperature, nb::handle top_k,
                   double top_p, nb::handle seed, bool greedy, nb::handle stop, bool allow_unknown, nb::handle device) {
                    return start(self, prompt,
                                 generate_options(max_tokens, temperature, top_k, top_p, seed, greedy, stop),
                                 allow_unknown, device, true);
                },
                nb::scope(cls), nb::name("generate"), nb::is_method(), "prompt"_a = nb::none(), nb::kw_only(),
                "max_tokens"_a = 64, "temperature"_a = 0.8, "top_k"_a = 40, "top_p"_a = 0.95, "seed"_a = nb::none(),
                "greedy"_a = false, "stop"_a = nb::none(), "allow_unknown"_a = false, "device"_a = nb::none(),
                nb::sig(
                    "def generate(self, prompt: str | typing.Iterable[int] | None = None, *, "
                    "max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, "
                    "seed: int | None = None, greedy: bool = False, stop: str | typing.Iterable[str] | None = None, "
                    "allow_unknown: bool = False, device: str | None = None) -> Generator"),
                kGenerateDoc));
        nb::setattr(
            cls, "generate_ids",
            nb::cpp_function(
                [](nb::handle self, nb::handle prompt, nb::handle max_tokens, double temperature, nb::handle top_k,
                   double top_p, nb::handle seed, bool greedy, bool allow_unknown, nb::handle device) {
                    return start(self, prompt,
                                 generate_options(max_tokens, temperature, top_k, top_p, seed, greedy, nb::none()),
                                 allow_unknown, device, false);
                },
                nb::scope(cls), nb::name("generate_ids"), nb::is_method(), "prompt"_a = nb::none(), nb::kw_only(),
                "max_tokens"_a = 64, "temperature"_a = 0.8, "top_k"_a = 40, "top_p"_a = 0.95, "seed"_a = nb::none(),
                "greedy"_a = false, "allow_unknown"_a = false, "device"_a = nb::none(),
                nb::sig("def generate_ids(self, prompt: str | typing.Iterable[int] | None = None, *, "
                        "max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, "
                        "seed: int | None = None, greedy: bool = False, allow_unknown: bool = False, "
                        "device: str | None = None) -> Generator"),
                kGenerateIdsDoc));
        nb::setattr(
            cls, "complete",
            nb::cpp_function(
                [](nb::handle self, nb::handle prompt, nb::handle max_tokens, double temperature, nb::handle top_k,
                   double top_p, nb::handle seed, bool greedy, nb::handle stop, bool allow_unknown, nb::handle device) {
                    nb::object g =
                        start(self, prompt, generate_options(max_tokens, temperature, top_k, top_p, seed, greedy, stop),
                              allow_unknown, device, true);
                    Generator& gen = nb::cast<Generator&>(g);
                    std::string text, piece;
                    int32_t token = 0;
                    {
                        nb::gil_scoped_release released;
                        while (gen.advance(&piece, &token)) text += piece;
                    }
                    return decode_text(text);
                },
                nb::scope(cls), nb::name("complete"), nb::is_method(), "prompt"_a = nb::none(), nb::kw_only(),
                "max_tokens"_a = 64, "temperature"_a = 0.8, "top_k"_a = 40, "top_p"_a = 0.95, "seed"_a = nb::none(),
                "greedy"_a = false, "stop"_a = nb::none(), "allow_unknown"_a = false, "device"_a = nb::none(),
                nb::sig(
                    "def complete(self, prompt: str | typing.Iterable[int] | None = None, *, "
                    "max_tokens: int = 64, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, "
                    "seed: int | None = None, greedy: bool = False, stop: str | typing.Iterable[str] | None = None, "
                    "allow_unknown: bool = False, device: str | None = None) -> str"),
                kCompleteDoc));
    }
}

}  // namespace itera_py
