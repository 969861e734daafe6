// Reading a PyTorch `.pt` checkpoint (torch.save zip format) natively, without executing any
// pickle code: globals are resolved against an allowlist, everything else is an error.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace itera::pt {

// A plain value from the pickle (config dicts, metadata). Objects of unknown classes that the
// allowlist accepts as inert (any `module.Class` built with NEWOBJ + BUILD; never called) become a
// dict of their BUILD state.
struct Value {
    enum class Kind { none, boolean, integer, real, string, list, dict };
    Kind kind = Kind::none;
    bool b = false;
    int64_t i = 0;
    double f = 0;
    std::string s;
    std::vector<Value> items;                            // list / tuple
    std::vector<std::pair<std::string, Value>> entries;  // dict with string keys, insertion order
    const Value* get(const std::string& key) const;      // dict lookup, nullptr when absent

    // The destructor is defined out of line: clang with libstdc++ cannot otherwise check
    // pair<string, Value> (inside `entries`) while Value is still incomplete.
    Value() = default;
    Value(const Value&) = default;
    Value(Value&&) = default;
    Value& operator=(const Value&) = default;
    Value& operator=(Value&&) = default;
    ~Value();
};

struct Tensor {
    std::string dtype;  // "f32", "f64", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "bool", "qint8"
    std::vector<int64_t> shape;
    std::string storage_key;     // zip entry data/<key>; equal keys + offset = shared storage
    int64_t storage_offset = 0;  // in elements
    std::vector<float> values;   // row-major FP32 (strides honoured, qint8 dequantized, f16/bf16 widened)
};

struct Checkpoint {
    // State-dict tensors by name. torch dynamic-quantized Linear entries
    // (`<m>._packed_params._packed_params`) appear as `<m>.weight` (+ `<m>.bias` when present),
    // dequantized; their `<m>.scale`, `<m>.zero_point`, `<m>._packed_params.dtype` are dropped.
    std::map<std::string, Tensor> tensors;
    std::vector<std::string> order;  // state-dict order of the names above
    bool has_config = false;
    Value config;  // dict: from `config` (dict or pickled object)
};

// The largest checkpoint file read: what a zip without zip64 extensions can address.
constexpr uint64_t kMaxCheckpointBytes = uint64_t{4} << 30;

// Accepts a bare state_dict or a dict holding `model_state_dict` (+ optional `config`).
// Throws itera::Error with a one-line message on anything malformed or not allowed.
Checkpoint read_checkpoint(const std::string& path);
// verify_crc: check every zip entry against its CRC-32 (the fuzzers turn it off).
Checkpoint read_checkpoint_bytes(const uint8_t* data, size_t size, bool verify_crc = true);

}  // namespace itera::pt
