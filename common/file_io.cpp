#include "common/file_io.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>

#include "common/error.h"

namespace itera {

namespace {

template <class Buffer>
Buffer read_all(const std::string& path, uint64_t max_bytes) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw Error("cannot open '" + path + "': " + std::strerror(errno));
    struct stat st {};
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        std::fclose(f);
        throw Error("'" + path + "' is not a regular file");
    }
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size > max_bytes) {
        std::fclose(f);
        throw Error("'" + path + "' is larger than " + std::to_string(max_bytes) + " bytes");
    }
    Buffer out(static_cast<size_t>(size), 0);
    const size_t got = size ? std::fread(out.data(), 1, out.size(), f) : 0;
    std::fclose(f);
    if (got != out.size()) throw Error("cannot read '" + path + "'");
    return out;
}

}  // namespace

std::vector<uint8_t> read_file_bytes(const std::string& path, uint64_t max_bytes) {
    return read_all<std::vector<uint8_t>>(path, max_bytes);
}

std::string read_file_text(const std::string& path, uint64_t max_bytes) {
    return read_all<std::string>(path, max_bytes);
}

}  // namespace itera
