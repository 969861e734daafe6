// itera._itera: the extension module behind the itera package (python/itera/__init__.py).
#include <nanobind/stl/string.h>

#include "python/binding.h"

namespace itera_py {

namespace {

// itera._errors.BY_CODE: ITERA_ERR_* code -> its itera.Error subclass (held for the process).
PyObject* errors_by_code = nullptr;

void raise_library_error(const LibraryError& e) {
    PyObject* cls = PyDict_GetItemWithError(errors_by_code, nb::int_(e.code).ptr());
    if (!cls && !PyErr_Occurred()) {
        nb::object base = nb::module_::import_("itera._errors").attr("Error");
        PyErr_SetString(base.ptr(), e.what());
        return;
    }
    if (cls) PyErr_SetString(cls, e.what());
}

}  // namespace

}  // namespace itera_py

NB_MODULE(_itera, m) {
    namespace nb = nanobind;
    using namespace itera_py;
    using namespace nb::literals;
    m.doc() = "The C API of the Itera runtime (itera.h) for Python; use it through the itera package.";
    errors_by_code = nb::module_::import_("itera._errors").attr("BY_CODE").inc_ref().ptr();
    nb::register_exception_translator([](const std::exception_ptr& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (const LibraryError& e) {
            raise_library_error(e);
        }
    });
    bind_model(m);
    bind_context(m);
    bind_batch(m);
    bind_generate(m);
    bind_convert(m);
    bind_sampler(m);
    m.def(
        "version", [] { return std::string(itera_version()); }, "The library's version (\"0.2.0\").");
    m.def(
        "device_available",
        [](const std::string& device) {
            const int d = parse_device(device);
            nb::gil_scoped_release released;
            return itera_device_available(d) == ITERA_OK;
        },
        "device"_a,
        R"(Whether contexts and batches can be made on "cpu", "cuda" or "auto" (always for "cpu" and
"auto"). Model.context(device="cuda") raises the reason when it cannot.)");
}
