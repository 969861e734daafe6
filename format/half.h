// Scalar IEEE 754 conversions between binary32 and binary16 (fp16), and bfloat16 -> binary32.
// Bit-exact and independent of compiler or CPU support for half types: the writer stores fp16
// tensors with fp32_to_fp16, the runtime and the checkpoint reader widen with the others.
#pragma once

#include <bit>
#include <cstdint>

namespace itera {

// Round to nearest, ties to even. Overflow (|f| >= 65520) gives inf, values below half the smallest
// subnormal (2^-25) give a signed zero, NaN stays a quiet NaN with the sign and top payload bits.
inline uint16_t fp32_to_fp16(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // 65520 and up, inf
    if (a >= 0x38800000u) {  // normal fp16 (>= 2^-14): rebias the exponent by 127 - 15 = 112
        const uint32_t m = a - (112u << 23);
        // Adding 0xfff plus the kept lsb rounds the 13 dropped bits to nearest even; a carry
        // into the exponent is the correct result (up to 0x7bff, the threshold above stops inf).
        return static_cast<uint16_t>(sign | ((m + 0xfffu + ((m >> 13) & 1u)) >> 13));
    }
    // Subnormal fp16 (unit 2^-24) or zero: the value in units is mant * 2^(e - 126).
    const int shift = 126 - static_cast<int>(a >> 23);  // >= 14 here
    if (shift > 24) return sign;                        // below 2^-25 (fp32 subnormals included): rounds to zero
    const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1u))) q++;  // may carry into 0x400 = 2^-14: exact
    return static_cast<uint16_t>(sign | q);
}

// Exact: every fp16 value is representable in fp32.
inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    uint32_t bits;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | (m << 13);  // inf, or NaN with its payload
    } else if (e != 0) {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    } else if (m == 0) {
        bits = sign;
    } else {  // subnormal m * 2^-24: normalise so the leading one becomes the implicit bit
        e = 113;
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
    }
    return std::bit_cast<float>(bits);
}

// bfloat16 is the top half of a binary32.
inline float bf16_to_fp32(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

}  // namespace itera
