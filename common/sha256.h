// SHA-256 (FIPS 180-4), for recording which checkpoint a .itl file was made from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace itera {

std::string sha256_hex(const uint8_t* data, size_t size);

}  // namespace itera
