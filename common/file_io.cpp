#include "common/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "common/error.h"

namespace itera {

RegularFile open_regular_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw Error("cannot open '" + path + "': " + std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error("'" + path + "' is not a regular file");
    }
    return {fd, static_cast<uint64_t>(st.st_size)};
}

namespace {

template <class Buffer>
Buffer read_all(const std::string& path, uint64_t max_bytes) {
    const auto [fd, size] = open_regular_file(path);
    if (size > max_bytes) {
        ::close(fd);
        throw Error("'" + path + "' is larger than " + std::to_string(max_bytes) + " bytes");
    }
    Buffer out(static_cast<size_t>(size), 0);
    size_t got = 0;
    while (got < out.size()) {
        const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
    }
    ::close(fd);
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
