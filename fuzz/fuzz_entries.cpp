#include "fuzz/fuzz_entries.h"

#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "common/error.h"
#include "converter/checkpoint_to_spec.h"
#include "converter/pt/checkpoint.h"
#include "converter/tokenizer_json.h"
#include "format/itl_file.h"
#include "format/itl_layout.h"
#include "format/tensor_names.h"
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

// A small two-layer model (ffn, then a 3-expert MoE), its weights from a fixed LCG so that its
// fingerprint, and so the saved seeds, are the same on every machine. vocab_ids: trimmed rows.
// The model may use its file's bytes in place: they live beside it.
struct SmallModel {
    std::vector<uint8_t> bytes;
    std::unique_ptr<Model> model;
};

SmallModel small_model(const std::vector<int32_t>& vocab_ids) {
    ModelSpec spec;
    ModelConfig& c = spec.config;
    c.vocab_size = vocab_ids.empty() ? 23 : static_cast<int32_t>(vocab_ids.size());
    c.vocab_ids = vocab_ids;
    c.hidden = 12;
    c.max_seq_length = 6;
    c.layers = {{10, 3, 3, ChannelKind::ffn, 0, {7}}, {8, 4, 4, ChannelKind::moe, 2, {5, 6, 4}}};
    uint32_t state = 12345;
    for (const ExpectedTensor& e : expected_tensors(c)) {
        SpecTensor t;
        t.name = e.name;
        t.shape = e.shape;
        int64_t n = 1;
        for (int64_t d : e.shape) n *= d;
        for (int64_t i = 0; i < n; i++) {
            state = state * 1664525u + 1013904223u;
            t.values.push_back(static_cast<float>(state >> 8) / 16777216.0f - 0.5f);
        }
        spec.tensors.push_back(std::move(t));
    }
    SmallModel m;
    m.bytes = serialize_itl(spec);
    m.model = load_model(ItlFile::from_memory(m.bytes.data(), m.bytes.size()));
    return m;
}

// The target's two models: plain, and with ids 4, 6, 7, ... trimmed away.
const std::vector<SmallModel>& saved_state_models() {
    static const std::vector<SmallModel> models = [] {
        std::vector<SmallModel> m;
        m.push_back(small_model({}));
        m.push_back(small_model({0, 1, 2, 3, 5, 8, 9, 13, 21, 22}));
        return m;
    }();
    return models;
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

void saved_state(const uint8_t* data, size_t size, bool fix_checksum) {
    std::vector<uint8_t> input(data, data + size);
    if (fix_checksum && size >= 64) store_le(input.data() + 24, XXH3_64bits(input.data() + 64, size - 64), 8);
    const uint64_t fingerprint = saved_state_fingerprint(input.data(), input.size());
    // One context per model, made once (its backend is the costly part of a run).
    static std::vector<std::unique_ptr<Context>> contexts = [] {
        std::vector<std::unique_ptr<Context>> c;
        for (const SmallModel& m : saved_state_models()) c.push_back(std::make_unique<Context>(*m.model));
        return c;
    }();
    Context* ctx = contexts[0].get();
    for (size_t i = 0; i < contexts.size(); i++)
        if (saved_state_models()[i].model->file->checksum() == fingerprint) ctx = contexts[i].get();
    const Model& model = ctx->model();
    ctx->reset();
    ctx->eval(model.id_of(1));  // some state for the input to replace
    ctx->restore(input.data(), input.size());
    std::vector<uint8_t> again(ctx->saved_size());
    ctx->save(again.data());
    must(again == input);
    // On: the tokens that still fit and one more, so the window slides and re-runs from zero.
    const int32_t n = model.config.max_seq_length - ctx->position() + 1;
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; i++) ids[static_cast<size_t>(i)] = model.id_of(i % model.vocab_rows());
    must(ctx->eval_tokens(ids.data(), n) != nullptr);
}

std::vector<std::vector<uint8_t>> saved_state_seeds() {
    std::vector<std::vector<uint8_t>> seeds;
    for (const SmallModel& small : saved_state_models()) {
        const Model* m = small.model.get();
        Context ctx(*m);
        auto add = [&] {
            seeds.emplace_back(ctx.saved_size());
            ctx.save(seeds.back().data());
        };
        add();  // empty
        for (int32_t n = 0; n < m->config.max_seq_length + 2; n++) {
            ctx.eval(m->id_of((3 * n + 1) % m->vocab_rows()), n % 2 == 0);
            if (n == 0 || n == 1 || n == 3 || n >= m->config.max_seq_length - 1) add();
        }
    }
    return seeds;
}

}  // namespace itera::fuzz
