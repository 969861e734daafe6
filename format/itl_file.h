// Writing and reading .itl files. Layout (docs/format.md has the byte-level description):
//   [0, 64)            fixed header: magic, version, section offsets, checksum
//   [64, ...)          FlatBuffer metadata (format/itera.fbs), verified on load
//   4096-aligned       data region (64-aligned under 1 MiB): each tensor 64-byte aligned, used in
//                      place from the mmap
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "format/dtype.h"
#include "format/model_config.h"
#include "format/model_spec.h"

namespace itera {

constexpr uint32_t kItlFormatVersion = 2;        // what the writer writes (2: newline-joined token lists)
constexpr uint32_t kItlOldestFormatVersion = 1;  // the oldest the reader loads
constexpr uint32_t kQuantVersion = 1;            // the block layouts of format/quant_blocks.h

// Serialises a spec (tensors converted to their stored dtype; the tokenizer section zstd-compressed
// when that is smaller). Throws itera::Error.
struct WriteOptions {
    bool compress_metadata = true;  // zstd the metadata when that saves space (header flag bit 0)
};
std::vector<uint8_t> serialize_itl(const ModelSpec& spec, const WriteOptions& options = {});
// Writes the file atomically: a temporary file next to `path`, fsynced, then renamed over it.
void write_itl(const ModelSpec& spec, const std::string& path, const WriteOptions& options = {});
void write_itl_bytes(const std::vector<uint8_t>& bytes, const std::string& path);  // serialized already
// Throws when write_itl would refuse `path`: it exists and is not a regular file (a device or a
// directory is never replaced). A caller with long work ahead checks first.
void check_itl_target(const std::string& path);

struct TensorView {
    std::string name;
    std::vector<int64_t> shape;
    DType dtype = DType::f32;
    Layout layout = Layout::row_major;
    const void* data = nullptr;  // 64-byte aligned, inside the mapped file
    size_t bytes = 0;
    int64_t elements() const;
};

struct LoadOptions {
    bool verify_checksum = true;
};

// A loaded .itl: the mapping (or a copy of a caller's buffer) stays alive as long as this object.
// Every range and field is checked on load; errors are itera::Error one-liners.
class ItlFile {
public:
    static std::unique_ptr<ItlFile> open(const std::string& path, LoadOptions options = {});
    // Uses `data` in place when it is 64-byte aligned (the caller keeps it alive and unchanged
    // while this object lives), otherwise copies it to an aligned buffer of its own.
    static std::unique_ptr<ItlFile> from_memory(const void* data, size_t size, LoadOptions options = {});
    ~ItlFile();

    const ModelConfig& config() const { return config_; }
    bool has_tokenizer() const { return has_tokenizer_; }
    const TokenizerSpec& tokenizer() const { return tokenizer_; }
    const Provenance& provenance() const { return provenance_; }
    const std::vector<TensorView>& tensors() const { return tensors_; }
    const TensorView* find(const std::string& name) const;  // nullptr when absent
    uint32_t format_version() const { return format_version_; }
    // The header checksum (XXH3-64 of metadata and data): identifies the model's exact content.
    uint64_t checksum() const { return checksum_; }
    size_t file_size() const { return size_; }

private:
    ItlFile() = default;
    void parse(LoadOptions options);

    const uint8_t* base_ = nullptr;
    size_t size_ = 0;
    void* mapping_ = nullptr;     // munmap on destruction when set
    std::vector<uint8_t> owned_;  // copy for from_memory when the buffer is not aligned
    std::vector<uint64_t> meta_;  // decompressed metadata (8-byte aligned for FlatBuffers)
    uint32_t format_version_ = 0;
    uint64_t checksum_ = 0;
    ModelConfig config_;
    bool has_tokenizer_ = false;
    TokenizerSpec tokenizer_;
    Provenance provenance_;
    std::vector<TensorView> tensors_;
};

}  // namespace itera
