#include "runtime/sampler.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"

namespace itera {

namespace {

bool has_nan(const float* x, int32_t n) {
    __m128 nan = _mm_setzero_ps();
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m128 v = _mm_loadu_ps(x + i);
        nan = _mm_or_ps(nan, _mm_cmpunord_ps(v, v));
    }
    bool any = _mm_movemask_ps(nan) != 0;
    for (; i < n; i++) any |= std::isnan(x[i]);
    return any;
}

// How many of x[0, n) are >= t (SSE2, four at a time; x86-64's baseline has no popcnt).
int32_t count_at_least(const float* x, int32_t n, float t) {
    static constexpr uint8_t kBits[16] = {0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4};
    const __m128 tv = _mm_set1_ps(t);
    int32_t count = 0, i = 0;
    for (; i + 4 <= n; i += 4) count += kBits[_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(x + i), tv))];
    for (; i < n; i++) count += x[i] >= t;
    return count;
}

// The smallest and the largest of x[0, n), n >= 1, no NaN.
void range_of(const float* x, int32_t n, float* lo, float* hi) {
    __m128 vlo = _mm_set1_ps(x[0]), vhi = vlo;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m128 v = _mm_loadu_ps(x + i);
        vlo = _mm_min_ps(vlo, v);
        vhi = _mm_max_ps(vhi, v);
    }
    alignas(16) float l[4], h[4];
    _mm_store_ps(l, vlo);
    _mm_store_ps(h, vhi);
    *lo = std::min(std::min(l[0], l[1]), std::min(l[2], l[3]));
    *hi = std::max(std::max(h[0], h[1]), std::max(h[2], h[3]));
    for (; i < n; i++) {
        *lo = std::min(*lo, x[i]);
        *hi = std::max(*hi, x[i]);
    }
}

// Floats in an order-preserving uint32 (no NaN): larger float, larger key.
uint32_t key_of(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}
float float_of(uint32_t key) {
    const uint32_t u = key & 0x80000000u ? key & 0x7fffffffu : ~key;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
}

// order[0, k) = the k best ids by `better` (a strict total order: logit, then id), best first:
// what std::partial_sort gives, but partial_sort over every id took 8-11 us per token for 2000-3000
// logits. A threshold t with k <= count(x >= t) <= 4k is bisected between the smallest and the
// largest logit, and only the ids at or above it are ordered: every id of the top k is, whatever
// the ties. The bisection halves the range of values (two or three counting passes for logits),
// or, after 16 passes or across an infinity, the range of the floats' order-preserving keys, which
// ends within 32 more.
template <class Better>
void top_k_ids(const float* logits, int32_t n, int32_t k, Better better, std::vector<int32_t>& order) {
    float min, max;
    range_of(logits, n, &min, &max);
    uint32_t lo = key_of(min), hi = key_of(max);  // count(x >= float_of(lo)) >= k throughout
    for (int64_t c = n, pass = 0; c > 4 * int64_t{k} && hi - lo > 1; pass++) {
        const float value_mid = float_of(lo) + (float_of(hi) - float_of(lo)) * 0.5f;
        const uint32_t mid =
            pass < 16 && key_of(value_mid) > lo && key_of(value_mid) < hi ? key_of(value_mid) : lo + (hi - lo) / 2;
        const int32_t m = count_at_least(logits, n, float_of(mid));
        if (m >= k) {
            lo = mid;
            c = m;
        } else {
            hi = mid;
        }
    }
    const float threshold = float_of(lo);
    order.clear();
    const __m128 lov = _mm_set1_ps(threshold);
    int32_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int m = _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(logits + i), lov)); m != 0; m &= m - 1)
            order.push_back(i + __builtin_ctz(static_cast<unsigned>(m)));
    for (; i < n; i++)
        if (logits[i] >= threshold) order.push_back(i);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
    order.resize(static_cast<size_t>(k));
}

}  // namespace

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
    if (has_nan(logits, n)) throw Error("the model produced NaN logits (non-finite weights?)");
    if (params_.greedy || params_.temperature <= 0.0f) return argmax(logits, n);
    // Largest first; equal logits keep id order so the result does not depend on the sort.
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    int32_t keep = n;
    if (params_.top_k > 0 && params_.top_k < n) {
        keep = params_.top_k;
        top_k_ids(logits, n, keep, by_logit, order_);
    } else {
        order_.resize(static_cast<size_t>(n));
        for (int32_t i = 0; i < n; i++) order_[static_cast<size_t>(i)] = i;
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
