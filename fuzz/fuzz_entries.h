// What each libFuzzer target (fuzz/fuzz_*.cpp) does with its input, shared with
// tests/test_fuzz_regressions.cpp, which replays every saved finding through the same calls.
// Each returns normally or throws itera::Error; anything else escaping (another exception, a
// crash, a sanitizer report, a failed consistency check) is a bug. docs/fuzzing.md has the runs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace itera::fuzz {

// The .pt reader: zip container, pickle machine, tensor views (pt::read_checkpoint_bytes).
void pt_reader(const uint8_t* data, size_t size);
// pt::read_checkpoint_bytes, then checkpoint_to_spec; a spec it accepts must also serialize and
// load back as a model.
void checkpoint_to_spec(const uint8_t* data, size_t size);
// ItlFile::from_memory, load_model, the tokenizer on a fixed text, and one token through the model.
void itl_loader(const uint8_t* data, size_t size, bool verify_checksum);
// The converter's JSON inputs: parse_tokenizer_json (+ the runtime tokenizer built from it) and
// json_to_value (--config).
void tokenizer_json(const uint8_t* data, size_t size);
// A saved context state (Context::restore, runtime/context.cpp: what Python's Context.restore and
// pickle hand the library) restored into a context of one of two small models made in code, the
// one whose fingerprint the input names (another fingerprint is refused as another model's): a
// plain one and one with a vocabulary trimmed with gaps. With fix_checksum the payload checksum is
// recomputed first, so that mutations reach the fields behind it. A state it accepts must save
// back to the same bytes, and the context must go on past its window.
void saved_state(const uint8_t* data, size_t size, bool fix_checksum);
// Valid states of those models: windows empty, partial, full and slid, with and without logits.
std::vector<std::vector<uint8_t>> saved_state_seeds();

}  // namespace itera::fuzz
