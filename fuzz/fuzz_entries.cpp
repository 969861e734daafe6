#include "fuzz/fuzz_entries.h"

#include <cstdlib>
#include <string>

#include "common/error.h"
#include "converter/checkpoint_to_spec.h"
#include "converter/pt/checkpoint.h"
#include "converter/tokenizer_json.h"
#include "format/itl_file.h"
#include "runtime/context.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"

namespace itera::fuzz {

namespace {

constexpr const char* kText = "In the beginning God created the heaven and the earth. \xc3\xa9\xff";

// A consistency check the fuzzer must never break: abort() is reported as a crash.
void must(bool ok) {
    if (!ok) std::abort();
}

void exercise_tokenizer(const Tokenizer& tok) {
    try {
        const std::vector<int32_t> ids = tok.encode(kText);
        must(!ids.empty());
        tok.decode(ids);
    } catch (const Error&) {  // no <UNK> for an unknown piece
    }
    tok.decode({-1, 0, tok.size(), tok.size() - 1});
}

}  // namespace

// The zip entries' CRC-32 is not checked: a mutation must reach the pickle and tensor readers.
void pt_reader(const uint8_t* data, size_t size) {
    const pt::Checkpoint ck = pt::read_checkpoint_bytes(data, size, false);
    for (const auto& [name, t] : ck.tensors) {
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        must(n == static_cast<int64_t>(t.values.size()));
    }
}

void checkpoint_to_spec(const uint8_t* data, size_t size) {
    const pt::Checkpoint ck = pt::read_checkpoint_bytes(data, size, false);
    CheckpointOptions options;
    options.moe_empty_identity = size % 2;  // either answer to a MoE layer without experts
    const ModelSpec spec = itera::checkpoint_to_spec(ck, options);
    // The converter writes whatever it accepted: the runtime must load it back.
    try {
        const std::vector<uint8_t> bytes = serialize_itl(spec);
        load_model(ItlFile::from_memory(bytes.data(), bytes.size()));
    } catch (const Error&) {
        std::abort();
    }
}

void itl_loader(const uint8_t* data, size_t size, bool verify_checksum) {
    LoadOptions options;
    options.verify_checksum = verify_checksum;
    const std::unique_ptr<Model> model = load_model(ItlFile::from_memory(data, size, options));
    if (model->has_tokenizer) exercise_tokenizer(model->tokenizer);
    Context ctx(*model);
    ctx.eval(model->id_of(0), false);
    must(ctx.eval(model->id_of(model->vocab_rows() - 1)) != nullptr);
}

void tokenizer_json(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        json_to_value(text, "config");
    } catch (const Error&) {
    }
    exercise_tokenizer(Tokenizer(parse_tokenizer_json(text)));
}

}  // namespace itera::fuzz
