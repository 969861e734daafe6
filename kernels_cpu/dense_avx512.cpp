// dense_simd.h for AVX-512 (16 floats per register).

// g++ 12 flags the deliberately undefined lanes of its own AVX-512 intrinsics as uninitialized
// (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "kernels_cpu/dense_simd.h"

namespace itera {
const DenseKernels kDenseAvx512 = dense_kernels<xsimd::avx512bw>();
}
