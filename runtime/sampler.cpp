#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace itera {

int32_t argmax(const float* logits, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

void log_softmax(const float* logits, int32_t n, double* out) {
    double top = logits[0];
    for (int32_t i = 1; i < n; i++) top = std::max(top, static_cast<double>(logits[i]));
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) sum += std::exp(logits[i] - top);
    const double norm = top + std::log(sum);
    for (int32_t i = 0; i < n; i++) out[i] = logits[i] - norm;
}

Sampler::Sampler(const SamplerParams& params) : params_(params), state_(params.seed ^ 0x9e3779b97f4a7c15ull) {}

double Sampler::uniform() {
    // splitmix64: small, portable, and fully determined by the seed
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::sample(const float* logits, int32_t n) {
    // NaN has no order: sorting it is undefined, and no token is "most likely".
    for (int32_t i = 0; i < n; i++)
        if (std::isnan(logits[i])) throw Error("the model produced NaN logits (non-finite weights?)");
    if (params_.greedy || params_.temperature <= 0.0f) return argmax(logits, n);
    order_.resize(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; i++) order_[static_cast<size_t>(i)] = i;
    // Largest first; equal logits keep id order so the result does not depend on the sort.
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    int32_t keep = n;
    if (params_.top_k > 0 && params_.top_k < n) {
        keep = params_.top_k;
        std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_logit);
    } else {
        std::sort(order_.begin(), order_.end(), by_logit);
    }
    prob_.resize(static_cast<size_t>(keep));
    const double top = logits[order_[0]];
    double total = 0.0;
    for (int32_t i = 0; i < keep; i++) {
        prob_[static_cast<size_t>(i)] = std::exp((logits[order_[static_cast<size_t>(i)]] - top) / params_.temperature);
        total += prob_[static_cast<size_t>(i)];
    }
    if (params_.top_p < 1.0f) {
        double cumulative = 0.0;
        for (int32_t i = 0; i < keep; i++) {
            cumulative += prob_[static_cast<size_t>(i)] / total;
            if (cumulative >= params_.top_p) {
                keep = i + 1;
                break;
            }
        }
        total = 0.0;
        for (int32_t i = 0; i < keep; i++) total += prob_[static_cast<size_t>(i)];
    }
    double r = uniform() * total;
    for (int32_t i = 0; i < keep; i++) {
        r -= prob_[static_cast<size_t>(i)];
        if (r < 0.0) return order_[static_cast<size_t>(i)];
    }
    return order_[static_cast<size_t>(keep - 1)];
}

}  // namespace itera
