// dense_simd.h for AVX2 + FMA + F16C (8 floats per register).
#include "kernels_cpu/dense_simd.h"

namespace itera {
const DenseKernels kDenseAvx2 = dense_kernels<xsimd::fma3<xsimd::avx2>>();
}
