// Whole-file reads with a clear error instead of a crash or an unbounded allocation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace itera {

// Throws itera::Error ("cannot open 'x': No such file or directory", "... is larger than N bytes").
std::vector<uint8_t> read_file_bytes(const std::string& path, uint64_t max_bytes);
std::string read_file_text(const std::string& path, uint64_t max_bytes);

}  // namespace itera
