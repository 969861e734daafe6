// The scalar formulas of ref_ops.h that the CUDA kernels also run: one definition, compiled by
// g++ for the host and by nvcc for the host and the device (kernels_cuda/hd.h includes it).
// ITERA_HD marks them; without nvcc it is empty. On the host expf / erff / log1pf are the C
// library's (what std::exp etc. call for a float); on the device they are CUDA's (within 2 ulp).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define ITERA_HD __host__ __device__
#else
#include <cmath>
#define ITERA_HD
#endif

namespace itera::ref {

ITERA_HD inline float silu(float v) { return v / (1.0f + expf(-v)); }
// The exact erf form, as torch.nn.functional.gelu.
ITERA_HD inline float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
// log(1 + e^v); v itself above 20, like PyTorch.
ITERA_HD inline float softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

// Indices of the k largest of n router logits, largest first (ties: lower index first, as
// torch.topk on CPU), and the softmax over those k logits.
ITERA_HD inline void top_k_softmax(const float* logits, int32_t n, int32_t k, int32_t* index, float* weight) {
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < n; e++) {
            bool taken = false;
            for (int32_t q = 0; q < j; q++) taken = taken || index[q] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = e;
        }
        index[j] = best;
    }
    const float top = logits[index[0]];
    float total = 0.0f;
    for (int32_t j = 0; j < k; j++) {
        weight[j] = expf(logits[index[j]] - top);
        total += weight[j];
    }
    for (int32_t j = 0; j < k; j++) weight[j] /= total;
}

}  // namespace itera::ref
