#include "kernels_cpu/gemm.h"

#include <vector>

#include "kernels_cpu/dense_ops.h"
#include "kernels_cpu/quant_ops.h"

namespace itera {

void gemm_native(const Weight& w, const float* x, int32_t batch, float* y) {
    const size_t in = static_cast<size_t>(w.cols);
    if (!is_quantized(w.dtype)) {
        matmul_dense(w, x, batch, y);
        return;
    }
    thread_local std::vector<ActQ8> xq;
    const size_t blocks = static_cast<size_t>(act_blocks(w.cols));
    xq.resize(blocks * static_cast<size_t>(batch));
    for (int32_t b = 0; b < batch; b++)
        quantize_activation(x + static_cast<size_t>(b) * in, w.cols, xq.data() + b * blocks);
    matmul_quant(w, xq.data(), batch, y);
}

}  // namespace itera
