// Scalar math shared by the CUDA kernels and the host: the same source is compiled by nvcc for the
// device and by g++ for the host, where the unit tests check it against kernels_cpu/ref_ops.h.
// ITERA_HD (kernels_cpu/ref_math.h) marks such functions. The activations and the top-k softmax
// are ref::'s own (ref_math.h), so device and host differ only by the device's expf / erff /
// log1pf (within 2 ulp) and by FMA contraction.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels_cpu/ref_math.h"

#ifdef __CUDA_ARCH__  // only the device pass knows this pragma
#define ITERA_UNROLL _Pragma("unroll")
#else
#define ITERA_UNROLL
#endif

// The kernel body and its phases (forward.h), inlined whatever the body's size: nvcc's inliner
// otherwise leaves one as a function when the body grows (channel_block, once the q3 / q2 dots
// came in), and that function takes its arguments through a stack frame (ptxas: 80 -> 664 bytes).
#ifdef __CUDACC__
#define ITERA_PHASE __forceinline__
#else
#define ITERA_PHASE inline
#endif

namespace itera::cuda {

ITERA_HD inline float bits_to_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(bits);
#else
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

ITERA_HD inline bool is_finite(float v) {
#ifdef __CUDA_ARCH__
    const uint32_t bits = __float_as_uint(v);
#else
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
#endif
    return (bits & 0x7f800000u) != 0x7f800000u;
}

// Exact binary16 -> binary32 (format/half.h fp16_to_fp32, usable on the device).
ITERA_HD inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0x1f) return bits_to_float(sign | 0x7f800000u | (m << 13));
    if (e != 0) return bits_to_float(sign | ((e + 112u) << 23) | (m << 13));
    if (m == 0) return bits_to_float(sign);
    e = 113;  // subnormal: normalise so the leading one becomes the implicit bit
    while (!(m & 0x400u)) {
        m <<= 1;
        e--;
    }
    return bits_to_float(sign | (e << 23) | ((m & 0x3ffu) << 13));
}

// An fp16 value at a 2-byte aligned address.
ITERA_HD inline float load_half(const uint8_t* p) { return half_to_float(static_cast<uint16_t>(p[0] | (p[1] << 8))); }

// Four little-endian bytes at a 2-byte aligned address (block payloads follow a 2-byte scale).
ITERA_HD inline int32_t load_i32_a2(const uint8_t* p) {
#ifdef __CUDA_ARCH__
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    return static_cast<int32_t>(static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16));
#else
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
#endif
}

// Four bytes at a 4-byte aligned address.
ITERA_HD inline int32_t load_i32(const int8_t* p) {
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const int32_t*>(p);
#else
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
#endif
}

using ref::gelu;
using ref::silu;
using ref::softplus;

// Four floats at a 16-byte aligned address (one 128-bit load on the device).
ITERA_HD inline void load4(const float* p, float* out) {
#ifdef __CUDA_ARCH__
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
#else
    std::memcpy(out, p, 4 * sizeof(float));
#endif
}

// __dp4a: c + the dot product of the four signed bytes of a and b.
ITERA_HD inline int32_t dp4a(int32_t a, int32_t b, int32_t c) {
#ifdef __CUDA_ARCH__
    return __dp4a(a, b, c);
#else
    for (int i = 0; i < 4; i++)
        c += static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i)) *
             static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
    return c;
#endif
}

// __byte_perm(x, y, s): byte i of the result is byte (s >> 4i) & 7 of the eight bytes y:x.
ITERA_HD inline uint32_t byte_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
    return __byte_perm(x, y, s);
#else
    const uint64_t xy = (static_cast<uint64_t>(y) << 32) | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) r |= static_cast<uint32_t>((xy >> (8 * ((s >> (4 * i)) & 7))) & 0xffu) << (8 * i);
    return r;
#endif
}

}  // namespace itera::cuda
