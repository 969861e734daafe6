// The converter's C entry point (itera_convert.h) on the shipped checkpoint: its bytes convert to
// the built-in model byte for byte (itera-convert read the same file from a path), every C field
// reaches the library (the same file as converter/convert.h given the same options), the file it
// writes is the one it returns, and bad input of every kind is an error code with a message.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "converter/convert.h"
#include "format/itl_file.h"
#include "itera.h"
#include "itera_convert.h"

namespace {

std::vector<uint8_t> file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string file_text(const std::string& path) {
    const std::vector<uint8_t> b = file_bytes(path);
    return {b.begin(), b.end()};
}

const std::string kCheckpoint = std::string(ITERA_SOURCE_DIR) + "/models/itera_lite_kjv.pt";
const std::string kTokenizer = std::string(ITERA_SOURCE_DIR) + "/models/tokenizer_kjv.json";
const char* kCalib =
    "in the beginning god created the heaven and the earth . and the earth was without form , and void ; and "
    "darkness was upon the face of the deep . and the spirit of god moved upon the face of the waters . and god "
    "said , let there be light : and there was light .";

struct Conversion {
    itera_conversion* c = nullptr;
    ~Conversion() { itera_conversion_free(c); }
    std::vector<uint8_t> bytes() const {
        size_t n = 0;
        const uint8_t* data = itera_conversion_data(c, &n);
        return {data, data + n};
    }
};

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "itera-convert-api-XXXXXX").string();
        REQUIRE(mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

// A refused call: the code, a message holding `words`, *out NULL.
void refused(const std::vector<uint8_t>& ck, const itera_convert_params& p, int code, const std::string& words) {
    itera_conversion* out = reinterpret_cast<itera_conversion*>(&out);  // not NULL: must be cleared
    const int rc = itera_convert(ck.data(), ck.size(), &p, &out);
    CAPTURE(itera_convert_last_error());
    CHECK(rc == code);
    CHECK(out == nullptr);
    CHECK(std::string(itera_convert_last_error()).find(words) != std::string::npos);
}

}  // namespace

TEST_CASE("itera_convert: the shipped checkpoint's bytes give the built-in model byte for byte") {
    const std::vector<uint8_t> ck = file_bytes(kCheckpoint);
    const std::string tokenizer = file_text(kTokenizer);
    const std::vector<uint8_t> builtin = file_bytes(ITERA_BUILTIN_ITL);
    // The build converted it with itera-convert from a path; the provenance records how.
    const auto file = itera::ItlFile::open(ITERA_BUILTIN_ITL);
    itera_convert_params p = itera_convert_default_params();
    p.tokenizer_json = tokenizer.c_str();
    p.source_name = file->provenance().source_name.c_str();
    p.options_text = file->provenance().options.c_str();
    Conversion c;
    REQUIRE(itera_convert(ck.data(), ck.size(), &p, &c.c) == ITERA_OK);
    CHECK(c.bytes() == builtin);
    const std::string summary = itera_conversion_summary(c.c);
    CHECK(summary == "converted: 2 layers, 623840 parameters, fp32, " + std::to_string(builtin.size()) + " bytes\n");
    const std::string report = itera_conversion_report(c.c);
    CHECK(report.rfind("{\n  \"file_bytes\": " + std::to_string(builtin.size()) + ",", 0) == 0);
    CHECK(report.find("\"name\": \"embedding.weight\", \"shape\": [3000, 96], \"dtype\": \"fp32\"") !=
          std::string::npos);
    // It loads, and writing it gives the same bytes.
    itera_model* m = nullptr;
    CHECK(itera_model_load_memory(itera_conversion_data(c.c, nullptr), builtin.size(), nullptr, &m) == ITERA_OK);
    CHECK(itera_model_vocab_size(m) == 3000);
    itera_model_free(m);
    TempDir dir;
    const std::string path = (dir.path / "kjv.itl").string();
    REQUIRE(itera_conversion_write(c.c, path.c_str()) == ITERA_OK);
    CHECK(file_bytes(path) == builtin);
    MESSAGE("itera_convert of models/itera_lite_kjv.pt's bytes with the build's provenance = builtin.itl ("
            << builtin.size() << " bytes), loads, and itera_conversion_write writes the same bytes");
}

TEST_CASE("itera_convert: every field reaches the library (the same file as convert() with the same options)") {
    const std::vector<uint8_t> ck = file_bytes(kCheckpoint);
    const std::string tokenizer = file_text(kTokenizer);
    const char* keep[] = {"layers.1.ssm.out_proj.weight=q8"};
    const char* precision[] = {"layers.0.moe.ffn=q4", "embedding=fp16"};
    itera_convert_params p = itera_convert_default_params();
    p.tokenizer_json = tokenizer.c_str();
    p.config_json = "{\"top_k_experts\": 1}";
    p.keep = keep;
    p.n_keep = 1;
    p.precision = precision;
    p.n_precision = 2;
    p.calib_text = kCalib;
    p.calib_tokens = 40;
    p.prune_ratio = 0.2;
    p.prune_scope = "moe,ffn,vocab";
    p.prune_importance = "magnitude";
    p.prune_uniform = 1;
    p.layout = "row_major";
    p.source_name = "kjv.pt";
    p.options_text = "kjv.pt --many options";
    Conversion c;
    REQUIRE(itera_convert(ck.data(), ck.size(), &p, &c.c) == ITERA_OK);

    itera::ConvertOptions o;
    o.tokenizer_json = tokenizer;
    o.config_json = "{\"top_k_experts\": 1}";
    o.keep = {keep[0]};
    o.precision = {precision[0], precision[1]};
    o.calib_text = kCalib;
    o.calib_tokens = 40;
    o.prune_ratio = 0.2;
    o.prune_scope = "moe,ffn,vocab";
    o.prune_importance = itera::Importance::magnitude;
    o.prune_uniform = true;
    o.layout = itera::Layout::row_major;
    o.source_name = "kjv.pt";
    o.options_text = "kjv.pt --many options";
    const itera::Conversion want = itera::convert(ck.data(), ck.size(), o);
    CHECK(c.bytes() == want.itl);
    CHECK(std::string(itera_conversion_report(c.c)) == itera::report_json(want.report));
    // And the options took effect.
    const auto file = itera::ItlFile::from_memory(want.itl.data(), want.itl.size());
    CHECK(file->config().layers[1].top_k == 1);
    CHECK(file->config().layers[0].ffn_widths[0] < 128);  // pruned
    CHECK(file->find("layers.0.moe.ffn.w1.weight")->dtype == itera::DType::q4_0);
    CHECK(file->find("layers.1.ssm.out_proj.weight")->dtype == itera::DType::q8_0);
    CHECK(file->find("embedding.weight")->dtype == itera::DType::f16);
    CHECK(file->find("layers.1.ssm.in_proj.weight")->layout == itera::Layout::row_major);
    CHECK(file->provenance().options == "kjv.pt --many options");
    const std::string summary = itera_conversion_summary(c.c);
    CHECK(summary.rfind("pruned ", 0) == 0);
    CHECK(summary.find("mixed precision calibrated") != std::string::npos);
    MESSAGE(
        "tokenizer, config, keep, precision, calibration, pruning (ratio, scope, importance, uniform), layout "
        "and provenance: the C entry point's file and report equal convert()'s; "
        << summary.substr(0, summary.find('\n')));
}

TEST_CASE("itera_convert: bad input is an error code and a message, never a crash") {
    const std::vector<uint8_t> ck = file_bytes(kCheckpoint);
    const std::string tokenizer = file_text(kTokenizer);
    const itera_convert_params defaults = itera_convert_default_params();
    itera_conversion* out = nullptr;

    // NULLs.
    CHECK(itera_convert(nullptr, 10, nullptr, &out) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(itera_convert(ck.data(), ck.size(), nullptr, nullptr) == ITERA_ERR_INVALID_ARGUMENT);
    CHECK(std::string(itera_convert_last_error()).find("must not be NULL") != std::string::npos);
    CHECK(itera_conversion_data(nullptr, nullptr) == nullptr);
    size_t n = 7;
    CHECK(itera_conversion_data(nullptr, &n) == nullptr);
    CHECK(n == 0);
    CHECK(std::string(itera_conversion_report(nullptr)).empty());
    CHECK(std::string(itera_conversion_summary(nullptr)).empty());
    CHECK(itera_conversion_write(nullptr, "x.itl") == ITERA_ERR_INVALID_ARGUMENT);
    itera_conversion_free(nullptr);

    // Corrupt checkpoints: FORMAT.
    std::vector<uint8_t> flipped = ck;
    flipped[flipped.size() / 2] ^= 0x40;  // inside a tensor: its CRC-32 no longer matches
    refused(flipped, defaults, ITERA_ERR_FORMAT, "CRC");
    refused(std::vector<uint8_t>(ck.begin(), ck.begin() + 100), defaults, ITERA_ERR_FORMAT, "");
    refused(std::vector<uint8_t>{'n', 'o', 't', ' ', 'a', ' ', 'z', 'i', 'p'}, defaults, ITERA_ERR_FORMAT, "");
    CHECK(itera_convert(ck.data(), 0, &defaults, &out) == ITERA_ERR_FORMAT);

    // Bad values and contradictions: INVALID_ARGUMENT, before the checkpoint is read.
    struct Case {
        const char* what;
        void (*set)(itera_convert_params&);
        const char* words;
    };
    static const char* no_dtype[] = {"lm_head.weight"};
    static const char* null_rule[] = {nullptr};
    static const char* bad_map[] = {"=q4"};
    const Case cases[] = {
        {"quant q5", [](itera_convert_params& p) { p.quant = "q5"; }, "quant must be"},
        {"layout diagonal", [](itera_convert_params& p) { p.layout = "diagonal"; }, "layout must be"},
        {"importance foo", [](itera_convert_params& p) { p.prune_importance = "foo"; }, "prune_importance must be"},
        {"prune 0.99", [](itera_convert_params& p) { p.prune_ratio = 0.99; }, "prune_ratio must be"},
        {"prune NaN", [](itera_convert_params& p) { p.prune_ratio = NAN; }, "prune_ratio must be"},
        {"prune -0.1", [](itera_convert_params& p) { p.prune_ratio = -0.1; }, "prune_ratio must be"},
        {"calib_tokens 0", [](itera_convert_params& p) { p.calib_tokens = 0; }, "--calib-tokens must be"},
        {"score_tokens 2^31", [](itera_convert_params& p) { p.score_tokens = int64_t{1} << 31; }, "--score-tokens"},
        {"top_k -1", [](itera_convert_params& p) { p.top_k = -1; }, "--top-k must be"},
        {"target 2^41", [](itera_convert_params& p) { p.target_size = uint64_t{1} << 41; }, "--target-size must be"},
        {"keep without =DTYPE", [](itera_convert_params& p) { p.keep = no_dtype, p.n_keep = 1; }, "--keep expects"},
        {"keep NULL with a count", [](itera_convert_params& p) { p.n_keep = 2; }, "must not be NULL"},
        {"keep[0] NULL", [](itera_convert_params& p) { p.keep = null_rule, p.n_keep = 1; }, "keep[0] is NULL"},
        {"n_precision -1", [](itera_convert_params& p) { p.n_precision = -1; }, "must not be negative"},
        {"precision '=q4'", [](itera_convert_params& p) { p.precision = bad_map, p.n_precision = 1; }, "=q4"},
        {"scope moe,attn", [](itera_convert_params& p) { p.prune_ratio = 0.2, p.prune_scope = "moe,attn"; },
         "--prune-scope expects"},
        {"scope alone", [](itera_convert_params& p) { p.prune_scope = "moe"; }, "prunes nothing"},
        {"importance alone", [](itera_convert_params& p) { p.prune_importance = "taylor"; }, "needs --prune"},
        {"taylor without text", [](itera_convert_params& p) { p.prune_ratio = 0.2, p.prune_importance = "taylor"; },
         "needs calibration text"},
        {"vocab scope, no trim", [](itera_convert_params& p) { p.prune_scope = "vocab", p.trim_vocab = 0; },
         "contradicts --no-trim-vocab"},
        {"target without text", [](itera_convert_params& p) { p.target_size = 100000; }, "needs calibration text"},
        {"target with quant",
         [](itera_convert_params& p) { p.target_size = 100000, p.calib_text = "the", p.quant = "q4"; }, "drop --quant"},
    };
    for (const Case& c : cases) {
        CAPTURE(c.what);
        itera_convert_params p = defaults;
        c.set(p);
        refused(ck, p, ITERA_ERR_INVALID_ARGUMENT, c.words);
    }
    // What only the checkpoint can tell: FORMAT.
    itera_convert_params p = defaults;
    p.tokenizer_json = "{\"token_to_id\": ";
    refused(ck, p, ITERA_ERR_FORMAT, "");
    p.config_json = "{\"hidden_size\": 7}";
    p.tokenizer_json = tokenizer.c_str();
    refused(ck, p, ITERA_ERR_FORMAT, "hidden_size");
    const char* nothing[] = {"no.such.tensor=q4"};
    p = defaults;
    p.precision = nothing;
    p.n_precision = 1;
    refused(ck, p, ITERA_ERR_FORMAT, "no.such.tensor");
    p = defaults;
    p.tokenizer_json = tokenizer.c_str();
    p.calib_text = kCalib;
    p.calib_tokens = 16;
    p.target_size = 1000;
    refused(ck, p, ITERA_ERR_FORMAT, "cannot be met");

    // Writing where a file cannot go: IO, and nothing is replaced.
    Conversion c;
    p = defaults;
    REQUIRE(itera_convert(ck.data(), ck.size(), &p, &c.c) == ITERA_OK);
    TempDir dir;
    CHECK(itera_conversion_write(c.c, dir.path.c_str()) == ITERA_ERR_IO);
    CHECK(std::string(itera_convert_last_error()).find(dir.path.string()) != std::string::npos);
    CHECK(std::filesystem::is_directory(dir.path));
    CHECK(itera_conversion_write(c.c, (dir.path / "no" / "such" / "dir.itl").c_str()) == ITERA_ERR_IO);
    CHECK(itera_conversion_write(c.c, "") == ITERA_ERR_INVALID_ARGUMENT);
    // The runtime's last error is its own.
    CHECK(std::string(itera_last_error()).find("itera_conversion_write") == std::string::npos);
    MESSAGE("NULLs, 4 corrupt checkpoints, " << std::size(cases)
                                             << " bad or contradicting options, a bad tokenizer, a config that "
                                                "disagrees, a rule matching nothing, an impossible target and "
                                                "unwritable paths: each its code and message");
}
