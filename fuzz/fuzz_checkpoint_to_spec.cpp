// libFuzzer target: a .pt checkpoint mapped onto an Itera-Lite model spec.
// Build and run: tools/fuzz.sh (docs/fuzzing.md).
#include "common/error.h"
#include "fuzz/fuzz_entries.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        itera::fuzz::checkpoint_to_spec(data, size);
    } catch (const itera::Error&) {  // the one way to refuse input; any other exception is a finding
    }
    return 0;
}
