// Whole-file reads with a clear error instead of a crash or an unbounded allocation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace itera {

// A read-only descriptor of `path` (O_CLOEXEC), which must be a regular file, and its size:
// "cannot open 'x': No such file or directory", "'x' is not a regular file". Opened non-blocking,
// so a FIFO or a device is refused instead of waiting for a writer. The caller closes fd.
struct RegularFile {
    int fd;
    uint64_t size;
};
RegularFile open_regular_file(const std::string& path);

// Throws itera::Error ("cannot open 'x': No such file or directory", "... is larger than N bytes").
std::vector<uint8_t> read_file_bytes(const std::string& path, uint64_t max_bytes);
std::string read_file_text(const std::string& path, uint64_t max_bytes);

}  // namespace itera
