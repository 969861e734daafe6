// Host-side planning for the CUDA backend, in plain C++ (no CUDA) and unit-tested on the CPU:
// the model as kernel structs, the scratch layout of a tile, the tile shape of a launch, and the
// jobs that a batch of feeds becomes (with Context::eval's window semantics).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels_cuda/cuda_backend.h"
#include "kernels_cuda/executor.h"
#include "kernels_cuda/forward.h"
#include "runtime/model.h"

namespace itera::cuda {

// The widths the scratch layout needs: maxima over layers and experts.
struct ModelDims {
    int32_t hidden = 0, inner = 0, state = 0, ffn = 0, experts = 0, top_k = 0;
};

// The model's weights as kernel structs, pointing into the model's mapping. model.layers and
// model.experts point into the vectors here (so a HostModel is not copied once built).
struct HostModel {
    FwdModel model;
    std::vector<FwdLayer> layers;
    std::vector<FwdExpert> experts;
    ModelDims dims;
    const uint8_t* span = nullptr;  // every weight lies in [span, span + span_bytes)
    size_t span_bytes = 0;
};

// Throws itera::Error when a tensor has a dtype the kernels do not read (fp32, fp16, q8, q4 and
// nf4 are read; q3 and q2 are not).
void build_host_model(const Model& model, HostModel* out);

// The span with every rows16 weight (the CPU kernels' interleaved q4_0) reordered to row_major, the
// layout the device kernels read, and those weights marked row_major; empty (and nothing marked)
// when no weight is rows16. Same length and offsets as the span.
std::vector<uint8_t> row_major_span(HostModel* hm);

// Moves every weight pointer of hm from the span at hm.span to the same offsets from `to` (the
// span's copy in device memory). hm.model.layers / experts are left alone.
void relocate_weights(HostModel* hm, const uint8_t* to);

// Scratch of a tile of `rows` tokens (rows <= kMaxRows).
Scratch make_scratch(const ModelDims& dims, int32_t rows);

// The rows a tile carries: the largest of 16, 8, 4, 2, 1 whose scratch fits in shared memory, or
// kMaxRows in global memory (*global = true) when not even one row fits.
int32_t tile_rows(const ModelDims& dims, const Limits& limits, bool* global);

// S * Tc <= rows; Tc covers the longest job up to `rows`; S shrinks so that small batches still
// spread over sm_count blocks.
TileShape tile_shape(int32_t rows, int32_t sm_count, int32_t n_jobs, int32_t max_tokens);

// ---- feeds and jobs ----

// Logits rows a feed (cuda_backend.h) asks for.
int32_t feed_logits_rows(const Feed& feed);

// What the host remembers of each sequence: its window (the tokens since its state was zero,
// as Context keeps it) and whether its device state still has to be zeroed.
struct SequenceWindow {
    std::vector<int32_t> tokens;
    bool zero_pending = false;
};

struct PlannedJob {
    int32_t seq = 0, feed = 0, pos0 = 0;
    bool reset = false;
    std::vector<int32_t> ids;
    bool logits_all = false;  // a row per token (else the last token's, when logits_row >= 0)
    int32_t logits_row = -1;  // first row of this job's logits within its feed's, or -1: none
};

// The jobs of `feeds`, in waves: a sequence's k-th job is in wave k (its jobs run in order). Up
// to max_seq_length tokens a feed is one job from the current position; each token past it
// slides the window and re-runs it from zero state at positions 0.. (a job with reset), as
// Context::eval does. A job whose logits nobody asked for and whose state a later reset of the
// same feed discards is left out. Updates the windows.
std::vector<std::vector<PlannedJob>> plan_waves(std::vector<SequenceWindow>* seqs, const std::vector<Feed>& feeds,
                                                int32_t max_seq);

struct LaunchCaps {
    int32_t jobs = 1, tokens = 1, logits_rows = 1;
};
// Consecutive [begin, end) ranges of a wave, each within caps (a single job must fit on its own).
std::vector<std::pair<size_t, size_t>> split_wave(const std::vector<PlannedJob>& wave, const LaunchCaps& caps);

}  // namespace itera::cuda
