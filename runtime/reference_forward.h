// The model's forward pass for one token, written as research/upstream.md section 2.2 writes it
// and made only of the scalar reference kernels (kernels_cpu/ref_ops.h). It is the truth the fast
// forward (runtime/forward.h: SIMD, block formats, prefill, batches) and the CUDA backend are
// tested against, and tests/golden holds it to the PyTorch reference. It is slow on purpose: no
// layout tricks, no fused steps, every product reads its weight through ref::load_row.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/model.h"

namespace itera {

// One sequence's recurrent state in the reference's own layout, zero at the start: per layer the
// conv history [inner, K-1] (oldest first, as ref::conv_step keeps it) and the SSM state [state].
struct ReferenceState {
    explicit ReferenceState(const ModelConfig& config);
    std::vector<std::vector<float>> conv, ssm;
};

// Feeds `token` (a checkpoint id) at position `pos` (< max_seq_length) on `state`, and writes the
// logits predicting the next token, one per vocabulary row (Model::id_of maps a row to its id).
// Throws itera::Error for an id the model does not know or a position past the position table.
void reference_step(const Model& model, int32_t token, int32_t pos, ReferenceState& state, float* logits);

// ids[0, n) from zero state at positions 0..n-1 (n <= max_seq_length): the logits after each,
// [n][vocab rows], as Context::eval_all and `itera-run logits` give them.
std::vector<float> reference_logits(const Model& model, const int32_t* ids, int32_t n);

}  // namespace itera
