// An unpickler for what torch.save writes (protocols 0-5 minus out-of-band buffers). It never
// executes anything: globals are names, and only an allowlist of torch functions is "called"
// (interpreted here as data constructors). Any other class becomes an inert object through
// NEWOBJ + BUILD; REDUCE on anything not allowlisted is an error naming the global.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

namespace itera::pt {

// One unpickled object. Objects are owned by their Pickle and refer to each other by pointer,
// as the memo shares them (and may make cycles).
struct Obj {
    enum class Type { none, boolean, integer, real, string, bytes, tuple, list, dict, global, object, storage, tensor };
    Type type = Type::none;
    bool b = false;
    int64_t i = 0;
    double f = 0;
    std::string s;                               // string, bytes; global/object: "module.Class"; storage: key
    std::vector<Obj*> items;                     // tuple, list (sets too)
    std::vector<std::pair<Obj*, Obj*>> entries;  // dict, in insertion order; a repeated key is not merged
    Obj* state = nullptr;                        // object: its BUILD state (a dict) or null

    // storage: a persistent id ('storage', torch.<T>Storage, key, location, numel)
    std::string dtype;  // "f32", "f16", "bf16", "f64", "i64", ..., "qint8"
    int64_t numel = 0;

    // tensor: _rebuild_tensor_v2 / _rebuild_qtensor arguments
    Obj* storage = nullptr;
    int64_t offset = 0;
    std::vector<int64_t> shape, stride;
    bool quantized = false;  // per-tensor affine: value = scale * (q - zero_point)
    double scale = 0;
    int64_t zero_point = 0;
};

// Move-only: the objects point at each other inside `arena`, whose moves keep addresses.
struct Pickle {
    std::deque<Obj> arena;  // every object made while unpickling
    Obj* root = nullptr;

    Pickle() = default;
    Pickle(Pickle&&) = default;
    Pickle& operator=(Pickle&&) = default;
    Pickle(const Pickle&) = delete;
    Pickle& operator=(const Pickle&) = delete;
};

const char* type_name(Obj::Type type);  // "dict", "tensor", ... for messages

// Throws itera::Error with a one-line message on malformed input or a disallowed global.
Pickle unpickle(const uint8_t* data, size_t size);

}  // namespace itera::pt
