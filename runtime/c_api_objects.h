// The C API's opaque handles (runtime/include/itera.h) as the C++ runtime holds them. Only
// runtime/itera_c_api.cpp includes this: callers see the handles as incomplete types.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "runtime/batch.h"
#include "runtime/context.h"
#include "runtime/model.h"
#include "runtime/sampler.h"

struct itera_model {
    // The caller's bytes when copy_buffer asked for a copy; declared first so the model that
    // points into them is destroyed before them.
    std::unique_ptr<uint8_t, decltype(&std::free)> copy{nullptr, &std::free};
    std::unique_ptr<itera::Model> model;
    std::string path;  // "" when loaded from memory
};

// The C API indexes logits by token id. A model whose vocabulary was trimmed with gaps computes
// fewer rows than ids; its logits are then spread out to one per id, -inf for the dropped ids.
struct itera_context {
    itera_context(const itera::Model& model, std::unique_ptr<itera::Backend> backend)
        : ctx(model, std::move(backend)) {}

    // Call after anything that changes ctx.
    void update_logits() {
        const itera::Model& model = ctx.model();
        const float* rows = ctx.logits();
        if (!rows || model.id_limit() == model.vocab_rows()) {  // rows are ids
            logits = rows;
            return;
        }
        by_id.assign(static_cast<size_t>(model.id_limit()), -INFINITY);
        for (int32_t r = 0; r < model.vocab_rows(); r++) by_id[static_cast<size_t>(model.id_of(r))] = rows[r];
        logits = by_id.data();
    }

    itera::Context ctx;
    const float* logits = nullptr;  // [id_limit] or nullptr
    std::vector<float> by_id;
};

struct itera_sampler {
    explicit itera_sampler(const itera::SamplerParams& params) : sampler(params) {}
    itera::Sampler sampler;
};

struct itera_batch {
    itera_batch(const itera::Model& model, std::unique_ptr<itera::Backend> backend)
        : batch(model, std::move(backend)) {}
    itera::Batch batch;
    std::vector<float> by_id;  // [n, id_limit] when the vocabulary was trimmed

    // Call after anything that changes the batch: spreads each fed sequence's rows out to ids, as
    // itera_context does.
    void update_logits() {
        const itera::Model& model = batch.model();
        if (model.id_limit() == model.vocab_rows()) return;  // rows are ids
        const size_t ids = static_cast<size_t>(model.id_limit());
        by_id.resize(ids * static_cast<size_t>(batch.size()));
        for (int32_t i = 0; i < batch.size(); i++) {
            const float* rows = batch.logits(i);
            if (!rows) continue;
            float* out = by_id.data() + static_cast<size_t>(i) * ids;
            std::fill(out, out + ids, -INFINITY);
            for (int32_t r = 0; r < model.vocab_rows(); r++) out[model.id_of(r)] = rows[r];
        }
    }
};
