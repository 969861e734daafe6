// The oneDNN provider of the batched product of kernels_cpu/gemm.h:
//   y[b, r] = sum_c W[r, c] * x[b, c]     x: [batch, w.cols], y: [batch, w.rows], row-major
// through oneDNN 2.6 matmul primitives (Debian libdnnl2). W [rows, cols] row-major is the matmul's
// B [cols, rows] with strides {1, cols}.
//
//   f32   B is the mapped weight itself, read in place (no copy).
//   f16   converted once to f32 and packed into the layout the primitive asks for: oneDNN 2.6 has no
//         f16 matmul without AVX512-FP16. Copy: 4 bytes per weight.
//   q8_0, q4_0, nf4, q3_0, q2_0: oneDNN 2.6 has neither per-block scales nor 4-bit weights, so the
//         values the blocks stand for are requantized once to s8 with one scale per output row and
//         packed. Each activation row is quantized to u8 with its own scale and zero point (7 bits
//         without VNNI, see activation_levels()); u8 x s8 -> s32 runs on oneDNN's int8 kernels
//         (brgemm with AVX-512 VNNI here), then
//           y[b, r] = sx[b] * sw[r] * (acc[b, r] - zx[b] * sum_c wq[r, c]).
//         Copy: 1 byte per weight + 8 bytes per row. Not the native numbers: the second weight
//         rounding and the coarser activation scale add error (measured in docs/bench.md).
// Other dtypes are refused (handles() is false): callers use gemm_native for them.
//
// Primitives are created once per (kind, rows, cols, batch) and shared by every weight of that shape;
// weight copies are made once per weight. Both live as long as this object, which is keyed by the
// weights' addresses: it must not outlive the model it serves.
//
// Threads: Debian's libdnnl2 runs on GNU OpenMP (dnnl_version()->cpu_runtime == DNNL_RUNTIME_OMP).
// The runtime parallelizes over sequences itself, so every oneDNN call here runs with the calling
// thread's OpenMP thread count set to 1 (saved and restored around the call): oneDNN starts no
// thread of its own, and primitives are created for one thread.
//
// Thread-safe: one instance may serve many threads at once. Primitives run with a user scratchpad
// (oneDNN's rule for concurrent execution) that each thread owns, as it owns its stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels_cpu/weight.h"

namespace itera {

class OnednnGemm {
public:
    OnednnGemm();
    ~OnednnGemm();
    OnednnGemm(const OnednnGemm&) = delete;
    OnednnGemm& operator=(const OnednnGemm&) = delete;

    // f32, f16 and block-format weights (those with cols <= 65536, so that the s32 sums cannot overflow).
    static bool handles(const Weight& w);
    // Throws itera::Error for a weight that handles() refuses, or when oneDNN fails.
    void run(const Weight& w, const float* x, int32_t batch, float* y);

    // The oneDNN implementation that serves this shape, e.g. "brg:avx512_core_vnni" (creates the
    // primitive if needed).
    std::string implementation(const Weight& w, int32_t batch);
    // Bytes of the weight copies held (every dtype but f32).
    size_t cached_bytes() const;
    // Steps of the int8 path's activation grid: 255 where oneDNN's int8 kernels use VNNI, else 127
    // (the older u8 x s8 instructions saturate 16-bit pair sums).
    static int32_t activation_levels();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// "oneDNN 2.6.3, CPU runtime OpenMP, 1 thread per call, int8 activations on 255 steps"
std::string onednn_info();

}  // namespace itera
