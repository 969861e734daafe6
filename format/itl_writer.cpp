// Writes a ModelSpec as an .itl file: header, FlatBuffer metadata, data region (docs/format.md).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <string_view>

#include "common/error.h"
#include "format/itl_file.h"
#include "format/itl_layout.h"
#include "format/quant_blocks.h"
#include "itera_generated.h"

namespace itera {

static_assert(std::endian::native == std::endian::little, "tensor bytes are written in host order");

namespace {

constexpr int kZstdLevel = 19;  // token lists are small: spend the time, the file is written once

// The tokenizer section's raw bytes: each token followed by '\n' when no token holds one (half
// the bytes of a TokenList, and zstd packs them to half as many: docs/compression.md), else a
// FlatBuffer with root TokenList.
std::vector<uint8_t> token_list_bytes(const std::vector<std::string>& tokens, fb::TokenListEncoding* encoding) {
    const bool lines = std::none_of(tokens.begin(), tokens.end(),
                                    [](const std::string& t) { return t.find('\n') != std::string::npos; });
    if (lines) {
        *encoding = fb::TokenListEncoding::lines;
        std::vector<uint8_t> raw;
        for (const std::string& t : tokens) {
            raw.insert(raw.end(), t.begin(), t.end());
            raw.push_back('\n');
        }
        return raw;
    }
    *encoding = fb::TokenListEncoding::flatbuffer;
    flatbuffers::FlatBufferBuilder fbb;
    const auto list = fbb.CreateVectorOfStrings(tokens);
    fbb.Finish(fb::CreateTokenList(fbb, list));
    return {fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize()};
}

std::vector<uint8_t> zstd_compress(const std::vector<uint8_t>& raw) {
    std::vector<uint8_t> out(ZSTD_compressBound(raw.size()));
    const size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), kZstdLevel);
    if (ZSTD_isError(n)) throw Error(std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
    out.resize(n);
    return out;
}

struct Placed {
    uint64_t offset = 0;  // in the data region
    uint64_t length = 0;
};

// Reserves a 64-aligned range at the end of the data region.
Placed place(uint64_t* cursor, uint64_t length) {
    const Placed p{align_up(*cursor, kItlTensorAlign), length};
    *cursor = p.offset + length;
    return p;
}

// Writes a tensor's bytes in its stored dtype: verbatim when pre-encoded, else from its values.
void encode_tensor(const SpecTensor& t, uint8_t* dst) {
    const int64_t cols = t.shape.empty() ? 1 : t.shape.back();
    const size_t bytes = tensor_bytes(t.dtype, t.shape), row_bytes = dtype_row_bytes(t.dtype, cols);
    const int64_t rows = static_cast<int64_t>(bytes / row_bytes);
    std::vector<uint8_t> row_major;
    uint8_t* out = t.layout == Layout::row_major ? dst : (row_major.resize(bytes), row_major.data());
    if (!t.packed.empty()) {
        std::memcpy(out, t.packed.data(), t.packed.size());
    } else {
        for (int64_t r = 0; r < rows; r++)
            quantize_row(t.dtype, t.values.data() + r * cols, cols, out + static_cast<size_t>(r) * row_bytes);
    }
    if (t.layout == Layout::rows16) to_rows16(t.dtype, row_major.data(), rows, cols, dst);
}

}  // namespace

std::vector<uint8_t> serialize_itl(const ModelSpec& spec, const WriteOptions& options) {
    validate_config(spec.config);

    // Lay out the data region: tensors in spec order, then the tokenizer section.
    uint64_t cursor = 0;
    std::vector<Placed> placed;
    std::set<std::string_view> names;
    for (const SpecTensor& t : spec.tensors) {
        const std::string what = "tensor '" + t.name + "'";
        if (t.name.empty()) throw Error("a tensor has an empty name");
        if (!names.insert(t.name).second) throw Error("duplicate tensor name '" + t.name + "'");
        if (!dtype_known(static_cast<int32_t>(t.dtype)))
            throw Error(what + ": unknown dtype " + std::to_string(static_cast<int32_t>(t.dtype)));
        const int64_t n = checked_elements(what, t.shape.data(), t.shape.size());
        if (const std::string why = layout_refusal(t.layout, t.dtype, t.shape); !why.empty())
            throw Error(what + ": " + why);
        const size_t bytes = tensor_bytes(t.dtype, t.shape);
        if (!t.packed.empty() && t.packed.size() != bytes)
            throw Error(what + ": " + std::to_string(t.packed.size()) + " packed bytes, its shape and dtype need " +
                        std::to_string(bytes));
        if (t.packed.empty() && t.values.size() != static_cast<size_t>(n))
            throw Error(what + ": " + std::to_string(t.values.size()) + " values for " + std::to_string(n) +
                        " elements");
        placed.push_back(place(&cursor, bytes));
    }
    std::vector<uint8_t> token_raw, token_stored;
    Placed token_place;
    fb::Compression compression = fb::Compression::none;
    fb::TokenListEncoding encoding = fb::TokenListEncoding::flatbuffer;
    if (spec.has_tokenizer) {
        const TokenizerKind kind = spec.tokenizer.kind;
        if (kind != TokenizerKind::word && kind != TokenizerKind::chars)
            throw Error("unknown tokenizer kind " + std::to_string(static_cast<int32_t>(kind)));
        // Token ids run to the last vocab_id (rows no text produces may be dropped in between).
        const std::vector<int32_t>& ids = spec.config.vocab_ids;
        const int64_t id_limit = ids.empty() ? spec.config.vocab_size : int64_t{ids.back()} + 1;
        if (spec.tokenizer.tokens.size() > static_cast<size_t>(id_limit))
            throw Error("tokenizer has " + std::to_string(spec.tokenizer.tokens.size()) + " tokens, more than " +
                        (ids.empty() ? "vocab_size " : "the last vocab_id + 1 = ") + std::to_string(id_limit));
        token_raw = token_list_bytes(spec.tokenizer.tokens, &encoding);
        if (token_raw.size() > kItlMaxTokenizerBytes) throw Error("tokenizer is larger than 64 MiB");
        token_stored = zstd_compress(token_raw);
        if (token_stored.size() < token_raw.size()) {
            compression = fb::Compression::zstd;
        } else {
            token_stored = token_raw;
        }
        token_place = place(&cursor, token_stored.size());
    }
    const uint64_t data_length = cursor;

    // Metadata.
    flatbuffers::FlatBufferBuilder fbb;
    const ModelConfig& c = spec.config;
    std::vector<flatbuffers::Offset<fb::LayerConfig>> layers;
    for (const LayerConfig& l : c.layers)
        layers.push_back(fb::CreateLayerConfig(fbb, l.inner, l.state, l.conv_kernel,
                                               static_cast<fb::ChannelKind>(l.kind), l.top_k,
                                               fbb.CreateVector(l.ffn_widths)));
    const auto vocab_ids = c.vocab_ids.empty() ? 0 : fbb.CreateVector(c.vocab_ids);
    const auto config = fb::CreateModelConfig(fbb, c.vocab_size, c.hidden, c.max_seq_length, c.tied_head, c.norm_eps,
                                              fbb.CreateVector(layers), vocab_ids);
    flatbuffers::Offset<fb::Tokenizer> tokenizer = 0;
    if (spec.has_tokenizer) {
        const auto section =
            fb::CreateSection(fbb, token_place.offset, token_place.length, compression, token_raw.size());
        tokenizer = fb::CreateTokenizer(fbb, static_cast<fb::TokenizerKind>(spec.tokenizer.kind), section, encoding);
    }
    const Provenance& p = spec.provenance;
    const auto provenance =
        fb::CreateProvenance(fbb, fbb.CreateString(p.source_name), fbb.CreateString(p.source_sha256),
                             fbb.CreateString(p.converter_version), fbb.CreateString(p.options));
    std::vector<flatbuffers::Offset<fb::Tensor>> tensors;
    for (size_t i = 0; i < spec.tensors.size(); i++) {
        const SpecTensor& t = spec.tensors[i];
        tensors.push_back(fb::CreateTensor(fbb, fbb.CreateString(t.name), fbb.CreateVector(t.shape),
                                           static_cast<fb::DType>(t.dtype), static_cast<fb::Layout>(t.layout),
                                           placed[i].offset, placed[i].length));
    }
    fb::FinishModelBuffer(fbb, fb::CreateModel(fbb, kItlFormatVersion, kQuantVersion, config, tokenizer, provenance,
                                               fbb.CreateVector(tensors)));
    if (fbb.GetSize() > kItlMaxMetaBytes) throw Error("metadata is larger than the format allows");
    // The metadata (names, shapes) is a sizeable part of a tiny model: compress it when that pays.
    std::vector<uint8_t> meta(fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize());
    ItlHeader h;
    std::vector<uint8_t> packed(options.compress_metadata ? ZSTD_compressBound(meta.size()) : 0);
    const size_t packed_size =
        options.compress_metadata ? ZSTD_compress(packed.data(), packed.size(), meta.data(), meta.size(), 19) : 0;
    if (options.compress_metadata && !ZSTD_isError(packed_size) && packed_size + 64 < meta.size()) {
        h.flags = kItlFlagMetaZstd;
        h.reserved = static_cast<uint32_t>(meta.size());
        packed.resize(packed_size);
        meta.swap(packed);
    }
    const uint64_t meta_length = meta.size();

    // Bytes: header, metadata, zero padding to the aligned data region, data.
    h.format_version = kItlFormatVersion;
    h.header_bytes = kItlHeaderBytes;
    h.meta_offset = kItlHeaderBytes;
    h.meta_length = meta_length;
    h.data_offset =
        align_up(h.meta_offset + meta_length, data_length < kItlSmallData ? kItlTensorAlign : kItlDataAlign);
    h.data_length = data_length;
    std::vector<uint8_t> out(h.data_offset + data_length, 0);
    std::memcpy(out.data() + h.meta_offset, meta.data(), meta_length);
    uint8_t* data = out.data() + h.data_offset;
    for (size_t i = 0; i < spec.tensors.size(); i++) {
        const SpecTensor& t = spec.tensors[i];
        encode_tensor(t, data + placed[i].offset);
    }
    if (spec.has_tokenizer) std::memcpy(data + token_place.offset, token_stored.data(), token_stored.size());
    h.checksum = itl_checksum(out.data() + h.meta_offset, meta_length, data, data_length);
    store_itl_header(h, out.data());
    return out;
}

void check_itl_target(const std::string& path) {
    struct stat target {};
    if (stat(path.c_str(), &target) == 0 && !S_ISREG(target.st_mode))
        throw Error("cannot write '" + path + "': not a regular file");
}

// Temp file in the same directory + rename: readers never see a half-written file.
void write_itl(const ModelSpec& spec, const std::string& path, const WriteOptions& options) {
    write_itl_bytes(serialize_itl(spec, options), path);
}

void write_itl_bytes(const std::vector<uint8_t>& bytes, const std::string& path) {
    check_itl_target(path);
    std::string tmp = path + ".tmp-XXXXXX";
    const int fd = mkstemp(tmp.data());
    if (fd < 0) throw Error("cannot create a temporary file next to '" + path + "': " + std::strerror(errno));
    int err = 0;
    if (fchmod(fd, 0644) != 0) err = errno;
    for (size_t done = 0; err == 0 && done < bytes.size();) {
        const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n > 0)
            done += static_cast<size_t>(n);
        else if (n == 0)
            err = EIO;
        else if (errno != EINTR)
            err = errno;
    }
    if (err == 0 && fsync(fd) != 0) err = errno;
    if (close(fd) != 0 && err == 0) err = errno;
    if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
    if (err != 0) {
        unlink(tmp.c_str());
        throw Error("cannot write '" + path + "': " + std::strerror(err));
    }
}

}  // namespace itera
