// Matrix-matrix products for the batched paths (prompt prefill, many sequences in lockstep):
// one weight read serves every activation row.
//   y[b, r] = sum_c W[r, c] * x[b, c]     x: [batch, w.cols], y: [batch, w.rows], row-major
// Any dtype: fp32/fp16 rows are dotted directly; block formats quantize each activation row to
// q8 blocks (as the decode path does) and use the integer kernels of quant_ops.h.
#pragma once

#include <cstdint>

#include "kernels_cpu/weight.h"

namespace itera {

// The project's own kernels (the `native` provider).
void gemm_native(const Weight& w, const float* x, int32_t batch, float* y);

}  // namespace itera
