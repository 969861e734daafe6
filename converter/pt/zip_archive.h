// Minimal reader for the zip container torch.save writes: entries are located through the
// central directory and must be STORED (no compression, no encryption, no zip64). Entries
// point into the caller's buffer; nothing is copied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace itera::pt {

struct ZipEntry {
    std::string name;
    const uint8_t* data = nullptr;  // payload inside the archive buffer
    size_t size = 0;
};

// Throws itera::Error on anything malformed; entries come in central-directory order.
std::vector<ZipEntry> read_zip(const uint8_t* data, size_t size);

}  // namespace itera::pt
