// Python values to the C API's and back: devices, token ids, logits arrays, text, sampling options.
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "python/binding.h"

namespace itera_py {

int parse_device(const std::string& device) {
    if (device == "cpu") return ITERA_DEVICE_CPU;
    if (device == "cuda") return ITERA_DEVICE_CUDA;
    if (device == "auto") return ITERA_DEVICE_AUTO;
    throw nb::value_error(("device must be \"cpu\", \"cuda\" or \"auto\", not \"" + device + "\"").c_str());
}

const char* device_name(int device) {
    const char* name = itera_device_name(device);
    return name ? name : "unknown";
}

namespace {

int32_t token_id(nb::handle item) {
    if (PyUnicode_Check(item.ptr()) || PyBytes_Check(item.ptr()) || PyFloat_Check(item.ptr()))
        throw nb::type_error(("token ids must be ints, not " + std::string(Py_TYPE(item.ptr())->tp_name)).c_str());
    PyObject* index = PyNumber_Index(item.ptr());  // ints, numpy integers, anything with __index__
    if (!index) throw nb::python_error();
    int overflow = 0;
    const long long id = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (overflow || id < std::numeric_limits<int32_t>::min() || id > std::numeric_limits<int32_t>::max())
        throw nb::value_error("a token id is outside the range of int32");
    return static_cast<int32_t>(id);
}

// An integer numpy array (any int dtype, one dimension, any strides), element by element.
bool array_ids(nb::handle ids, std::vector<int32_t>* out) {
    nb::ndarray<nb::ro> a;
    if (!nb::try_cast(ids, a, false)) return false;
    const nb::dlpack::dtype t = a.dtype();
    const bool is_int = t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int);
    if (!is_int && t.code != static_cast<uint8_t>(nb::dlpack::dtype_code::UInt))
        throw nb::type_error("token ids must be integers, not an array of another dtype");
    if (a.ndim() != 1) throw nb::value_error("an array of token ids must have one dimension");
    if (t.lanes != 1 || (t.bits != 8 && t.bits != 16 && t.bits != 32 && t.bits != 64))
        throw nb::type_error("token ids: unsupported integer dtype");
    const auto* base = static_cast<const uint8_t*>(a.data());
    const int64_t stride = a.stride(0) * (t.bits / 8);
    out->resize(a.shape(0));
    for (size_t i = 0; i < a.shape(0); i++) {
        const uint8_t* p = base + static_cast<int64_t>(i) * stride;
        int64_t v = 0;
        uint64_t u = 0;
        switch (t.bits) {
            case 8:
                v = is_int ? *reinterpret_cast<const int8_t*>(p) : *p;
                break;
            case 16:
                v = is_int ? *reinterpret_cast<const int16_t*>(p) : *reinterpret_cast<const uint16_t*>(p);
                break;
            case 32:
                v = is_int ? *reinterpret_cast<const int32_t*>(p) : *reinterpret_cast<const uint32_t*>(p);
                break;
            default:
                std::memcpy(&u, p, 8);
                if (!is_int && u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                    throw nb::value_error("a token id is outside the range of int32");
                v = static_cast<int64_t>(u);
        }
        if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
            throw nb::value_error("a token id is outside the range of int32");
        (*out)[i] = static_cast<int32_t>(v);
    }
    return true;
}

}  // namespace

int64_t integer(nb::handle value, const char* name) {
    if (PyUnicode_Check(value.ptr()) || PyBytes_Check(value.ptr()) || PyFloat_Check(value.ptr()) ||
        !PyIndex_Check(value.ptr()))
        throw nb::type_error(
            (std::string(name) + " must be an int, not " + std::string(Py_TYPE(value.ptr())->tp_name)).c_str());
    nb::object index = nb::steal(PyNumber_Index(value.ptr()));
    if (!index.is_valid()) throw nb::python_error();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
    if (overflow) throw nb::value_error((std::string(name) + " is out of range").c_str());
    return v;
}

std::vector<int32_t> token_ids(nb::handle ids) {
    if (PyLong_Check(ids.ptr())) return {token_id(ids)};
    if (PyUnicode_Check(ids.ptr()) || PyBytes_Check(ids.ptr()) || PyByteArray_Check(ids.ptr()))
        throw nb::type_error("token ids must be an int or a sequence of ints, not text (Model.tokenize makes ids)");
    std::vector<int32_t> out;
    if (array_ids(ids, &out)) return out;
    PyObject* it = PyObject_GetIter(ids.ptr());
    if (!it) {
        PyErr_Clear();
        throw nb::type_error(
            ("token ids must be an int or a sequence of ints, not " + std::string(Py_TYPE(ids.ptr())->tp_name))
                .c_str());
    }
    nb::object iter = nb::steal(it);
    while (PyObject* item = PyIter_Next(it)) {
        nb::object held = nb::steal(item);
        out.push_back(token_id(held));
    }
    if (PyErr_Occurred()) throw nb::python_error();
    return out;
}

nb::ndarray<nb::numpy, float> float_array(float* data, std::initializer_list<size_t> shape) {
    nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    return nb::ndarray<nb::numpy, float>(data, shape, owner);
}

nb::str decode_text(const std::string& text) {
    return nb::steal<nb::str>(PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "replace"));
}

GenerateOptions generate_options(nb::handle max_tokens_arg, double temperature, nb::handle top_k_arg, double top_p,
                                 nb::handle seed, bool greedy, nb::handle stop) {
    GenerateOptions o;
    const int64_t max_tokens = integer(max_tokens_arg, "max_tokens"), top_k = integer(top_k_arg, "top_k");
    if (max_tokens < 0) throw nb::value_error("max_tokens must be >= 0");
    if (top_k < 0 || top_k > std::numeric_limits<int32_t>::max())
        throw nb::value_error("top_k must be between 0 (keep all) and 2^31 - 1");
    o.max_tokens = max_tokens;
    o.sampling.greedy = greedy ? 1 : 0;
    o.sampling.temperature = static_cast<float>(temperature);
    o.sampling.top_k = static_cast<int32_t>(top_k);
    o.sampling.top_p = static_cast<float>(top_p);
    if (seed.is_none()) {
        std::random_device rd;  // as itera-run without --seed
        o.sampling.seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    } else {
        if (PyFloat_Check(seed.ptr()) || PyUnicode_Check(seed.ptr()) || !PyIndex_Check(seed.ptr()))
            throw nb::type_error("seed must be an int or None");
        nb::object index = nb::steal(PyNumber_Index(seed.ptr()));
        if (!index.is_valid()) throw nb::python_error();
        const unsigned long long s = PyLong_AsUnsignedLongLong(index.ptr());
        if (PyErr_Occurred()) {
            PyErr_Clear();
            throw nb::value_error("seed must be between 0 and 2^64 - 1");
        }
        o.sampling.seed = s;
    }
    // The library checks temperature, top_k and top_p: a sampler made now reports them at the call.
    itera_sampler* probe = nullptr;
    check(itera_sampler_new(&o.sampling, &probe));
    itera_sampler_free(probe);
    if (!stop.is_none()) {
        if (PyUnicode_Check(stop.ptr())) {
            o.stop.push_back(nb::cast<std::string>(stop));
        } else {
            for (nb::handle s : nb::iter(stop)) {
                if (!PyUnicode_Check(s.ptr())) throw nb::type_error("stop must be a str or a sequence of str");
                o.stop.push_back(nb::cast<std::string>(s));
            }
        }
        for (const std::string& s : o.stop)
            if (s.empty()) throw nb::value_error("a stop string must not be empty");
    }
    return o;
}

}  // namespace itera_py
