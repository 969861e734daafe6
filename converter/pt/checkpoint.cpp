#include "converter/pt/checkpoint.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "common/error.h"
#include "common/file_io.h"
#include "converter/pt/pickle_machine.h"
#include "converter/pt/zip_archive.h"

namespace itera::pt {

Value::~Value() = default;

const Value* Value::get(const std::string& key) const {
    for (const auto& [k, v] : entries)
        if (k == key) return &v;
    return nullptr;
}

namespace {

constexpr int kMaxDepth = 100;           // nesting of config values
constexpr int64_t kElementsPerByte = 8;  // materialized elements allowed per archive byte (tied weights reuse storage)
const std::string kPacked = "._packed_params._packed_params";

using Storages = std::map<std::string, const ZipEntry*>;

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) {  // zero or subnormal: mant * 2^-24
        const float v = std::ldexp(float(mant), -24);
        return sign ? -v : v;
    }
    if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | mant << 13);  // inf, nan
    return std::bit_cast<float>(sign | (exp + 112) << 23 | mant << 13);
}

uint64_t load_le(const uint8_t* p, size_t n) {
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= uint64_t(p[k]) << (8 * k);
    return v;
}

// Storage element types, named as in Tensor::dtype.
enum class Elem { f32, f16, bf16, f64, i64, i32, i16, i8, u8, boolean, qint8 };
struct ElemInfo {
    const char* name;
    Elem elem;
    size_t size;
};
constexpr ElemInfo kElems[] = {
    {"f32", Elem::f32, 4}, {"f16", Elem::f16, 2},      {"bf16", Elem::bf16, 2},   {"f64", Elem::f64, 8},
    {"i64", Elem::i64, 8}, {"i32", Elem::i32, 4},      {"i16", Elem::i16, 2},     {"i8", Elem::i8, 1},
    {"u8", Elem::u8, 1},   {"bool", Elem::boolean, 1}, {"qint8", Elem::qint8, 1},
};

const ElemInfo& elem_info(const std::string& dtype) {
    for (const ElemInfo& e : kElems)
        if (dtype == e.name) return e;
    throw Error("unsupported storage dtype '" + dtype + "'");
}

int64_t sign_extend(uint64_t v, size_t bytes) {
    if (bytes < 8 && (v >> (8 * bytes - 1)) & 1) v |= ~uint64_t(0) << (8 * bytes);
    return int64_t(v);
}

// One little-endian storage element as FP32.
float element(const uint8_t* p, const ElemInfo& e, float scale, int64_t zero_point) {
    switch (e.elem) {
        case Elem::f32:
            return std::bit_cast<float>(uint32_t(load_le(p, 4)));
        case Elem::f16:
            return half_to_float(uint16_t(load_le(p, 2)));
        case Elem::bf16:
            return std::bit_cast<float>(uint32_t(load_le(p, 2)) << 16);
        case Elem::f64:
            return float(std::bit_cast<double>(load_le(p, 8)));
        case Elem::u8:
            return float(p[0]);
        case Elem::boolean:
            return p[0] ? 1.0f : 0.0f;
        case Elem::qint8:
            return scale * float(int8_t(p[0]) - zero_point);  // as torch: in FP32
        default:
            return float(sign_extend(load_le(p, e.size), e.size));  // i8 .. i64
    }
}

// Copies a (possibly strided, offset, quantized) tensor view out of its storage, after
// checking that every element it addresses lies inside the storage.
Tensor load_tensor(const std::string& name, const Obj& t, const Storages& storages, int64_t* budget) {
    const Obj& st = *t.storage;
    const std::string where = "tensor '" + name + "'";
    auto found = storages.find(st.s);
    if (found == storages.end()) throw Error(where + ": storage data/" + st.s + " is missing from the archive");
    const ZipEntry& entry = *found->second;
    const ElemInfo& elem = elem_info(st.dtype);
    const size_t isz = elem.size;
    if (uint64_t(st.numel) > entry.size / isz || size_t(st.numel) * isz != entry.size)
        throw Error(where + ": storage data/" + st.s + " holds " + std::to_string(entry.size) + " bytes, not " +
                    std::to_string(st.numel) + " " + st.dtype + " elements");
    if (t.shape.size() != t.stride.size()) throw Error(where + ": shape and stride differ in length");

    int64_t numel = 1;
    for (int64_t d : t.shape) {
        if (d < 0 || (d > 0 && numel > std::numeric_limits<int64_t>::max() / d)) throw Error(where + ": absurd shape");
        numel *= d;
    }
    if (t.offset < 0 || t.offset > st.numel)
        throw Error(where + ": storage offset " + std::to_string(t.offset) + " outside its storage");
    if (numel > st.numel)
        throw Error(where + ": needs " + std::to_string(numel) + " elements, its storage holds " +
                    std::to_string(st.numel));
    if (numel > 0) {
        // The last element addressed: offset + sum((size - 1) * stride) must stay below numel.
        int64_t last = t.offset;
        if (last >= st.numel)
            throw Error(where + ": storage offset " + std::to_string(t.offset) + " outside its storage");
        for (size_t d = 0; d < t.shape.size(); ++d) {
            if (t.stride[d] < 0) throw Error(where + ": negative stride");
            if (t.stride[d] > 0 && t.shape[d] - 1 > (st.numel - 1 - last) / t.stride[d])
                throw Error(where + ": shape and strides reach beyond its storage of " + std::to_string(st.numel) +
                            " elements");
            last += (t.shape[d] - 1) * t.stride[d];
        }
    }
    *budget -= numel;
    if (*budget < 0) throw Error(where + ": tensors address more elements than the file can justify");

    Tensor out;
    out.dtype = st.dtype;
    out.shape = t.shape;
    out.storage_key = st.s;
    out.storage_offset = t.offset;
    out.values.resize(size_t(numel));
    const float scale = float(t.scale);
    std::vector<int64_t> index(t.shape.size(), 0);
    int64_t src = t.offset;
    for (int64_t n = 0; n < numel; ++n) {
        out.values[size_t(n)] = element(entry.data + size_t(src) * isz, elem, scale, t.zero_point);
        for (size_t d = t.shape.size(); d-- > 0;) {  // odometer over the index, last dim fastest
            if (++index[d] < t.shape[d]) {
                src += t.stride[d];
                break;
            }
            src -= t.stride[d] * (t.shape[d] - 1);
            index[d] = 0;
        }
    }
    return out;
}

std::string dict_key(const Obj* key) {
    if (key->type == Obj::Type::string || key->type == Obj::Type::bytes) return key->s;
    if (key->type == Obj::Type::integer) return std::to_string(key->i);
    throw Error(std::string("config has a dict key of type ") + type_name(key->type));
}

// Plain config data. `budget` caps the nodes made, as memo references can share (and so
// multiply) subtrees.
Value to_value(const Obj* o, int depth, int64_t* budget) {
    if (depth > kMaxDepth) throw Error("config nests deeper than " + std::to_string(kMaxDepth) + " levels");
    if (--*budget < 0) throw Error("config expands beyond the size of its pickle");
    Value v;
    switch (o->type) {
        case Obj::Type::none:
            break;
        case Obj::Type::boolean:
            v.kind = Value::Kind::boolean;
            v.b = o->b;
            break;
        case Obj::Type::integer:
            v.kind = Value::Kind::integer;
            v.i = o->i;
            break;
        case Obj::Type::real:
            v.kind = Value::Kind::real;
            v.f = o->f;
            break;
        case Obj::Type::string:
        case Obj::Type::bytes:
        case Obj::Type::global:  // a global as its "module.name"
            v.kind = Value::Kind::string;
            v.s = o->s;
            break;
        case Obj::Type::tuple:
        case Obj::Type::list:
            v.kind = Value::Kind::list;
            for (const Obj* item : o->items) v.items.push_back(to_value(item, depth + 1, budget));
            break;
        case Obj::Type::dict:
        case Obj::Type::object: {  // an inert object is the dict of its state
            v.kind = Value::Kind::dict;
            const Obj* dict = o->type == Obj::Type::dict ? o : o->state;
            if (!dict) break;
            std::map<std::string, size_t> where;
            for (const auto& [key, item] : dict->entries) {
                std::string k = dict_key(key);
                Value value = to_value(item, depth + 1, budget);
                auto [it, fresh] = where.emplace(k, v.entries.size());
                if (fresh)
                    v.entries.emplace_back(std::move(k), std::move(value));
                else
                    v.entries[it->second].second = std::move(value);  // a repeated key overwrites
            }
            break;
        }
        case Obj::Type::storage:
        case Obj::Type::tensor:
            throw Error("config holds a tensor; only plain values are supported");
    }
    return v;
}

// dict[key] for a string key; the last occurrence wins, as in Python.
const Obj* lookup(const Obj* dict, const std::string& key) {
    const Obj* found = nullptr;
    for (const auto& [k, v] : dict->entries)
        if (k->type == Obj::Type::string && k->s == key) found = v;
    return found;
}

void add_tensor(Checkpoint& ck, const std::string& name, Tensor t) {
    if (!ck.tensors.emplace(name, std::move(t)).second) throw Error("state_dict names tensor '" + name + "' twice");
    ck.order.push_back(name);
}

}  // namespace

Checkpoint read_checkpoint_bytes(const uint8_t* data, size_t size, bool verify_crc) {
    const std::vector<ZipEntry> entries = read_zip(data, size, verify_crc);
    const ZipEntry* pkl = nullptr;
    for (const ZipEntry& e : entries) {
        if (e.name != "data.pkl" && !ends_with(e.name, "/data.pkl")) continue;
        if (pkl) throw Error("archive holds two pickles: '" + pkl->name + "' and '" + e.name + "'");
        pkl = &e;
    }
    if (!pkl) throw Error("not a PyTorch checkpoint: no data.pkl in the archive");
    const std::string top = pkl->name.substr(0, pkl->name.size() - std::strlen("data.pkl"));

    Storages storages;
    for (const ZipEntry& e : entries) {
        if (e.name == top + "byteorder" && std::string(reinterpret_cast<const char*>(e.data), e.size) != "little")
            throw Error("checkpoint byte order is '" + std::string(reinterpret_cast<const char*>(e.data), e.size) +
                        "'; only little-endian is supported");
        if (e.name.size() > top.size() + 5 && e.name.compare(0, top.size() + 5, top + "data/") == 0)
            storages.emplace(e.name.substr(top.size() + 5), &e);
    }

    const Pickle pickle = unpickle(pkl->data, pkl->size);
    const Obj* root = pickle.root;
    if (root->type != Obj::Type::dict)
        throw Error(std::string("checkpoint holds a ") + type_name(root->type) +
                    ", expected a state_dict or a dict with 'model_state_dict'");

    Checkpoint ck;
    const Obj* sd = root;
    if (const Obj* inner = lookup(root, "model_state_dict")) {
        if (inner->type != Obj::Type::dict)
            throw Error(std::string("'model_state_dict' is a ") + type_name(inner->type) + ", expected a dict");
        sd = inner;
        const Obj* config = lookup(root, "config");
        if (config && config->type != Obj::Type::none) {
            int64_t budget = int64_t(pkl->size);
            ck.config = to_value(config, 0, &budget);
            if (ck.config.kind != Value::Kind::dict)
                throw Error(std::string("'config' is a ") + type_name(config->type) + ", expected a dict or an object");
            ck.has_config = true;
        }
    }

    // The final dict: a repeated key keeps its first position and its last value.
    std::vector<std::pair<std::string, const Obj*>> items;
    std::map<std::string, size_t> where;
    for (const auto& [key, value] : sd->entries) {
        if (key->type != Obj::Type::string)
            throw Error(std::string("state_dict has a key of type ") + type_name(key->type));
        auto [it, fresh] = where.emplace(key->s, items.size());
        if (fresh)
            items.emplace_back(key->s, value);
        else
            items[it->second].second = value;
    }

    // Dynamic-quantized Linear modules: their output qparams (`scale`, `zero_point`) are unused.
    std::set<std::string> packed;
    for (const auto& [name, value] : items)
        if (ends_with(name, kPacked) && value->type == Obj::Type::tuple)
            packed.insert(name.substr(0, name.size() - kPacked.size()));
    auto packed_qparam = [&](const std::string& name) {
        for (const char* suffix : {".scale", ".zero_point"})
            if (ends_with(name, suffix) && packed.count(name.substr(0, name.size() - std::strlen(suffix)))) return true;
        return false;
    };

    int64_t budget = int64_t(size) * kElementsPerByte;
    for (const auto& [name, value] : items) {
        if (value->type == Obj::Type::tensor) {
            if (!packed_qparam(name)) add_tensor(ck, name, load_tensor(name, *value, storages, &budget));
        } else if (value->type == Obj::Type::tuple && ends_with(name, kPacked)) {
            const std::string module = name.substr(0, name.size() - kPacked.size());
            const auto& wb = value->items;
            if (wb.size() != 2 || wb[0]->type != Obj::Type::tensor ||
                (wb[1]->type != Obj::Type::tensor && wb[1]->type != Obj::Type::none))
                throw Error("'" + name + "' is not a (weight, bias) pair of tensors");
            add_tensor(ck, module + ".weight", load_tensor(module + ".weight", *wb[0], storages, &budget));
            if (wb[1]->type == Obj::Type::tensor)
                add_tensor(ck, module + ".bias", load_tensor(module + ".bias", *wb[1], storages, &budget));
        }
        // Other values (`<m>._packed_params.dtype`, plain numbers) carry nothing to convert.
    }
    return ck;
}

Checkpoint read_checkpoint(const std::string& path) {
    const std::vector<uint8_t> bytes = read_file_bytes(path, kMaxCheckpointBytes);
    return read_checkpoint_bytes(bytes.data(), bytes.size());
}

}  // namespace itera::pt
