// libFuzzer target: the .itl loader and load_model. Built twice (meson.build): with the checksum
// check on (ITERA_FUZZ_VERIFY_CHECKSUM=1, as users load files), and off so that mutated inputs
// get past it to the header, FlatBuffers, config, tensor and tokenizer checks.
// Build and run: tools/fuzz.sh (docs/fuzzing.md).
#include "common/error.h"
#include "fuzz/fuzz_entries.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        itera::fuzz::itl_loader(data, size, ITERA_FUZZ_VERIFY_CHECKSUM);
    } catch (const itera::Error&) {  // the one way to refuse input; any other exception is a finding
    }
    return 0;
}
