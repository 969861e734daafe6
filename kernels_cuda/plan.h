// Host-side planning for the CUDA backend, in plain C++ (no CUDA) and unit-tested on the CPU:
// the model as kernel structs, the scratch layout of a tile, the tile shape of a launch, and how
// the segments of a run are split into launches.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels_cuda/executor.h"
#include "kernels_cuda/forward.h"

namespace itera::cuda {

// The widths the scratch layout needs: maxima over layers and experts.
struct ModelDims {
    int32_t hidden = 0, inner = 0, state = 0, ffn = 0, experts = 0, top_k = 0;
};

// The model's weights as kernel structs (plain descriptors of the .itl tensors), pointing into
// host memory (the model's mapping): what the runtime hands this layer (runtime/cuda_backend.cpp
// builds it from a loaded Model). model.layers and model.experts point into the vectors here (so
// a HostModel is not copied once built); every weight lies in [span, span + span_bytes).
struct HostModel {
    FwdModel model;
    std::vector<FwdLayer> layers;
    std::vector<FwdExpert> experts;
    ModelDims dims;
    const uint8_t* span = nullptr;  // every weight lies in [span, span + span_bytes)
    size_t span_bytes = 0;
};

// Whether the kernels read weights of this dtype (fp32, fp16, q8, q4 and nf4; not q3 and q2).
bool kernels_read(DType t);

// Sets model.layers / model.experts to the vectors and the span to the range every weight lies in.
void finish_host_model(HostModel* hm);

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

// ---- segments and launches ----

// The logits a segment asks for: none, its last token's, or a row per token.
enum class Logits { none, last, all };

// Tokens [0, n) of one sequence at positions pos0.. on its state slot (zeroed first when reset),
// as forward.h's Job runs them. The runtime (runtime/cuda_backend.cpp) turns token ids into
// embedding rows and applies the window rule before anything reaches this layer.
struct Segment {
    int32_t slot = 0;
    const int32_t* rows = nullptr;  // embedding rows
    int32_t n = 0;
    int32_t pos0 = 0;
    bool reset = false;
    Logits logits = Logits::last;
};

// Logits rows a segment asks for.
int32_t logits_rows(const Segment& s);

struct LaunchCaps {
    int32_t jobs = 1, tokens = 1, logits_rows = 1;
};
// Consecutive [begin, end) ranges of segments[0, n), each within caps (a single segment must fit on
// its own, else itera::Error).
std::vector<std::pair<size_t, size_t>> split_launches(const Segment* segments, size_t n, const LaunchCaps& caps);

}  // namespace itera::cuda
