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

// The zip format's CRC-32 (ISO-HDLC: reflected polynomial 0xEDB88320, initial and final xor ~0).
uint32_t zip_crc32(const uint8_t* data, size_t size);

// Throws itera::Error on anything malformed, and on an entry whose bytes do not match the CRC-32
// the central directory records for them (unless verify_crc is false: the fuzzers' mutations
// then reach the pickle reader); entries come in central-directory order.
std::vector<ZipEntry> read_zip(const uint8_t* data, size_t size, bool verify_crc = true);

}  // namespace itera::pt
