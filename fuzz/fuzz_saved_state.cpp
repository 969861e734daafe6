// libFuzzer target: the saved context state reader (Context::restore), which Python's
// Context.restore and unpickling feed with bytes from anywhere. Built twice (meson.build): as the
// bytes come (ITERA_FUZZ_FIX_CHECKSUM=0: a mutation past the header meets the payload checksum),
// and with the checksum recomputed (=1) so that mutations reach the counts, tokens and values.
// ITERA_FUZZ_WRITE_SEEDS=DIR writes valid states of the target's models to DIR and exits
// (tools/fuzz.sh makes the seed corpus that way). Build and run: tools/fuzz.sh (docs/fuzzing.md).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/error.h"
#include "fuzz/fuzz_entries.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* dir = std::getenv("ITERA_FUZZ_WRITE_SEEDS");
    if (!dir) return 0;
    const auto seeds = itera::fuzz::saved_state_seeds();
    for (size_t i = 0; i < seeds.size(); i++) {
        const std::string path = std::string(dir) + "/state_" + std::to_string(i) + ".bin";
        FILE* f = std::fopen(path.c_str(), "wb");
        if (!f || std::fwrite(seeds[i].data(), 1, seeds[i].size(), f) != seeds[i].size() || std::fclose(f) != 0) {
            std::fprintf(stderr, "cannot write %s\n", path.c_str());
            std::exit(1);
        }
    }
    std::exit(0);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        itera::fuzz::saved_state(data, size, ITERA_FUZZ_FIX_CHECKSUM);
    } catch (const itera::Error&) {  // the one way to refuse input; any other exception is a finding
    }
    return 0;
}
