// The fixed parts of the .itl byte layout shared by the writer and the reader: the 64-byte
// header, alignments, limits, the checksum. docs/format.md is the prose version of this file.
#pragma once

#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"

namespace itera {

constexpr uint8_t kItlMagic[8] = {'I', 'T', 'E', 'R', 'A', 0, 'L', 'M'};
constexpr uint64_t kItlHeaderBytes = 64;
// File offset of the data region: one page, so it can be mapped on its own; files whose data
// region is under kItlSmallData align it to kItlTensorAlign instead (a page would be a few
// percent of a tiny model). Either way every tensor is 64-byte aligned in a mapping of the file.
constexpr uint64_t kItlDataAlign = 4096;
constexpr uint64_t kItlSmallData = uint64_t{1} << 20;
// Header flag: the metadata is stored zstd-compressed; `reserved` then holds its raw length.
constexpr uint32_t kItlFlagMetaZstd = 1;
constexpr uint64_t kItlTensorAlign = 64;  // offset of every tensor and section inside the data region
constexpr size_t kItlMaxRank = 4;
constexpr int64_t kItlMaxElements = int64_t{1} << 31;
constexpr uint64_t kItlMaxMetaBytes = uint64_t{1} << 28;        // below FlatBuffers' 2 GiB limit
constexpr uint64_t kItlMaxTokenizerBytes = uint64_t{64} << 20;  // decompressed token list

// Header fields, little-endian, at these byte offsets:
//   0 magic[8]  8 format_version u32  12 header_bytes u32  16 meta_offset u64  24 meta_length u64
//   32 data_offset u64  40 data_length u64  48 checksum u64  56 flags u32  60 reserved u32
// (flags bit 0: metadata zstd-compressed, `reserved` = its raw length; otherwise both are 0)
struct ItlHeader {
    uint32_t format_version = 0;
    uint32_t header_bytes = 0;
    uint64_t meta_offset = 0;
    uint64_t meta_length = 0;
    uint64_t data_offset = 0;
    uint64_t data_length = 0;
    uint64_t checksum = 0;
    uint32_t flags = 0;
    uint32_t reserved = 0;
};

inline uint64_t load_le(const uint8_t* p, int bytes) {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

inline void store_le(uint8_t* p, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Reads the fields after the magic (the caller checks the magic and that 64 bytes exist).
inline ItlHeader load_itl_header(const uint8_t* p) {
    ItlHeader h;
    h.format_version = static_cast<uint32_t>(load_le(p + 8, 4));
    h.header_bytes = static_cast<uint32_t>(load_le(p + 12, 4));
    h.meta_offset = load_le(p + 16, 8);
    h.meta_length = load_le(p + 24, 8);
    h.data_offset = load_le(p + 32, 8);
    h.data_length = load_le(p + 40, 8);
    h.checksum = load_le(p + 48, 8);
    h.flags = static_cast<uint32_t>(load_le(p + 56, 4));
    h.reserved = static_cast<uint32_t>(load_le(p + 60, 4));
    return h;
}

inline void store_itl_header(const ItlHeader& h, uint8_t* p) {
    for (int i = 0; i < 8; i++) p[i] = kItlMagic[i];
    store_le(p + 8, h.format_version, 4);
    store_le(p + 12, h.header_bytes, 4);
    store_le(p + 16, h.meta_offset, 8);
    store_le(p + 24, h.meta_length, 8);
    store_le(p + 32, h.data_offset, 8);
    store_le(p + 40, h.data_length, 8);
    store_le(p + 48, h.checksum, 8);
    store_le(p + 56, h.flags, 4);
    store_le(p + 60, h.reserved, 4);
}

inline uint64_t align_up(uint64_t x, uint64_t align) { return (x + align - 1) / align * align; }

// XXH3_64bits of the metadata bytes followed by the data bytes (the header is not covered: every
// field of it is checked against the file instead).
inline uint64_t itl_checksum(const uint8_t* meta, size_t meta_length, const uint8_t* data, size_t data_length) {
    std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state(XXH3_createState(), XXH3_freeState);
    if (!state || XXH3_64bits_reset(state.get()) != XXH_OK ||
        XXH3_64bits_update(state.get(), meta, meta_length) != XXH_OK ||
        XXH3_64bits_update(state.get(), data, data_length) != XXH_OK)
        throw Error("cannot compute the .itl checksum");
    return XXH3_64bits_digest(state.get());
}

// Checks a tensor shape (rank 0..4, every dimension 1..2^31, at most 2^31 elements) and returns
// its element count; `what` names the tensor in the message.
inline int64_t checked_elements(const std::string& what, const int64_t* dims, size_t rank) {
    if (rank > kItlMaxRank)
        throw Error(what + ": rank " + std::to_string(rank) + " (at most " + std::to_string(kItlMaxRank) + ")");
    int64_t n = 1;
    for (size_t i = 0; i < rank; i++) {
        if (dims[i] < 1 || dims[i] > kItlMaxElements)
            throw Error(what + ": dimension " + std::to_string(i) + " is " + std::to_string(dims[i]) + " (must be 1.." +
                        std::to_string(kItlMaxElements) + ")");
        n *= dims[i];  // both factors <= 2^31: no overflow
        if (n > kItlMaxElements) throw Error(what + ": more than " + std::to_string(kItlMaxElements) + " elements");
    }
    return n;
}

}  // namespace itera
