#include "converter/pt/zip_archive.h"

#include <array>
#include <set>

#include "common/error.h"

namespace itera::pt {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr size_t kLocalSize = 30, kCentralSize = 46, kEndSize = 22;

uint16_t le16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t le32(const uint8_t* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// The end-of-central-directory record sits in the last 22 bytes plus at most a 64 KiB comment.
size_t find_end_record(const uint8_t* data, size_t size) {
    if (size < kEndSize) throw Error("not a zip archive (file too small: " + std::to_string(size) + " bytes)");
    size_t lowest = size - kEndSize > 0xffff ? size - kEndSize - 0xffff : 0;
    for (size_t pos = size - kEndSize + 1; pos-- > lowest;) {
        if (le32(data + pos) == kEndSig && pos + kEndSize + le16(data + pos + 20) <= size) return pos;
    }
    throw Error("not a zip archive (no end-of-central-directory record)");
}

}  // namespace

uint32_t zip_crc32(const uint8_t* data, size_t size) {
    static const auto table = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    uint32_t crc = ~0u;
    for (size_t i = 0; i < size; i++) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

std::vector<ZipEntry> read_zip(const uint8_t* data, size_t size, bool verify_crc) {
    const size_t end = find_end_record(data, size);
    const uint8_t* e = data + end;
    const uint16_t disk = le16(e + 4), cd_disk = le16(e + 6), n_disk = le16(e + 8), n_total = le16(e + 10);
    const uint32_t cd_size = le32(e + 12), cd_offset = le32(e + 16);
    if (n_disk == 0xffff || n_total == 0xffff || cd_size == 0xffffffff || cd_offset == 0xffffffff)
        throw Error("zip64 archives are not supported");
    if (disk != 0 || cd_disk != 0 || n_disk != n_total) throw Error("multi-disk zip archives are not supported");
    if (cd_offset > end || cd_size > end - cd_offset) throw Error("corrupt zip: central directory outside the file");
    if (size_t(n_total) * kCentralSize > cd_size)
        throw Error("corrupt zip: central directory too small for its entries");

    std::vector<ZipEntry> entries;
    std::set<std::string> names;
    const uint8_t* cd = data + cd_offset;
    size_t pos = 0;
    for (uint16_t k = 0; k < n_total; ++k) {
        if (cd_size - pos < kCentralSize || le32(cd + pos) != kCentralSig)
            throw Error("corrupt zip: bad central directory entry " + std::to_string(k));
        const uint8_t* c = cd + pos;
        const uint16_t flags = le16(c + 8), method = le16(c + 10);
        const uint32_t crc = le32(c + 16), csize = le32(c + 20), usize = le32(c + 24);
        const size_t name_len = le16(c + 28), extra_len = le16(c + 30), comment_len = le16(c + 32);
        const uint32_t local = le32(c + 42);
        if (kCentralSize + name_len + extra_len + comment_len > cd_size - pos)
            throw Error("corrupt zip: central directory entry " + std::to_string(k) + " overruns the directory");
        ZipEntry entry;
        entry.name.assign(reinterpret_cast<const char*>(c + kCentralSize), name_len);
        pos += kCentralSize + name_len + extra_len + comment_len;

        const std::string quoted = "zip entry '" + entry.name + "'";
        if (csize == 0xffffffff || usize == 0xffffffff || local == 0xffffffff)
            throw Error("zip64 archives are not supported (" + quoted + ")");
        if (flags & 1) throw Error(quoted + " is encrypted");
        if (method != 0)
            throw Error(quoted + " is compressed (method " + std::to_string(method) +
                        "); only stored entries are supported");
        if (csize != usize) throw Error("corrupt zip: stored " + quoted + " has different packed and unpacked sizes");
        if (!names.insert(entry.name).second) throw Error("corrupt zip: duplicate " + quoted);

        // The payload follows the local header, whose name and extra field lengths may differ
        // from the central ones (torch pads the local extra field to align tensor data).
        if (local > cd_offset || cd_offset - local < kLocalSize || le32(data + local) != kLocalSig)
            throw Error("corrupt zip: bad local header for " + quoted);
        const uint8_t* l = data + local;
        const size_t lname = le16(l + 26), lextra = le16(l + 28);
        const size_t start = size_t(local) + kLocalSize + lname + lextra;
        if (start > cd_offset || usize > cd_offset - start)
            throw Error("corrupt zip: data of " + quoted + " runs past the entry area");
        if (lname != name_len ||
            entry.name.compare(0, name_len, reinterpret_cast<const char*>(l + kLocalSize), lname) != 0)
            throw Error("corrupt zip: local header name differs for " + quoted);
        entry.data = data + start;
        entry.size = usize;
        if (verify_crc && zip_crc32(entry.data, entry.size) != crc)
            throw Error("corrupt zip: " + quoted + " does not match its CRC-32");
        entries.push_back(std::move(entry));
    }
    return entries;
}

}  // namespace itera::pt
