// itera.Model: loading (a path, bytes, the built-in model), what the model is, its tokenizer, and
// the objects made from it (contexts, batches, generators).
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <climits>
#include <cstring>

#include "python/binding.h"
#include "runtime/builtin_model.h"

namespace itera_py {

using namespace nb::literals;

ModelCore::~ModelCore() {
    itera_model_free(model);
    if (bytes) {  // the last owner may be dropped by any thread, with or without the GIL
        const PyGILState_STATE gil = PyGILState_Ensure();
        Py_DECREF(bytes);
        PyGILState_Release(gil);
    }
}

std::shared_ptr<ModelCore> Model::open() const {
    if (!core) throw nb::value_error("the model is closed");
    return core;
}

namespace {

itera_model_params load_params(bool verify_checksum) {
    itera_model_params p = itera_model_default_params();
    p.verify_checksum = verify_checksum ? 1 : 0;
    p.copy_buffer = 0;  // from a bytes object, which cannot change and is kept
    return p;
}

std::string fs_path(nb::handle source) {
    nb::object path = nb::steal(PyOS_FSPath(source.ptr()));
    if (!path.is_valid()) throw nb::python_error();
    std::string s;
    if (PyBytes_Check(path.ptr())) {
        s.assign(PyBytes_AS_STRING(path.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(path.ptr())));
    } else {
        nb::object encoded = nb::steal(PyUnicode_EncodeFSDefault(path.ptr()));
        if (!encoded.is_valid()) throw nb::python_error();
        s.assign(PyBytes_AS_STRING(encoded.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(encoded.ptr())));
    }
    if (s.find('\0') != std::string::npos) throw nb::value_error("the model path contains a NUL byte");
    return s;
}

std::shared_ptr<ModelCore> load(nb::handle source, bool verify_checksum) {
    auto core = std::make_shared<ModelCore>();
    core->verify_checksum = verify_checksum;
    const itera_model_params params = load_params(verify_checksum);
    if (PyUnicode_Check(source.ptr()) || PyObject_HasAttrString(source.ptr(), "__fspath__")) {
        core->path = fs_path(source);
        nb::gil_scoped_release released;
        check(itera_model_load_file(core->path.c_str(), &params, &core->model));
        return core;
    }
    if (PyBytes_Check(source.ptr())) {
        core->bytes = source.inc_ref().ptr();
    } else if (PyObject_CheckBuffer(source.ptr())) {
        // bytearray, memoryview, numpy: memory that may change or go away, so one copy is kept.
        core->bytes = PyBytes_FromObject(source.ptr());
        if (!core->bytes) throw nb::python_error();
    } else {
        throw nb::type_error(("Model() takes a path (str or os.PathLike) or the bytes of a .itl file, not " +
                              std::string(Py_TYPE(source.ptr())->tp_name))
                                 .c_str());
    }
    const char* data = PyBytes_AS_STRING(core->bytes);
    const size_t size = static_cast<size_t>(PyBytes_GET_SIZE(core->bytes));
    nb::gil_scoped_release released;
    check(itera_model_load_memory(data, size, &params, &core->model));
    return core;
}

std::shared_ptr<ModelCore> load_builtin() {
    auto core = std::make_shared<ModelCore>();
    core->builtin = true;
    const itera_model_params params = load_params(true);
    nb::gil_scoped_release released;  // 4096-byte aligned and constant: used in place
    check(itera_model_load_memory(itera_builtin_model, itera_builtin_model_size, &params, &core->model));
    return core;
}

// Fills a string through one of the C API's text calls (ask for the length, then fill).
template <class Fill>
std::string library_text(Fill fill) {
    size_t len = 0;
    const int rc = fill(nullptr, 0, &len);
    if (rc != ITERA_ERR_BUFFER_TOO_SMALL) check(rc);
    std::string s(len + 1, '\0');
    check(fill(s.data(), s.size(), &len));
    s.resize(len);
    return s;
}

std::vector<int32_t> tokenize(const ModelCore& m, const std::string& text, bool allow_unknown) {
    if (text.find('\0') != std::string::npos) throw nb::value_error("text contains a NUL character");
    const int flags = allow_unknown ? ITERA_TOKENIZE_ALLOW_UNKNOWN : 0;
    // Every token takes at least one byte of text, so len + 1 ids always suffice; a long text is
    // counted first instead of reserving 4 bytes per byte.
    int32_t n = 0;
    std::vector<int32_t> ids;
    nb::gil_scoped_release released;
    if (text.size() >= (1u << 20) && text.size() < INT32_MAX) {
        const int rc = itera_tokenize(m.model, text.c_str(), nullptr, 0, &n, flags);
        if (rc != ITERA_ERR_BUFFER_TOO_SMALL) check(rc);
        ids.resize(static_cast<size_t>(n));
    } else {
        ids.resize(std::min<size_t>(text.size() + 1, INT32_MAX));
    }
    check(itera_tokenize(m.model, text.c_str(), ids.data(), static_cast<int32_t>(ids.size()), &n, flags));
    ids.resize(static_cast<size_t>(n));
    return ids;
}

nb::object new_context(nb::object model, const std::string& device) {
    Context c;
    c.core = std::make_shared<ContextCore>(nb::cast<Model&>(model).open(), parse_device(device));
    c.model = std::move(model);
    return nb::cast(std::move(c));
}

}  // namespace

std::vector<int32_t> prompt_ids(const ModelCore& model, nb::handle prompt, bool allow_unknown) {
    if (PyUnicode_Check(prompt.ptr())) return tokenize(model, nb::cast<std::string>(prompt), allow_unknown);
    return token_ids(prompt);
}

ContextCore::ContextCore(std::shared_ptr<ModelCore> m, int device) : model(std::move(m)), device_requested(device) {
    itera_context_params p = itera_context_default_params();
    p.device = device;
    nb::gil_scoped_release released;
    check(itera_context_new(model->model, &p, &ctx));
}

void bind_model(nb::module_& m) {
    nb::class_<Model>(m, "Model",
                      R"(A loaded .itl model: immutable, shared by any number of threads, contexts and batches.

Model(source, verify_checksum=True) loads `source`: a path (str or os.PathLike; the file is mapped
read-only), or the bytes of a .itl file (a bytes object is used in place and kept referenced;
bytearray, memoryview and other buffers are copied once). verify_checksum hashes the whole file
once and refuses a mismatch. Model.builtin() is the shipped King James Bible model.

Errors: itera.FileError (cannot open the file), itera.FormatError (corrupt or unsupported),
TypeError for another type of source. close() (or a `with` block) frees the model once nothing
made from it is left: contexts, batches and generators keep it alive.)")
        .def(
            "__init__",
            [](Model* self, nb::handle source, bool verify_checksum) {
                new (self) Model{load(source, verify_checksum)};
            },
            "source"_a, "verify_checksum"_a = true,
            nb::sig("def __init__(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview, "
                    "verify_checksum: bool = True) -> None"))
        .def_static(
            "builtin", [] { return Model{load_builtin()}; },
            "The built-in model (623,840 parameters, a 3,000-word vocabulary; models/README.md).")
        .def_prop_ro(
            "vocab_size", [](const Model& s) { return itera_model_vocab_size(s.open()->model); },
            "Token ids are in [0, vocab_size); every logits array has this many entries, by token id.")
        .def_prop_ro(
            "hidden", [](const Model& s) { return itera_model_hidden(s.open()->model); }, "Hidden width.")
        .def_prop_ro(
            "max_seq_length", [](const Model& s) { return itera_model_max_seq_length(s.open()->model); },
            "The context window (past it a context re-runs the last max_seq_length tokens per token).")
        .def_prop_ro(
            "n_layers", [](const Model& s) { return itera_model_n_layers(s.open()->model); }, "Layers.")
        .def_prop_ro(
            "has_tokenizer", [](const Model& s) { return itera_model_has_tokenizer(s.open()->model) != 0; },
            "Whether the file has a tokenizer (without one, work with token ids).")
        .def_prop_ro(
            "eos",
            [](const Model& s) -> nb::object {
                const int32_t eos = itera_model_eos(s.open()->model);
                return eos < 0 ? nb::object(nb::none()) : nb::object(nb::int_(eos));
            },
            nb::sig("def eos(self) -> int | None"), "The <EOS> token id, None when the tokenizer has none.")
        .def_prop_ro(
            "fingerprint", [](const Model& s) { return itera_model_fingerprint(s.open()->model); },
            "The .itl checksum: equal for the same model content; saved states are tied to it.")
        .def_prop_ro(
            "path",
            [](const Model& s) -> nb::object {
                const auto core = s.open();
                return core->path.empty() ? nb::object(nb::none()) : nb::object(nb::str(core->path.c_str()));
            },
            nb::sig("def path(self) -> str | None"), "The file the model was loaded from (None otherwise).")
        .def_prop_ro(
            "info",
            [](const Model& s) {
                const auto core = s.open();
                const std::string json = library_text(
                    [&](char* t, size_t cap, size_t* len) { return itera_model_info(core->model, t, cap, len); });
                return nb::module_::import_("json").attr("loads")(decode_text(json));
            },
            nb::sig("def info(self) -> dict[str, typing.Any]"),
            R"(The model as plain dicts and lists, what `itera-run info --json` prints: "vocab_size",
"hidden", "max_seq_length", "layers" (each {"inner", "state", "conv_kernel", "kind", "top_k",
"ffn_widths"}), "tensors" (each {"name", "shape", "dtype", "layout", "bytes"}), "parts",
"parameters", "tensor_bytes", "bits_per_weight", "file_bytes", "tokenizer_tokens", ...)")
        .def_prop_ro(
            "closed", [](const Model& s) { return !s.core; }, "True after close().")
        .def(
            "close", [](Model& s) { s.core.reset(); },
            "Lets the model go: freed now, or when the last context, batch or generator made from it is gone. "
            "Using the Model afterwards raises ValueError.")
        .def(
            "__enter__", [](nb::handle self) { return nb::borrow(self); }, nb::sig("def __enter__(self) -> Model"))
        .def(
            "__exit__", [](Model& s, nb::args) { s.core.reset(); },
            nb::sig("def __exit__(self, *args: object) -> None"))
        .def(
            "tokenize",
            [](const Model& s, const std::string& text, bool allow_unknown) {
                return tokenize(*s.open(), text, allow_unknown);
            },
            "text"_a, "allow_unknown"_a = false,
            R"(Token ids of `text` as the model's tokenizer splits it (word-level: lower-cased, split on
white space; character-level: one id per code point). A word the vocabulary lacks raises
itera.UnknownTokenError naming it, unless allow_unknown maps it to <UNK>. itera.NoTokenizerError
for a model without a tokenizer.)")
        .def(
            "detokenize",
            [](const Model& s, nb::handle ids) {
                const auto core = s.open();
                const std::vector<int32_t> v = token_ids(ids);
                std::string text;
                {
                    nb::gil_scoped_release released;
                    text = library_text([&](char* t, size_t cap, size_t* len) {
                        return itera_detokenize(core->model, v.data(), static_cast<int32_t>(v.size()), t, cap, len);
                    });
                }
                return decode_text(text);
            },
            "ids"_a, nb::sig("def detokenize(self, ids: int | typing.Iterable[int]) -> str"),
            "The text of token ids (itera.InvalidArgumentError for an id outside [0, vocab_size)).")
        .def(
            "piece",
            [](const Model& s, int32_t id, bool first) {
                const auto core = s.open();
                return decode_text(library_text([&](char* t, size_t cap, size_t* len) {
                    return itera_token_piece(core->model, id, first ? 1 : 0, t, cap, len);
                }));
            },
            "id"_a, "first"_a = false,
            "The text token `id` adds when streamed: word-level models put a space before every word but the first.")
        .def(
            "context", [](nb::object self, const std::string& device) { return new_context(std::move(self), device); },
            "device"_a = "cpu", nb::sig("def context(self, device: str = 'cpu') -> Context"),
            R"(A new, empty sequence on "cpu", "cuda" (NVIDIA GPU 0) or "auto" (the GPU when one can run
the model, else the CPU). itera.NoDeviceError (or its subclass itera.NoCudaError for a library
built without CUDA) when "cuda" cannot be had; the message says why.)")
        .def(
            "batch",
            [](nb::object self, nb::handle n, nb::handle threads, const std::string& device) {
                return new_batch(std::move(self), n, threads, device);
            },
            "n"_a, nb::kw_only(), "threads"_a = 1, "device"_a = "cpu",
            nb::sig("def batch(self, n: int, *, threads: int = 1, device: str = 'cpu') -> Batch"),
            R"(n new, empty sequences (1 to 2^20) decoded in lockstep on `threads` CPU threads (1 to
1024) or on device "cuda" / "auto" (see context()).)")
        .def("__repr__",
             [](const Model& s) {
                 if (!s.core) return std::string("<itera.Model (closed)>");
                 const std::string from = s.core->builtin ? "built-in" : !s.core->path.empty() ? s.core->path : "bytes";
                 return "<itera.Model " + from + ": vocab " + std::to_string(itera_model_vocab_size(s.core->model)) +
                        ", hidden " + std::to_string(itera_model_hidden(s.core->model)) + ", " +
                        std::to_string(itera_model_n_layers(s.core->model)) + " layers>";
             })
        .def("__reduce__", [](nb::handle self) {
            // Pickled as how it was loaded: the built-in model, its path, or its bytes.
            const auto core = nb::cast<const Model&>(self).open();
            nb::object cls = nb::borrow(self.type());
            if (core->builtin)
                return nb::make_tuple(nb::module_::import_("itera._unpickle").attr("builtin_model"), nb::tuple());
            nb::object source = core->bytes ? nb::borrow(core->bytes) : nb::object(nb::str(core->path.c_str()));
            return nb::make_tuple(cls, nb::make_tuple(source, core->verify_checksum));
        });
}

}  // namespace itera_py
