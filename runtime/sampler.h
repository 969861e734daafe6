// Picks the next token from logits: greedy (argmax), or temperature + top-k + top-p sampling with
// a seeded generator, so the same seed gives the same text on every machine.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels_cpu/dense_ops.h"  // argmax: greedy's pick

namespace itera {

struct SamplerParams {
    bool greedy = false;
    float temperature = 0.8f;  // <= 0 means greedy
    int32_t top_k = 40;        // 0 keeps every token
    float top_p = 0.95f;       // 1 keeps every token
    uint64_t seed = 0;
};

class Sampler {
public:
    explicit Sampler(const SamplerParams& params);
    // Throws itera::Error when a logit is NaN.
    int32_t sample(const float* logits, int32_t n);

private:
    double uniform();  // [0, 1)

    SamplerParams params_;
    uint64_t state_;
    std::vector<int32_t> order_;
    std::vector<double> prob_;
};

// out[i] = log softmax(logits)[i], in double precision (perplexity and KL divergence sums).
void log_softmax(const float* logits, int32_t n, double* out);

}  // namespace itera
