// Replays every input saved under tests/fuzz_regressions/<target>/ (fuzzer findings, once
// fixed, and a few hand-picked edge cases) through the same entry functions the libFuzzer
// targets call (fuzz/fuzz_entries.h). Each must be accepted or refused with itera::Error; a
// crash, an abort, another exception or a sanitizer report (in the ASan build) fails the suite.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "common/error.h"
#include "converter/checkpoint_to_spec.h"
#include "format/itl_file.h"
#include "fuzz/fuzz_entries.h"
#include "kernels_cpu/quant_ops.h"
#include "runtime/model.h"

namespace fs = std::filesystem;

namespace {

std::vector<fs::path> inputs(const std::string& target) {
    const fs::path dir = fs::path(ITERA_FUZZ_REGRESSIONS_DIR) / target;
    std::vector<fs::path> files;
    if (fs::is_directory(dir))
        for (const fs::directory_entry& e : fs::directory_iterator(dir))
            if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    return files;
}

std::vector<uint8_t> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename Entry>
void replay(const std::string& target, Entry entry) {
    const std::vector<fs::path> files = inputs(target);
    REQUIRE_MESSAGE(!files.empty(), "no inputs under tests/fuzz_regressions/" << target);
    int accepted = 0, refused = 0;
    for (const fs::path& path : files) {
        const std::vector<uint8_t> bytes = read_bytes(path);
        std::string outcome = "accepted";
        try {
            entry(bytes.data(), bytes.size());
            accepted++;
        } catch (const itera::Error& e) {
            outcome = std::string("refused: ") + e.what();
            refused++;
        } catch (const std::exception& e) {
            FAIL_CHECK(path.filename().string() << ": escaped a non-itera exception: " << e.what());
            continue;
        }
        MESSAGE(target << "/" << path.filename().string() << " (" << bytes.size() << " bytes): " << outcome);
    }
    MESSAGE(target << ": " << files.size() << " inputs, " << accepted << " accepted, " << refused << " refused");
}

}  // namespace

TEST_CASE("fuzz regressions: .pt reader") { replay("pt_reader", itera::fuzz::pt_reader); }

TEST_CASE("fuzz regressions: checkpoint to spec") { replay("checkpoint_to_spec", itera::fuzz::checkpoint_to_spec); }

TEST_CASE("fuzz regressions: .itl loader, checksum on and off") {
    replay("itl_loader", [](const uint8_t* data, size_t size) { itera::fuzz::itl_loader(data, size, true); });
    replay("itl_loader", [](const uint8_t* data, size_t size) { itera::fuzz::itl_loader(data, size, false); });
}

TEST_CASE("fuzz regressions: tokenizer JSON") { replay("tokenizer_json", itera::fuzz::tokenizer_json); }

TEST_CASE("fuzz regressions: saved states, checksum as given and recomputed") {
    replay("saved_state", [](const uint8_t* data, size_t size) { itera::fuzz::saved_state(data, size, false); });
    replay("saved_state", [](const uint8_t* data, size_t size) { itera::fuzz::saved_state(data, size, true); });
}

TEST_CASE("fuzz seeds: every saved state of the target's models is accepted and saves back the same") {
    const auto seeds = itera::fuzz::saved_state_seeds();
    REQUIRE(seeds.size() == 14);
    for (const std::vector<uint8_t>& s : seeds) CHECK_NOTHROW(itera::fuzz::saved_state(s.data(), s.size(), false));
    // Damaged copies are refused, never more.
    std::vector<uint8_t> bad = seeds[3];
    bad[70] ^= 1;
    CHECK_THROWS_AS(itera::fuzz::saved_state(bad.data(), bad.size(), false), itera::Error);
    MESSAGE(seeds.size() << " seed states (two models, windows empty to slid) accepted; a flipped bit refused");
}

// Finding itl_loader/nonfinite_activation_nf4.itl: weights that are inf or NaN (or so small that
// 1/scale overflows) made the activation quantizer convert non-finite floats to int (undefined
// behaviour in the scalar path, garbage q and an overflowing `sum` in the SIMD ones). The
// regression file runs only the CPU's own path; this checks every path this CPU can run.
TEST_CASE("fuzz finding: activation blocks with inf, NaN or tiny values quantize to valid blocks") {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const int32_t n = 4 * itera::kActBlock + 5;
    std::vector<float> x(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; i++) x[static_cast<size_t>(i)] = std::sin(0.7f * static_cast<float>(i));
    x[32 + 3] = nan;                                                         // block 1
    x[64 + 31] = inf;                                                        // block 2
    for (int32_t i = 96; i < 128; i++) x[static_cast<size_t>(i)] *= 1e-38f;  // block 3: 1/scale overflows
    x[128 + 2] = -inf;                                                       // block 4, partial
    int paths = 0;
    for (itera::KernelPath path : {itera::KernelPath::scalar, itera::KernelPath::avx2, itera::KernelPath::avx512}) {
        if (!itera::kernel_path_supported(path)) continue;
        INFO("path ", itera::kernel_path_name(path));
        std::vector<itera::ActQ8> q(static_cast<size_t>(itera::act_blocks(n)));
        itera::quantize_activation(path, x.data(), n, q.data());
        for (size_t b = 0; b < q.size(); b++) {
            INFO("block ", b);
            int32_t sum = 0;
            for (int8_t v : q[b].q) {
                CHECK(v >= -127);
                sum += v;
            }
            CHECK(q[b].sum == sum);
            const bool non_finite = b == 1 || b == 2 || b == 4;
            CHECK(std::isnan(q[b].d) == non_finite);  // NaN carries into every dot with the block
            if (non_finite || b == 3) CHECK(sum == 0);
        }
        CHECK(q[0].d > 0.0f);
        CHECK(q[0].q[1] != 0);
        paths++;
    }
    CHECK(paths >= 1);
    MESSAGE(paths << " kernel path(s): blocks with NaN, +inf, -inf and values near 1e-38 quantize to valid blocks");
}

// Finding tokenizer_json/deep_nesting.json (by review, then confirmed by the fuzzer's entry):
// json_to_value (--config) recursed once per nesting level, so a deep enough file overflowed the
// stack. Nesting is now bounded (100 levels, as the pickled config); this text nests 200000.
TEST_CASE("fuzz finding: a deeply nested --config JSON is refused, not recursed into") {
    const size_t depth = 200000;
    const std::string text = "{\"a\": " + std::string(depth, '[') + std::string(depth, ']') + "}";
    CHECK_THROWS_WITH_AS(itera::json_to_value(text, "config"), doctest::Contains("nests deeper than"), itera::Error);
    CHECK(itera::json_to_value("{\"a\": [[[1]]]}", "config").get("a")->items.at(0).items.at(0).items.at(0).i == 1);
    MESSAGE("a " << depth << "-deep config JSON is refused with an itera::Error; a 3-deep one still reads");
}

// Finding itl_loader/*_zstd_size_claim.itl (by review, then confirmed under libFuzzer's malloc
// limit): the reader allocated whatever a zstd frame header declared (up to 256 MiB of metadata,
// 64 MiB of tokenizer) before decompressing, so a 128-byte file cost 200 MB. The claim is now
// checked against the frame's blocks first.
TEST_CASE("fuzz finding: a zstd frame whose blocks do not back its declared size is refused before allocating") {
    const std::pair<const char*, const char*> cases[] = {
        {"meta_zstd_size_claim.itl",
         "corrupt metadata: compressed frame declares 200000000 bytes, more than its blocks hold"},
        {"tokenizer_zstd_size_claim.itl", "tokenizer: zstd frame declares 60000000 bytes, more than its blocks hold"},
    };
    for (const auto& [name, message] : cases) {
        const std::vector<uint8_t> bytes = read_bytes(fs::path(ITERA_FUZZ_REGRESSIONS_DIR) / "itl_loader" / name);
        REQUIRE(!bytes.empty());
        itera::LoadOptions no_checksum;
        no_checksum.verify_checksum = false;
        CHECK_THROWS_WITH_AS(itera::ItlFile::from_memory(bytes.data(), bytes.size(), no_checksum), message,
                             itera::Error);
    }
    MESSAGE("metadata and tokenizer frames claiming 200 MB / 60 MB from a few bytes are refused by name");
}

// Finding itl_loader/config_implies_millions_of_tensors.itl (by review): 8 KB of zstd metadata
// describing 1024 MoE layers of 1024 experts and no tensors made load_model build the names and
// shapes of 2 million expected tensors (1.4 GB under ASan, 8 s) before finding the first missing.
TEST_CASE("fuzz finding: a config implying more tensors than the file holds is refused before naming them") {
    const std::vector<uint8_t> bytes =
        read_bytes(fs::path(ITERA_FUZZ_REGRESSIONS_DIR) / "itl_loader" / "config_implies_millions_of_tensors.itl");
    REQUIRE(bytes.size() < 10000);
    itera::LoadOptions no_checksum;
    no_checksum.verify_checksum = false;
    auto file = itera::ItlFile::from_memory(bytes.data(), bytes.size(), no_checksum);
    REQUIRE(file->config().layers.size() == 1024);
    CHECK_THROWS_WITH_AS(itera::load_model(std::move(file)),
                         "model file holds 0 tensors, its config implies 2109440 or more", itera::Error);
    MESSAGE("a " << bytes.size() << "-byte file whose config implies 2109440+ tensors is refused by count");
}

// Finding itl_loader/misaligned_shape.itl (libFuzzer, checksum off, UBSan): a tensor's `shape`
// vector of int64 placed at a 4-byte boundary. FlatBuffers 2.0.8 verifies vector lengths, not the
// alignment of 8-byte elements, so reading the shape was a misaligned load.
TEST_CASE("fuzz finding: a tensor shape vector that is not 8-byte aligned is refused") {
    const std::vector<uint8_t> bytes =
        read_bytes(fs::path(ITERA_FUZZ_REGRESSIONS_DIR) / "itl_loader" / "misaligned_shape.itl");
    REQUIRE(!bytes.empty());
    itera::LoadOptions no_checksum;
    no_checksum.verify_checksum = false;
    CHECK_THROWS_WITH_AS(itera::ItlFile::from_memory(bytes.data(), bytes.size(), no_checksum),
                         doctest::Contains("corrupt metadata (shape not 8-byte aligned)"), itera::Error);
    MESSAGE("the misaligned shape vector is refused before it is read");
}
