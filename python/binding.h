// The itera Python module (docs/python.md): what its parts share. Every object holds the C API
// handles it uses (runtime/include/itera.h) through shared pointers, so a context, batch or
// generator keeps its model alive after Model.close() or after the Model object is gone.
//
// Threads: every call into the library runs with the GIL released. A context or batch is used by
// one thread at a time (itera.h), so each has a mutex, taken after the GIL is released and given
// back before the GIL is taken again (no thread ever waits for one while holding the other).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "itera.h"

namespace itera_py {

namespace nb = nanobind;

// A failed C API call: its ITERA_ERR_* code and itera_last_error()'s message, raised in Python as
// the itera.Error subclass of that code (registered in module.cpp).
struct LibraryError : std::runtime_error {
    LibraryError(int code, const std::string& message) : std::runtime_error(message), code(code) {}
    int code;
};

// Throws LibraryError for a failed call; reads the message on the calling thread, so it may run
// with the GIL released.
inline void check(int rc) {
    if (rc != ITERA_OK) throw LibraryError(rc, itera_last_error());
}

// A loaded model; freed when the last Model, Context, Batch or generator using it is gone.
struct ModelCore {
    itera_model* model = nullptr;
    PyObject* bytes = nullptr;  // the bytes object a model from memory was loaded from (read in place)
    std::string path;           // the file a model was loaded from
    bool verify_checksum = true;
    bool builtin = false;

    ModelCore() = default;
    ModelCore(const ModelCore&) = delete;
    ModelCore& operator=(const ModelCore&) = delete;
    ~ModelCore();
};

// The Python Model: its core until close().
struct Model {
    std::shared_ptr<ModelCore> core;

    // The core of an open model; ValueError after close().
    std::shared_ptr<ModelCore> open() const;
};

// One sequence (itera_context) and the mutex that keeps it to one thread at a time.
struct ContextCore {
    std::shared_ptr<ModelCore> model;
    itera_context* ctx = nullptr;
    int device_requested = ITERA_DEVICE_CPU;
    std::mutex mutex;

    ContextCore(std::shared_ptr<ModelCore> model, int device);  // releases the GIL to create it
    ContextCore(const ContextCore&) = delete;
    ContextCore& operator=(const ContextCore&) = delete;
    ~ContextCore() { itera_context_free(ctx); }
};

struct Context {
    std::shared_ptr<ContextCore> core;
    nb::object model;  // the Python Model it was made from (Context.model)
};

// Sampling and stopping options of generate() / complete().
struct GenerateOptions {
    int64_t max_tokens = 64;
    itera_sampler_params sampling = itera_sampler_default_params();
    std::vector<std::string> stop;
};

// ---- conversions between Python values and the C API's ----

// "cpu", "cuda" or "auto" -> ITERA_DEVICE_*; ValueError otherwise.
int parse_device(const std::string& device);
const char* device_name(int device);

// An int argument (an int, a numpy integer, anything with __index__): TypeError for anything
// else, a str among them (nanobind's own conversion would parse "2"), ValueError beyond int64.
int64_t integer(nb::handle value, const char* name);

// Token ids from an int, a sequence of ints or an integer numpy array; TypeError for anything
// else (a str among them), ValueError for an id outside int32.
std::vector<int32_t> token_ids(nb::handle ids);

// A new float32 numpy array of `shape` over `data` (taken over: freed with the array).
nb::ndarray<nb::numpy, float> float_array(float* data, std::initializer_list<size_t> shape);

// Python str from bytes the tokenizer produced (invalid UTF-8 replaced, never an exception).
nb::str decode_text(const std::string& text);

GenerateOptions generate_options(nb::handle max_tokens, double temperature, nb::handle top_k, double top_p,
                                 nb::handle seed, bool greedy, nb::handle stop);

// The prompt of generate(): text (tokenized) or token ids.
std::vector<int32_t> prompt_ids(const ModelCore& model, nb::handle prompt, bool allow_unknown);

// A copy of one logits row of the library's (read() returns it, or nullptr when there is none) as a
// new float32 array [vocab], or None. read() runs with the GIL released and `mutex` held, the
// mutex of the context or batch whose row it reads.
template <class Read>
nb::object copy_logits(std::mutex& mutex, size_t vocab, Read read) {
    std::unique_ptr<float[]> out(new float[vocab]);
    {
        nb::gil_scoped_release released;
        std::lock_guard<std::mutex> lock(mutex);
        const float* l = read();
        if (!l)
            out.reset();
        else
            std::memcpy(out.get(), l, vocab * sizeof(float));
    }
    if (!out) return nb::none();
    return nb::cast(float_array(out.release(), {vocab}));
}

// ---- the parts of the module ----
void bind_model(nb::module_& m);
void bind_context(nb::module_& m);
void bind_batch(nb::module_& m);
void bind_generate(nb::module_& m);
void bind_perplexity(nb::class_<Model>& cls);  // Model.perplexity (perplexity.cpp)
void bind_convert(nb::module_& m);             // itera._itera.convert (convert.cpp)
void bind_sampler(nb::module_& m);             // itera.Sampler (sampler.cpp)

// Model.batch (batch.cpp).
nb::object new_batch(nb::object model, nb::handle n, nb::handle threads, const std::string& device);

}  // namespace itera_py
