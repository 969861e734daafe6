// itera.Context: one sequence. eval() feeds token ids and returns the logits after the last one as
// a numpy array of its own (a copy: the library reuses its logits memory at the next call, so a
// view would change under the caller); save() / restore() and pickling carry its whole state.
#include <nanobind/stl/string.h>

#include <climits>
#include <cstring>

#include "python/binding.h"

namespace itera_py {

using namespace nb::literals;

namespace {

int32_t vocab_of(const ContextCore& c) { return itera_model_vocab_size(c.model->model); }

nb::object eval(Context& self, nb::handle ids, bool want_logits) {
    const std::shared_ptr<ContextCore> core = self.core;
    const std::vector<int32_t> tokens = token_ids(ids);
    if (tokens.empty()) throw nb::value_error("no token ids to evaluate");
    if (tokens.size() > INT32_MAX) throw nb::value_error("more than 2^31 - 1 token ids");
    const size_t vocab = static_cast<size_t>(vocab_of(*core));
    std::unique_ptr<float[]> out(want_logits ? new float[vocab] : nullptr);
    {
        nb::gil_scoped_release released;
        std::lock_guard<std::mutex> lock(core->mutex);
        const float* logits = nullptr;
        check(itera_eval_tokens(core->ctx, tokens.data(), static_cast<int32_t>(tokens.size()),
                                want_logits ? &logits : nullptr));
        if (want_logits) std::memcpy(out.get(), logits, vocab * sizeof(float));
    }
    if (!want_logits) return nb::none();
    return nb::cast(float_array(out.release(), {vocab}));
}

nb::object logits(Context& self) {
    const std::shared_ptr<ContextCore> core = self.core;
    const size_t vocab = static_cast<size_t>(vocab_of(*core));
    return copy_logits(core->mutex, vocab, [&] { return itera_context_logits(core->ctx); });
}

int32_t position(Context& self) {
    const std::shared_ptr<ContextCore> core = self.core;
    nb::gil_scoped_release released;
    std::lock_guard<std::mutex> lock(core->mutex);
    return itera_context_position(core->ctx);
}

nb::bytes save(Context& self) {
    const std::shared_ptr<ContextCore> core = self.core;
    std::vector<char> state;
    {
        nb::gil_scoped_release released;
        std::lock_guard<std::mutex> lock(core->mutex);
        state.resize(itera_context_state_size(core->ctx));
        size_t written = 0;
        check(itera_context_save(core->ctx, state.data(), state.size(), &written));
    }
    return nb::bytes(state.data(), state.size());
}

// Any bytes-like object, read in place (the buffer is held, so it cannot be resized meanwhile).
void restore(Context& self, nb::handle state) {
    const std::shared_ptr<ContextCore> core = self.core;
    Py_buffer view;
    if (PyObject_GetBuffer(state.ptr(), &view, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        throw nb::type_error(("restore() takes the bytes save() returned (a contiguous bytes-like object), not " +
                              std::string(Py_TYPE(state.ptr())->tp_name))
                                 .c_str());
    }
    struct Release {
        Py_buffer* v;
        ~Release() { PyBuffer_Release(v); }
    } release{&view};
    nb::gil_scoped_release released;
    std::lock_guard<std::mutex> lock(core->mutex);
    check(itera_context_restore(core->ctx, view.buf, static_cast<size_t>(view.len)));
}

nb::object context_from_state(nb::handle model, const std::string& device, nb::handle state) {
    Context c;
    c.core = std::make_shared<ContextCore>(nb::cast<Model&>(model).open(), parse_device(device));
    c.model = nb::borrow(model);
    restore(c, state);
    return nb::cast(std::move(c));
}

}  // namespace

void bind_context(nb::module_& m) {
    nb::class_<Context>(m, "Context",
                        R"(One sequence of a model (Model.context()): the recurrent state of every layer, so each
new token costs the same. Use it from one thread at a time (other threads wait for it); any
number of contexts of one model run in parallel. Picklable, through save() and restore().)")
        .def("eval", eval, "ids"_a, nb::kw_only(), "logits"_a = true,
             nb::sig("def eval(self, ids: int | typing.Iterable[int], *, logits: bool = True) -> "
                     "numpy.ndarray[typing.Any, numpy.dtype[numpy.float32]] | None"),
             R"(Feeds token ids (an int, a sequence of ints or an integer numpy array; a prompt's ids
run through the model together) and returns the logits [vocab_size] predicting the next token,
indexed by token id: a new float32 array the caller owns (a copy of the library's, which the next
call overwrites). logits=False skips the output head and returns None (cheaper, for tokens whose
prediction is not needed). itera.InvalidArgumentError for an id the model does not have (the
context is then unchanged).)")
        .def_prop_ro("logits", logits,
                     nb::sig("def logits(self) -> numpy.ndarray[typing.Any, numpy.dtype[numpy.float32]] | None"),
                     "A copy of the last logits (also after restore()); None after reset() or an eval(logits=False).")
        .def_prop_ro(
            "position", position,
            "Tokens the state covers (at most max_seq_length; past it the last max_seq_length are re-run per token).")
        .def_prop_ro(
            "device", [](Context& s) { return device_name(itera_context_device(s.core->ctx)); },
            "\"cpu\" or \"cuda\": where it runs (\"auto\" resolved).")
        .def_prop_ro(
            "model", [](Context& s) { return s.model; }, nb::sig("def model(self) -> Model"),
            "The Model it was made from (kept alive, also after Model.close()).")
        .def(
            "reset",
            [](Context& s) {
                const std::shared_ptr<ContextCore> core = s.core;
                nb::gil_scoped_release released;
                std::lock_guard<std::mutex> lock(core->mutex);
                check(itera_context_reset(core->ctx));
            },
            "Forgets the sequence: as new.")
        .def("save", save,
             R"(The whole state as bytes: the window of tokens, the conv and SSM state and the last logits,
tied to the model's fingerprint. A context restored from them continues exactly as this one would.)")
        .def("restore", restore, "state"_a, nb::sig("def restore(self, state: bytes | bytearray | memoryview) -> None"),
             R"(Replaces the state with one save() returned, from any source: the reader checks every
field and a checksum. itera.ModelMismatchError for a state of another model, itera.FormatError
for damaged or truncated bytes; the context is unchanged on error.)")
        .def("__reduce__",
             [](nb::handle self) {
                 Context& c = nb::cast<Context&>(self);
                 // The model as a fresh handle on the same core: pickles also after Model.close().
                 nb::object model = nb::cast(Model{c.core->model});
                 return nb::make_tuple(nb::module_::import_("itera._unpickle").attr("context"),
                                       nb::make_tuple(model, device_name(c.core->device_requested), save(c)));
             })
        .def("__repr__", [](Context& s) {
            return "<itera.Context on " + std::string(device_name(itera_context_device(s.core->ctx))) + ", position " +
                   std::to_string(position(s)) + ">";
        });
    m.def("_context_from_state", context_from_state, "model"_a, "device"_a, "state"_a,
          "Unpickles a Context: a new context of `model` on `device`, restored from `state`.");
}

}  // namespace itera_py
