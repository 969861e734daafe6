// The C API (itera.h) and its C++ wrapper (itera.hpp) on small models built in memory: loading,
// error codes, tokenizer calls, evaluation, saved states that continue bit for bit, generation
// and a model shared between threads.
#include <doctest/doctest.h>
#include <stdlib.h>
#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "format/itl_file.h"
#include "format/tensor_names.h"
#include "itera.h"
#include "itera.hpp"
#include "runtime/context.h"
#include "runtime/evaluate.h"
#include "runtime/model.h"
#include "version.h"

namespace {

using Logits = std::vector<float>;

const std::vector<std::string> kWords = {"<PAD>", "<UNK>",  "<BOS>",  "<EOS>", "the",   "lord", "said",
                                         "god",   "and",    "unto",   "moses", "light", "was",  "good",
                                         "earth", "heaven", "waters", "day",   "night"};  // 19 of the 23 ids

// vocab_ids: a trimmed vocabulary, the token id of each embedding row (empty: 23 rows, ids 0..22).
itera::ModelSpec make_spec(uint32_t seed, int32_t max_seq_length = 6, bool tokenizer = true,
                           const std::vector<int32_t>& vocab_ids = {}) {
    itera::ModelSpec spec;
    itera::ModelConfig& c = spec.config;
    c.vocab_size = vocab_ids.empty() ? 23 : static_cast<int32_t>(vocab_ids.size());
    c.vocab_ids = vocab_ids;
    c.hidden = 12;
    c.max_seq_length = max_seq_length;
    c.tied_head = false;
    c.layers = {{10, 3, 3, itera::ChannelKind::ffn, 0, {7}}, {8, 4, 4, itera::ChannelKind::moe, 2, {5, 6, 4}}};
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    for (const itera::ExpectedTensor& e : itera::expected_tensors(c)) {
        itera::SpecTensor t;
        t.name = e.name;
        t.shape = e.shape;
        int64_t n = 1;
        for (int64_t d : e.shape) n *= d;
        for (int64_t i = 0; i < n; i++) t.values.push_back(normal(rng));
        spec.tensors.push_back(std::move(t));
    }
    spec.has_tokenizer = tokenizer;
    if (tokenizer) spec.tokenizer = {itera::TokenizerKind::word, kWords};
    return spec;
}

std::vector<float>& values(itera::ModelSpec& spec, const std::string& name) {
    auto it = std::find_if(spec.tensors.begin(), spec.tensors.end(),
                           [&](const itera::SpecTensor& t) { return t.name == name; });
    REQUIRE(it != spec.tensors.end());
    return it->values;
}

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "itera-capi-XXXXXX").string();
        REQUIRE(mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

void write_bytes(const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// Owns a model loaded from bytes (copied, so the bytes may go away).
struct ModelHandle {
    itera_model* m = nullptr;
    explicit ModelHandle(const std::vector<uint8_t>& bytes) {
        itera_model_params p = itera_model_default_params();
        p.copy_buffer = 1;
        REQUIRE(itera_model_load_memory(bytes.data(), bytes.size(), &p, &m) == ITERA_OK);
    }
    ~ModelHandle() { itera_model_free(m); }
};

struct ContextHandle {
    itera_context* c = nullptr;
    explicit ContextHandle(const itera_model* m) { REQUIRE(itera_context_new(m, nullptr, &c) == ITERA_OK); }
    ~ContextHandle() { itera_context_free(c); }
};

int32_t argmax(const float* logits, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

bool same_bits(const Logits& a, const Logits& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool same_bits(const std::vector<Logits>& a, const std::vector<Logits>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); i++)
        if (!same_bits(a[i], b[i])) return false;
    return true;
}

// Continues from the context's current logits: feeds the argmax token n times, recording logits.
std::vector<Logits> continue_greedy(itera_context* ctx, int32_t vocab, int n) {
    std::vector<Logits> out;
    const float* logits = itera_context_logits(ctx);
    REQUIRE(logits != nullptr);
    for (int i = 0; i < n; i++) {
        REQUIRE(itera_eval(ctx, argmax(logits, vocab), &logits) == ITERA_OK);
        out.emplace_back(logits, logits + vocab);
    }
    return out;
}

std::vector<uint8_t> save(const itera_context* ctx) {
    std::vector<uint8_t> state(itera_context_state_size(ctx));
    size_t written = 0;
    REQUIRE(itera_context_save(ctx, state.data(), state.size(), &written) == ITERA_OK);
    REQUIRE(written == state.size());
    return state;
}

bool contains(const char* text, const std::string& part) { return std::string(text).find(part) != std::string::npos; }

}  // namespace

TEST_CASE("C API: version, loading from file and memory, queries") {
    CHECK(std::string(itera_version()) == ITERA_VERSION_STRING);
    CHECK(std::string(ITERA_VERSION_STRING) == ITERA_VERSION);  // the meson project version
    CHECK(std::string(ITERA_VERSION_STRING) == std::to_string(ITERA_VERSION_MAJOR) + "." +
                                                   std::to_string(ITERA_VERSION_MINOR) + "." +
                                                   std::to_string(ITERA_VERSION_PATCH));
    TempDir dir;
    const itera::ModelSpec spec = make_spec(3);
    const std::string path = (dir.path / "m.itl").string();
    itera::write_itl(spec, path);
    const std::vector<uint8_t> bytes = itera::serialize_itl(spec);

    itera_model* from_file = nullptr;
    REQUIRE(itera_model_load_file(path.c_str(), nullptr, &from_file) == ITERA_OK);
    CHECK(itera_model_vocab_size(from_file) == 23);
    CHECK(itera_model_hidden(from_file) == 12);
    CHECK(itera_model_max_seq_length(from_file) == 6);
    CHECK(itera_model_n_layers(from_file) == 2);
    CHECK(itera_model_has_tokenizer(from_file) == 1);
    CHECK(itera_model_eos(from_file) == 3);
    CHECK(itera_model_fingerprint(from_file) != 0);

    // In place (the caller keeps the buffer) and copied (the buffer is overwritten right after).
    itera_model* in_place = nullptr;
    REQUIRE(itera_model_load_memory(bytes.data(), bytes.size(), nullptr, &in_place) == ITERA_OK);
    std::vector<uint8_t> scratch = bytes;
    itera_model_params copy = itera_model_default_params();
    copy.copy_buffer = 1;
    itera_model* copied = nullptr;
    REQUIRE(itera_model_load_memory(scratch.data(), scratch.size(), &copy, &copied) == ITERA_OK);
    std::fill(scratch.begin(), scratch.end(), uint8_t{0xab});
    scratch.clear();
    scratch.shrink_to_fit();

    const int32_t prompt[] = {4, 5, 6, 7};
    std::vector<Logits> results;
    for (itera_model* m : {from_file, in_place, copied}) {
        CHECK(itera_model_fingerprint(m) == itera_model_fingerprint(from_file));
        ContextHandle ctx(m);
        const float* logits = nullptr;
        REQUIRE(itera_eval_tokens(ctx.c, prompt, 4, &logits) == ITERA_OK);
        results.emplace_back(logits, logits + 23);
    }
    CHECK(same_bits(results[0], results[1]));
    CHECK(same_bits(results[0], results[2]));

    // The C API computes what the runtime computes.
    const auto model = itera::load_model(itera::ItlFile::from_memory(bytes.data(), bytes.size()));
    itera::Context direct(*model);
    const float* want = nullptr;
    for (int32_t id : prompt) want = direct.eval(id);
    CHECK(same_bits(results[0], Logits(want, want + 23)));

    itera_model_free(from_file);
    itera_model_free(in_place);
    itera_model_free(copied);
    itera_model_free(nullptr);
    MESSAGE(
        "file, in-place memory and copied memory (buffer wiped after load) give bit-identical logits, equal to "
        "itera::Context");
}

TEST_CASE("C API: error codes and messages") {
    TempDir dir;
    itera_model* m = reinterpret_cast<itera_model*>(&m);  // any non-NULL value: a failed load must clear it
    const std::string missing = (dir.path / "missing.itl").string();
    CHECK(itera_model_load_file(missing.c_str(), nullptr, &m) == ITERA_ERR_IO);
    CHECK(m == nullptr);
    CHECK(contains(itera_last_error(), missing));
    CHECK(contains(itera_last_error(), "No such file"));
    CHECK(itera_model_load_file(dir.path.c_str(), nullptr, &m) == ITERA_ERR_IO);
    CHECK(contains(itera_last_error(), "not a regular file"));

    std::vector<uint8_t> bytes = itera::serialize_itl(make_spec(3));
    bytes[bytes.size() - 5] ^= 0x10;  // inside the data region: caught by the checksum
    write_bytes(dir.path / "corrupt.itl", bytes);
    CHECK(itera_model_load_file((dir.path / "corrupt.itl").c_str(), nullptr, &m) == ITERA_ERR_FORMAT);
    CHECK(contains(itera_last_error(), "checksum"));
    CHECK(itera_model_load_memory(bytes.data(), bytes.size(), nullptr, &m) == ITERA_ERR_FORMAT);
    bytes.resize(100);
    CHECK(itera_model_load_memory(bytes.data(), bytes.size(), nullptr, &m) == ITERA_ERR_FORMAT);
    CHECK(contains(itera_last_error(), "truncated"));
    const char text[] = "hello, not a model";
    CHECK(itera_model_load_memory(text, sizeof text, nullptr, &m) == ITERA_ERR_FORMAT);
    CHECK(m == nullptr);

    // NULL arguments are INVALID_ARGUMENT, never a crash.
    const ModelHandle model(itera::serialize_itl(make_spec(3)));
    ContextHandle ctx(model.m);
    itera_context* no_ctx = nullptr;
    int32_t ids[4], n = 0, token = 0;
    size_t len = 0;
    char buf[8];
    const float logits[3] = {0, 1, 2};
    itera_sampler* sampler = nullptr;
    CHECK(itera_model_load_file(nullptr, nullptr, &m) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_model_load_file("x", nullptr, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_model_load_memory(nullptr, 10, nullptr, &m) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_context_new(nullptr, nullptr, &no_ctx) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_context_new(model.m, nullptr, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_tokenize(nullptr, "the", ids, 4, &n, 0) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_tokenize(model.m, nullptr, ids, 4, &n, 0) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_tokenize(model.m, "the", nullptr, 4, &n, 0) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_tokenize(model.m, "the", ids, 4, nullptr, 0) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_tokenize(model.m, "the", ids, -1, &n, 0) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_tokenize(model.m, "the", ids, 4, &n, 8) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_detokenize(model.m, nullptr, 2, buf, sizeof buf, &len) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_detokenize(model.m, ids, -1, buf, sizeof buf, &len) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_token_piece(model.m, 4, 1, nullptr, 8, &len) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_eval(nullptr, 1, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_eval_tokens(ctx.c, nullptr, 2, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_eval_tokens(ctx.c, ids, 0, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_context_reset(nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_context_save(ctx.c, nullptr, 10, &len) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_context_save(ctx.c, buf, sizeof buf, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_context_restore(ctx.c, nullptr, 10) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_context_restore(nullptr, buf, sizeof buf) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_sampler_new(nullptr, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    REQUIRE(itera_sampler_new(nullptr, &sampler) == ITERA_OK);
    CHECK(itera_sampler_sample(sampler, nullptr, 3, &token) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_sampler_sample(sampler, logits, 0, &token) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_sampler_sample(sampler, logits, 3, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_generate(nullptr, ids, 1, 4, nullptr, nullptr, nullptr, &n) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_generate(ctx.c, nullptr, 1, 4, nullptr, nullptr, nullptr, &n) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "itera_generate"));
    // Queries on NULL give neutral values.
    CHECK(itera_model_vocab_size(nullptr) == 0);
    CHECK(itera_model_eos(nullptr) == -1);
    CHECK(itera_context_logits(nullptr) == nullptr);
    CHECK(itera_context_state_size(nullptr) == 0);
    itera_context_free(nullptr);
    itera_sampler_free(nullptr);

    // Sampler parameters are checked; NaN logits are refused instead of sorted.
    itera_sampler_params bad = itera_sampler_default_params();
    bad.top_p = 1.5f;
    itera_sampler* unused = nullptr;
    CHECK(itera_sampler_new(&bad, &unused) == ITERA_ERR_INVALID_ARGUMENT);
    bad = itera_sampler_default_params();
    bad.temperature = NAN;
    CHECK(itera_sampler_new(&bad, &unused) == ITERA_ERR_INVALID_ARGUMENT);
    bad = itera_sampler_default_params();
    bad.top_k = -1;
    CHECK(itera_generate(ctx.c, ids, 0, 4, &bad, nullptr, nullptr, &n) == ITERA_ERR_INVALID_ARGUMENT);
    const float nan_logits[3] = {0.0f, NAN, 1.0f};
    CHECK(itera_sampler_sample(sampler, nan_logits, 3, &token) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "NaN"));
    itera_sampler_free(sampler);

    CHECK(std::string(itera_error_name(ITERA_ERR_IO)) == "ITERA_ERR_IO");
    CHECK(std::string(itera_error_name(ITERA_ERR_MODEL_MISMATCH)) == "ITERA_ERR_MODEL_MISMATCH");
    CHECK(std::string(itera_error_name(-7)) == "ITERA_ERR_UNKNOWN_CODE");

    // The last error is per thread.
    const std::string mine = itera_last_error();
    std::string theirs;
    std::thread([&] {
        itera_model* x = nullptr;
        CHECK(std::string(itera_last_error()).empty());
        CHECK(itera_model_load_file("/nonexistent/other.itl", nullptr, &x) == ITERA_ERR_IO);
        theirs = itera_last_error();
    }).join();
    CHECK(itera_last_error() == mine);
    CHECK(contains(theirs.c_str(), "/nonexistent/other.itl"));
    MESSAGE(
        "missing file and directory -> IO, corrupt/truncated/foreign bytes -> FORMAT, NULL or bad "
        "arguments -> INVALID_ARGUMENT, last error is thread-local");
}

TEST_CASE("C API: model info is itera-run info's JSON") {
    TempDir dir;
    const itera::ModelSpec spec = make_spec(3);
    const std::string path = (dir.path / "quote\"d.itl").string();
    itera::write_itl(spec, path);
    itera_model* from_file = nullptr;
    REQUIRE(itera_model_load_file(path.c_str(), nullptr, &from_file) == ITERA_OK);
    const ModelHandle from_memory(itera::serialize_itl(spec));

    size_t len = 0;
    CHECK(itera_model_info(from_file, nullptr, 0, &len) == ITERA_ERR_BUFFER_TOO_SMALL);
    std::string text(len, '\0');
    CHECK(itera_model_info(from_file, text.data(), len, &len) == ITERA_ERR_BUFFER_TOO_SMALL);  // no room for the NUL
    text.resize(len + 1);
    REQUIRE(itera_model_info(from_file, text.data(), text.size(), &len) == ITERA_OK);
    text.resize(len);
    const nlohmann::json info = nlohmann::json::parse(text);  // the quote in the path is escaped
    CHECK(info["file"] == path);
    CHECK(info["vocab_size"] == 23);
    CHECK(info["hidden"] == 12);
    CHECK(info["max_seq_length"] == 6);
    REQUIRE(info["layers"].size() == 2);
    CHECK(info["layers"][1]["kind"] == "moe");
    CHECK(info["layers"][1]["ffn_widths"] == nlohmann::json::array({5, 6, 4}));
    const std::vector<itera::ExpectedTensor> expected = itera::expected_tensors(spec.config);
    REQUIRE(info["tensors"].size() == expected.size());
    int64_t parameters = 0;
    for (const itera::ExpectedTensor& e : expected) {
        int64_t n = 1;
        for (int64_t d : e.shape) n *= d;
        parameters += n;
    }
    CHECK(info["parameters"] == parameters);
    CHECK(info["tensors"][0]["dtype"] == "fp32");
    CHECK(info["tokenizer_tokens"] == 19);

    REQUIRE(itera_model_info(from_memory.m, nullptr, 0, &len) == ITERA_ERR_BUFFER_TOO_SMALL);
    text.assign(len + 1, '\0');
    REQUIRE(itera_model_info(from_memory.m, text.data(), text.size(), &len) == ITERA_OK);
    CHECK(nlohmann::json::parse(text.c_str())["file"] == "");
    CHECK(itera_model_info(nullptr, nullptr, 0, &len) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_model_info(from_file, nullptr, 8, &len) == ITERA_ERR_INVALID_ARGUMENT);
    itera_model_free(from_file);
    MESSAGE("itera_model_info: parseable JSON (a quote in the path escaped), config, "
            << expected.size()
            << " tensors, parameter count, size query and NUL rule, \"\" from memory, NULL arguments");
}

TEST_CASE("C API: tokenize, detokenize, pieces") {
    const ModelHandle model(itera::serialize_itl(make_spec(3)));
    int32_t ids[8];
    int32_t n = -1;
    REQUIRE(itera_tokenize(model.m, "  And GOD said unto  moses", ids, 8, &n, 0) == ITERA_OK);
    CHECK(std::vector<int32_t>(ids, ids + n) == std::vector<int32_t>{8, 7, 6, 9, 10});

    CHECK(itera_tokenize(model.m, "and god spake", ids, 8, &n, 0) == ITERA_ERR_UNKNOWN_TOKEN);
    CHECK(contains(itera_last_error(), "'spake'"));
    REQUIRE(itera_tokenize(model.m, "and god spake", ids, 8, &n, ITERA_TOKENIZE_ALLOW_UNKNOWN) == ITERA_OK);
    CHECK(std::vector<int32_t>(ids, ids + n) == std::vector<int32_t>{8, 7, 1});

    // Too small: the count comes back, nothing is written.
    ids[0] = -5;
    CHECK(itera_tokenize(model.m, "the lord said", ids, 2, &n, 0) == ITERA_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 3);
    CHECK(ids[0] == -5);
    CHECK(itera_tokenize(model.m, "the lord said", nullptr, 0, &n, 0) == ITERA_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 3);
    REQUIRE(itera_tokenize(model.m, " \t\n", nullptr, 0, &n, 0) == ITERA_OK);
    CHECK(n == 0);

    const int32_t words[] = {4, 5, 6, 21};
    char text[64];
    size_t len = 0;
    REQUIRE(itera_detokenize(model.m, words, 4, text, sizeof text, &len) == ITERA_OK);
    CHECK(std::string(text) == "the lord said <UNK>");  // 21 is past the tokenizer's 19 entries
    CHECK(len == 19);
    CHECK(itera_detokenize(model.m, words, 4, text, 19, &len) == ITERA_ERR_BUFFER_TOO_SMALL);  // no room for the NUL
    CHECK(len == 19);
    const int32_t outside[] = {4, 23};
    CHECK(itera_detokenize(model.m, outside, 2, text, sizeof text, &len) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "23"));
    REQUIRE(itera_detokenize(model.m, nullptr, 0, text, sizeof text, &len) == ITERA_OK);
    CHECK(len == 0);

    REQUIRE(itera_token_piece(model.m, 7, 1, text, sizeof text, &len) == ITERA_OK);
    CHECK(std::string(text) == "god");
    REQUIRE(itera_token_piece(model.m, 7, 0, text, sizeof text, &len) == ITERA_OK);
    CHECK(std::string(text) == " god");
    CHECK(itera_token_piece(model.m, -1, 0, text, sizeof text, &len) == ITERA_ERR_INVALID_ARGUMENT);

    const ModelHandle bare(itera::serialize_itl(make_spec(3, 6, false)));
    CHECK(itera_model_has_tokenizer(bare.m) == 0);
    CHECK(itera_model_eos(bare.m) == -1);
    CHECK(itera_tokenize(bare.m, "the", ids, 8, &n, 0) == ITERA_ERR_NO_TOKENIZER);
    CHECK(itera_detokenize(bare.m, words, 1, text, sizeof text, &len) == ITERA_ERR_NO_TOKENIZER);
    MESSAGE(
        "word tokenizer via C: case folding, UNKNOWN_TOKEN naming the word, ALLOW_UNKNOWN, size queries, "
        "pieces with and without the joining space, NO_TOKENIZER");
}

TEST_CASE("C API: eval checks the token and leaves the context unchanged on error") {
    const ModelHandle model(itera::serialize_itl(make_spec(5)));
    ContextHandle a(model.m), b(model.m);
    const float* logits = nullptr;
    REQUIRE(itera_eval(a.c, 4, nullptr) == ITERA_OK);
    CHECK(itera_context_logits(a.c) == nullptr);  // skipped the head
    CHECK(itera_eval(a.c, 23, &logits) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "not in the model's vocabulary"));
    CHECK(itera_eval(a.c, -1, &logits) == ITERA_ERR_INVALID_ARGUMENT);
    const int32_t with_bad[] = {5, 99};
    CHECK(itera_eval_tokens(a.c, with_bad, 2, &logits) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_context_position(a.c) == 1);
    REQUIRE(itera_eval(a.c, 5, &logits) == ITERA_OK);
    CHECK(itera_context_logits(a.c) == logits);
    const Logits after_errors(logits, logits + 23);

    const int32_t seq[] = {4, 5};
    REQUIRE(itera_eval_tokens(b.c, seq, 2, &logits) == ITERA_OK);
    CHECK(same_bits(after_errors, Logits(logits, logits + 23)));
    REQUIRE(itera_context_reset(b.c) == ITERA_OK);
    CHECK(itera_context_position(b.c) == 0);
    CHECK(itera_context_logits(b.c) == nullptr);
    MESSAGE("ids 23, -1 and a batch holding 99 are refused without feeding anything; logits then equal a clean run");
}

TEST_CASE("C API: a restored context continues bit for bit, also past max_seq_length") {
    const itera::ModelSpec spec = make_spec(11);
    const ModelHandle model(itera::serialize_itl(spec));
    const int32_t V = 23;
    const int32_t prompt[] = {8, 7, 6};
    const int steps = 12;  // 4 + 12 tokens: the recurrent state carries 2 steps, then the window slides

    ContextHandle a(model.m);
    REQUIRE(itera_eval_tokens(a.c, prompt, 3, nullptr) == ITERA_OK);
    // Logits skipped: the state records that.
    const std::vector<uint8_t> no_logits = save(a.c);
    const float* logits = nullptr;
    REQUIRE(itera_eval(a.c, 10, &logits) == ITERA_OK);
    const std::vector<uint8_t> s1 = save(a.c);  // position 4 of max_seq_length 6
    CHECK(s1.size() == 64 + 4 * (4 + (10 * 2 + 8 * 3) + (3 + 4) + 23));
    const std::vector<Logits> uninterrupted = continue_greedy(a.c, V, steps);
    CHECK(itera_context_position(a.c) == 6);

    ContextHandle b(model.m);
    REQUIRE(itera_context_restore(b.c, s1.data(), s1.size()) == ITERA_OK);
    CHECK(itera_context_position(b.c) == 4);
    CHECK(same_bits(continue_greedy(b.c, V, steps), uninterrupted));
    // Not a property of any state: a fresh context fed only the last token continues differently.
    ContextHandle cold(model.m);
    REQUIRE(itera_eval(cold.c, 10, &logits) == ITERA_OK);
    CHECK_FALSE(same_bits(continue_greedy(cold.c, V, steps), uninterrupted));

    // Restoring into the same context after it moved on rewinds it exactly.
    REQUIRE(itera_context_restore(a.c, s1.data(), s1.size()) == ITERA_OK);
    CHECK(same_bits(continue_greedy(a.c, V, steps), uninterrupted));

    // A state saved once the window is full and sliding (4 steps on) also resumes.
    REQUIRE(itera_context_restore(a.c, s1.data(), s1.size()) == ITERA_OK);
    continue_greedy(a.c, V, 4);
    const std::vector<uint8_t> s2 = save(a.c);
    ContextHandle c(model.m);
    REQUIRE(itera_context_restore(c.c, s2.data(), s2.size()) == ITERA_OK);
    CHECK(same_bits(continue_greedy(c.c, V, steps - 4),
                    std::vector<Logits>(uninterrupted.begin() + 4, uninterrupted.end())));

    // Without logits: restored as such, and feeding the next token matches.
    REQUIRE(itera_context_restore(c.c, no_logits.data(), no_logits.size()) == ITERA_OK);
    CHECK(itera_context_logits(c.c) == nullptr);
    CHECK(itera_generate(c.c, nullptr, 0, 3, nullptr, nullptr, nullptr, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    REQUIRE(itera_eval(c.c, 10, &logits) == ITERA_OK);
    CHECK(same_bits(continue_greedy(c.c, V, steps), uninterrupted));

    // A fresh context saves and restores too (an empty window).
    ContextHandle empty(model.m);
    const std::vector<uint8_t> s0 = save(empty.c);
    CHECK(s0.size() == 64 + 4 * (10 * 2 + 8 * 3 + 3 + 4));
    REQUIRE(itera_context_restore(c.c, s0.data(), s0.size()) == ITERA_OK);
    CHECK(itera_context_position(c.c) == 0);

    // Sizes: the exact size is reported, a small buffer is refused.
    std::vector<uint8_t> small(s1.size() - 1);
    size_t written = 0;
    REQUIRE(itera_context_restore(a.c, s1.data(), s1.size()) == ITERA_OK);
    CHECK(itera_context_save(a.c, small.data(), small.size(), &written) == ITERA_ERR_BUFFER_TOO_SMALL);
    CHECK(written == s1.size());
    CHECK(itera_context_save(a.c, nullptr, 0, &written) == ITERA_ERR_BUFFER_TOO_SMALL);
    MESSAGE("saved at position 4 (recurrent state), 4+4 (window sliding) and 3 without logits: "
            << steps
            << " greedy steps after restore, into fresh and used contexts, match the uninterrupted run bit for bit");
}

TEST_CASE("C API: restore refuses other models and damaged states") {
    const itera::ModelSpec spec = make_spec(11);
    const ModelHandle model(itera::serialize_itl(spec));
    const ModelHandle other(itera::serialize_itl(make_spec(12)));      // same shapes, other weights
    const ModelHandle longer(itera::serialize_itl(make_spec(11, 8)));  // another config
    ContextHandle a(model.m), x(other.m), y(longer.m);
    const int32_t prompt[] = {8, 7, 6, 4};
    REQUIRE(itera_eval_tokens(a.c, prompt, 4, nullptr) == ITERA_OK);
    const float* logits = nullptr;
    REQUIRE(itera_eval(a.c, 5, &logits) == ITERA_OK);
    const std::vector<uint8_t> state = save(a.c);
    const std::vector<Logits> expected = continue_greedy(a.c, 23, 5);
    REQUIRE(itera_context_restore(a.c, state.data(), state.size()) == ITERA_OK);

    CHECK(itera_context_restore(x.c, state.data(), state.size()) == ITERA_ERR_MODEL_MISMATCH);
    CHECK(contains(itera_last_error(), "different model"));
    CHECK(itera_context_restore(y.c, state.data(), state.size()) == ITERA_ERR_MODEL_MISMATCH);

    // Every truncation and every single flipped byte is refused, and the context stays as it was.
    size_t refused_truncations = 0, refused_flips = 0;
    for (size_t n = 0; n < state.size(); n++)
        refused_truncations += itera_context_restore(a.c, state.data(), n) == ITERA_ERR_FORMAT;
    std::vector<uint8_t> damaged = state;
    for (size_t i = 0; i < state.size(); i++) {
        damaged[i] ^= 0x04;
        const int rc = itera_context_restore(a.c, damaged.data(), damaged.size());
        refused_flips += rc == (i >= 16 && i < 24 ? ITERA_ERR_MODEL_MISMATCH : ITERA_ERR_FORMAT);
        damaged[i] = state[i];
    }
    CHECK(refused_truncations == state.size());
    CHECK(refused_flips == state.size());
    CHECK(same_bits(continue_greedy(a.c, 23, 5), expected));

    // Consistent checksums but impossible contents: a huge window, a token outside the vocabulary.
    auto reseal = [](std::vector<uint8_t>& s) {
        const uint64_t h = XXH3_64bits(s.data() + 64, s.size() - 64);
        for (int i = 0; i < 8; i++) s[24 + static_cast<size_t>(i)] = static_cast<uint8_t>(h >> (8 * i));
    };
    damaged = state;
    damaged[32 + 5] = 0x7f;  // window = 2^47
    reseal(damaged);
    CHECK(itera_context_restore(a.c, damaged.data(), damaged.size()) == ITERA_ERR_FORMAT);
    CHECK(contains(itera_last_error(), "max_seq_length"));
    damaged = state;
    damaged[64] = 23;  // the first window token
    reseal(damaged);
    CHECK(itera_context_restore(a.c, damaged.data(), damaged.size()) == ITERA_ERR_FORMAT);
    CHECK(contains(itera_last_error(), "not in the model's vocabulary"));
    damaged = state;
    damaged[8] = 2;  // version 2
    CHECK(itera_context_restore(a.c, damaged.data(), damaged.size()) == ITERA_ERR_FORMAT);
    CHECK(contains(itera_last_error(), "version 2"));
    REQUIRE(itera_context_restore(a.c, state.data(), state.size()) == ITERA_OK);
    CHECK(same_bits(continue_greedy(a.c, 23, 5), expected));
    MESSAGE("other weights / other config -> MODEL_MISMATCH; all " << state.size() << " truncations and "
                                                                   << state.size()
                                                                   << " one-byte flips refused; "
                                                                      "resealed bad counts and tokens refused");
}

namespace {

struct Collected {
    std::vector<int32_t> tokens;
    std::string text;
    int stop_after = -1;
};

int collect(int32_t token, const char* piece, void* user_data) {
    auto& c = *static_cast<Collected*>(user_data);
    c.tokens.push_back(token);
    c.text += piece ? piece : "?";
    return static_cast<int>(c.tokens.size()) == c.stop_after;
}

}  // namespace

TEST_CASE("C API: generate streams pieces, stops on request and at <EOS>, resumes after restore") {
    const ModelHandle model(itera::serialize_itl(make_spec(21)));
    itera_sampler_params greedy = itera_sampler_default_params();
    greedy.greedy = 1;
    const int32_t prompt[] = {8, 7, 6};

    // Greedy generation equals feeding argmax by hand.
    ContextHandle manual(model.m);
    const float* logits = nullptr;
    REQUIRE(itera_eval_tokens(manual.c, prompt, 3, &logits) == ITERA_OK);
    std::vector<int32_t> want;
    for (int i = 0; i < 10; i++) {
        want.push_back(argmax(logits, 23));
        if (want.back() == 3) break;  // <EOS>
        REQUIRE(itera_eval(manual.c, want.back(), &logits) == ITERA_OK);
    }

    ContextHandle ctx(model.m);
    Collected all;
    int32_t n = -1;
    REQUIRE(itera_generate(ctx.c, prompt, 3, 10, &greedy, collect, &all, &n) == ITERA_OK);
    std::vector<int32_t> got = all.tokens;
    if (want.back() == 3) want.pop_back();
    CHECK(got == want);
    CHECK(n == static_cast<int32_t>(got.size()));
    std::vector<char> text(256);
    size_t len = 0;
    REQUIRE(itera_detokenize(model.m, got.data(), static_cast<int32_t>(got.size()), text.data(), text.size(), &len) ==
            ITERA_OK);
    CHECK(all.text == (got.empty() ? "" : " " + std::string(text.data())));

    // The callback stops it after 3 tokens; they have been fed (position 3 + 3).
    Collected three;
    three.stop_after = 3;
    REQUIRE(itera_context_reset(ctx.c) == ITERA_OK);
    REQUIRE(itera_generate(ctx.c, prompt, 3, 10, &greedy, collect, &three, &n) == ITERA_OK);
    REQUIRE(n == 3);
    CHECK(itera_context_position(ctx.c) == 6);
    const std::vector<uint8_t> state = save(ctx.c);
    Collected rest;
    REQUIRE(itera_generate(ctx.c, nullptr, 0, 7, &greedy, collect, &rest, &n) == ITERA_OK);
    // ... and a restored context continues the same way.
    ContextHandle resumed(model.m);
    REQUIRE(itera_context_restore(resumed.c, state.data(), state.size()) == ITERA_OK);
    Collected again;
    REQUIRE(itera_generate(resumed.c, nullptr, 0, 7, &greedy, collect, &again, &n) == ITERA_OK);
    CHECK(again.tokens == rest.tokens);
    std::vector<int32_t> joined = three.tokens;
    joined.insert(joined.end(), rest.tokens.begin(), rest.tokens.end());
    CHECK(joined == got);

    // Sampled generation is reproducible from the seed.
    itera_sampler_params sampled = itera_sampler_default_params();
    sampled.seed = 77;
    sampled.temperature = 1.5f;
    Collected s1, s2;
    REQUIRE(itera_context_reset(ctx.c) == ITERA_OK);
    REQUIRE(itera_generate(ctx.c, prompt, 3, 12, &sampled, collect, &s1, nullptr) == ITERA_OK);
    REQUIRE(itera_context_reset(ctx.c) == ITERA_OK);
    REQUIRE(itera_generate(ctx.c, prompt, 3, 12, &sampled, collect, &s2, nullptr) == ITERA_OK);
    CHECK(s1.tokens == s2.tokens);

    // A model whose head always picks <EOS>: the final norm outputs its bias, the <EOS> row is large.
    itera::ModelSpec eos_spec = make_spec(21);
    std::fill(values(eos_spec, "norm.weight").begin(), values(eos_spec, "norm.weight").end(), 0.0f);
    std::fill(values(eos_spec, "norm.bias").begin(), values(eos_spec, "norm.bias").end(), 1.0f);
    std::fill_n(values(eos_spec, "lm_head.weight").begin() + 3 * 12, 12, 5.0f);
    const ModelHandle eos_model(itera::serialize_itl(eos_spec));
    ContextHandle e(eos_model.m);
    Collected none;
    REQUIRE(itera_generate(e.c, prompt, 3, 10, &greedy, collect, &none, &n) == ITERA_OK);
    CHECK(n == 0);
    CHECK(none.tokens.empty());
    CHECK(itera_context_position(e.c) == 3);  // <EOS> is not fed

    // NaN weights give NaN logits: refused, not sorted.
    itera::ModelSpec nan_spec = make_spec(21);
    values(nan_spec, "lm_head.weight")[0] = NAN;
    const ModelHandle nan_model(itera::serialize_itl(nan_spec));
    ContextHandle z(nan_model.m);
    CHECK(itera_generate(z.c, prompt, 3, 10, nullptr, collect, &none, &n) == ITERA_ERR_FORMAT);
    CHECK(contains(itera_last_error(), "NaN"));
    MESSAGE("greedy generate == hand-fed argmax ("
            << got.size()
            << " tokens); stop after 3 then resume, live and "
               "restored, give the same tokens; seeded sampling repeats; <EOS> ends it unfed; NaN logits refused");
}

TEST_CASE("C API: a trimmed vocabulary keeps token ids; logits are indexed by id") {
    // 21 rows for ids 0..18, 20 and 22: ids 19 and 21 were dropped.
    std::vector<int32_t> kept;
    for (int32_t id = 0; id < 19; id++) kept.push_back(id);
    kept.push_back(20);
    kept.push_back(22);
    const std::vector<uint8_t> bytes = itera::serialize_itl(make_spec(51, 6, true, kept));
    const ModelHandle model(bytes);
    CHECK(itera_model_vocab_size(model.m) == 23);
    ContextHandle ctx(model.m);
    const float* logits = nullptr;
    CHECK(itera_eval(ctx.c, 19, &logits) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_eval(ctx.c, 21, &logits) == ITERA_ERR_INVALID_ARGUMENT);
    const int32_t prompt[] = {8, 20, 22};
    REQUIRE(itera_eval_tokens(ctx.c, prompt, 3, &logits) == ITERA_OK);

    const auto direct_model = itera::load_model(itera::ItlFile::from_memory(bytes.data(), bytes.size()));
    itera::Context direct(*direct_model);
    const float* rows = nullptr;
    for (int32_t id : prompt) rows = direct.eval(id);
    for (size_t r = 0; r < kept.size(); r++) CHECK(logits[kept[r]] == rows[r]);
    CHECK(logits[19] == -INFINITY);
    CHECK(logits[21] == -INFINITY);

    // Sampling never picks a dropped id: hot, unfiltered draws reach every kept id and no other.
    itera_sampler_params hot = itera_sampler_default_params();
    hot.temperature = 5.0f;
    hot.top_k = 0;
    hot.top_p = 1.0f;
    itera_sampler* sampler = nullptr;
    REQUIRE(itera_sampler_new(&hot, &sampler) == ITERA_OK);
    std::vector<int> seen(23, 0);
    for (int i = 0; i < 3000; i++) {
        int32_t t = -1;
        REQUIRE(itera_sampler_sample(sampler, logits, 23, &t) == ITERA_OK);
        seen[static_cast<size_t>(t)]++;
    }
    itera_sampler_free(sampler);
    CHECK(seen[19] == 0);
    CHECK(seen[21] == 0);
    CHECK(std::count_if(seen.begin(), seen.end(), [](int n) { return n > 0; }) == 21);

    // A restored context continues the same way.
    const std::vector<uint8_t> state = save(ctx.c);
    Collected first, second;
    REQUIRE(itera_generate(ctx.c, nullptr, 0, 40, &hot, collect, &first, nullptr) == ITERA_OK);
    ContextHandle resumed(model.m);
    REQUIRE(itera_context_restore(resumed.c, state.data(), state.size()) == ITERA_OK);
    REQUIRE(itera_generate(resumed.c, nullptr, 0, 40, &hot, collect, &second, nullptr) == ITERA_OK);
    CHECK(first.tokens == second.tokens);
    for (int32_t t : first.tokens) CHECK((t != 19 && t != 21));
    MESSAGE(
        "rows for 21 of 23 ids: ids 19 and 21 refused, logits by id equal the runtime's rows, -inf for the dropped "
        "ids; 3000 hot draws reach all 21 kept ids and never a dropped one; generation repeats after restore");
}

TEST_CASE("C API: a batch decodes like one context per sequence") {
    // Trimmed vocabulary (ids 19 and 21 dropped), window 6, 4 sequences on 2 threads.
    std::vector<int32_t> kept;
    for (int32_t id = 0; id < 23; id++)
        if (id != 19 && id != 21) kept.push_back(id);
    const ModelHandle model(itera::serialize_itl(make_spec(53, 6, true, kept)));
    itera_batch* batch = nullptr;
    itera_batch_params params = itera_batch_default_params();
    CHECK(itera_batch_new(model.m, 0, &params, &batch) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_batch_new(nullptr, 4, &params, &batch) == ITERA_ERR_INVALID_ARGUMENT);
    params.n_threads = 0;
    CHECK(itera_batch_new(model.m, 4, &params, &batch) == ITERA_ERR_INVALID_ARGUMENT);
    params.n_threads = 2;
    params.device = 7;
    CHECK(itera_batch_new(model.m, 4, &params, &batch) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "unknown device 7"));
    params.device = ITERA_DEVICE_CPU;
    REQUIRE(itera_batch_new(model.m, 4, &params, &batch) == ITERA_OK);
    CHECK(itera_batch_device(batch) == ITERA_DEVICE_CPU);
    CHECK(itera_batch_size(batch) == 4);
    CHECK(itera_batch_logits(batch, 0) == nullptr);  // nothing evaluated yet
    std::deque<ContextHandle> contexts;              // handles do not move
    for (int i = 0; i < 4; i++) contexts.emplace_back(model.m);
    int compared = 0;
    bool same = true;
    for (int step = 0; step < 9; step++) {
        if (step == 3) {
            REQUIRE(itera_batch_reset(batch, 1) == ITERA_OK);
            REQUIRE(itera_context_reset(contexts[1].c) == ITERA_OK);
            CHECK(itera_batch_logits(batch, 1) == nullptr);
        }
        int32_t tokens[4];
        for (int i = 0; i < 4; i++) tokens[i] = kept[static_cast<size_t>((step * 5 + i * 7) % 21)];
        REQUIRE(itera_batch_eval(batch, tokens) == ITERA_OK);
        for (int i = 0; i < 4; i++) {
            const float* want = nullptr;
            REQUIRE(itera_eval(contexts[static_cast<size_t>(i)].c, tokens[i], &want) == ITERA_OK);
            const float* got = itera_batch_logits(batch, i);
            REQUIRE(got != nullptr);
            for (int32_t id = 0; id < 23; id++) same = same && got[id] == want[id];
            compared++;
        }
    }
    CHECK(same);
    const int32_t bad[4] = {1, 19, 2, 3};
    CHECK(itera_batch_eval(batch, bad) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "19"));
    CHECK(itera_batch_reset(batch, 4) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_batch_logits(batch, -1) == nullptr);
    itera_batch_free(batch);
    itera_batch_free(nullptr);
    MESSAGE(compared << " (sequence, step) logits of a 4-sequence, 2-thread batch (window 6 slides, one reset, "
                     << "trimmed ids -inf) equal itera_eval's bit for bit; bad ids, sizes and indices refused");
}

TEST_CASE("C API: a batch run feeds some sequences any number of tokens, like contexts") {
    // Continuous batching: prompts join while others decode, sequences sit out steps, windows slide.
    const ModelHandle model(itera::serialize_itl(make_spec(61, 6)));
    itera_batch_params params = itera_batch_default_params();
    params.n_threads = 2;
    itera_batch* batch = nullptr;
    REQUIRE(itera_batch_new(model.m, 3, &params, &batch) == ITERA_OK);
    std::deque<ContextHandle> contexts;
    for (int i = 0; i < 3; i++) contexts.emplace_back(model.m);
    std::mt19937 rng(5);
    bool same = true;
    int compared = 0;
    for (int step = 0; step < 12; step++) {
        std::vector<std::vector<int32_t>> ids(3);
        std::vector<itera_batch_feed> feeds;
        for (int32_t s = 0; s < 3; s++) {
            if (rng() % 3 == 0) continue;  // this sequence sits out the step
            const int32_t n = 1 + static_cast<int32_t>(rng() % (step % 4 == 0 ? 5 : 1));
            for (int32_t i = 0; i < n; i++) ids[static_cast<size_t>(s)].push_back(4 + static_cast<int32_t>(rng() % 19));
            feeds.push_back({s, ids[static_cast<size_t>(s)].data(), n});
        }
        REQUIRE(itera_batch_run(batch, feeds.data(), static_cast<int32_t>(feeds.size())) == ITERA_OK);
        for (int32_t s = 0; s < 3; s++) {
            const auto& v = ids[static_cast<size_t>(s)];
            if (v.empty()) {
                CHECK(itera_batch_logits(batch, s) == nullptr);  // not fed by this run
                continue;
            }
            const float* want = nullptr;
            REQUIRE(itera_eval_tokens(contexts[static_cast<size_t>(s)].c, v.data(), static_cast<int32_t>(v.size()),
                                      &want) == ITERA_OK);
            const float* got = itera_batch_logits(batch, s);
            REQUIRE(got != nullptr);
            for (int32_t id = 0; id < 23; id++) same = same && got[id] == want[id];
            CHECK(itera_batch_position(batch, s) == itera_context_position(contexts[static_cast<size_t>(s)].c));
            compared++;
        }
    }
    CHECK(same);
    // Refused, nothing changed: a sequence fed twice, out of range, an empty feed, a bad id, NULLs.
    const int32_t one = 5, bad = 99;
    const int32_t before = itera_batch_position(batch, 0);
    const itera_batch_feed twice[2] = {{0, &one, 1}, {0, &one, 1}};
    CHECK(itera_batch_run(batch, twice, 2) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "fed twice"));
    const itera_batch_feed out_of_range = {3, &one, 1}, empty = {0, &one, 0}, unknown = {1, &bad, 1};
    CHECK(itera_batch_run(batch, &out_of_range, 1) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "out of range"));
    CHECK(itera_batch_run(batch, &empty, 1) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_batch_run(batch, &unknown, 1) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "99"));
    CHECK(itera_batch_run(batch, nullptr, 1) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_batch_run(batch, twice, 4) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_batch_run(batch, nullptr, 0) == ITERA_OK);  // an empty run is a no-op
    CHECK(itera_batch_position(batch, 0) == before);
    CHECK(itera_batch_position(batch, 7) == 0);
    itera_batch_free(batch);
    MESSAGE(compared << " (sequence, step) logits of runs mixing prompts of up to 5 tokens, single tokens and "
                        "idle sequences past a window of 6 equal itera_eval_tokens' bit for bit; bad feeds refused");
}

TEST_CASE("C API: devices: cpu, auto, and cuda with or without a GPU") {
    const ModelHandle model(itera::serialize_itl(make_spec(71, 8)));
    CHECK(itera_device_available(ITERA_DEVICE_CPU) == ITERA_OK);
    CHECK(itera_device_available(ITERA_DEVICE_AUTO) == ITERA_OK);
    CHECK(itera_device_available(3) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(std::string(itera_device_name(ITERA_DEVICE_CUDA)) == "cuda");
    CHECK(itera_device_name(-1) == nullptr);
    CHECK(std::string(itera_error_name(ITERA_ERR_NO_DEVICE)) == "ITERA_ERR_NO_DEVICE");
    CHECK(std::string(itera_error_name(ITERA_ERR_NO_CUDA)) == "ITERA_ERR_NO_CUDA");
    itera_context_params params = itera_context_default_params();
    CHECK(params.device == ITERA_DEVICE_CPU);
    itera_context* ctx = nullptr;
    params.device = 9;
    CHECK(itera_context_new(model.m, &params, &ctx) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(ctx == nullptr);
    // auto runs on the GPU when it can, else on the CPU: the same greedy text either way.
    params.device = ITERA_DEVICE_AUTO;
    REQUIRE(itera_context_new(model.m, &params, &ctx) == ITERA_OK);
    const int device = itera_context_device(ctx);
    CHECK((device == ITERA_DEVICE_CPU || device == ITERA_DEVICE_CUDA));
    itera_context_free(ctx);
    // cuda: a context where there is a GPU (or ITERA_CUDA_EMULATE=1), else NO_DEVICE / NO_CUDA with why.
    params.device = ITERA_DEVICE_CUDA;
    const int available = itera_device_available(ITERA_DEVICE_CUDA);
    const std::string why = itera_last_error();
    const int rc = itera_context_new(model.m, &params, &ctx);
    CHECK(rc == available);
    if (rc == ITERA_OK) {
        CHECK(itera_context_device(ctx) == ITERA_DEVICE_CUDA);
        const ContextHandle cpu(model.m);
        const int32_t prompt[3] = {8, 7, 6};
        const float* want = nullptr;
        const float* got = nullptr;
        REQUIRE(itera_eval_tokens(cpu.c, prompt, 3, &want) == ITERA_OK);
        REQUIRE(itera_eval_tokens(ctx, prompt, 3, &got) == ITERA_OK);
        float worst = 0.0f;
        for (int32_t id = 0; id < 23; id++) worst = std::max(worst, std::fabs(got[id] - want[id]));
        CHECK(worst < 1e-4f);
        itera_context_free(ctx);
        MESSAGE("cuda context (" << (std::getenv("ITERA_CUDA_EMULATE") ? "emulated" : "device") << "): logits within "
                                 << worst << " of the CPU's");
    } else {
        CHECK((rc == ITERA_ERR_NO_DEVICE || rc == ITERA_ERR_NO_CUDA));
        CHECK(contains(itera_last_error(), "no CUDA device: "));
        CHECK(std::string(itera_last_error()) == why);
        CHECK(ctx == nullptr);
        itera_batch_params bp = itera_batch_default_params();
        bp.device = ITERA_DEVICE_CUDA;
        itera_batch* batch = nullptr;
        CHECK(itera_batch_new(model.m, 2, &bp, &batch) == rc);
        CHECK(batch == nullptr);
        MESSAGE("cuda without a GPU: " << itera_error_name(rc) << ": " << why);
    }
}

TEST_CASE("C API: perplexity as itera-run ppl computes it, with and without a reference") {
    const std::vector<uint8_t> bytes = itera::serialize_itl(make_spec(81, 6)),
                               ref_bytes = itera::serialize_itl(make_spec(82, 6));
    const ModelHandle model(bytes), ref(ref_bytes);
    const std::string text = "and god said let there be light and the light was good and god saw the light day night";
    // The runtime's own measure on the same ids (runtime/evaluate.h, what itera-run ppl prints).
    const auto m = itera::load_model(itera::ItlFile::from_memory(bytes.data(), bytes.size()));
    const auto r = itera::load_model(itera::ItlFile::from_memory(ref_bytes.data(), ref_bytes.size()));
    itera::Context ctx(*m), ref_ctx(*r);
    const itera::Perplexity want = itera::perplexity(ctx, m->tokenizer.encode(text), 4, &ref_ctx);
    itera_perplexity_params params = itera_perplexity_default_params();
    CHECK((params.window == 0 && params.reference == nullptr && params.device == ITERA_DEVICE_CPU));
    params.window = 4;
    params.reference = ref.m;
    itera_perplexity_result got{};
    REQUIRE(itera_perplexity(model.m, text.c_str(), &params, &got) == ITERA_OK);
    CHECK(got.perplexity == want.ppl);
    CHECK((got.tokens == static_cast<int64_t>(want.tokens) && got.scored == got.tokens - 1 && got.tokens == 19));
    CHECK(got.unk_fraction == want.unk_fraction);  // "let", "there", "be", "saw" are <UNK>
    CHECK(got.unk_fraction > 0.2);
    CHECK((got.kld == want.vs_reference.kld && got.top1 == want.vs_reference.top1));
    REQUIRE(itera_perplexity(model.m, text.c_str(), nullptr, &got) == ITERA_OK);  // windows of max_seq_length
    CHECK(std::isnan(got.kld));
    CHECK(std::isnan(got.top1));
    CHECK(got.perplexity > 1.0);
    // Refused: a window out of range, too little text, no tokenizer, unknown device, NULLs.
    params.window = 7;
    CHECK(itera_perplexity(model.m, text.c_str(), &params, &got) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "window 7"));
    CHECK(itera_perplexity(model.m, "god", nullptr, &got) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(contains(itera_last_error(), "2 are needed"));
    const ModelHandle bare(itera::serialize_itl(make_spec(83, 6, false)));
    CHECK(itera_perplexity(bare.m, text.c_str(), nullptr, &got) == ITERA_ERR_NO_TOKENIZER);
    params.window = 0;
    params.device = 5;
    CHECK(itera_perplexity(model.m, text.c_str(), &params, &got) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_perplexity(model.m, nullptr, nullptr, &got) == ITERA_ERR_INVALID_ARGUMENT);
    MESSAGE("itera_perplexity equals runtime/evaluate's perplexity, KL and top-1 bit for bit; bad input refused");
}

TEST_CASE("C API: one model shared by threads, each with its own context") {
    const ModelHandle model(itera::serialize_itl(make_spec(31, 8)));
    const std::vector<std::vector<int32_t>> prompts = {{8, 7, 6}, {4, 5, 9, 10, 11}, {12}, {13, 14, 15, 16}};
    auto run = [&](const std::vector<int32_t>& prompt) {
        ContextHandle ctx(model.m);
        const float* logits = nullptr;
        REQUIRE(itera_eval_tokens(ctx.c, prompt.data(), static_cast<int32_t>(prompt.size()), &logits) == ITERA_OK);
        return continue_greedy(ctx.c, 23, 20);
    };
    std::vector<std::vector<Logits>> serial, threaded(prompts.size());
    for (const auto& p : prompts) serial.push_back(run(p));
    std::vector<std::thread> threads;
    for (size_t i = 0; i < prompts.size(); i++) threads.emplace_back([&, i] { threaded[i] = run(prompts[i]); });
    for (std::thread& t : threads) t.join();
    for (size_t i = 0; i < prompts.size(); i++) CHECK(same_bits(threaded[i], serial[i]));
    MESSAGE(prompts.size() << " threads x 20 greedy steps on one shared model: logits identical to the serial runs");
}

TEST_CASE("C++ wrapper: RAII handles, exceptions with codes, save/restore, generate") {
    const std::vector<uint8_t> bytes = itera::serialize_itl(make_spec(41));
    itera::api::Model model = itera::api::Model::load_memory(bytes.data(), bytes.size());
    CHECK(model.vocab_size() == 23);
    CHECK(model.has_tokenizer());
    const std::vector<int32_t> prompt = model.tokenize("And God said");
    CHECK(prompt == std::vector<int32_t>{8, 7, 6});
    CHECK(model.detokenize(prompt) == "and god said");
    CHECK(model.detokenize({}).empty());
    CHECK(model.tokenize("").empty());
    CHECK(model.piece(7, false) == " god");
    try {
        model.tokenize("and behold");
        FAIL("tokenize accepted an unknown word");
    } catch (const itera::api::Exception& e) {
        CHECK(e.code() == ITERA_ERR_UNKNOWN_TOKEN);
        CHECK(contains(e.what(), "behold"));
    }
    CHECK(model.tokenize("and behold", ITERA_TOKENIZE_ALLOW_UNKNOWN) == std::vector<int32_t>{8, 1});
    try {
        itera::api::Model::load_file("/nonexistent/model.itl");
        FAIL("loaded a missing file");
    } catch (const itera::api::Exception& e) {
        CHECK(e.code() == ITERA_ERR_IO);
    }

    itera::api::Context ctx(model);
    itera_sampler_params greedy = itera_sampler_default_params();
    greedy.greedy = 1;
    std::vector<int32_t> first;
    std::string streamed;
    const int32_t n = ctx.generate(prompt, 4, greedy, [&](int32_t token, std::string_view piece) {
        first.push_back(token);
        streamed += piece;
    });
    CHECK(n == static_cast<int32_t>(first.size()));
    CHECK(streamed == (first.empty() ? "" : " " + model.detokenize(first)));
    const std::vector<uint8_t> state = ctx.save();
    std::vector<int32_t> rest;
    ctx.generate({}, 6, greedy, [&](int32_t token, std::string_view) { rest.push_back(token); });

    itera::api::Context other(model);
    other.restore(state);
    std::vector<int32_t> again;
    other.generate({}, 6, greedy, [&](int32_t token, std::string_view) {
        again.push_back(token);
        return false;  // keep going
    });
    CHECK(again == rest);

    // A callback exception stops generation and comes out of generate().
    int calls = 0;
    CHECK_THROWS_WITH_AS(other.generate({}, 6, greedy,
                                        [&](int32_t, std::string_view) {
                                            if (++calls == 2) throw std::runtime_error("enough");
                                        }),
                         "enough", std::runtime_error);
    CHECK(calls == 2);

    try {
        other.eval(23);
        FAIL("eval accepted token 23");
    } catch (const itera::api::Exception& e) {
        CHECK(e.code() == ITERA_ERR_INVALID_ARGUMENT);
    }
    const ModelHandle foreign(itera::serialize_itl(make_spec(42)));
    ContextHandle foreign_ctx(foreign.m);
    const std::vector<uint8_t> foreign_state = save(foreign_ctx.c);
    CHECK_THROWS_AS(other.restore(foreign_state), itera::api::Exception);

    itera::api::Sampler sampler(greedy);
    CHECK(sampler.sample(ctx.eval(prompt), 23) == argmax(ctx.logits(), 23));
    itera::api::Model moved = std::move(model);
    CHECK(moved.vocab_size() == 23);
    MESSAGE(
        "itera::api wraps the C API: exceptions carry codes, save/restore and generate work, callback "
        "exceptions propagate, handles move");
}
