// The native .pt reader: hand-built archives and pickles for every failure path, real torch.save
// files from tests/pt/make_pt_fixtures.py (ITERA_PT_FIXTURES), and the upstream checkpoints
// (ITERA_UPSTREAM_DIR) when present.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
#include "converter/pt/checkpoint.h"
#include "converter/pt/pickle_machine.h"
#include "converter/pt/zip_archive.h"

using itera::pt::Checkpoint;
using itera::pt::Obj;
using itera::pt::Value;

namespace {

// ---- byte builders --------------------------------------------------------------------------

std::string le(uint64_t v, int bytes) {
    std::string s;
    for (int k = 0; k < bytes; ++k) s += char(v >> (8 * k) & 0xff);
    return s;
}

using Files = std::vector<std::pair<std::string, std::string>>;

// A zip of STORED entries, each with its CRC-32.
std::string make_zip(const Files& files, uint16_t method = 0) {
    std::string out, central;
    for (const auto& [name, data] : files) {
        const uint32_t crc = itera::pt::zip_crc32(reinterpret_cast<const uint8_t*>(data.data()), data.size());
        const std::string common =
            le(method, 2) + le(0, 4) + le(crc, 4) + le(data.size(), 4) + le(data.size(), 4) + le(name.size(), 2);
        central += le(0x02014b50, 4) + le(20, 2) + le(20, 2) + le(0, 2) + common + le(0, 2) + le(0, 2) + le(0, 2) +
                   le(0, 2) + le(0, 4) + le(out.size(), 4) + name;
        out += le(0x04034b50, 4) + le(20, 2) + le(0, 2) + common + le(0, 2) + name + data;
    }
    const size_t cd_offset = out.size();
    out += central;
    out += le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(files.size(), 2) + le(files.size(), 2) + le(central.size(), 4) +
           le(cd_offset, 4) + le(0, 2);
    return out;
}

// Pickle opcodes, protocol 2.
std::string str(const std::string& s) { return "X" + le(s.size(), 4) + s; }   // BINUNICODE
std::string integer(int64_t v) { return "J" + le(uint32_t(int32_t(v)), 4); }  // BININT
std::string real(double v) {                                                  // BINFLOAT, big-endian
    std::string s = "G";
    const uint64_t bits = std::bit_cast<uint64_t>(v);
    for (int k = 7; k >= 0; --k) s += char(bits >> (8 * k) & 0xff);
    return s;
}
std::string global(const std::string& module, const std::string& name) { return "c" + module + "\n" + name + "\n"; }
std::string tuple(const std::vector<std::string>& items) {
    std::string s = "(";
    for (const std::string& item : items) s += item;
    return s + "t";
}
std::string ints(const std::vector<int64_t>& v) {
    std::vector<std::string> items;
    for (int64_t x : v) items.push_back(integer(x));
    return tuple(items);
}
std::string dict(const std::vector<std::pair<std::string, std::string>>& items) {
    std::string s = "}(";
    for (const auto& [k, v] : items) s += str(k) + v;
    return s + "u";
}
const std::string kFalse = "\x89", kNone = "N", kProto = std::string("\x80\x02");

std::string storage(const std::string& key, const std::string& type, int64_t numel) {
    return tuple({str("storage"), global("torch", type), str(key), str("cpu"), integer(numel)}) + "Q";
}
std::string tensor(const std::string& key, const std::string& type, int64_t numel, int64_t offset,
                   const std::vector<int64_t>& shape, const std::vector<int64_t>& stride) {
    return global("torch._utils", "_rebuild_tensor_v2") +
           tuple({storage(key, type, numel), integer(offset), ints(shape), ints(stride), kFalse,
                  global("collections", "OrderedDict") + ")R"}) +
           "R";
}
std::string qtensor(const std::string& key, int64_t numel, const std::vector<int64_t>& shape,
                    const std::string& qscheme, double scale, int64_t zero_point) {
    return global("torch._utils", "_rebuild_qtensor") +
           tuple({storage(key, "QInt8Storage", numel), integer(0), ints(shape),
                  ints({shape.size() == 2 ? shape[1] : 1, 1}),
                  tuple({global("torch", qscheme), real(scale), integer(zero_point)}), kFalse,
                  global("collections", "OrderedDict") + ")R"}) +
           "R";
}

std::string floats(const std::vector<float>& v) {
    std::string s;
    for (float x : v) s += le(std::bit_cast<uint32_t>(x), 4);
    return s;
}

// An archive as torch.save lays it out: <top>/data.pkl, <top>/byteorder, <top>/data/<key>.
std::string archive(const std::string& body, const Files& storages = {}, const std::string& top = "ck") {
    Files files = {{top + "/data.pkl", kProto + body + "."}, {top + "/byteorder", "little"}};
    for (const auto& [key, data] : storages) files.emplace_back(top + "/data/" + key, data);
    return make_zip(files);
}

Checkpoint load(const std::string& bytes, bool verify_crc = true) {
    return itera::pt::read_checkpoint_bytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), verify_crc);
}

std::string error_of(const std::string& bytes) {
    try {
        load(bytes);
    } catch (const itera::Error& e) {
        return e.what();
    }
    return "(no error)";
}

// A good archive: 'w' is a 2x2 view (offset 1, strides (1, 2)) of storage 0 = {0..5}.
std::string good_archive() {
    return archive(dict({{"w", tensor("0", "FloatStorage", 6, 1, {2, 2}, {1, 2})}}),
                   {{"0", floats({0, 1, 2, 3, 4, 5})}});
}

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "";
}

// ---- comparison with expected.json ----------------------------------------------------------

void check_value(const Value& v, const nlohmann::ordered_json& j, const std::string& path) {
    INFO("config field ", path);
    if (j.is_null()) {
        CHECK(v.kind == Value::Kind::none);
    } else if (j.is_boolean()) {
        REQUIRE(v.kind == Value::Kind::boolean);
        CHECK(v.b == j.get<bool>());
    } else if (j.is_number_integer()) {
        REQUIRE(v.kind == Value::Kind::integer);
        CHECK(v.i == j.get<int64_t>());
    } else if (j.is_number_float()) {
        REQUIRE(v.kind == Value::Kind::real);
        CHECK(v.f == j.get<double>());
    } else if (j.is_string()) {
        REQUIRE(v.kind == Value::Kind::string);
        CHECK(v.s == j.get<std::string>());
    } else if (j.is_array()) {
        REQUIRE(v.kind == Value::Kind::list);
        REQUIRE(v.items.size() == j.size());
        for (size_t k = 0; k < j.size(); ++k) check_value(v.items[k], j[k], path + "[" + std::to_string(k) + "]");
    } else {
        REQUIRE(v.kind == Value::Kind::dict);
        REQUIRE(v.entries.size() == j.size());
        size_t k = 0;
        for (const auto& [key, item] : j.items()) {
            CHECK(v.entries[k].first == key);
            check_value(v.entries[k].second, item, path + "." + key);
            ++k;
        }
    }
}

}  // namespace

// ---- hand-built archives --------------------------------------------------------------------

TEST_CASE("pt: a hand-built strided view reads element by element") {
    const Checkpoint ck = load(good_archive());
    REQUIRE(ck.order == std::vector<std::string>{"w"});
    const auto& w = ck.tensors.at("w");
    CHECK(w.dtype == "f32");
    CHECK(w.shape == std::vector<int64_t>{2, 2});
    CHECK(w.storage_key == "0");
    CHECK(w.storage_offset == 1);
    CHECK(w.values == std::vector<float>{1, 3, 2, 4});  // w[i][j] = storage[1 + i + 2j]
    CHECK_FALSE(ck.has_config);

    // The same through a file.
    char dir[] = "/tmp/itera_pt_XXXXXX";
    REQUIRE(mkdtemp(dir) != nullptr);
    const std::string path = std::string(dir) + "/w.pt";
    std::ofstream(path, std::ios::binary) << good_archive();
    CHECK(itera::pt::read_checkpoint(path).tensors.at("w").values == w.values);
    std::remove(path.c_str());
    rmdir(dir);
    CHECK_THROWS_WITH_AS(itera::pt::read_checkpoint(path), doctest::Contains("cannot open"), itera::Error);
    MESSAGE("offset + strides honoured; same result from a file; missing file reported");
}

TEST_CASE("pt: element types widen to FP32") {
    const std::string f16 = le(0x3c00, 2) + le(0xc000, 2) + le(0x0001, 2) + le(0x7bff, 2);  // 1, -2, 2^-24, 65504
    const std::string bf16 = le(0x3f80, 2) + le(0xc0a0, 2);                                 // 1, -5
    const std::string i64 = le(uint64_t(-5), 8) + le(uint64_t(1) << 40, 8);
    const std::string f64 = le(std::bit_cast<uint64_t>(0.25), 8);
    const std::string i8 = std::string("\x80\x7f", 2), boolean = std::string("\x00\x01", 2);
    const Checkpoint ck = load(archive(dict({{"h", tensor("0", "HalfStorage", 4, 0, {4}, {1})},
                                             {"b", tensor("1", "BFloat16Storage", 2, 0, {2}, {1})},
                                             {"l", tensor("2", "LongStorage", 2, 0, {2}, {1})},
                                             {"d", tensor("3", "DoubleStorage", 1, 0, {}, {})},
                                             {"c", tensor("4", "CharStorage", 2, 0, {2}, {1})},
                                             {"m", tensor("5", "BoolStorage", 2, 0, {2}, {1})}}),
                                       {{"0", f16}, {"1", bf16}, {"2", i64}, {"3", f64}, {"4", i8}, {"5", boolean}}));
    CHECK(ck.order == std::vector<std::string>{"h", "b", "l", "d", "c", "m"});
    CHECK(ck.tensors.at("h").values == std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f});
    CHECK(ck.tensors.at("h").dtype == "f16");
    CHECK(ck.tensors.at("b").values == std::vector<float>{1.0f, -5.0f});
    CHECK(ck.tensors.at("l").values == std::vector<float>{-5.0f, std::ldexp(1.0f, 40)});
    CHECK(ck.tensors.at("d").shape.empty());
    CHECK(ck.tensors.at("d").values == std::vector<float>{0.25f});
    CHECK(ck.tensors.at("c").values == std::vector<float>{-128.0f, 127.0f});
    CHECK(ck.tensors.at("m").values == std::vector<float>{0.0f, 1.0f});
    MESSAGE("f16 (incl. subnormal, max), bf16, i64, f64 0-d, i8, bool decoded");
}

TEST_CASE("pt: dynamic-quantized Linear becomes weight + bias, qparams dropped") {
    const std::string q = std::string("\x80\x00\x05\x7f", 4);  // -128, 0, 5, 127
    const std::string body = dict({
        {"lin.scale", tensor("0", "FloatStorage", 1, 0, {}, {})},
        {"lin.zero_point", tensor("1", "LongStorage", 1, 0, {}, {})},
        {"lin._packed_params.dtype", global("torch", "qint8")},
        {"lin._packed_params._packed_params",
         qtensor("2", 4, {2, 2}, "per_tensor_affine", 0.5, 2) + global("torch._utils", "_rebuild_parameter") +
             tuple({tensor("3", "FloatStorage", 2, 0, {2}, {1}), "\x88", global("collections", "OrderedDict") + ")R"}) +
             "R\x86"},
        {"plain", integer(3)},
    });
    const Files data = {{"0", floats({1})}, {"1", le(0, 8)}, {"2", q}, {"3", floats({0.5f, -1})}};
    const Checkpoint ck = load(archive(body, data));
    CHECK(ck.order == std::vector<std::string>{"lin.weight", "lin.bias"});
    CHECK(ck.tensors.at("lin.weight").dtype == "qint8");
    CHECK(ck.tensors.at("lin.weight").values == std::vector<float>{-65.0f, -1.0f, 1.5f, 62.5f});  // 0.5 * (q - 2)
    CHECK(ck.tensors.at("lin.bias").values == std::vector<float>{0.5f, -1.0f});

    const std::string channel =
        dict({{"lin._packed_params._packed_params", qtensor("2", 4, {2, 2}, "per_channel_affine", 0.5, 2) + "N\x86"}});
    CHECK_THROWS_WITH_AS(load(archive(channel, data)),
                         doctest::Contains("unsupported quantization scheme 'torch.per_channel_affine'"), itera::Error);
    const std::string wide = dict({{"q", qtensor("2", 4, {2, 2}, "per_tensor_affine", 0.5, 300)}});
    CHECK_THROWS_WITH_AS(load(archive(wide, data)), doctest::Contains("zero_point 300 out of range"), itera::Error);
    MESSAGE(
        "qint8 dequantized as scale*(q-zp), Parameter unwrapped, scale/zero_point/dtype dropped, per-channel refused");
}

TEST_CASE("pt: model_state_dict with a config dict or an inert config object") {
    const std::string sd = dict({{"w", tensor("0", "FloatStorage", 6, 1, {2, 2}, {1, 2})}});
    const Files data = {{"0", floats({0, 1, 2, 3, 4, 5})}};
    const std::string cfg =
        dict({{"hidden_size", integer(64)}, {"eps", real(1e-5)}, {"layers", "]" + integer(1) + "a"}, {"flag", kFalse}});
    Checkpoint ck =
        load(archive(dict({{"model_state_dict", sd}, {"config", cfg}, {"compression_ratio", real(3.8)}}), data));
    REQUIRE(ck.has_config);
    CHECK(ck.tensors.at("w").values == std::vector<float>{1, 3, 2, 4});
    REQUIRE(ck.config.get("hidden_size"));
    CHECK(ck.config.get("hidden_size")->i == 64);
    CHECK(ck.config.get("eps")->f == 1e-5);
    CHECK(ck.config.get("layers")->items.size() == 1);
    CHECK(ck.config.get("flag")->kind == Value::Kind::boolean);
    CHECK(ck.config.get("absent") == nullptr);

    // upstream int4: models.config.IteraLiteConfig via NEWOBJ + BUILD.
    const std::string object = global("models.config", "IteraLiteConfig") + ")\x81" + cfg + "b";
    ck = load(archive(dict({{"model_state_dict", sd}, {"config", object}}), data));
    REQUIRE(ck.has_config);
    CHECK(ck.config.kind == Value::Kind::dict);
    CHECK(ck.config.get("hidden_size")->i == 64);

    ck = load(archive(dict({{"model_state_dict", sd}, {"config", kNone}}), data));
    CHECK_FALSE(ck.has_config);
    CHECK_THROWS_WITH_AS(load(archive(dict({{"model_state_dict", sd}, {"config", integer(3)}}), data)),
                         doctest::Contains("'config' is a int"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive(dict({{"model_state_dict", integer(1)}}), data)),
                         doctest::Contains("'model_state_dict' is a int"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("]", data)), doctest::Contains("checkpoint holds a list"), itera::Error);

    // A repeated key keeps its first position and its last value (as a Python dict).
    const std::string twice = "}(" + str("a") + tensor("0", "FloatStorage", 6, 0, {1}, {1}) + str("b") +
                              tensor("0", "FloatStorage", 6, 5, {1}, {1}) + str("a") +
                              tensor("0", "FloatStorage", 6, 2, {1}, {1}) + "u";
    ck = load(archive(twice, data));
    CHECK(ck.order == std::vector<std::string>{"a", "b"});
    CHECK(ck.tensors.at("a").values == std::vector<float>{2});
    MESSAGE("config dict, config object -> dict, None config, bad top levels, repeated keys");
}

TEST_CASE("pt: truncated zip") {
    const std::string good = good_archive();
    int errors = 0;
    for (size_t n = 0; n < good.size(); ++n) {
        try {
            load(good.substr(0, n));
        } catch (const itera::Error&) {
            ++errors;
        }
    }
    CHECK(errors == int(good.size()));
    CHECK_THROWS_WITH_AS(load(good.substr(0, 10)), doctest::Contains("not a zip archive"), itera::Error);
    MESSAGE("all ", good.size(), " proper prefixes of a valid archive rejected with itera::Error");
}

TEST_CASE("pt: single-byte corruptions load or fail cleanly") {
    const std::string good = good_archive();
    // CRC-32 off, so that corrupted pickle and tensor bytes reach their readers; then on.
    int loaded = 0, refused = 0, loaded_checked = 0;
    for (size_t at = 0; at < good.size(); ++at) {
        for (char v : {'\0', '\xff', char(good[at] + 1)}) {
            std::string bad = good;
            bad[at] = v;
            try {
                load(bad, false);
                ++loaded;
            } catch (const itera::Error&) {
                ++refused;
            }  // anything else (std::bad_alloc, std::out_of_range, ...) fails the test
            try {
                load(bad);
                loaded_checked += bad != good;
            } catch (const itera::Error&) {
            }
        }
    }
    CHECK(loaded + refused == int(3 * good.size()));
    CHECK(refused > 0);
    const size_t cd = good.find(std::string("PK\x01\x02", 4));
    std::string flipped = good;  // one byte of the first entry's data (data.pkl's protocol opcode)
    flipped[good.find("ck/data.pkl") + std::strlen("ck/data.pkl") + 1] ^= 0x01;
    CHECK_THROWS_WITH_AS(load(flipped), doctest::Contains("does not match its CRC-32"), itera::Error);
    std::string bad_crc = good;
    bad_crc[cd + 16] ^= 0x01;
    CHECK_THROWS_WITH_AS(load(bad_crc),
                         doctest::Contains("corrupt zip: zip entry 'ck/data.pkl' does not match its CRC-32"),
                         itera::Error);
    const std::string check_value = "123456789";
    CHECK(itera::pt::zip_crc32(reinterpret_cast<const uint8_t*>(check_value.data()), check_value.size()) ==
          0xCBF43926u);
    MESSAGE((3 * good.size()), " corrupted archives without the CRC check: ", loaded, " loaded, ", refused,
            " refused with itera::Error; with it, ", loaded_checked,
            " still load (the changed byte lies outside "
            "the entries' data, in header fields the reader does not use); a flipped data byte and a flipped CRC "
            "refused; CRC-32(\"123456789\") = 0xCBF43926");
}

TEST_CASE("pt: wrong magic") {
    CHECK_THROWS_WITH_AS(load(std::string(100, 'x')), doctest::Contains("not a zip archive"), itera::Error);
    std::string bad = good_archive();
    bad[0] = 'Q';  // local header signature of data.pkl
    CHECK_THROWS_WITH_AS(load(bad), doctest::Contains("bad local header for zip entry 'ck/data.pkl'"), itera::Error);
    bad = good_archive();
    const size_t cd = bad.find(std::string("PK\x01\x02", 4));
    bad[cd + 3] = 9;  // central header signature
    CHECK_THROWS_WITH_AS(load(bad), doctest::Contains("bad central directory entry 0"), itera::Error);
    CHECK_THROWS_WITH_AS(load(make_zip({{"x.txt", "hello"}})), doctest::Contains("no data.pkl"), itera::Error);
    MESSAGE("non-zip data, bad local and central signatures, zip without data.pkl");
}

TEST_CASE("pt: corrupt central directory") {
    const std::string good = good_archive();
    const size_t end = good.size() - 22, cd = good.find(std::string("PK\x01\x02", 4));
    auto patched = [&](size_t at, uint64_t v, int bytes) {
        std::string s = good;
        s.replace(at, size_t(bytes), le(v, bytes));
        return s;
    };
    CHECK_THROWS_WITH_AS(load(patched(end + 16, good.size(), 4)),
                         doctest::Contains("central directory outside the file"), itera::Error);
    CHECK_THROWS_WITH_AS(load(patched(end + 12, 0x7fffff, 4)), doctest::Contains("central directory outside the file"),
                         itera::Error);
    CHECK_THROWS_WITH_AS(load(patched(end + 8, 500, 2).replace(end + 10, 2, le(500, 2))),
                         doctest::Contains("too small for its entries"), itera::Error);
    CHECK_THROWS_WITH_AS(load(patched(cd + 28, 60000, 2)), doctest::Contains("overruns the directory"), itera::Error);
    CHECK_THROWS_WITH_AS(load(patched(cd + 42, cd + 1, 4)), doctest::Contains("bad local header"), itera::Error);
    CHECK_THROWS_WITH_AS(load(patched(cd + 24, 1u << 30, 4).replace(cd + 20, 4, le(1u << 30, 4))),
                         doctest::Contains("runs past the entry area"), itera::Error);
    CHECK_THROWS_WITH_AS(load(patched(end + 8, 0xffff, 2).replace(end + 10, 2, le(0xffff, 2))),
                         doctest::Contains("zip64"), itera::Error);
    CHECK_THROWS_WITH_AS(load(patched(cd + 8, 1, 2)), doctest::Contains("is encrypted"), itera::Error);
    CHECK_THROWS_WITH_AS(load(make_zip({{"a/data.pkl", "x"}}, 8)),
                         doctest::Contains("zip entry 'a/data.pkl' is compressed (method 8)"), itera::Error);
    CHECK_THROWS_WITH_AS(load(make_zip({{"a/data.pkl", "x"}, {"a/data.pkl", "y"}})),
                         doctest::Contains("duplicate zip entry"), itera::Error);
    MESSAGE("directory offset/size/count/name/local offset/data size corrupted, zip64, encrypted, deflated, duplicate");
}

TEST_CASE("pt: truncated pickle") {
    const std::string body = kProto + dict({{"w", tensor("0", "FloatStorage", 6, 1, {2, 2}, {1, 2})}}) + ".";
    int errors = 0;
    for (size_t n = 0; n < body.size(); ++n) {
        try {
            load(make_zip({{"ck/data.pkl", body.substr(0, n)}, {"ck/data/0", floats({0, 1, 2, 3, 4, 5})}}));
        } catch (const itera::Error&) {
            ++errors;
        }
    }
    CHECK(errors == int(body.size()));
    CHECK_THROWS_WITH_AS(load(make_zip({{"ck/data.pkl", body.substr(0, 30)}})), doctest::Contains("truncated pickle"),
                         itera::Error);
    MESSAGE("all ", body.size(), " proper prefixes of a valid pickle rejected with itera::Error");
}

TEST_CASE("pt: unknown opcodes and malformed streams") {
    CHECK_THROWS_WITH_AS(load(archive("\xff")), doctest::Contains("unsupported pickle opcode 0xff at offset 2"),
                         itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("(imodule\nname\n")), doctest::Contains("unsupported pickle opcode 0x69"),
                         itera::Error);  // INST
    CHECK_THROWS_WITH_AS(load(make_zip({{"ck/data.pkl", "\x80\x09}."}})),
                         doctest::Contains("unsupported pickle protocol 9"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("t")), doctest::Contains("no MARK"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("}(s")), doctest::Contains("stack underflow"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("N" + str("k") + integer(1) + "s")), doctest::Contains("SETITEM on a None"),
                         itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("h\x05")), doctest::Contains("memo entry 5 missing"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("}(" + str("a") + "u")), doctest::Contains("odd number of items"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("\x8a\x09" + std::string(9, '\x01'))), doctest::Contains("wider than 64 bits"),
                         itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("X" + le(0xfffffff0, 4))), doctest::Contains("truncated pickle"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("I99999999999999999999\n")), doctest::Contains("too large integer"),
                         itera::Error);
    CHECK_THROWS_WITH_AS(load(archive(")N\x81")), doctest::Contains("NEWOBJ on a tuple"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive("P0\n")), doctest::Contains("unsupported persistent id"), itera::Error);
    MESSAGE("unknown opcode, INST, protocol 9, stack/mark/memo/type errors, huge length, oversized ints, PERSID");
}

TEST_CASE("pt: deep nesting and shared-reference blowup are bounded") {
    const std::string sd = dict({});
    const int depth = 100000;
    const std::string nested = std::string(depth, ']') + std::string(depth - 1, 'a');
    CHECK_THROWS_WITH_AS(load(archive(dict({{"model_state_dict", sd}, {"config", nested}}))),
                         doctest::Contains("nests deeper than"), itera::Error);

    // l0 = [], l(k+1) = [lk, lk]: 60 levels would be 2^60 nodes once expanded.
    std::string laughs = std::string("]q\0", 3);
    for (int k = 1; k <= 60; ++k)
        laughs +=
            "0(h" + std::string(1, char(k - 1)) + "h" + std::string(1, char(k - 1)) + "lq" + std::string(1, char(k));
    CHECK_THROWS_WITH_AS(load(archive(dict({{"model_state_dict", sd}, {"config", "}" + str("x") + laughs + "s"}}))),
                         doctest::Contains("expands beyond"), itera::Error);

    // A cycle (a list holding itself) in an ignored value is harmless; in the config it is bounded.
    const std::string cycle = std::string("]q\0h\0a", 6);
    CHECK(load(archive(dict({{"loop", cycle}}))).tensors.empty());
    CHECK_THROWS_AS(load(archive(dict({{"model_state_dict", sd}, {"config", "}" + str("x") + cycle + "s"}}))),
                    itera::Error);
    MESSAGE("100000-deep list, 2^60 shared expansion, self-referencing list: all bounded");
}

TEST_CASE("pt: tensors must fit their storage") {
    const Files data = {{"0", floats({0, 1, 2, 3})}};
    auto err = [&](const std::string& t, const Files& d) { return error_of(archive(dict({{"t", t}}), d)); };
    CHECK(err(tensor("0", "FloatStorage", 4, 0, {3, 3}, {3, 1}), data).find("needs 9 elements, its storage holds 4") !=
          std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 4, 0, {2, 2}, {4, 1}), data).find("reach beyond its storage") !=
          std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 4, 1, {2, 2}, {2, 1}), data).find("reach beyond its storage") !=
          std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 4, 4, {1}, {1}), data).find("outside its storage") != std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 4, 9, {0}, {1}), data).find("outside its storage") != std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 4, 0, {2}, {-1}), data).find("negative stride") != std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 4, 0, {-1}, {1}), data).find("absurd shape") != std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 4, 0, {1 << 30, 1 << 30, 1 << 30}, {0, 0, 0}), data).find("absurd shape") !=
          std::string::npos);
    CHECK(
        err(tensor("0", "FloatStorage", 4, 0, {1 << 20, 1 << 20}, {0, 0}), data).find("needs 1099511627776 elements") !=
        std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 4, 0, {2}, {1, 1}), data).find("shape and stride differ") !=
          std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 8, 0, {2}, {1}), data).find("holds 16 bytes, not 8 f32 elements") !=
          std::string::npos);
    CHECK(err(tensor("0", "FloatStorage", 1ll << 30, 0, {2}, {1}), data).find("holds 16 bytes") != std::string::npos);
    CHECK(err(tensor("7", "FloatStorage", 4, 0, {2}, {1}), data).find("storage data/7 is missing") !=
          std::string::npos);
    CHECK(err(tensor("0", "ComplexFloatStorage", 2, 0, {2}, {1}), data)
              .find("unsupported storage type 'torch.ComplexFloatStorage'") != std::string::npos);
    CHECK(err(tensor("0", "QInt8Storage", 16, 0, {2}, {1}), data).find("_rebuild_tensor_v2 on a qint8 storage") !=
          std::string::npos);
    // Zero-size tensors need no data; a stride-0 view within bounds is fine.
    CHECK(load(archive(dict({{"t", tensor("0", "FloatStorage", 0, 0, {0, 128}, {128, 1})}}), {{"0", ""}}))
              .tensors.at("t")
              .values.empty());
    CHECK(load(archive(dict({{"t", tensor("0", "FloatStorage", 4, 3, {2}, {0})}}), data)).tensors.at("t").values ==
          std::vector<float>{3, 3});
    MESSAGE(
        "too-small storage, out-of-range strides/offsets, absurd and overflowing shapes, size mismatch, missing data, "
        "bad types");
}

TEST_CASE("pt: globals outside the allowlist are never called") {
    const std::string expected = "unsupported pickle global 'os.system' (itera-convert never executes pickle code)";
    CHECK(error_of(archive(dict({{"w", global("os", "system") + tuple({str("echo pwned")}) + "R"}}))) == expected);
    CHECK(error_of(archive(dict({{"w", str("builtins") + str("eval") + "\x93" + tuple({str("1+1")}) + "R"}}))) ==
          "unsupported pickle global 'builtins.eval' (itera-convert never executes pickle code)");
    CHECK_THROWS_WITH_AS(load(archive(global("subprocess", "Popen") + ")R")), doctest::Contains("'subprocess.Popen'"),
                         itera::Error);
    // Calling an unknown class is still a call; only NEWOBJ (no __init__) makes an inert object.
    CHECK_THROWS_WITH_AS(load(archive(global("models.config", "IteraLiteConfig") + ")R")),
                         doctest::Contains("'models.config.IteraLiteConfig'"), itera::Error);
    CHECK_THROWS_WITH_AS(load(archive(global("collections", "OrderedDict") + "(]t" + "R")),
                         doctest::Contains("OrderedDict with arguments"), itera::Error);
    // An unknown global as plain data is not a call.
    CHECK(load(archive(dict({{"dtype", global("torch", "qint8")}, {"obj", global("os", "system") + ")\x81"}})))
              .tensors.empty());
    MESSAGE("os.system, builtins.eval (STACK_GLOBAL), subprocess.Popen, calls to unknown classes refused");
}

TEST_CASE("pt: byte order and archive layout") {
    const std::string body = kProto + dict({{"w", tensor("0", "FloatStorage", 2, 0, {2}, {1})}}) + ".";
    CHECK_THROWS_WITH_AS(
        load(make_zip({{"ck/data.pkl", body}, {"ck/byteorder", "big"}, {"ck/data/0", floats({1, 2})}})),
        doctest::Contains("byte order is 'big'"), itera::Error);
    // No byteorder record (torch 1.13 writes none) and any top folder name.
    CHECK(load(make_zip({{"whatever_name/data.pkl", body}, {"whatever_name/data/0", floats({1, 2})}}))
              .tensors.at("w")
              .values == std::vector<float>{1, 2});
    CHECK_THROWS_WITH_AS(load(make_zip({{"a/data.pkl", body}, {"b/data.pkl", body}})), doctest::Contains("two pickles"),
                         itera::Error);
    MESSAGE("big-endian refused, top folder found from data.pkl, two pickles refused");
}

TEST_CASE("pt: protocol 0 text opcodes") {
    // pickle.dumps([42, -12345678901, 2.5, True, None, 'é\n\\x€', ('a', 1), {'k': [1]}, 2**40], protocol=0),
    // plus GET of the tuple, a STRING and a LONG1.
    static const char text[] =
        "(lp0\nI42\naL-12345678901L\naF2.5\naI01\naNaV\xe9\\u000a\\u005cx\\u20ac\np1\na(Va\np2\nI1\ntp3\na("
        "dp4\nVk\np5\n"
        "(lp6\nI1\nasaL1099511627776L\nag3\naS'a\\nb\\x41\\101'\na\x8a\x06\x00\x00\x00\x00\x00\xff"
        "a.";
    const std::string p0(text, sizeof text - 1);
    const itera::pt::Pickle p = itera::pt::unpickle(reinterpret_cast<const uint8_t*>(p0.data()), p0.size());
    REQUIRE(p.root->type == Obj::Type::list);
    const auto& it = p.root->items;
    REQUIRE(it.size() == 12);
    CHECK(it[0]->i == 42);
    CHECK(it[1]->i == -12345678901);
    CHECK(it[2]->f == 2.5);
    CHECK((it[3]->type == Obj::Type::boolean && it[3]->b));
    CHECK(it[4]->type == Obj::Type::none);
    CHECK(it[5]->s == "\xc3\xa9\n\\x\xe2\x82\xac");
    REQUIRE(it[6]->type == Obj::Type::tuple);
    CHECK(it[6]->items[0]->s == "a");
    CHECK(it[6]->items[1]->i == 1);
    REQUIRE(it[7]->type == Obj::Type::dict);
    CHECK(it[7]->entries[0].first->s == "k");
    CHECK(it[7]->entries[0].second->items[0]->i == 1);
    CHECK(it[8]->i == 1099511627776);
    CHECK(it[9] == it[6]);  // the memo shares objects
    CHECK(it[10]->s == "a\nbAA");
    CHECK(it[11]->i == -(int64_t(1) << 40));
    MESSAGE("INT/LONG/FLOAT/UNICODE/STRING/PUT/GET/LIST/TUPLE/DICT/LONG1 decoded");
}

// ---- real torch.save files ------------------------------------------------------------------

TEST_CASE("pt: torch.save fixtures match expected.json") {
    const std::string dir = env("ITERA_PT_FIXTURES");
    if (dir.empty()) {
        MESSAGE("skipped: set ITERA_PT_FIXTURES (made by /usr/bin/python3 tests/pt/make_pt_fixtures.py DIR)");
        return;
    }
    std::ifstream in(dir + "/expected.json");
    REQUIRE(in);
    const nlohmann::ordered_json expected = nlohmann::ordered_json::parse(in);
    size_t files = 0, values = 0;
    for (const auto& item : expected["files"].items()) {
        const std::string file = item.key();  // not a structured binding: clang 14 cannot capture those (INFO)
        const auto& want = item.value();
        INFO("file ", file);
        const Checkpoint ck = itera::pt::read_checkpoint(dir + "/" + file);
        std::vector<std::string> order;
        for (const auto& t : want["tensors"]) order.push_back(t["name"]);
        CHECK(ck.order == order);
        for (const auto& t : want["tensors"]) {
            const std::string name = t["name"];
            INFO("tensor ", name);
            REQUIRE(ck.tensors.count(name));
            const auto& got = ck.tensors.at(name);
            CHECK(got.dtype == t["dtype"].get<std::string>());
            CHECK(got.shape == t["shape"].get<std::vector<int64_t>>());
            CHECK(got.storage_offset == t["storage_offset"].get<int64_t>());
            const std::vector<double> want_values = t["values"];
            REQUIRE(got.values.size() == want_values.size());
            for (size_t k = 0; k < want_values.size(); ++k) CHECK(got.values[k] == float(want_values[k]));
            values += want_values.size();
            // Storage sharing: the same key exactly where torch shares the storage.
            auto group = [](const nlohmann::ordered_json& x) {
                return x["shares_storage_with"].is_null() ? x["name"] : x["shares_storage_with"];
            };
            for (const auto& other : want["tensors"]) {
                if (other["name"] == t["name"]) continue;
                CHECK((got.storage_key == ck.tensors.at(other["name"]).storage_key) == (group(t) == group(other)));
            }
        }
        CHECK(ck.has_config == !want["config"].is_null());
        if (ck.has_config) check_value(ck.config, want["config"], "config");
        ++files;
    }
    for (const auto& item : expected["errors"].items()) {
        const std::string file = item.key(), message = item.value();
        INFO("file ", file);
        CHECK_THROWS_WITH_AS(itera::pt::read_checkpoint(dir + "/" + file), doctest::Contains(message.c_str()),
                             itera::Error);
    }
    CHECK(files >= 8);
    MESSAGE(files, " torch.save files (", values, " values, dtypes/shapes/offsets/sharing/config) and ",
            expected["errors"].size(), " refused files checked");
}

TEST_CASE("pt: upstream checkpoints") {
    const std::string dir = env("ITERA_UPSTREAM_DIR");
    if (dir.empty() || !std::filesystem::is_directory(dir + "/checkpoints")) {
        MESSAGE("skipped: ITERA_UPSTREAM_DIR unset or without checkpoints/ ('", dir, "')");
        return;
    }
    const Checkpoint distilled =
        itera::pt::read_checkpoint(dir + "/checkpoints/distilled/itera_lite_micro_distilled.pt");
    CHECK(distilled.tensors.size() == 61);
    CHECK_FALSE(distilled.has_config);
    CHECK(distilled.tensors.at("lm_head.weight").storage_key == distilled.tensors.at("embedding.weight").storage_key);

    const Checkpoint int4 = itera::pt::read_checkpoint(dir + "/checkpoints/int4/itera_lite_int4.pt");
    CHECK(int4.tensors.size() == 61);
    REQUIRE(int4.has_config);
    CHECK(int4.config.get("hidden_size")->i == 64);
    CHECK(int4.config.get("vocab_size")->i == 2000);
    CHECK(int4.config.get("layer_norm_eps")->f == 1e-5);
    // The INT4 file is the distilled one rounded to scale*{-8..7}, scale = max|w|/7 per tensor
    // with dim > 1; the rest is copied unchanged.
    int on_grid = 0;
    for (const std::string& name : int4.order) {
        const auto& q = int4.tensors.at(name);
        const auto& d = distilled.tensors.at(name);
        REQUIRE(q.values.size() == d.values.size());
        if (q.shape.size() < 2) {
            CHECK(q.values == d.values);
            continue;
        }
        float dmax = 0;
        for (float v : d.values) dmax = std::max(dmax, std::fabs(v));
        const float scale = dmax / 7;
        for (size_t k = 0; k < q.values.size(); ++k) {
            const float steps = q.values[k] / scale;
            CHECK(std::fabs(steps - std::round(steps)) < 1e-3f);
            CHECK(std::fabs(q.values[k] - d.values[k]) <= scale * 0.5f * 1.001f);
        }
        ++on_grid;
    }
    CHECK(on_grid == 34);  // 33 parameters + lm_head (tied to embedding)

    const Checkpoint int8 = itera::pt::read_checkpoint(dir + "/checkpoints/quantized/itera_lite_tiny_int8.pt");
    CHECK(int8.tensors.size() == 85);
    const auto& head = int8.tensors.at("lm_head.weight");
    CHECK(head.dtype == "qint8");
    CHECK(head.shape == std::vector<int64_t>{2000, 128});
    CHECK(int8.tensors.count("layers.0.ssm.ssm.delta_proj.bias") == 1);
    for (const std::string& name : int8.order) CHECK(name.find("zero_point") == std::string::npos);
    // lm_head was quantized from the weight tied to the (fp32) embedding: within half a step.
    const auto& emb = int8.tensors.at("embedding.weight");
    float emax = 0, diff = 0;
    for (size_t k = 0; k < emb.values.size(); ++k) {
        emax = std::max(emax, std::fabs(emb.values[k]));
        diff = std::max(diff, std::fabs(emb.values[k] - head.values[k]));
    }
    CHECK(diff <= emax / 127 * 0.51f);

    const Checkpoint mixed =
        itera::pt::read_checkpoint(dir + "/checkpoints/mixed_precision/itera_lite_mixed_precision.pt");
    CHECK(mixed.tensors.size() == 69);
    CHECK(mixed.tensors.at("embedding.weight").dtype == "f16");
    CHECK(mixed.tensors.at("layers.1.moe.layer.router.gate.weight").shape == std::vector<int64_t>{0, 128});
    CHECK(mixed.tensors.at("layers.1.moe.layer.router.gate.weight").values.empty());
    REQUIRE(mixed.has_config);
    CHECK(mixed.config.get("num_experts")->i == 0);
    CHECK(mixed.config.get("vocab_size")->i == 8000);
    MESSAGE(
        "distilled (61, tied), int4 (config object, values on the INT4 grid of distilled), int8 (85, qint8 lm_head "
        "within half a step of embedding), mixed (fp16, zero-size, config) checked");
}
