// The .itl format: fp16 conversions, config validation, writer/reader round trips, alignment, and
// rejection of every kind of bad file with its message.
#include <doctest/doctest.h>
#include <stdlib.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "format/half.h"
#include "format/itl_file.h"
#include "format/quant_blocks.h"
#include "itera_generated.h"

using namespace itera;

namespace {

// --- fp16 reference, written from the definition rather than from bit tricks -----------------

// Value of an fp16 bit pattern: (-1)^s * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024.
double half_value(uint16_t h) {
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    const double mag = e == 0    ? std::ldexp(m, -24)
                       : e == 31 ? (m ? std::numeric_limits<double>::quiet_NaN() : INFINITY)
                                 : std::ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -mag : mag;
}

// Nearest fp16 to f, ties to the even pattern, found by searching the table of all finite halves.
uint16_t reference_to_half(float f) {
    if (std::isnan(f)) return 0x7e00;
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    const double a = std::fabs(static_cast<double>(f));
    if (a >= 65520.0) return sign | 0x7c00;  // halfway between 65504 and 2^16 rounds to even = inf
    static std::vector<double> table = [] {
        std::vector<double> t;
        for (uint16_t h = 0; h <= 0x7bff; h++) t.push_back(half_value(h));
        return t;
    }();
    const size_t hi = static_cast<size_t>(std::lower_bound(table.begin(), table.end(), a) - table.begin());
    if (hi < table.size() && table[hi] == a) return static_cast<uint16_t>(sign | hi);
    const size_t lo = hi - 1;  // table[0] = 0 <= a; hi == size when 65504 < a < 65520
    const double upper = hi < table.size() ? table[hi] : 65536.0;
    const double mid = (table[lo] + upper) / 2;  // exact in double
    const size_t pick = a < mid ? lo : a > mid ? hi : (lo % 2 == 0 ? lo : hi);
    return static_cast<uint16_t>(sign | (pick == table.size() ? 0x7c00 : pick));
}

// Most tests rewrite metadata fields in place, so they write it uncompressed; the compressed
// form has its own test case.
std::vector<uint8_t> serialize_plain(const ModelSpec& spec) { return serialize_itl(spec, WriteOptions{false}); }

// --- building specs -----------------------------------------------------------------------------

SpecTensor tensor(const std::string& name, std::vector<int64_t> shape, DType dtype, std::mt19937* rng) {
    SpecTensor t{name, std::move(shape), dtype, {}, {}};
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    std::normal_distribution<float> dist(0.0f, 0.5f);
    for (int64_t i = 0; i < n; i++) t.values.push_back(dist(*rng));
    return t;
}

std::vector<std::string> word_tokens(int count) {  // many similar words: zstd pays
    std::vector<std::string> tokens = {"<PAD>", "<UNK>", "<BOS>", "<EOS>"};
    for (int i = 4; i < count; i++) tokens.push_back("word" + std::to_string(i * 7919 % 100003) + ",");
    return tokens;
}

std::vector<std::string> char_tokens() {  // the layout of upstream's character tokenizer
    std::vector<std::string> tokens = {"<PAD>", "<UNK>", "<BOS>", "<EOS>"};
    for (char c : std::string(" ,-.ADEHIMNTabcdefghijklmnopqrstuvwxyz")) tokens.push_back(std::string(1, c));
    return tokens;
}

// Two short high-entropy tokens, so zstd cannot win. The first holds a newline, so the section
// is a TokenList FlatBuffer (the version 1 encoding; version 2 writes it only then).
std::vector<std::string> random_tokens() {
    std::mt19937 rng(99);
    std::vector<std::string> tokens(2);
    for (std::string& t : tokens)
        for (int i = 0; i < 11; i++) t.push_back(static_cast<char>(rng()));
    tokens[0][5] = '\n';
    return tokens;
}

// 50 random 3-byte tokens without a newline: a newline-joined section that zstd cannot shrink.
std::vector<std::string> random_line_tokens() {
    std::mt19937 rng(5);
    std::vector<std::string> tokens(50);
    for (std::string& t : tokens)
        while (t.size() < 3)
            if (const char c = static_cast<char>(rng()); c != '\n') t.push_back(c);
    return tokens;
}

// A two-layer model: a dense layer and a pruned MoE layer whose experts have different widths.
ModelSpec make_spec(TokenizerKind kind, std::vector<std::string> tokens) {
    ModelSpec spec;
    ModelConfig& c = spec.config;
    c.vocab_size = std::max(static_cast<int32_t>(tokens.size()), 50);
    c.hidden = 24;
    c.max_seq_length = 17;
    c.tied_head = false;
    c.norm_eps = 1e-6f;
    c.layers.push_back({48, 8, 4, ChannelKind::ffn, 0, {40}});
    c.layers.push_back({37, 5, 3, ChannelKind::moe, 2, {32, 17, 5}});
    spec.has_tokenizer = true;
    spec.tokenizer.kind = kind;
    spec.tokenizer.tokens = std::move(tokens);
    spec.provenance = {"micro.pt", std::string(64, 'a'), "0.1.0", "--dtype fp16 --name 'x y'"};
    std::mt19937 rng(1234);
    spec.tensors.push_back(tensor("embedding.weight", {c.vocab_size, 24}, DType::f32, &rng));
    spec.tensors.push_back(tensor("position_embedding.weight", {17, 24}, DType::f16, &rng));
    spec.tensors.push_back(tensor("layers.0.norm.weight", {24}, DType::f32, &rng));
    spec.tensors.push_back(tensor("scalar", {}, DType::f32, &rng));
    spec.tensors.push_back(tensor("layers.1.moe.experts.0.w1.weight", {32, 24}, DType::f16, &rng));
    spec.tensors.push_back(tensor("layers.1.moe.experts.1.w1.weight", {17, 24}, DType::f16, &rng));
    spec.tensors.push_back(tensor("layers.1.moe.experts.2.w1.weight", {5, 24}, DType::f32, &rng));
    spec.tensors.push_back(tensor("odd", {3, 5, 7}, DType::f16, &rng));
    spec.tensors.push_back(tensor("rank4", {2, 3, 1, 5}, DType::f32, &rng));
    // fp16 edge cases: infinities, NaN, signed zero, subnormals, overflow, the largest half.
    const float special[] = {INFINITY,  -INFINITY, NAN,      -0.0f,    1e-7f,         6e-8f,    2.9802322e-8f, 1e5f,
                             -70000.0f, 65504.0f,  65519.0f, 65520.0f, 6.1035156e-5f, 1.0f / 3, -2.5f};
    SpecTensor s{"special", {static_cast<int64_t>(std::size(special))}, DType::f16, {}, {}};
    s.values.assign(std::begin(special), std::end(special));
    spec.tensors.push_back(s);
    return spec;
}

// A small file for the byte-level corruption tests.
ModelSpec small_spec() {
    ModelSpec spec = make_spec(TokenizerKind::chars, random_tokens());  // stored uncompressed
    spec.tensors.resize(4);
    std::mt19937 rng(7);
    spec.tensors[0] = tensor("embedding.weight", {2, 3}, DType::f32, &rng);  // keeps the file small
    spec.tensors[3].name = "scalar.parameter";  // as long as "embedding.weight", see the duplicate test
    return spec;
}

// --- reading the raw file ---------------------------------------------------------------------------

uint64_t u64_at(const std::vector<uint8_t>& b, size_t at) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[at + i];
    return v;
}

// An empty zstd skippable frame (RFC 8878 3.1.2: magic 0x184D2A50, little-endian, and size 0).
constexpr uint8_t kSkippableFrame[8] = {0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0};

void put_u64(std::vector<uint8_t>* b, size_t at, uint64_t v) {
    for (int i = 0; i < 8; i++) (*b)[at + i] = static_cast<uint8_t>(v >> (8 * i));
}

const fb::Model* metadata(std::vector<uint8_t>& file) { return fb::GetModel(file.data() + 64); }

// In-place edits of metadata fields (the generated API is read-only; the fields exist because the
// writer stored non-default values).
template <typename T>
flatbuffers::Table* table(const T* t) {
    return reinterpret_cast<flatbuffers::Table*>(const_cast<T*>(t));
}

template <typename T, typename V>
void set_field(const T* t, flatbuffers::voffset_t field, V value) {
    REQUIRE(table(t)->SetField(field, value));
}

// Recomputes the header checksum the way docs/format.md defines it: XXH3-64 over metadata || data.
void reseal(std::vector<uint8_t>* file) {
    const uint64_t meta_length = u64_at(*file, 24), data_offset = u64_at(*file, 32), data_length = u64_at(*file, 40);
    std::vector<uint8_t> both(file->begin() + 64, file->begin() + 64 + static_cast<ptrdiff_t>(meta_length));
    both.insert(both.end(), file->begin() + static_cast<ptrdiff_t>(data_offset),
                file->begin() + static_cast<ptrdiff_t>(data_offset + data_length));
    put_u64(file, 48, XXH3_64bits(both.data(), both.size()));
}

std::string load_error(const std::vector<uint8_t>& file, LoadOptions options = {}) {
    try {
        ItlFile::from_memory(file.data(), file.size(), options);
    } catch (const Error& e) {
        return e.what();
    }
    return "(loaded)";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// 64-aligned copy of `bytes` starting `shift` bytes after the aligned address.
struct AlignedCopy {
    std::vector<uint8_t> storage;
    uint8_t* data = nullptr;
    AlignedCopy(const std::vector<uint8_t>& bytes, size_t shift) : storage(bytes.size() + 64 + shift) {
        const uintptr_t p = reinterpret_cast<uintptr_t>(storage.data());
        data = storage.data() + ((64 - p % 64) % 64) + shift;
        std::memcpy(data, bytes.data(), bytes.size());
    }
};

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "itera-format-XXXXXX").string();
        REQUIRE(mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

// Everything the reader returns must match the spec; fp16 tensors hold the rounded values.
void check_matches(const ItlFile& file, const ModelSpec& spec) {
    const ModelConfig& a = file.config();
    const ModelConfig& b = spec.config;
    CHECK(a.vocab_size == b.vocab_size);
    CHECK(a.hidden == b.hidden);
    CHECK(a.max_seq_length == b.max_seq_length);
    CHECK(a.tied_head == b.tied_head);
    CHECK(a.norm_eps == b.norm_eps);
    REQUIRE(a.layers.size() == b.layers.size());
    for (size_t i = 0; i < a.layers.size(); i++) {
        CHECK(a.layers[i].inner == b.layers[i].inner);
        CHECK(a.layers[i].state == b.layers[i].state);
        CHECK(a.layers[i].conv_kernel == b.layers[i].conv_kernel);
        CHECK(a.layers[i].kind == b.layers[i].kind);
        CHECK(a.layers[i].top_k == b.layers[i].top_k);
        CHECK(a.layers[i].ffn_widths == b.layers[i].ffn_widths);
    }
    CHECK(file.has_tokenizer() == spec.has_tokenizer);
    CHECK(file.tokenizer().kind == spec.tokenizer.kind);
    CHECK(file.tokenizer().tokens == spec.tokenizer.tokens);
    CHECK(file.provenance().source_name == spec.provenance.source_name);
    CHECK(file.provenance().source_sha256 == spec.provenance.source_sha256);
    CHECK(file.provenance().converter_version == spec.provenance.converter_version);
    CHECK(file.provenance().options == spec.provenance.options);

    REQUIRE(file.tensors().size() == spec.tensors.size());
    for (size_t i = 0; i < spec.tensors.size(); i++) CHECK(file.tensors()[i].name == spec.tensors[i].name);
    size_t mismatches = 0;
    for (const SpecTensor& want : spec.tensors) {
        const TensorView* got = file.find(want.name);
        REQUIRE(got != nullptr);
        CHECK(got->shape == want.shape);
        CHECK(got->dtype == want.dtype);
        CHECK(got->elements() == static_cast<int64_t>(want.values.size()));
        CHECK(got->bytes == tensor_bytes(want.dtype, want.shape));
        CHECK(reinterpret_cast<uintptr_t>(got->data) % 64 == 0);
        for (size_t i = 0; i < want.values.size(); i++) {
            const float w = want.values[i];
            if (want.dtype == DType::f32) {
                mismatches +=
                    std::bit_cast<uint32_t>(static_cast<const float*>(got->data)[i]) != std::bit_cast<uint32_t>(w);
                continue;
            }
            const uint16_t h = static_cast<const uint16_t*>(got->data)[i];
            mismatches += h != reference_to_half(w) && !(std::isnan(w) && std::isnan(half_value(h)));
            // Independent of the reference: within half an fp16 ulp wherever fp16 has full precision.
            if (std::fabs(w) >= 6.103515625e-5f && std::fabs(w) <= 65504.0f)
                mismatches += std::fabs(half_value(h) - w) > std::fabs(w) * std::ldexp(1.0, -11);
        }
    }
    CHECK(mismatches == 0);
    CHECK(file.find("no.such.tensor") == nullptr);
}

}  // namespace

TEST_CASE("fp16 <-> fp32 conversions are exact IEEE") {
    size_t bad = 0;
    for (uint32_t h = 0; h <= 0xffff; h++) {  // every half widens exactly and narrows back unchanged
        const float f = fp16_to_fp32(static_cast<uint16_t>(h));
        const double want = half_value(static_cast<uint16_t>(h));
        if (std::isnan(want)) {
            bad += !std::isnan(f) || std::signbit(f) != static_cast<bool>(h & 0x8000);
            const uint16_t back = fp32_to_fp16(f);
            bad += (back & 0x7c00) != 0x7c00 || (back & 0x3ff) == 0 || (back & 0x8000) != (h & 0x8000);
        } else {
            bad += static_cast<double>(f) != want || std::signbit(f) != static_cast<bool>(h & 0x8000);
            bad += fp32_to_fp16(f) != h;
        }
    }
    CHECK(bad == 0);

    // Rounding of arbitrary floats against the table search, plus every halfway point between
    // neighbouring halves and the floats right next to it (where ties-to-even matters).
    size_t checked = 0;
    for (uint64_t bits = 0; bits <= 0xffffffffu; bits += 4099) {
        const float f = std::bit_cast<float>(static_cast<uint32_t>(bits));
        const uint16_t got = fp32_to_fp16(f), want = reference_to_half(f);
        bad += std::isnan(f) ? !std::isnan(half_value(got)) : got != want;
        checked++;
    }
    for (uint16_t h = 0; h < 0x7bff; h++) {
        const float mid = static_cast<float>((half_value(h) + half_value(static_cast<uint16_t>(h + 1))) / 2);
        for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY), -mid}) {
            bad += fp32_to_fp16(f) != reference_to_half(f);
            checked++;
        }
    }
    CHECK(bad == 0);
    CHECK(fp32_to_fp16(1.0f) == 0x3c00);
    CHECK(fp32_to_fp16(65504.0f) == 0x7bff);
    CHECK(fp32_to_fp16(65519.99f) == 0x7bff);
    CHECK(fp32_to_fp16(65520.0f) == 0x7c00);
    CHECK(fp32_to_fp16(std::ldexp(1.0f, -24)) == 0x0001);
    CHECK(fp32_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);  // tie to even: zero
    CHECK(fp32_to_fp16(std::ldexp(3.0f, -25)) == 0x0002);  // tie to even: 2
    CHECK(fp32_to_fp16(-0.0f) == 0x8000);
    CHECK(fp32_to_fp16(1e-45f) == 0x0000);  // fp32 subnormal
    CHECK(fp32_to_fp16(-INFINITY) == 0xfc00);
    CHECK(bf16_to_fp32(0x3f80) == 1.0f);
    CHECK(bf16_to_fp32(0xc049) == std::bit_cast<float>(0xc0490000u));
    MESSAGE("fp16: all 65536 halves widen/narrow exactly; ", checked, " floats round like the reference");
}

TEST_CASE("dtype names and sizes") {
    DType d = DType::f32;
    CHECK(dtype_name(DType::f32) == "fp32");
    CHECK(dtype_name(DType::f16) == "fp16");
    CHECK(parse_dtype("fp16", &d));
    CHECK(d == DType::f16);
    CHECK(parse_dtype("fp32", &d));
    CHECK(d == DType::f32);
    CHECK_FALSE(parse_dtype("int8", &d));
    CHECK(tensor_bytes(DType::f32, {7}) == 28);
    CHECK(tensor_bytes(DType::f16, {7}) == 14);
    CHECK(tensor_bytes(DType::q8_0, {3, 40}) == 3 * 2 * 34);  // 40 columns: two blocks, the last padded
    CHECK(tensor_bytes(DType::q4_0, {5, 32}) == 5 * 18);
    CHECK(tensor_bytes(DType::nf4, {2, 65}) == 2 * 2 * 34);
    CHECK(tensor_bytes(DType::q3_0, {3, 40}) == 3 * 2 * 14);  // 3.5 bits/weight in full blocks of 32
    CHECK(tensor_bytes(DType::q3_0, {1}) == 14);
    CHECK(tensor_bytes(DType::q2_0, {5, 64}) == 5 * 18);  // 2.25 bits/weight in full blocks of 64
    CHECK(tensor_bytes(DType::q2_0, {2, 65}) == 2 * 2 * 18);
    CHECK(tensor_bytes(DType::q2_0, {4, 32}) == 4 * 18);  // a 32-column row pays a whole 64-block
    for (const char* name : {"q8", "q4", "nf4", "q3", "q2"}) {
        CHECK(parse_dtype(name, &d));
        CHECK(dtype_name(d) == name);
        CHECK(is_quantized(d));
        CHECK(dtype_known(static_cast<int32_t>(d)));
    }
    CHECK(static_cast<int32_t>(DType::q3_0) == 5);  // the file's enum values (format/itera.fbs)
    CHECK(static_cast<int32_t>(DType::q2_0) == 6);
    CHECK_FALSE(dtype_known(7));
    CHECK_FALSE(dtype_known(-1));
    CHECK_THROWS_WITH_AS(dtype_block_bytes(static_cast<DType>(9)), "unknown dtype 9", Error);
}

TEST_CASE("validate_config rejects out-of-range fields by name") {
    const ModelConfig good = make_spec(TokenizerKind::word, random_tokens()).config;
    CHECK_NOTHROW(validate_config(good));
    struct Case {
        std::function<void(ModelConfig&)> edit;
        std::string message;
    };
    const std::vector<Case> cases = {
        {[](ModelConfig& c) { c.vocab_size = 0; }, "invalid model config: vocab_size = 0 (must be 1..16777216)"},
        {[](ModelConfig& c) { c.hidden = 65537; }, "invalid model config: hidden = 65537 (must be 1..65536)"},
        {[](ModelConfig& c) { c.max_seq_length = -3; }, "max_seq_length = -3"},
        {[](ModelConfig& c) { c.norm_eps = NAN; }, "norm_eps = nan (must be finite and positive)"},
        {[](ModelConfig& c) { c.norm_eps = 0; }, "norm_eps = 0.000000"},
        {[](ModelConfig& c) { c.layers.clear(); }, "number of layers = 0 (must be 1..1024)"},
        {[](ModelConfig& c) { c.layers.resize(1025, c.layers[0]); }, "number of layers = 1025"},
        {[](ModelConfig& c) { c.layers[1].inner = 0; }, "layers[1].inner = 0"},
        {[](ModelConfig& c) { c.layers[0].state = 4097; }, "layers[0].state = 4097 (must be 1..4096)"},
        {[](ModelConfig& c) { c.layers[0].conv_kernel = 65; }, "layers[0].conv_kernel = 65 (must be 1..64)"},
        {[](ModelConfig& c) {
             c.layers[0].ffn_widths = {4, 4};
         },
         "layers[0].ffn_widths count (ffn) = 2"},
        {[](ModelConfig& c) { c.layers[0].top_k = 1; }, "layers[0].top_k (ffn) = 1"},
        {[](ModelConfig& c) { c.layers[1].top_k = 4; }, "layers[1].top_k = 4 (must be 1..3)"},
        {[](ModelConfig& c) { c.layers[1].top_k = 0; }, "layers[1].top_k = 0"},
        {[](ModelConfig& c) { c.layers[1].ffn_widths.clear(); }, "layers[1].ffn_widths count (experts) = 0"},
        {[](ModelConfig& c) { c.layers[1].ffn_widths[2] = 0; }, "layers[1].ffn_widths[2] = 0"},
        {[](ModelConfig& c) { c.layers[1].kind = static_cast<ChannelKind>(5); }, "layers[1].kind = 5"},
    };
    for (const Case& k : cases) {
        ModelConfig c = good;
        k.edit(c);
        std::string message = "(accepted)";
        try {
            validate_config(c);
        } catch (const Error& e) {
            message = e.what();
        }
        INFO("expected: ", k.message, "  got: ", message);
        CHECK(contains(message, k.message));
    }
    MESSAGE("validate_config: ", cases.size(), " bad configs rejected with the field named");
}

TEST_CASE("round trip: odd shapes, fp32/fp16, per-expert widths, both tokenizer kinds") {
    struct Case {
        TokenizerKind kind;
        std::vector<std::string> tokens;
        const char* compression;  // expected: "zstd", "none", or "" when either may win
    };
    const Case cases[] = {{TokenizerKind::word, word_tokens(20000), "zstd"},
                          {TokenizerKind::chars, char_tokens(), ""},
                          {TokenizerKind::word, random_tokens(), "none"}};
    for (const Case& k : cases) {
        const ModelSpec spec = make_spec(k.kind, k.tokens);
        std::vector<uint8_t> bytes = serialize_plain(spec);

        // Header, byte by byte (docs/format.md).
        REQUIRE(bytes.size() > 64);
        CHECK(std::memcmp(bytes.data(), "ITERA\0LM", 8) == 0);
        CHECK((u64_at(bytes, 8) & 0xffffffffu) == kItlFormatVersion);
        CHECK((u64_at(bytes, 8) >> 32) == 64);  // header_bytes
        CHECK(u64_at(bytes, 16) == 64);         // meta_offset
        const uint64_t meta_length = u64_at(bytes, 24), data_offset = u64_at(bytes, 32),
                       data_length = u64_at(bytes, 40);
        CHECK(data_offset % (data_length < (1u << 20) ? 64 : 4096) == 0);  // small files: 64
        CHECK(data_offset >= 64 + meta_length);
        CHECK(data_offset + data_length == bytes.size());
        CHECK(u64_at(bytes, 56) == 0);  // flags and reserved
        const uint64_t checksum = u64_at(bytes, 48);
        reseal(&bytes);
        CHECK(u64_at(bytes, 48) == checksum);

        // The tokenizer is compressed exactly when that pays.
        const fb::Section* section = metadata(bytes)->tokenizer()->tokens();
        const bool compressed = section->compression() == fb::Compression::zstd;
        if (*k.compression) CHECK(compressed == (std::string(k.compression) == "zstd"));
        CHECK((section->length() < section->raw_length()) == compressed);
        CHECK((section->length() == section->raw_length()) == !compressed);
        // Newline-joined unless a token holds a newline.
        const bool newline = std::any_of(k.tokens.begin(), k.tokens.end(),
                                         [](const std::string& t) { return t.find('\n') != std::string::npos; });
        const fb::TokenListEncoding encoding = metadata(bytes)->tokenizer()->encoding();
        CHECK(encoding == (newline ? fb::TokenListEncoding::flatbuffer : fb::TokenListEncoding::lines));
        MESSAGE(spec.tokenizer.tokens.size(), " tokens: section ", section->length(), " bytes stored, ",
                section->raw_length(), " raw (", compressed ? "zstd" : "none", ", ",
                std::string(fb::EnumNameTokenListEncoding(encoding)), "); file ", bytes.size(), " bytes");

        // In place from an aligned buffer; copied from a misaligned one.
        for (size_t shift : {size_t{0}, size_t{1}, size_t{8}}) {
            const AlignedCopy buf(bytes, shift);
            const auto file = ItlFile::from_memory(buf.data, bytes.size());
            check_matches(*file, spec);
            CHECK(file->format_version() == kItlFormatVersion);
            CHECK(file->file_size() == bytes.size());
            const uint8_t* first = static_cast<const uint8_t*>(file->tensors()[0].data);
            const bool in_place = first >= buf.data && first < buf.data + bytes.size();
            CHECK(in_place == (shift == 0));
        }
    }
}

TEST_CASE("q3_0 and q2_0 tensors: the writer quantizes rows, the reader checks their exact length") {
    ModelSpec spec = small_spec();
    std::mt19937 rng(31);
    spec.tensors.push_back(tensor("low3", {5, 40}, DType::q3_0, &rng));  // two q3_0 blocks a row, one padded
    spec.tensors.push_back(tensor("low2", {3, 97}, DType::q2_0, &rng));  // two q2_0 blocks a row, one padded
    std::vector<uint8_t> bytes = serialize_plain(spec);
    const auto file = ItlFile::from_memory(bytes.data(), bytes.size());
    for (size_t k : {spec.tensors.size() - 2, spec.tensors.size() - 1}) {
        const SpecTensor& want = spec.tensors[k];
        const TensorView* got = file->find(want.name);
        REQUIRE(got != nullptr);
        CHECK(got->dtype == want.dtype);
        const int64_t cols = want.shape[1];
        const size_t row_bytes = dtype_row_bytes(want.dtype, cols);
        CHECK(got->bytes == static_cast<size_t>(want.shape[0]) * row_bytes);
        CHECK(row_bytes == (want.dtype == DType::q3_0 ? 2 * 14u : 2 * 18u));
        double err = 0, energy = 0;
        for (int64_t r = 0; r < want.shape[0]; r++) {
            const float* x = want.values.data() + r * cols;
            std::vector<uint8_t> row(row_bytes);
            std::vector<float> back(static_cast<size_t>(cols));
            const uint8_t* stored = static_cast<const uint8_t*>(got->data) + r * row_bytes;
            if (want.dtype == DType::q3_0) {
                quantize_row_q3_0(x, cols, reinterpret_cast<BlockQ3*>(row.data()));
                dequantize_row_q3_0(reinterpret_cast<const BlockQ3*>(stored), cols, back.data());
            } else {
                quantize_row_q2_0(x, cols, reinterpret_cast<BlockQ2*>(row.data()));
                dequantize_row_q2_0(reinterpret_cast<const BlockQ2*>(stored), cols, back.data());
            }
            CHECK(std::memcmp(stored, row.data(), row_bytes) == 0);
            for (int64_t c = 0; c < cols; c++) {
                err += (back[c] - x[c]) * (back[c] - x[c]);
                energy += x[c] * x[c];
            }
        }
        const double rel = std::sqrt(err / energy);
        MESSAGE(want.name << " (" << dtype_name(want.dtype) << "): stored rows decode with relative rms error " << rel);
        CHECK(rel < (want.dtype == DType::q3_0 ? 0.2 : 0.4));
    }
    // One byte short of either tensor is refused.
    for (size_t k : {spec.tensors.size() - 2, spec.tensors.size() - 1}) {
        std::vector<uint8_t> b = bytes;
        const fb::Tensor* t = metadata(b)->tensors()->Get(static_cast<flatbuffers::uoffset_t>(k));
        const uint64_t need = t->length();
        REQUIRE(table(t)->SetField(fb::Tensor::VT_LENGTH, need - 1));
        reseal(&b);
        CHECK(contains(load_error(b),
                       std::to_string(need - 1) + " bytes, its shape and dtype need " + std::to_string(need)));
    }
}

TEST_CASE("write_itl + mmap open") {
    TempDir dir;
    const ModelSpec spec = make_spec(TokenizerKind::chars, char_tokens());
    const std::string path = (dir.path / "model.itl").string();
    write_itl(spec, path, WriteOptions{false});
    write_itl(spec, path, WriteOptions{false});  // replacing an existing file works the same way
    std::vector<std::string> entries;
    for (const auto& e : std::filesystem::directory_iterator(dir.path)) entries.push_back(e.path().filename().string());
    CHECK(entries == std::vector<std::string>{"model.itl"});  // no temp file left behind

    std::ifstream in(path, std::ios::binary);
    const std::vector<uint8_t> on_disk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(on_disk == serialize_plain(spec));  // deterministic

    const auto file = ItlFile::open(path);
    check_matches(*file, spec);
    // Tensors are 64-byte aligned in memory: the mapping starts on a page.
    const TensorView& first = file->tensors()[0];
    const uint64_t data_offset = u64_at(on_disk, 32);
    std::vector<uint8_t> copy = on_disk;
    const uint64_t first_offset = metadata(copy)->tensors()->Get(0)->offset();
    CHECK((reinterpret_cast<uintptr_t>(first.data) - first_offset - data_offset) % 64 == 0);
    MESSAGE("mmap open: ", file->tensors().size(), " tensors, all 64-aligned, data region page-aligned");

    CHECK_THROWS_WITH_AS(ItlFile::open((dir.path / "missing.itl").string()), doctest::Contains("cannot open"), Error);
    CHECK_THROWS_WITH_AS(ItlFile::open(dir.path.string()), doctest::Contains("not a regular file"), Error);
    { std::ofstream empty(dir.path / "empty.itl"); }
    CHECK_THROWS_WITH_AS(ItlFile::open((dir.path / "empty.itl").string()),
                         "truncated file: 0 bytes, smaller than the 64-byte .itl header", Error);
    {
        std::ofstream cut(dir.path / "cut.itl", std::ios::binary);
        cut.write(reinterpret_cast<const char*>(on_disk.data()), static_cast<std::streamsize>(on_disk.size() - 100));
    }
    CHECK_THROWS_WITH_AS(ItlFile::open((dir.path / "cut.itl").string()), doctest::Contains("truncated or corrupt file"),
                         Error);

    ModelSpec plain = spec;
    plain.has_tokenizer = false;
    const std::vector<uint8_t> plain_bytes = serialize_plain(plain);
    const auto plain_file = ItlFile::from_memory(plain_bytes.data(), plain_bytes.size());
    CHECK_FALSE(plain_file->has_tokenizer());
    CHECK(plain_file->tokenizer().tokens.empty());
    CHECK(plain_file->tensors().size() == spec.tensors.size());

    ModelSpec bad = spec;
    bad.tensors[1].values.pop_back();
    CHECK_THROWS_WITH_AS(write_itl(bad, (dir.path / "bad.itl").string()),
                         "tensor 'position_embedding.weight': 407 values for 408 elements", Error);
    bad = spec;
    bad.tensors[2].name = bad.tensors[0].name;
    CHECK_THROWS_WITH_AS(serialize_plain(bad), "duplicate tensor name 'embedding.weight'", Error);
    bad = spec;
    bad.tokenizer.tokens.resize(bad.config.vocab_size + 1);
    CHECK_THROWS_WITH_AS(serialize_plain(bad), doctest::Contains("tokenizer has 51 tokens, more than vocab_size 50"),
                         Error);
    bad = spec;
    bad.tensors[0].dtype = static_cast<DType>(7);
    CHECK_THROWS_WITH_AS(serialize_plain(bad), "tensor 'embedding.weight': unknown dtype 7", Error);
    bad = spec;
    bad.tensors[8].shape.push_back(1);  // rank4 [2, 3, 1, 5] gets a fifth dimension
    CHECK_THROWS_WITH_AS(serialize_plain(bad), "tensor 'rank4': rank 5 (at most 4)", Error);
    bad = spec;
    bad.tensors[2].shape[0] = 0;
    CHECK_THROWS_WITH_AS(serialize_plain(bad), doctest::Contains("tensor 'layers.0.norm.weight': dimension 0 is 0"),
                         Error);
    bad = spec;
    bad.config.hidden = 0;
    CHECK_THROWS_WITH_AS(serialize_plain(bad), doctest::Contains("hidden = 0"), Error);
    CHECK_THROWS_WITH_AS(write_itl(spec, (dir.path / "no" / "such" / "dir.itl").string()),
                         doctest::Contains("cannot create a temporary file"), Error);
}

TEST_CASE("compressed metadata: round trip, and damaged frames are rejected") {
    const ModelSpec spec = small_spec();
    const std::vector<uint8_t> plain = serialize_plain(spec);
    const std::vector<uint8_t> packed = serialize_itl(spec);
    REQUIRE((u64_at(packed, 56) & 0xffffffffu) == 1);        // flags: metadata zstd
    CHECK((u64_at(packed, 56) >> 32) == u64_at(plain, 24));  // reserved: the raw metadata length
    CHECK(u64_at(packed, 24) < u64_at(plain, 24));
    CHECK(packed.size() < plain.size());
    check_matches(*ItlFile::from_memory(packed.data(), packed.size()), spec);

    auto load = [](std::vector<uint8_t> bytes) {
        reseal(&bytes);  // recompute the checksum so the frame itself is what gets checked
        return ItlFile::from_memory(bytes.data(), bytes.size());
    };
    std::vector<uint8_t> bad = packed;
    bad[60] ^= 1;  // raw length off by one
    CHECK_THROWS_WITH_AS(load(bad), doctest::Contains("corrupt metadata: compressed frame declares"), Error);
    bad = packed;
    bad[64 + u64_at(packed, 24) / 2] ^= 0xff;  // inside the frame
    CHECK_THROWS_AS(load(bad), Error);
    bad = packed;
    bad[56] = 2;  // unknown flag
    CHECK_THROWS_WITH_AS(load(bad), doctest::Contains("unknown flags"), Error);
    bad = packed;
    std::fill(bad.begin() + 60, bad.begin() + 64, uint8_t{0xff});  // a raw length over 256 MiB
    CHECK_THROWS_WITH_AS(load(bad), doctest::Contains("corrupt header: metadata raw length (reserved) 4294967295"),
                         Error);
    // One frame only: an empty skippable frame after it would decompress to the same bytes.
    bad = packed;
    const uint64_t meta_length = u64_at(packed, 24);
    REQUIRE(64 + meta_length + sizeof kSkippableFrame <= u64_at(packed, 32));  // room before the data region
    std::copy(std::begin(kSkippableFrame), std::end(kSkippableFrame),
              bad.begin() + static_cast<ptrdiff_t>(64 + meta_length));
    put_u64(&bad, 24, meta_length + sizeof kSkippableFrame);
    CHECK_THROWS_WITH_AS(load(bad), doctest::Contains("corrupt metadata: bytes after its zstd frame"), Error);
    MESSAGE("metadata ", u64_at(plain, 24), " -> ", u64_at(packed, 24),
            " bytes compressed; wrong length, damaged frame, "
            "a second (skippable) frame and unknown flags rejected");
}

TEST_CASE("every truncation of a file is rejected") {
    const std::vector<uint8_t> bytes = serialize_plain(small_spec());
    REQUIRE_NOTHROW(ItlFile::from_memory(bytes.data(), bytes.size()));
    size_t rejected = 0;
    for (size_t len = 0; len < bytes.size(); len++) {
        for (bool verify : {true, false}) {
            const std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(len));
            const std::string message = load_error(prefix, {verify});
            rejected += message != "(loaded)";
            if (len < 64)
                CHECK(contains(message, "truncated file: " + std::to_string(len) + " bytes"));
            else
                CHECK(contains(message, "truncated or corrupt file: " + std::to_string(len) + " bytes"));
        }
    }
    CHECK(rejected == 2 * bytes.size());
    MESSAGE("truncation: all ", bytes.size(), " prefixes rejected (with and without checksum)");
}

TEST_CASE("corrupt headers, checksum and metadata are rejected with their message") {
    const std::vector<uint8_t> good = serialize_plain(small_spec());
    const uint64_t data_offset = u64_at(good, 32), data_length = u64_at(good, 40);
    // Header fields are checked before the checksum, so only metadata edits need resealing.
    auto edited = [&](const std::function<void(std::vector<uint8_t>&)>& edit, bool seal = false) {
        std::vector<uint8_t> b = good;
        edit(b);
        if (seal) reseal(&b);
        return b;
    };

    CHECK(load_error(edited([](auto& b) { b[0] = 'X'; })) == "not an .itl file (bad magic)");
    CHECK(load_error(edited([](auto& b) { b[5] = '1'; })) == "not an .itl file (bad magic)");
    CHECK(load_error(edited([](auto& b) { b[8] = 3; })) ==
          "unsupported .itl format version 3 (this reader supports versions 1 to 2)");
    CHECK(load_error(edited([](auto& b) { b[8] = 0; })) ==
          "unsupported .itl format version 0 (this reader supports versions 1 to 2)");
    CHECK(contains(load_error(edited([](auto& b) { b[12] = 128; })), "corrupt header: header_bytes 128"));
    CHECK(contains(load_error(edited([](auto& b) { b[56] = 2; })), "corrupt header: unknown flags 2"));
    CHECK(contains(load_error(edited([](auto& b) { b[60] = 1; })),
                   "corrupt header: reserved 1 without compressed metadata"));
    CHECK(contains(load_error(edited([](auto& b) { put_u64(&b, 24, 0); })), "corrupt header: meta_length 0"));
    CHECK(contains(load_error(edited([&](auto& b) { put_u64(&b, 24, data_offset); })), "corrupt header: data_offset"));
    CHECK(contains(load_error(edited([&](auto& b) { put_u64(&b, 32, data_offset + 1); })),
                   "corrupt header: data_offset"));  // not 64-aligned
    CHECK(
        contains(load_error(edited([&](auto& b) { put_u64(&b, 40, data_length + 1); })), "truncated or corrupt file"));
    // A huge data_length asks for page alignment, which this small file's data_offset lacks.
    CHECK(contains(load_error(edited([&](auto& b) { put_u64(&b, 40, ~uint64_t{0}); })), "corrupt header: data_offset"));
    std::vector<uint8_t> padded = good;
    padded.push_back(0);
    CHECK(contains(load_error(padded), "truncated or corrupt file"));

    // Checksum: a flipped data byte (or metadata byte) is caught only by the checksum.
    const std::vector<uint8_t> flipped = edited([&](auto& b) { b[data_offset + 3] ^= 0x40; });
    CHECK(load_error(flipped) == "checksum mismatch: file is corrupt");
    const auto unchecked = ItlFile::from_memory(flipped.data(), flipped.size(), {false});
    CHECK(std::memcmp(unchecked->tensors()[0].data, good.data() + data_offset, 4) != 0);
    CHECK(load_error(edited([](auto& b) { b[64 + 40] ^= 1; })) == "checksum mismatch: file is corrupt");

    // A broken FlatBuffer is caught by the verifier, with or without the checksum.
    const auto bad_root = [](auto& b) { put_u64(&b, 64, 0x00000000fffffff0u | (u64_at(b, 64) & ~0xffffffffull)); };
    CHECK(load_error(edited(bad_root), {false}) == "corrupt metadata: FlatBuffers verification failed");
    CHECK(load_error(edited(bad_root, true)) == "corrupt metadata: FlatBuffers verification failed");
    CHECK(load_error(edited([](auto& b) { b[64 + 4] = 'X'; }, true)) ==  // the file identifier "ITLM"
          "corrupt metadata: FlatBuffers verification failed");
    MESSAGE("header/checksum/verifier corruptions rejected");
}

TEST_CASE(
    "layout rows16: fp32 / fp16 / q4 / q8 blocks of 16 rows interleaved, the same bytes reordered; misuse is refused") {
    std::mt19937 rng(41);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (DType dtype : {DType::f32, DType::f16, DType::q4_0, DType::q8_0})
        for (int64_t rows : {16, 48, 20, 184})
            for (int64_t cols : {32, 70, 128}) {
                const size_t row_bytes = dtype_row_bytes(dtype, cols);
                std::vector<float> w(static_cast<size_t>(rows * cols));
                for (float& v : w) v = normal(rng);
                std::vector<uint8_t> plain(static_cast<size_t>(rows) * row_bytes), inter(plain.size()), row(row_bytes);
                for (int64_t r = 0; r < rows; r++)
                    quantize_row(dtype, w.data() + r * cols, cols, plain.data() + r * row_bytes);
                to_rows16(dtype, plain.data(), rows, cols, inter.data());
                CHECK(inter != plain);
                for (int64_t r = 0; r < rows; r++) {
                    row_from_rows16(dtype, inter.data(), rows, cols, r, row.data());
                    CHECK_MESSAGE(std::memcmp(row.data(), plain.data() + r * row_bytes, row_bytes) == 0,
                                  dtype_name(dtype) << " " << rows << "x" << cols << " row " << r);
                }
                // q8: lane 3's element 5 sits at byte 32 + 64 * 1 + 4 * 3 + 1 of the first group block.
                if (dtype == DType::q8_0) CHECK(inter[32 + 64 + 12 + 1] == plain[3 * row_bytes + 2 + 5]);
                // fp32: row 3's element 5 is float 5 * 16 + 3 of group 0; row 19's element 2, float 2 * 16 + 3
                // of group 1.
                if (dtype == DType::f32) {
                    CHECK(std::memcmp(inter.data() + 4 * (5 * 16 + 3), plain.data() + 3 * row_bytes + 4 * 5, 4) == 0);
                    if (rows >= 32)
                        CHECK(std::memcmp(inter.data() + 16 * row_bytes + 4 * (2 * 16 + 3),
                                          plain.data() + 19 * row_bytes + 4 * 2, 4) == 0);
                }
                // The scales of group 0, block 0 lead, in row order (fp32, fp16: column 0); the last rows % 16
                // rows are row_major.
                const size_t lead = dtype == DType::f32 ? 4 : 2;
                for (int lane = 0; lane < 16; lane++)
                    CHECK(std::memcmp(inter.data() + lead * lane, plain.data() + lane * row_bytes, lead) == 0);
                const size_t tail = static_cast<size_t>(rows % 16) * row_bytes;
                CHECK(std::memcmp(inter.data() + inter.size() - tail, plain.data() + plain.size() - tail, tail) == 0);
            }

    ModelSpec spec = small_spec();
    SpecTensor t = tensor("inter", {32, 70}, DType::q4_0, &rng);
    t.layout = Layout::rows16;
    spec.tensors.push_back(t);
    const std::vector<uint8_t> bytes = serialize_plain(spec);
    const auto file = ItlFile::from_memory(bytes.data(), bytes.size());
    const TensorView* got = file->find("inter");
    REQUIRE(got != nullptr);
    CHECK(got->layout == Layout::rows16);
    CHECK(got->bytes == 32u * 3u * 18u);
    std::vector<uint8_t> plain(got->bytes), inter(got->bytes);
    for (int64_t r = 0; r < 32; r++) quantize_row(DType::q4_0, t.values.data() + r * 70, 70, plain.data() + r * 54);
    to_rows16(DType::q4_0, plain.data(), 32, 70, inter.data());
    CHECK(std::memcmp(got->data, inter.data(), inter.size()) == 0);
    CHECK(file->find("embedding.weight")->layout == Layout::row_major);

    // The writer refuses rows16 where it does not apply...
    for (auto [dtype, shape, why] :
         {std::tuple{DType::nf4, std::vector<int64_t>{32, 64}, "needs dtype fp32, fp16, q4 or q8, not nf4"},
          std::tuple{DType::q3_0, std::vector<int64_t>{32, 64}, "needs dtype fp32, fp16, q4 or q8, not q3"},
          std::tuple{DType::f32, std::vector<int64_t>{15, 64}, "at least 16 rows"},
          std::tuple{DType::q4_0, std::vector<int64_t>{15, 64}, "at least 16 rows"},
          std::tuple{DType::q4_0, std::vector<int64_t>{64}, "at least 16 rows"}}) {
        ModelSpec bad = small_spec();
        SpecTensor b = tensor("bad", shape, dtype, &rng);
        b.layout = Layout::rows16;
        bad.tensors.push_back(b);
        CHECK_THROWS_WITH_AS(serialize_plain(bad), doctest::Contains(why), Error);
        CHECK_FALSE(layout_allows(Layout::rows16, dtype, shape));  // the kernels' per-product test agrees
    }
    CHECK(layout_allows(Layout::rows16, DType::q4_0, t.shape));
    CHECK(layout_allows(Layout::row_major, DType::q3_0, std::vector<int64_t>{64}));
    CHECK_FALSE(layout_allows(static_cast<Layout>(2), DType::f32, t.shape));
    CHECK(layout_refusal(static_cast<Layout>(2), DType::f32, t.shape) == "unknown layout 2");
    // ... and so does the reader, for an unknown layout or one that does not fit the tensor.
    const size_t k = spec.tensors.size() - 1;
    auto after = [&](auto field, auto value) {
        std::vector<uint8_t> b = bytes;
        REQUIRE(table(metadata(b)->tensors()->Get(static_cast<flatbuffers::uoffset_t>(k)))->SetField(field, value));
        reseal(&b);
        return load_error(b);
    };
    CHECK(contains(after(fb::Tensor::VT_LAYOUT, int8_t{2}), "tensor 'inter': unsupported layout 2"));
    CHECK(contains(after(fb::Tensor::VT_DTYPE, int32_t{6}),
                   "tensor 'inter': layout rows16 needs dtype fp32, fp16, q4 or q8, not q2"));
    MESSAGE(
        "rows16: fp32, fp16, q4 and q8, 12 shapes each (rows 16, 48, 20, 184) round-trip row by row; written and "
        "read back; writer, reader and layout_allows refuse misuse (nf4, q3, < 16 rows, a vector, unknown layout)");
}

TEST_CASE("bad tensor entries, config and tokenizer are rejected with their message") {
    const std::vector<uint8_t> good = serialize_plain(small_spec());
    const uint64_t data_length = u64_at(good, 40);
    auto error_after = [&](const std::function<void(const fb::Model*)>& edit) {
        std::vector<uint8_t> b = good;
        edit(metadata(b));
        reseal(&b);
        return load_error(b);
    };
    // Tensor 1 is position_embedding.weight [17, 24] fp16 at a non-zero offset.
    auto t1 = [](const fb::Model* m) { return m->tensors()->Get(1); };

    const uint64_t beyond = (data_length + 63) / 64 * 64 + 64;
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_OFFSET, beyond); }),
                   "tensor 'position_embedding.weight': bytes at offset " + std::to_string(beyond) +
                       " (length 816) lie outside the data region (" + std::to_string(data_length) + " bytes)"));
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_OFFSET, uint64_t{1} << 63); }),
                   "lie outside the data region"));
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_LENGTH, ~uint64_t{0} - 63); }),
                   "lie outside the data region"));
    std::vector<uint8_t> copy = good;
    const uint64_t t1_offset = t1(metadata(copy))->offset();
    REQUIRE(t1_offset > 0);
    CHECK(contains(
        error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_OFFSET, t1_offset + 8); }),
        "tensor 'position_embedding.weight': offset " + std::to_string(t1_offset + 8) + " is not a multiple of 64"));
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_LENGTH, uint64_t{814}); }),
                   "tensor 'position_embedding.weight': 814 bytes, its shape and dtype need 816"));
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_DTYPE, int32_t{9}); }),
                   "tensor 'position_embedding.weight': unsupported dtype 9"));
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_DTYPE, int32_t{0}); }),
                   "816 bytes, its shape and dtype need 1632"));
    // [17, 24] as q3_0: 17 rows of one 14-byte block; as q2_0: of one 18-byte block.
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_DTYPE, int32_t{5}); }),
                   "816 bytes, its shape and dtype need 238"));
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_DTYPE, int32_t{6}); }),
                   "816 bytes, its shape and dtype need 306"));
    CHECK(contains(error_after([&](auto m) { set_field(t1(m), fb::Tensor::VT_DTYPE, int32_t{7}); }),
                   "tensor 'position_embedding.weight': unsupported dtype 7"));

    // Absurd dimensions.
    auto dims = [&](int64_t a, int64_t b) {
        return error_after([&](auto m) {
            auto* shape = const_cast<flatbuffers::Vector<int64_t>*>(t1(m)->shape());
            shape->Mutate(0, a);
            shape->Mutate(1, b);
        });
    };
    CHECK(contains(dims(int64_t{1} << 40, 24), "dimension 0 is 1099511627776 (must be 1..2147483648)"));
    CHECK(contains(dims(17, 0), "dimension 1 is 0"));
    CHECK(contains(dims(-17, 24), "dimension 0 is -17"));
    CHECK(contains(dims(int64_t{1} << 20, int64_t{1} << 12), "more than 2147483648 elements"));
    CHECK(contains(dims(24, 17), "(loaded)"));  // same element count: a valid file

    // Duplicate names: "scalar.parameter" becomes "embedding.weight" (same length, in place).
    CHECK(error_after([](auto m) {
              std::memcpy(const_cast<char*>(m->tensors()->Get(3)->name()->c_str()), "embedding.weight", 16);
          }) == "duplicate tensor name 'embedding.weight'");

    // Config.
    CHECK(contains(error_after([&](auto m) { set_field(m->config(), fb::ModelConfig::VT_HIDDEN, int32_t{0}); }),
                   "invalid model config: hidden = 0"));
    CHECK(contains(
        error_after([&](auto m) { set_field(m->config()->layers()->Get(1), fb::LayerConfig::VT_TOP_K, int32_t{9}); }),
        "invalid model config: layers[1].top_k = 9 (must be 1..3)"));
    CHECK(contains(
        error_after([&](auto m) { set_field(m->config()->layers()->Get(1), fb::LayerConfig::VT_KIND, int8_t{7}); }),
        "layers[1].kind = 7"));
    CHECK(contains(error_after([&](auto m) { set_field(m, fb::Model::VT_FORMAT_VERSION, uint32_t{3}); }),
                   "corrupt metadata: format_version 3 differs from the header's 2"));

    // Uncompressed tokenizer section: wrong raw_length, broken nested FlatBuffer, range.
    auto sec = [](const fb::Model* m) { return m->tokenizer()->tokens(); };
    CHECK(metadata(copy)->tokenizer()->tokens()->compression() == fb::Compression::none);
    CHECK(
        contains(error_after([&](auto m) { set_field(sec(m), fb::Section::VT_RAW_LENGTH, sec(m)->raw_length() + 1); }),
                 "tokenizer: uncompressed section of"));
    CHECK(contains(error_after([&](auto m) { set_field(sec(m), fb::Section::VT_OFFSET, sec(m)->offset() + 32); }),
                   "tokenizer: offset"));
    CHECK(contains(error_after([&](auto m) { set_field(sec(m), fb::Section::VT_LENGTH, data_length); }),
                   "tokenizer: bytes at offset"));
    CHECK(contains(error_after([&](auto m) { set_field(m->tokenizer(), fb::Tokenizer::VT_KIND, int8_t{4}); }),
                   "tokenizer: unknown kind 4"));
    CHECK(contains(error_after([&](auto m) { set_field(sec(m), fb::Section::VT_RAW_LENGTH, uint64_t{1} << 40); }),
                   "tokenizer: raw_length 1099511627776 exceeds the 64 MiB limit"));
    {
        std::vector<uint8_t> b = good;
        const uint64_t at = u64_at(b, 32) + sec(metadata(b))->offset();
        b[at] = 0xf0, b[at + 1] = 0xff;  // root offset of the nested TokenList points outside it
        reseal(&b);
        CHECK(load_error(b) == "tokenizer: corrupt token list (FlatBuffers verification failed)");
    }
    MESSAGE("tensor range/alignment/length/dtype/dims, config and tokenizer-section corruptions rejected");
}

TEST_CASE("zstd tokenizer: bombs, wrong raw_length and broken frames are rejected") {
    const ModelSpec spec = make_spec(TokenizerKind::word, word_tokens(20000));
    const std::vector<uint8_t> good = serialize_plain(spec);
    std::vector<uint8_t> probe = good;
    const fb::Section* s = metadata(probe)->tokenizer()->tokens();
    REQUIRE(s->compression() == fb::Compression::zstd);
    const uint64_t raw_length = s->raw_length(), stored = s->length();
    const uint64_t at = u64_at(good, 32) + s->offset();

    // A frame declaring 70 MiB of zeros (a few KB compressed), streamed so the test never holds it.
    const uint64_t bomb_size = uint64_t{70} << 20;
    std::vector<uint8_t> bomb(ZSTD_compressBound(1 << 20) * 2);
    {
        ZSTD_CCtx* cctx = ZSTD_createCCtx();
        REQUIRE(!ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(cctx, bomb_size)));
        const std::vector<uint8_t> zeros(1 << 20, 0);
        ZSTD_outBuffer out{bomb.data(), bomb.size(), 0};
        for (uint64_t fed = 0; fed < bomb_size; fed += zeros.size()) {
            ZSTD_inBuffer in{zeros.data(), zeros.size(), 0};
            const ZSTD_EndDirective mode = fed + zeros.size() == bomb_size ? ZSTD_e_end : ZSTD_e_continue;
            size_t left;
            do left = ZSTD_compressStream2(cctx, &out, &in, mode);
            while (!ZSTD_isError(left) && (mode == ZSTD_e_end ? left != 0 : in.pos < in.size));
            REQUIRE(!ZSTD_isError(left));
        }
        ZSTD_freeCCtx(cctx);
        bomb.resize(out.pos);
    }
    REQUIRE(ZSTD_getFrameContentSize(bomb.data(), bomb.size()) == bomb_size);
    REQUIRE(bomb.size() < stored);

    auto with_section = [&](const std::vector<uint8_t>& bytes, uint64_t new_raw_length) {
        std::vector<uint8_t> b = good;
        std::fill(b.begin() + static_cast<ptrdiff_t>(at), b.begin() + static_cast<ptrdiff_t>(at + stored), 0);
        std::copy(bytes.begin(), bytes.end(), b.begin() + static_cast<ptrdiff_t>(at));
        const fb::Section* sec = metadata(b)->tokenizer()->tokens();
        REQUIRE(table(sec)->SetField(fb::Section::VT_LENGTH, static_cast<uint64_t>(bytes.size())));
        REQUIRE(table(sec)->SetField(fb::Section::VT_RAW_LENGTH, new_raw_length));
        reseal(&b);
        return load_error(b);
    };
    CHECK(with_section(bomb, bomb_size) == "tokenizer: raw_length 73400320 exceeds the 64 MiB limit");
    CHECK(with_section(bomb, raw_length) ==
          "tokenizer: zstd frame declares 73400320 bytes, raw_length says " + std::to_string(raw_length));
    const std::vector<uint8_t> frame(good.begin() + static_cast<ptrdiff_t>(at),
                                     good.begin() + static_cast<ptrdiff_t>(at + stored));
    CHECK(with_section(frame, raw_length) == "(loaded)");
    CHECK(with_section(frame, raw_length - 1) == "tokenizer: zstd frame declares " + std::to_string(raw_length) +
                                                     " bytes, raw_length says " + std::to_string(raw_length - 1));
    CHECK(with_section(std::vector<uint8_t>(frame.begin(), frame.begin() + 3), raw_length) ==
          "tokenizer: not a zstd frame with a declared size");
    // A truncated frame is refused before allocating: its blocks cannot hold the declared size.
    CHECK(with_section(std::vector<uint8_t>(frame.begin(), frame.begin() + 9), raw_length) ==
          "tokenizer: zstd frame declares " + std::to_string(raw_length) + " bytes, more than its blocks hold");
    const std::string cut = with_section(std::vector<uint8_t>(frame.begin(), frame.end() - 10), raw_length);
    CHECK((contains(cut, "tokenizer: zstd decompression failed") || contains(cut, "more than its blocks hold")));
    std::vector<uint8_t> garbage(64, 0x55);
    CHECK(with_section(garbage, raw_length) == "tokenizer: not a zstd frame with a declared size");
    // One frame only: an empty skippable frame appended to the section (the file's last bytes).
    {
        std::vector<uint8_t> b = good;
        REQUIRE(at + stored == b.size());
        b.insert(b.end(), std::begin(kSkippableFrame), std::end(kSkippableFrame));
        put_u64(&b, 40, u64_at(b, 40) + sizeof kSkippableFrame);  // data_length
        REQUIRE(table(metadata(b)->tokenizer()->tokens())
                    ->SetField(fb::Section::VT_LENGTH, stored + sizeof kSkippableFrame));
        reseal(&b);
        CHECK(load_error(b) == "tokenizer: bytes after its zstd frame");
    }
    MESSAGE("zstd: ", bomb.size(),
            "-byte bomb declaring 70 MiB rejected; truncated/garbage frames and a frame followed "
            "by a skippable one rejected");
}

TEST_CASE("token list encodings: newline-joined in version 2, TokenList in version 1 files") {
    auto as_version_1 = [&](std::vector<uint8_t>* b) {
        (*b)[8] = 1;
        set_field(metadata(*b), fb::Model::VT_FORMAT_VERSION, uint32_t{1});
    };

    // A newline-joined section, stored raw so its bytes can be edited.
    const ModelSpec spec = make_spec(TokenizerKind::word, random_line_tokens());
    const std::vector<uint8_t> good = serialize_plain(spec);
    std::vector<uint8_t> probe = good;
    const fb::Tokenizer* t = metadata(probe)->tokenizer();
    REQUIRE(t->encoding() == fb::TokenListEncoding::lines);
    REQUIRE(t->tokens()->compression() == fb::Compression::none);
    REQUIRE(t->tokens()->raw_length() == 200);  // 50 tokens of 3 bytes and a newline
    const uint64_t at = u64_at(good, 32) + t->tokens()->offset(), length = t->tokens()->length();
    auto error_after = [&](const std::function<void(std::vector<uint8_t>&)>& edit) {
        std::vector<uint8_t> b = good;
        edit(b);
        reseal(&b);
        return load_error(b);
    };
    CHECK(error_after([](auto&) {}) == "(loaded)");
    CHECK(error_after([&](auto& b) { b[at + length - 1] = 'x'; }) == "tokenizer: last token not ended by a newline");
    CHECK(error_after([&](auto& b) { b[at] = '\n'; }) == "tokenizer: 51 tokens, more than the model's 50 token ids");
    CHECK(error_after([&](auto& b) { set_field(metadata(b)->tokenizer(), fb::Tokenizer::VT_ENCODING, int8_t{7}); }) ==
          "tokenizer: unknown encoding 7");
    CHECK(error_after([&](auto& b) { as_version_1(&b); }) ==
          "tokenizer: newline-joined tokens in a format version 1 file");
    {  // an empty token is a token: token 1's newline moved to its start empties it, token 2 takes its bytes
        std::vector<uint8_t> b = good;
        b[at + 4] = '\n', b[at + 7] = 'q';
        reseal(&b);
        const auto file = ItlFile::from_memory(b.data(), b.size());
        REQUIRE(file->tokenizer().tokens.size() == 50);
        CHECK(file->tokenizer().tokens[1].empty());
        CHECK(file->tokenizer().tokens[2].size() == 6);
    }

    // Version 1: a file whose token holds a newline is a TokenList, and with both version fields
    // set to 1 it is what the version 1 writer wrote. It loads, the same.
    const ModelSpec v1_spec = make_spec(TokenizerKind::chars, random_tokens());
    std::vector<uint8_t> v1 = serialize_plain(v1_spec);
    REQUIRE(metadata(v1)->tokenizer()->encoding() == fb::TokenListEncoding::flatbuffer);
    as_version_1(&v1);
    reseal(&v1);
    const auto file = ItlFile::from_memory(v1.data(), v1.size());
    CHECK(file->format_version() == 1);
    check_matches(*file, v1_spec);
    {  // a TokenList of more tokens than the model has ids
        std::vector<uint8_t> b = v1;
        set_field(metadata(b)->config(), fb::ModelConfig::VT_VOCAB_SIZE, int32_t{1});
        reseal(&b);
        CHECK(load_error(b) == "tokenizer: 2 tokens, more than the model's 1 token ids");
    }
    // A file the version 1 converter wrote (a fuzz seed of docs/fuzzing.md, kept in the repository).
    // The version 2 converter wrote the other file from the same checkpoint and tokenizer.
    const std::string dir = ITERA_SOURCE_DIR "/tests/fuzz_regressions/itl_loader/";
    const auto old = ItlFile::open(dir + "tiny_moe_tokenizer.itl");
    const auto now = ItlFile::open(dir + "tiny_moe_tokenizer_lines.itl");
    CHECK(old->format_version() == 1);
    CHECK(now->format_version() == 2);
    CHECK(old->tokenizer().tokens.size() == 12);
    CHECK(old->tokenizer().tokens[1] == "<UNK>");
    CHECK(old->tokenizer().tokens == now->tokenizer().tokens);
    REQUIRE(old->tensors().size() == now->tensors().size());
    for (size_t i = 0; i < old->tensors().size(); i++)  // the bytes may differ: layout rows16 came later
        CHECK((old->tensors()[i].name == now->tensors()[i].name && old->tensors()[i].shape == now->tensors()[i].shape));
    MESSAGE(
        "newline-joined section: missing final newline, too many tokens, unknown encoding, lines in a version 1 "
        "file rejected; empty tokens kept; a TokenList of too many tokens rejected; version 1 files (edited, and one "
        "written by the old converter) load, the "
        "latter with the tokens the version 2 converter writes");
}

TEST_CASE("every single-byte corruption of metadata and tokenizer is loaded safely or rejected") {
    // Resealed, so the checksum does not hide anything: the verifier and the field checks must.
    // Under ASan a read outside the buffer fails the test, so every accepted file is fully read.
    // zstd and raw sections; newline-joined (char_tokens, random_line_tokens) and TokenList
    for (const auto& tokens : {char_tokens(), random_tokens(), random_line_tokens()}) {
        std::vector<uint8_t> good = serialize_plain(make_spec(TokenizerKind::chars, tokens));
        const uint64_t meta_length = u64_at(good, 24), data_offset = u64_at(good, 32);
        const fb::Section* s = metadata(good)->tokenizer()->tokens();
        std::vector<size_t> positions;
        for (size_t i = 64; i < 64 + meta_length; i++) positions.push_back(i);
        for (size_t i = data_offset + s->offset(); i < data_offset + s->offset() + s->length(); i++)
            positions.push_back(i);
        size_t loaded = 0, rejected = 0;
        for (size_t at : positions) {
            for (uint8_t x : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xff}}) {
                std::vector<uint8_t> b = good;
                b[at] ^= x;
                reseal(&b);
                try {
                    const auto file = ItlFile::from_memory(b.data(), b.size());
                    uint64_t sum = 0;
                    for (const TensorView& t : file->tensors())
                        for (size_t i = 0; i < t.bytes; i++) sum += static_cast<const uint8_t*>(t.data)[i];
                    for (const std::string& token : file->tokenizer().tokens) sum += token.size();
                    loaded += sum != ~uint64_t{0};
                } catch (const Error&) {
                    rejected++;
                }
            }
        }
        CHECK(loaded + rejected == 3 * positions.size());
        CHECK(rejected > 0);
        MESSAGE(positions.size(), " bytes x 3 flips: ", loaded, " harmless, ", rejected, " rejected");
    }
}
