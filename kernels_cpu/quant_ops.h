// Matrix-vector products on quantized weights (q8_0, q4_0, nf4, q3_0, q2_0; layouts in
// format/quant_blocks.h).
//
// The FP32 input vector is quantized once to int8 in blocks of 32 (ActQ8, like ggml's Q8_0
// activation side) and shared by every projection that reads it. Each weight block is then an
// integer dot product against one activation block, scaled in FP32:
//   y[r] = sum_b  d_w(r, b) * d_x(b) * sum_i w_q[i] * x_q[i]
// nf4 levels enter the integer dot as int8 round(127 * level) with absmax / 127 as the scale
// (kNf4I8 below; the extra error this adds is measured in tests/test_quant_kernels.cpp). q3_0
// enters as n - 4 and q2_0, whose levels are n - 1.5, as 2n - 3 with d / 2 as its scale: every
// block dot stays an exact integer.
//
// Three kernel paths compute the same integers: scalar (always compiled), avx2 (maddubs / madd)
// and avx512 (AVX-512 VNNI vpdpbusd). The widest one the CPU has is chosen at first use, or the
// one named by the environment variable ITERA_KERNELS=scalar|avx2|avx512. They differ from one
// another only by FP32 summation order. matvec_quant_ref is the plain-math truth they are tested
// against: dequantize, then an FP32 dot.
#pragma once

#include <cstdint>

#include "kernels_cpu/weight.h"

namespace itera {

// One quantized block of 32 activations: x[i] ~= d * q[i], q in [-127, 127]; sum = sum_i q[i]
// (q4_0, q3_0, q2_0 and nf4 kernels multiply unsigned weight codes and subtract offset * sum).
struct ActQ8 {
    float d;
    int32_t sum;
    int8_t q[32];
};

constexpr int32_t kActBlock = 32;
constexpr int32_t act_blocks(int32_t n) { return (n + kActBlock - 1) / kActBlock; }

// NF4 levels as int8 for the integer dot: round(127 * kNf4[i]).
constexpr int8_t kNf4I8[16] = {-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127};

enum class KernelPath { scalar, avx2, avx512 };

bool kernel_path_supported(KernelPath path);    // this CPU (and OS) can run it
const char* kernel_path_name(KernelPath path);  // "scalar", "avx2", "avx512"
// The path named by `name` (an ITERA_KERNELS value), or the widest supported one when name is
// null or empty. Throws itera::Error for an unknown name or a path this CPU cannot run.
KernelPath select_kernel_path(const char* name);
// The path used by the functions without a KernelPath argument: select_kernel_path(getenv
// ("ITERA_KERNELS")), decided once at first use (thread-safe).
KernelPath kernel_path();
const char* kernel_path_name();

// x[0, n) -> act_blocks(n) blocks; the last block's missing values are zero.
void quantize_activation(const float* x, int32_t n, ActQ8* out);
void quantize_activation(KernelPath path, const float* x, int32_t n, ActQ8* out);

// y[r] = W[r, :] . x for w.dtype a block format; x holds act_blocks(w.cols) blocks. The
// rows are read in place (2-byte alignment suffices). Throws itera::Error for another dtype.
void matvec_quant(const Weight& w, const ActQ8* x, float* y);
void matvec_quant(KernelPath path, const Weight& w, const ActQ8* x, float* y);
// n rows at once: y[i] = W x[i] (x: n rows of act_blocks(w.cols) blocks, y: n rows of w.rows),
// each row bit for bit what matvec_quant gives it. A rows16 weight on the avx512 path is unpacked
// once for four rows (a prefill's or a batch's products); elsewhere the rows go one by one.
void matmul_quant(const Weight& w, const ActQ8* x, int32_t n, float* y);
void matmul_quant(KernelPath path, const Weight& w, const ActQ8* x, int32_t n, float* y);

// Reference: each row dequantized with format/quant_blocks.h, the activation as d * q, FP32 dot.
void matvec_quant_ref(const Weight& w, const ActQ8* x, float* y);

}  // namespace itera
